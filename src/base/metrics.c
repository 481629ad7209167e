#include "chatloop/metrics.h"

#include <string.h>
#include <sys/mman.h>

const double cl_latency_bucket_ms[CL_LATENCY_BUCKETS] = {
    0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000,
};

static cl_metrics_slot *g_slots;
static int g_nslots;

cl_metrics_slot *cl_metrics_map(int n)
{
    void *p = mmap(NULL, sizeof(cl_metrics_slot) * (size_t)n, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    cl_metrics_set_all(p, n);
    return p;
}

void cl_metrics_set_all(cl_metrics_slot *slots, int n)
{
    g_slots = slots;
    g_nslots = n;
}

void cl_metrics_reset_gauges(cl_metrics_slot *slot)
{
    atomic_store_explicit(&slot->connections_open, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->buffered_bytes, 0, memory_order_relaxed);
}

void cl_metrics_request(cl_metrics_slot *s, int status, double ms)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        cls = 5;
    cl_metric_add(&s->requests_by_class[cls], 1);
    int i = 0;
    while (i < CL_LATENCY_BUCKETS - 1 && ms > cl_latency_bucket_ms[i])
        i++;
    if (ms > cl_latency_bucket_ms[CL_LATENCY_BUCKETS - 1])
        i = CL_LATENCY_BUCKETS; /* only +Inf: counted in count, not in a bucket */
    if (i < CL_LATENCY_BUCKETS)
        cl_metric_add(&s->request_latency_bucket[i], 1);
    cl_metric_add(&s->request_latency_count, 1);
    cl_metric_add(&s->request_latency_sum_us, (uint64_t)(ms * 1000.0));
}

static uint64_t sum(size_t offset)
{
    uint64_t total = 0;
    for (int i = 0; i < g_nslots; i++) {
        cl_counter *c = (cl_counter *)((char *)&g_slots[i] + offset);
        total += atomic_load_explicit(c, memory_order_relaxed);
    }
    return total;
}

#define SUM(field) sum(offsetof(cl_metrics_slot, field))

static void simple(cl_buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    cl_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                  (unsigned long long)v);
}

int cl_metrics_render(cl_buf *b)
{
    if (!g_slots)
        return -1;
    simple(b, "chatloop_connections_open", "gauge", "Open client connections.",
           SUM(connections_open));
    simple(b, "chatloop_connections_total", "counter", "Accepted client connections.",
           SUM(connections_total));
    simple(b, "chatloop_connections_rejected_total", "counter",
           "Connections closed at accept because max_connections was reached.",
           SUM(connections_rejected));
    cl_buf_append_str(b, "# HELP chatloop_http_requests_total HTTP requests answered, by status class.\n"
                         "# TYPE chatloop_http_requests_total counter\n");
    for (int c = 1; c <= 5; c++)
        cl_buf_printf(b, "chatloop_http_requests_total{class=\"%dxx\"} %llu\n", c,
                      (unsigned long long)SUM(requests_by_class[c]));
    cl_buf_append_str(b, "# HELP chatloop_http_request_duration_seconds Time from the first byte of a request to its response being queued.\n"
                         "# TYPE chatloop_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < CL_LATENCY_BUCKETS; i++) {
        cum += SUM(request_latency_bucket[i]);
        cl_buf_printf(b, "chatloop_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                      cl_latency_bucket_ms[i] / 1000.0, (unsigned long long)cum);
    }
    uint64_t count = SUM(request_latency_count);
    cl_buf_printf(b, "chatloop_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                  (unsigned long long)count);
    cl_buf_printf(b, "chatloop_http_request_duration_seconds_sum %.6f\n",
                  (double)SUM(request_latency_sum_us) / 1e6);
    cl_buf_printf(b, "chatloop_http_request_duration_seconds_count %llu\n",
                  (unsigned long long)count);
    simple(b, "chatloop_http_parse_errors_total", "counter",
           "Requests refused as malformed or over a limit.", SUM(http_parse_errors));
    simple(b, "chatloop_http_header_timeouts_total", "counter",
           "Connections cut because the request head did not arrive in time.",
           SUM(header_timeouts));
    simple(b, "chatloop_slow_readers_dropped_total", "counter",
           "Connections closed because their queued output passed max_output_bytes.",
           SUM(slow_readers_dropped));
    simple(b, "chatloop_buffered_bytes", "gauge",
           "Bytes held for clients: request bodies, partial WebSocket messages, queued output.",
           SUM(buffered_bytes));
    simple(b, "chatloop_buffer_budget_drops_total", "counter",
           "Requests refused or connections dropped because a worker passed max_buffered_bytes.",
           SUM(budget_drops));
    simple(b, "chatloop_worker_restarts_total", "counter",
           "Workers restarted by the supervisor after dying.", SUM(worker_restarts));
    cl_buf_printf(b, "# HELP chatloop_workers Worker processes.\n# TYPE chatloop_workers gauge\n"
                     "chatloop_workers %d\n", g_nslots);
    return 0;
}
