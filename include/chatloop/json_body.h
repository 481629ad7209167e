/**
 * json_body.h — reading a request body as one JSON object, with the one
 * wording every route uses for a bad body:
 *   "invalid JSON in the request body at line L column C: <jansson's reason>"
 *   "the request body must be a JSON object"
 */
#ifndef CHATLOOP_JSON_BODY_H
#define CHATLOOP_JSON_BODY_H

#include <jansson.h>
#include <stddef.h>

#include "chatloop/http.h"

/** The body as a JSON object (a new reference), or NULL with the reason in
 *  `why`. With `empty_ok`, an empty body is an empty object. */
json_t *cl_json_body_parse(const cl_req *r, int empty_ok, char *why, size_t whylen);

/** The same, answering 400 INVALID_REQUEST in the envelope when it fails
 *  (the request is then ended). */
json_t *cl_api_json_body(cl_req *r, int empty_ok);

#endif
