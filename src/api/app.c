/* app.c — chatloop's per-worker services and its route table. */
#include "chatloop/app.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/routes.h"

#include <stdlib.h>
#include <string.h>

cl_app *cl_app_current(void)
{
    cl_worker *w = cl_worker_current();
    return w ? w->app : NULL;
}

/* ---- the pool's figures in /metrics ---------------------------------------------- */

/* The pool keeps its own figures; once a second they are copied into this
 * worker's metrics slot, where every worker's /metrics sees them. Counters
 * go in as increments since the last copy, so a restarted worker (whose
 * pool counts from 0 again) never makes a counter go down. */
#define DB_METRICS_MS 1000

typedef struct db_metrics_pub {
    uv_timer_t timer;
    cl_app *app;
    uint64_t timeouts, unavailable, refused;    /* what was copied last */
} db_metrics_pub;

static void publish_db_metrics(uv_timer_t *h)
{
    db_metrics_pub *p = h->data;
    cl_metrics_slot *m = p->app->w->metrics;
    cl_db_stats st;
    cl_db_get_stats(p->app->db, &st);
    atomic_store_explicit(&m->db_pool_size, (uint64_t)st.size, memory_order_relaxed);
    atomic_store_explicit(&m->db_connections_up, (uint64_t)st.up, memory_order_relaxed);
    atomic_store_explicit(&m->db_connections_busy, (uint64_t)st.busy, memory_order_relaxed);
    atomic_store_explicit(&m->db_queue_depth, (uint64_t)st.queued, memory_order_relaxed);
    atomic_store_explicit(&m->db_pending_writes, st.pending_writes, memory_order_relaxed);
    atomic_store_explicit(&m->db_spooled, (uint64_t)st.spooled, memory_order_relaxed);
    cl_metric_add(&m->db_query_timeouts, st.timeouts - p->timeouts);
    cl_metric_add(&m->db_errors_unavailable, st.errors_unavailable - p->unavailable);
    cl_metric_add(&m->db_errors_refused, st.errors_refused - p->refused);
    p->timeouts = st.timeouts;
    p->unavailable = st.errors_unavailable;
    p->refused = st.errors_refused;
}

static int start_db_metrics(cl_app *app)
{
    db_metrics_pub *p = calloc(1, sizeof *p);
    if (!p || uv_timer_init(app->w->loop, &p->timer) != 0) {
        free(p);
        return -1;
    }
    p->app = app;
    p->timer.data = p;
    uv_timer_start(&p->timer, publish_db_metrics, 0, DB_METRICS_MS);
    uv_unref((uv_handle_t *)&p->timer); /* never what keeps a draining worker up */
    app->db_metrics = p;
    return 0;
}

static void on_db_metrics_closed(uv_handle_t *h)
{
    free(h->data);
}

static void stop_db_metrics(cl_app *app)
{
    db_metrics_pub *p = app->db_metrics;
    if (!p)
        return;
    publish_db_metrics(&p->timer);
    /* the pool is about to go: what it held is not held any more */
    cl_metrics_slot *m = app->w->metrics;
    atomic_store_explicit(&m->db_connections_up, 0, memory_order_relaxed);
    atomic_store_explicit(&m->db_connections_busy, 0, memory_order_relaxed);
    atomic_store_explicit(&m->db_queue_depth, 0, memory_order_relaxed);
    uv_close((uv_handle_t *)&p->timer, on_db_metrics_closed);
    app->db_metrics = NULL;
}

/* ---- the worker's services ------------------------------------------------------- */

static int app_start(cl_worker *w)
{
    cl_app *app = calloc(1, sizeof *app);
    if (!app)
        return -1;
    app->w = w;
    w->app = app;
    app->llm = cl_llm_new(w->loop, w->cfg);
    if (!app->llm)
        return -1;
    if (w->cfg->database_url[0]) {
        char err[512];
        app->db = cl_db_new(w->loop, w->cfg, w->id, err, sizeof err);
        if (!app->db) {
            CL_ERROR("worker %d: database pool: %s", w->id, err);
            return -1;
        }
        if (start_db_metrics(app) != 0)
            return -1;
    }
    if (w->id == 0) {
        const cl_config *cfg = w->cfg;
        if (cl_llm_provider_name(app->llm)[0] == 'm' && cfg->provider != CL_PROVIDER_MOCK)
            CL_INFO("no api_key (GROQ_API_KEY) set: answering with the built-in mock provider");
        else if (cfg->provider == CL_PROVIDER_MOCK)
            CL_INFO("provider: mock (built in, %d tokens per answer)", cfg->mock_tokens);
        else
            CL_INFO("provider: %s at %s, model %s", cl_llm_provider_name(app->llm), cfg->base_url,
                    cfg->model);
    }
    return 0;
}

static uint64_t app_pending(cl_worker *w)
{
    cl_app *app = w->app;
    if (!app)
        return 0;
    /* Graceful shutdown waits for calls still running and for the writes
     * queued while the database was away (bounded by drain_timeout). */
    return (app->llm ? (uint64_t)cl_llm_active(app->llm) : 0) + cl_db_pending_durable(app->db);
}

static void app_stop(cl_worker *w)
{
    cl_app *app = w->app;
    if (!app)
        return;
    cl_http1_cleanup();
    cl_models_cache_free(app->models);
    cl_llm_free(app->llm);
    stop_db_metrics(app);
    cl_db_free(app->db);
    free(app);
    w->app = NULL;
}

static int app_health(cl_worker *w, cl_buf *out)
{
    cl_app *app = w->app;
    cl_buf_append_str(out, ",\"provider\":{\"name\":");
    cl_jsonw_cstr(out, app && app->llm ? cl_llm_provider_name(app->llm) : NULL);
    cl_buf_append_str(out, ",\"model\":");
    cl_jsonw_cstr(out, w->cfg->model);
    cl_buf_append_char(out, '}');
    if (!app || !app->db) {
        cl_buf_append_str(out, ",\"db\":{\"status\":\"not_configured\"}");
        return 0;
    }
    /* Not ready while the database is down or while its queries run out
     * of time: a load balancer then sends the traffic elsewhere. */
    cl_db_stats st;
    cl_db_get_stats(app->db, &st);
    const char *status = st.up == 0 ? "down" : st.timing_out ? "timing_out" : "ok";
    cl_buf_printf(out,
                  ",\"db\":{\"status\":\"%s\",\"pool\":{\"size\":%d,\"up\":%d,\"busy\":%d,"
                  "\"queued\":%d,\"oldest_wait_ms\":%llu,\"timeouts\":%llu},"
                  "\"pending_writes\":%llu,\"spooled_writes\":%d}",
                  status, st.size, st.up, st.busy, st.queued,
                  (unsigned long long)st.oldest_wait_ms, (unsigned long long)st.timeouts,
                  (unsigned long long)st.pending_writes, st.spooled);
    return strcmp(status, "ok") == 0 ? 0 : -1;
}

const cl_worker_hooks cl_app_hooks = {
    .on_accept = cl_http1_attach,
    .free_routes = cl_router_free,
    .health = app_health,
    .guard_head = cl_auth_guard_head,
    .guard_dispatch = cl_auth_guard_dispatch,
    .build_routes = cl_routes_build,
    .on_start = app_start,
    .on_stop = app_stop,
    .pending_work = app_pending,
};
