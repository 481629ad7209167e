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

int cl_auth_allow(cl_req *r)
{
    (void)r;
    return 1;
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
    return app && app->llm ? (uint64_t)cl_llm_active(app->llm) : 0;
}

static void app_stop(cl_worker *w)
{
    cl_app *app = w->app;
    if (!app)
        return;
    cl_models_cache_free(app->models);
    cl_llm_free(app->llm);
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
    return 0;
}

const cl_worker_hooks cl_app_hooks = {
    .health = app_health,
    .build_routes = cl_routes_build,
    .on_start = app_start,
    .on_stop = app_stop,
    .pending_work = app_pending,
};
