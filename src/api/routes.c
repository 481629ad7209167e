/* routes.c — the whole API in one table: each feature registers its routes. */
#include "chatloop/app.h"
#include "chatloop/routes.h"

static int (*const features[])(cl_router *r) = {
    cl_openai_routes,       /* /v1/chat/completions, /v1/models (and under /openai) */
    cl_llm_routes,          /* /api/v1/models, /api/v1/llm/test, /api/v1/llm/verify-key */
    cl_auth_routes,         /* /api/v1/auth/register, /api/v1/auth/login */
    cl_conversation_routes, /* /api/v1/conversations..., /api/v1/usage */
    cl_key_routes,          /* /api/v1/keys */
    cl_agent_routes,        /* /api/v1/agents... */
    cl_task_routes,         /* /api/v1/tasks... */
    cl_chat_routes,         /* the turn over REST and SSE */
    cl_ws_routes,           /* /ws/chat */
    cl_static_routes,       /* GET / (the browser client) and its files */
};

cl_router *cl_routes_build(const cl_config *cfg)
{
    cl_router *r = cl_router_new();
    if (!r)
        return NULL;
    int rc = cl_builtin_routes(r, cfg);
    if (rc == 0)
        rc = cl_docs_routes(r, cfg);
    for (size_t i = 0; rc == 0 && i < sizeof features / sizeof features[0]; i++)
        rc = features[i](r);
    if (rc != 0) {
        cl_router_free(r);
        return NULL;
    }
    return r;
}
