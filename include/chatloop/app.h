/**
 * app.h — chatloop's per-worker services, created by the worker hooks
 * (cl_app_hooks) and reached from handlers with cl_app_current().
 */
#ifndef CHATLOOP_APP_H
#define CHATLOOP_APP_H

#include <stdint.h>

#include "chatloop/db.h"
#include "chatloop/http.h"
#include "chatloop/llm.h"
#include "chatloop/worker.h"

typedef struct cl_models_cache cl_models_cache;

typedef struct cl_app {
    cl_worker *w;
    cl_llm *llm;
    cl_db *db;                  /* NULL when no database_url is configured */
    cl_models_cache *models;    /* GET /api/v1/models, cached 60 s (src/api/llm_routes.c) */
} cl_app;

extern const cl_worker_hooks cl_app_hooks;

/**
 * Once, in the supervisor before forking (src/api/startup.c): a random
 * jwt_secret when none is set, the database migrations, and the local user
 * of `auth = off`. Synchronous. Returns 0, or -1 after logging why.
 */
int cl_app_prepare(cl_config *cfg);

/** The running worker's services (NULL outside a worker, e.g. unit tests). */
cl_app *cl_app_current(void);

/** The user every request acts as when auth = off (created at startup). */
#define CL_LOCAL_USER_ID "00000000-0000-4000-8000-000000000001"

typedef enum { CL_AUTH_ENVELOPE, CL_AUTH_OPENAI } cl_auth_style;

/**
 * Authenticates the caller from `Authorization: Bearer <JWT>` (HS256,
 * jwt_secret), or takes the local user when auth = off. On success fills
 * r->user_id and returns 1; otherwise answers 401 UNAUTHORIZED (in the
 * envelope, or in OpenAI's error format) and returns 0. Synchronous: a JWT
 * check is one HMAC.
 */
int cl_auth_check(cl_req *r, cl_auth_style style);

/** The token check itself, for callers whose token does not come from the
 *  Authorization header (the WebSocket's ?token=). 1 with user_id filled,
 *  or 0 with `why`. */
int cl_auth_token_user(const cl_config *cfg, const char *tok, size_t len, char user_id[37],
                       char *why, size_t whylen);

/** Answers DB_UNAVAILABLE (503) and returns 0 when the database is down or
 *  not configured; returns 1 otherwise. For handlers that need it. */
int cl_db_require(cl_req *r);

/** Maps a failed query to an answer: unavailable → 503 DB_UNAVAILABLE,
 *  anything else → 500 PROCESSING_ERROR (logged). */
void cl_db_error_reply(cl_req *r, const cl_db_res *res, const char *what);

/* Route registration, one function per feature (src/api/). */
int cl_openai_routes(cl_router *r);
int cl_auth_routes(cl_router *r);
int cl_conversation_routes(cl_router *r);
int cl_chat_routes(cl_router *r);
int cl_ws_routes(cl_router *r);
int cl_llm_routes(cl_router *r);
void cl_models_cache_free(cl_models_cache *c);

#endif
