/*
 * app.c — chatloop-mock's per-worker state: the hooks that plug it into
 * cl_worker_run, its counters, and the table that makes a fault happen only
 * for the first K requests of a key (X-Mock-Fault-Count), which is how retry
 * tests get "fail twice, then succeed".
 */
#include "mock.h"

#include "chatloop/log.h"

#include <stdlib.h>
#include <string.h>

/* Keys are test-chosen; a runaway test could make endless distinct ones, so
 * the table is bounded: when full it starts over (documented in --help). */
#define MAX_FAULT_KEYS 4096
#define MAX_FAULT_KEY_LEN 128

struct mock_fault_entry {
    char key[MAX_FAULT_KEY_LEN];
    size_t len;
    uint64_t seen;
};

static mock_options g_opt = {.record_max = 1000};

void mock_set_options(const mock_options *o) { g_opt = *o; }

uint64_t mock_fault_seen(mock_app *a, const char *key, size_t len)
{
    if (len > MAX_FAULT_KEY_LEN)
        len = MAX_FAULT_KEY_LEN;
    /* Linear: only requests that carry X-Mock-Fault-Count get here. */
    for (int i = 0; i < a->nfaults; i++) {
        mock_fault_entry *e = &a->faults[i];
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return ++e->seen;
    }
    if (a->nfaults == MAX_FAULT_KEYS)
        a->nfaults = 0;
    if (a->nfaults == a->faults_cap) {
        int cap = a->faults_cap ? a->faults_cap * 2 : 16;
        mock_fault_entry *n = realloc(a->faults, (size_t)cap * sizeof *n);
        if (!n)
            return 1; /* cannot count: treat as the first (the fault happens) */
        a->faults = n;
        a->faults_cap = cap;
    }
    mock_fault_entry *e = &a->faults[a->nfaults++];
    memcpy(e->key, key, len);
    e->len = len;
    e->seen = 1;
    return 1;
}

void mock_faults_clear(mock_app *a)
{
    free(a->faults);
    a->faults = NULL;
    a->nfaults = a->faults_cap = 0;
}

int mock_stats_json(mock_app *a, cl_buf *b)
{
    const mock_stats *s = &a->stats;
    uint64_t streams_open = a->open_streams;
    uint64_t completions_open = a->open_completions;
    return cl_buf_printf(
        b,
        "{\"requests\":%llu,\"streams_started\":%llu,\"streams_completed\":%llu,"
        "\"streams_aborted\":%llu,\"streams_cut\":%llu,\"streams_open\":%llu,"
        "\"completions_started\":%llu,\"completions_completed\":%llu,"
        "\"completions_aborted\":%llu,\"completions_open\":%llu,\"faults\":%llu,"
        "\"connections_open\":%llu,\"recorded\":%d}",
        (unsigned long long)s->requests, (unsigned long long)s->streams_started,
        (unsigned long long)s->streams_completed, (unsigned long long)s->streams_aborted,
        (unsigned long long)s->streams_cut, (unsigned long long)streams_open,
        (unsigned long long)s->completions_started, (unsigned long long)s->completions_completed,
        (unsigned long long)s->completions_aborted, (unsigned long long)completions_open,
        (unsigned long long)s->faults, (unsigned long long)a->w->nconns, a->ring_len);
}

/* ---- worker hooks ------------------------------------------------------ */

static int on_start(cl_worker *w)
{
    mock_app *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    a->w = w;
    a->opt = g_opt;
    cl_buf_init(&a->scratch, 0);
    w->app = a;
    return 0;
}

/* SIGTERM: a mock has nothing worth finishing. Paced and stalled answers
 * are cut at once so tests that stop the mock do not wait for drain_timeout. */
static void on_drain(cl_worker *w)
{
    mock_app *a = w->app;
    if (a)
        mock_gen_stop_all(a, 1);
}

static void on_stop(cl_worker *w)
{
    mock_app *a = w->app;
    if (!a)
        return;
    /* Answers still attached (drain timed out, or a stop without a drain)
     * are detached before the app goes: their timers close with callbacks
     * that free only the answer, never touching the app. */
    mock_gen_stop_all(a, 0);
    cl_http1_cleanup();
    mock_record_free(a);
    mock_faults_clear(a);
    cl_buf_release(&a->scratch);
    free(a);
    w->app = NULL;
}

const cl_worker_hooks mock_hooks = {
    .build_routes = mock_routes_build,
    .free_routes = cl_router_free,
    .on_accept = cl_http1_attach,
    .on_start = on_start,
    .on_drain = on_drain,
    .on_stop = on_stop,
};
