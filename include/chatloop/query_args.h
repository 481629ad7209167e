/**
 * query_args.h — reading the query string of a native API request
 * (?limit=20&before=...), shared by the list routes.
 */
#ifndef CHATLOOP_QUERY_ARGS_H
#define CHATLOOP_QUERY_ARGS_H

#include <stddef.h>

#include "chatloop/http.h"

/** The first `name=value` of the query string, percent-decoded (and '+' as
 *  space) into out. Returns 1 when found, 0 when absent, -1 when the value
 *  is malformed or does not fit (outlen counts the NUL). */
int cl_query_param(const cl_req *r, const char *name, char *out, size_t outlen);

/** A decimal in [min, max] from the query; `def` when absent. Returns the
 *  value, or -1 after answering 400 INVALID_REQUEST naming the parameter
 *  (so min must be >= 0). */
long cl_query_int(cl_req *r, const char *name, long def, long min, long max);

#endif
