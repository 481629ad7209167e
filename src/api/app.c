/* app.c — chatloop's per-worker services and its route table. */
#include "chatloop/app.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/routes.h"

#include <stdlib.h>

cl_app *cl_app_current(void)
{
    cl_worker *w = cl_worker_current();
    return w ? w->app : NULL;
}

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
        app->db = cl_db_new(w->loop, w->cfg);
        if (!app->db)
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
    cl_models_cache_free(app->models);
    cl_llm_free(app->llm);
    if (app->db && cl_db_pending_durable(app->db))
        CL_ERROR("stopping with %llu database write(s) not stored",
                 (unsigned long long)cl_db_pending_durable(app->db));
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
    int up = cl_db_available(app->db);
    cl_buf_printf(out, ",\"db\":{\"status\":\"%s\",\"pending_writes\":%llu}", up ? "ok" : "down",
                  (unsigned long long)cl_db_pending_durable(app->db));
    return up ? 0 : -1;
}

const cl_worker_hooks cl_app_hooks = {
    .health = app_health,
    .build_routes = cl_routes_build,
    .on_start = app_start,
    .on_stop = app_stop,
    .pending_work = app_pending,
};
