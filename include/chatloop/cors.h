/**
 * cors.h — which browser origins may call this server (cors_origins), the
 * CORS bytes of a response head, preflights, and the Origin rule for
 * WebSocket upgrades.
 *
 * A cl_cors is built once per worker from the configuration (whose syntax
 * was checked at startup by cl_origin_list_check) and is read-only after.
 * Every header line it hands out is precomputed: adding CORS to a response
 * costs one header lookup and a few compares, no formatting.
 *
 * Credentials (cookies) are never allowed cross-origin: no response says
 * Access-Control-Allow-Credentials. chatloop authenticates with a bearer
 * token the page sets itself, which CORS treats as an ordinary header.
 */
#ifndef CHATLOOP_CORS_H
#define CHATLOOP_CORS_H

#include <stddef.h>

#include "chatloop/buf.h"
#include "chatloop/http.h"

typedef struct cl_cors cl_cors;

/**
 * Builds the policy for a cors_origins value ("" none, "*" any, or a
 * comma-separated list). NULL when out of memory or the value is malformed
 * (which cl_config refuses earlier). Free with cl_cors_free (NULL is fine).
 */
cl_cors *cl_cors_new(const char *spec);
void cl_cors_free(cl_cors *c);

/**
 * Appends this request's CORS header lines to a response head: for an
 * allowed Origin, Access-Control-Allow-Origin (the origin, or "*"), the
 * headers a page may read (Access-Control-Expose-Headers), and Vary: Origin
 * whenever the answer depends on the Origin. Nothing when the policy is
 * empty or NULL. Returns 0 or -1 (out of memory).
 */
int cl_cors_head(const cl_cors *c, const cl_req *r, cl_buf *b);

/** 1 when `r` is a CORS preflight: OPTIONS with Origin and
 *  Access-Control-Request-Method. */
int cl_cors_is_preflight(const cl_req *r);

/**
 * Answers a preflight, before any credentials are looked at (a browser
 * never sends them on one): 204 with the allowed methods and headers and
 * Access-Control-Max-Age for an allowed origin; 403 FORBIDDEN naming the
 * origin otherwise (the browser then refuses the real request). Ends r.
 */
void cl_cors_preflight(const cl_cors *c, cl_req *r);

/**
 * The WebSocket rule (cross-site WebSocket hijacking): 1 when the upgrade
 * may go on — no Origin header (not a browser), an Origin whose host and
 * port are the request's Host (http or https), or an origin cors_origins
 * allows; 0 otherwise.
 */
int cl_cors_ws_origin_ok(const cl_cors *c, const cl_req *r);

#endif
