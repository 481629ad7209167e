#include "chatloop/metrics.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

const double cl_latency_bucket_ms[CL_LATENCY_BUCKETS] = {
    0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000,
};
const double cl_duration_bucket_ms[CL_DURATION_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000,
};

static cl_metrics_slot *g_slots;
static int g_nslots;
static cl_metrics_slot *g_mine;

static const char *const transport_names[CL_TRANSPORT__COUNT] = {"rest", "sse", "websocket",
                                                                  "openai"};
static const char *const outcome_names[CL_OUTCOME__COUNT] = {"completed", "failed",
                                                              "cancelled"};
static const char *const upstream_names[CL_UPSTREAM__COUNT] = {
    "429", "4xx", "5xx", "timeout", "transport", "stream",
};

void cl_metrics_set_mine(cl_metrics_slot *slot)
{
    g_mine = slot;
}

cl_metrics_slot *cl_metrics_mine(void)
{
    return g_mine;
}

static void hist_add(cl_hist *h, const double *bounds, int n, double ms)
{
    int i = 0;
    while (i < n && ms > bounds[i])
        i++;
    if (i < n) /* past the last bound: only in +Inf, i.e. in count */
        cl_metric_add(&h->bucket[i], 1);
    cl_metric_add(&h->count, 1);
    cl_metric_add(&h->sum_us, (uint64_t)(ms * 1000.0));
}

void cl_metrics_turn_begin(cl_transport t)
{
    if (g_mine)
        cl_metric_add(&g_mine->turns_active[t], 1);
}

void cl_metrics_turn_end(cl_transport t, cl_outcome o, double total_ms, double ttft_ms)
{
    if (!g_mine)
        return;
    cl_metric_sub(&g_mine->turns_active[t], 1);
    cl_metric_add(&g_mine->turns_total[t][o], 1);
    hist_add(&g_mine->turn_duration[t], cl_duration_bucket_ms, CL_DURATION_BUCKETS, total_ms);
    if (ttft_ms >= 0)
        hist_add(&g_mine->ttft[t], cl_latency_bucket_ms, CL_LATENCY_BUCKETS, ttft_ms);
}

void cl_metrics_upstream_error(cl_upstream_error e)
{
    if (g_mine)
        cl_metric_add(&g_mine->upstream_errors[e], 1);
}

void cl_metrics_upstream_retry(void)
{
    if (g_mine)
        cl_metric_add(&g_mine->upstream_retries, 1);
}

void cl_metrics_api_key_failure(void)
{
    if (g_mine)
        cl_metric_add(&g_mine->api_key_auth_failures, 1);
}

void cl_metrics_rate_limited(cl_limit_kind k)
{
    if (g_mine)
        cl_metric_add(&g_mine->rate_limited[k], 1);
}

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
    for (int t = 0; t < CL_TRANSPORT__COUNT; t++)
        atomic_store_explicit(&slot->turns_active[t], 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_connections_up, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_connections_busy, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_queue_depth, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_pending_writes, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_spooled, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->db_pool_size, 0, memory_order_relaxed);
}

void cl_metrics_request(cl_metrics_slot *s, int status, double ms)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        cls = 5;
    cl_metric_add(&s->requests_by_class[cls], 1);
    hist_add(&s->request_latency, cl_latency_bucket_ms, CL_LATENCY_BUCKETS, ms);
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

static void head(cl_buf *b, const char *name, const char *type, const char *help)
{
    cl_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One histogram's series; `labels` is "" or `key="value",` (with the comma). */
static void hist_series(cl_buf *b, const char *name, const char *labels, size_t offset,
                        const double *bounds, int n)
{
    uint64_t cum = 0;
    for (int i = 0; i < n; i++) {
        cum += sum(offset + offsetof(cl_hist, bucket) + (size_t)i * sizeof(cl_counter));
        cl_buf_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, bounds[i] / 1000.0,
                      (unsigned long long)cum);
    }
    uint64_t count = sum(offset + offsetof(cl_hist, count));
    cl_buf_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)count);
    size_t ll = strlen(labels);
    /* the labels without their trailing comma, for _sum and _count */
    if (ll)
        cl_buf_printf(b, "%s_sum{%.*s} %.6f\n%s_count{%.*s} %llu\n", name, (int)ll - 1, labels,
                      (double)sum(offset + offsetof(cl_hist, sum_us)) / 1e6, name, (int)ll - 1,
                      labels, (unsigned long long)count);
    else
        cl_buf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name,
                      (double)sum(offset + offsetof(cl_hist, sum_us)) / 1e6, name,
                      (unsigned long long)count);
}

static void transport_hist(cl_buf *b, const char *name, const char *help, size_t offset,
                           const double *bounds, int n)
{
    head(b, name, "histogram", help);
    char labels[48];
    for (int t = 0; t < CL_TRANSPORT__COUNT; t++) {
        snprintf(labels, sizeof labels, "transport=\"%s\",", transport_names[t]);
        hist_series(b, name, labels, offset + (size_t)t * sizeof(cl_hist), bounds, n);
    }
}

static void simple(cl_buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    cl_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                  (unsigned long long)v);
}

