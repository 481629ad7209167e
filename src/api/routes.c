/* routes.c — the whole API in one table: each feature registers its routes. */
#include "chatloop/app.h"
#include "chatloop/routes.h"

cl_router *cl_routes_build(const cl_config *cfg)
{
    cl_router *r = cl_router_new();
    if (!r)
        return NULL;
    if (cl_builtin_routes(r, cfg) != 0 || cl_openai_routes(r) != 0 || cl_llm_routes(r) != 0 ||
        cl_auth_routes(r) != 0 || cl_conversation_routes(r) != 0 || cl_chat_routes(r) != 0) {
        cl_router_free(r);
        return NULL;
    }
    return r;
}
