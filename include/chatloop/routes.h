/**
 * routes.h — registers every endpoint chatloop serves. Each feature adds its
 * routes here (one function per feature file), so the table in one place
 * shows the whole API.
 */
#ifndef CHATLOOP_ROUTES_H
#define CHATLOOP_ROUTES_H

#include "chatloop/config.h"
#include "chatloop/router.h"

/** Builds the router for a worker. Returns NULL on failure. */
cl_router *cl_routes_build(const cl_config *cfg);

/** GET /health, GET /metrics, and with debug_routes POST /api/v1/debug/echo
 *  (src/http/builtin.c). */
int cl_builtin_routes(cl_router *r, const cl_config *cfg);

/** GET / (the browser chat client) and its files, embedded in the binary
 *  (src/http/static.c, src/http/assets/). */
int cl_static_routes(cl_router *r);

/** GET /docs (Swagger UI on /openapi.json) and GET /docs/{file}: its files,
 *  read from cfg->docs_dir now, so they are served from memory
 *  (src/http/docs.c). Missing files are not an error: /docs then says how
 *  to get them. Returns -1 only when a route cannot be added. */
int cl_docs_routes(cl_router *r, const cl_config *cfg);

/** Process start time used for uptime, set by main before forking. */
void cl_builtin_set_start_time(double unix_seconds);

#endif