static void render_turns(cl_buf *b)
{
    head(b, "chatloop_turns_active", "gauge",
         "Chat turns and relayed completions running now, by transport.");
    for (int t = 0; t < CL_TRANSPORT__COUNT; t++)
        cl_buf_printf(b, "chatloop_turns_active{transport=\"%s\"} %llu\n", transport_names[t],
                      (unsigned long long)SUM(turns_active[t]));
    head(b, "chatloop_turns_total", "counter",
         "Chat turns and relayed completions ended, by transport and outcome.");
    for (int t = 0; t < CL_TRANSPORT__COUNT; t++)
        for (int o = 0; o < CL_OUTCOME__COUNT; o++)
            cl_buf_printf(b, "chatloop_turns_total{transport=\"%s\",outcome=\"%s\"} %llu\n",
                          transport_names[t], outcome_names[o],
                          (unsigned long long)SUM(turns_total[t][o]));
    head(b, "chatloop_tokens_relayed_total", "counter",
         "Answer deltas (tokens) relayed to clients, by transport.");
    for (int t = 0; t < CL_TRANSPORT__COUNT; t++)
        cl_buf_printf(b, "chatloop_tokens_relayed_total{transport=\"%s\"} %llu\n",
                      transport_names[t], (unsigned long long)SUM(tokens_relayed[t]));
    transport_hist(b, "chatloop_ttft_seconds",
                   "Time from a turn's start to its first token relayed, by transport.",
                   offsetof(cl_metrics_slot, ttft), cl_latency_bucket_ms, CL_LATENCY_BUCKETS);
    transport_hist(b, "chatloop_turn_duration_seconds",
                   "Time from a turn's start to its end, by transport.",
                   offsetof(cl_metrics_slot, turn_duration), cl_duration_bucket_ms,
                   CL_DURATION_BUCKETS);
    head(b, "chatloop_upstream_errors_total", "counter",
         "Upstream calls that failed for good (after retries), by cause.");
    for (int e = 0; e < CL_UPSTREAM__COUNT; e++)
        cl_buf_printf(b, "chatloop_upstream_errors_total{code=\"%s\"} %llu\n", upstream_names[e],
                      (unsigned long long)SUM(upstream_errors[e]));
    simple(b, "chatloop_upstream_retries_total", "counter",
           "Upstream attempts retried (429, 5xx, transient transport errors) or moved to a fallback model.",
           SUM(upstream_retries));
}

static const char *const limit_names[CL_LIMIT__COUNT] = {"turn_rate", "concurrent", "auth_ip"};

static void render_access(cl_buf *b)
{
    simple(b, "chatloop_api_key_auth_failures_total", "counter",
           "Requests that presented an unknown or revoked API key.", SUM(api_key_auth_failures));
    head(b, "chatloop_rate_limited_total", "counter",
         "Requests and turns refused with 429, by limit: turn_rate (rate_limit_per_minute), "
         "concurrent (max_turns_per_user), auth_ip (auth_rate_limit_per_minute).");
    for (int k = 0; k < CL_LIMIT__COUNT; k++)
        cl_buf_printf(b, "chatloop_rate_limited_total{kind=\"%s\"} %llu\n", limit_names[k],
                      (unsigned long long)SUM(rate_limited[k]));
}

static void render_db(cl_buf *b)
{
    simple(b, "chatloop_db_pool_size", "gauge", "Database connections configured (all workers).",
           SUM(db_pool_size));
    simple(b, "chatloop_db_connections_up", "gauge", "Database connections open.",
           SUM(db_connections_up));
    simple(b, "chatloop_db_connections_busy", "gauge", "Database connections running a query.",
           SUM(db_connections_busy));
    simple(b, "chatloop_db_queue_depth", "gauge", "Queries waiting for a database connection.",
           SUM(db_queue_depth));
    simple(b, "chatloop_db_pending_writes", "gauge",
           "Durable writes (answers, usage) queued or running.", SUM(db_pending_writes));
    simple(b, "chatloop_db_spooled_writes", "gauge",
           "Writes kept in spool_dir and not yet stored.", SUM(db_spooled));
    simple(b, "chatloop_db_query_timeouts_total", "counter",
           "Queries that passed db_query_timeout.", SUM(db_query_timeouts));
    head(b, "chatloop_db_errors_total", "counter",
         "Queries that failed, by kind: unavailable (no connection, lost, queue full) or refused by the database.");
    cl_buf_printf(b, "chatloop_db_errors_total{kind=\"unavailable\"} %llu\n",
                  (unsigned long long)SUM(db_errors_unavailable));
    cl_buf_printf(b, "chatloop_db_errors_total{kind=\"refused\"} %llu\n",
                  (unsigned long long)SUM(db_errors_refused));
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
    head(b, "chatloop_http_request_duration_seconds", "histogram",
         "Time from the first byte of a request to its response being queued.");
    hist_series(b, "chatloop_http_request_duration_seconds", "",
                offsetof(cl_metrics_slot, request_latency), cl_latency_bucket_ms,
                CL_LATENCY_BUCKETS);
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
    render_turns(b);
    render_db(b);
    render_access(b);
    cl_buf_printf(b, "# HELP chatloop_workers Worker processes.\n# TYPE chatloop_workers gauge\n"
                     "chatloop_workers %d\n", g_nslots);
    return 0;
}
