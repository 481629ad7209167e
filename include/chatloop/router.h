/**
 * router.h — method + path routing with `{name}` path parameters.
 *
 * Patterns are literal segments and `{param}` segments ("/api/v1/
 * conversations/{id}/messages"). Matching is exact per segment; a path that
 * matches a pattern under another method yields 405 with the methods that
 * would have matched (for the Allow header). The table is built at startup
 * and read-only afterwards.
 */
#ifndef CHATLOOP_ROUTER_H
#define CHATLOOP_ROUTER_H

#include <stddef.h>

#include "chatloop/http.h"

typedef void (*cl_handler_fn)(cl_req *req);
typedef struct cl_router cl_router;

typedef enum { CL_ROUTE_FOUND = 0, CL_ROUTE_NOT_FOUND = 404, CL_ROUTE_BAD_METHOD = 405 } cl_route_result;

typedef struct cl_route_match {
    cl_handler_fn fn;
    int guard;                      /* the route's guard class, 0 for none */
    const char *pattern;
    int nparams;
    cl_path_param params[CL_MAX_PATH_PARAMS];
    char allow[96];                 /* on 405: "GET, POST" */
} cl_route_match;

cl_router *cl_router_new(void);
void cl_router_free(cl_router *r);
/** Adds a route; method is "GET", "POST", ... Returns 0, or -1 for a bad
 *  pattern (too many params, empty segment) or out of memory. */
int cl_router_add(cl_router *r, const char *method, const char *pattern, cl_handler_fn fn);
/**
 * Adds a route whose requests must pass guard class `guard` (> 0) first.
 * The program's worker hooks give the classes their meaning (chatloop's
 * are credentials: see cl_auth_guard_head in app.h): guard_head runs when
 * the request head is complete — before any body byte is read — and
 * guard_dispatch instead of `fn` when the message is complete.
 */
int cl_router_add_guarded(cl_router *r, const char *method, const char *pattern, cl_handler_fn fn,
                          int guard);
/** Matches method and path (path[0..len), no query). A GET route also
 *  answers HEAD. */
cl_route_result cl_router_match(const cl_router *r, const char *method, const char *path,
                                size_t len, cl_route_match *m);
/** Calls fn once per route, in the order they were added, with the method,
 *  the pattern as given ("/api/v1/conversations/{id}") and the guard class
 *  (0 for none). The strings belong to the router. */
void cl_router_each(const cl_router *r,
                    void (*fn)(void *ud, const char *method, const char *pattern, int guard),
                    void *ud);

#endif
