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
    struct db_metrics_pub *db_metrics; /* copies the pool's figures to /metrics (app.c) */
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
 * Guard classes for cl_router_add_guarded: the caller must present a valid
 * token — `Authorization: Bearer <JWT>` (HS256, jwt_secret), or for the
 * WebSocket also ?token= — naming a user that exists; with auth = off every
 * request acts as the local user. Refusals are 401 in the route's style:
 * the envelope, or OpenAI's error format.
 */
enum { CL_GUARD_TOKEN = 1, CL_GUARD_TOKEN_OPENAI, CL_GUARD_TOKEN_WS };

/**
 * The worker hooks behind the guards (cl_app_hooks). guard_head checks
 * the token when a request head is complete, before its body is read;
 * guard_dispatch checks it (if not done yet) and that its user exists — a
 * per-worker cache of users seen within the last 5 s, else one lookup —
 * then runs the handler with r->user_id, r->token_exp set.
 */
int cl_auth_guard_head(cl_req *r, int guard);
void cl_auth_guard_dispatch(cl_req *r, int guard, void (*fn)(cl_req *r));

/** The token check itself, for tokens that arrive another way (the
 *  WebSocket's `auth` message). 1 with user_id (and *exp, unix seconds,
 *  0 with auth = off) filled, or 0 with `why`. */
int cl_auth_token_user(const cl_config *cfg, const char *tok, size_t len, char user_id[37],
                       int64_t *exp, char *why, size_t whylen);

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
int cl_key_routes(cl_router *r);         /* keys.c: /api/v1/keys */
int cl_agent_routes(cl_router *r);       /* agents.c: /api/v1/agents */
int cl_task_routes(cl_router *r);        /* tasks.c: /api/v1/tasks */
int cl_chat_routes(cl_router *r);
int cl_ws_routes(cl_router *r);
int cl_llm_routes(cl_router *r);
void cl_models_cache_free(cl_models_cache *c);

#endif
