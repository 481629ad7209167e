/**
 * app.h — chatloop's per-worker services, created by the worker hooks
 * (cl_app_hooks) and reached from handlers with cl_app_current().
 */
#ifndef CHATLOOP_APP_H
#define CHATLOOP_APP_H

#include <stdint.h>

#include "chatloop/http.h"
#include "chatloop/llm.h"
#include "chatloop/worker.h"

typedef struct cl_models_cache cl_models_cache;

typedef struct cl_app {
    cl_worker *w;
    cl_llm *llm;
    cl_models_cache *models;    /* GET /api/v1/models, cached 60 s (src/api/llm_routes.c) */
} cl_app;

extern const cl_worker_hooks cl_app_hooks;

/** The running worker's services (NULL outside a worker, e.g. unit tests). */
cl_app *cl_app_current(void);

/**
 * Authentication hook for the routes that need a caller: returns 1 when the
 * request may proceed. Users, API keys and JWTs arrive with their issue;
 * until then every caller is the single local user, as with `auth = off`.
 * Handlers call it first so the check lands in one place.
 */
int cl_auth_allow(cl_req *r);

/* Route registration, one function per feature (src/api/). */
int cl_openai_routes(cl_router *r);
int cl_llm_routes(cl_router *r);
void cl_models_cache_free(cl_models_cache *c);

#endif
