/* json_body.c — see json_body.h. */
#include "chatloop/json_body.h"
#include "chatloop/api.h"

#include <stdio.h>

json_t *cl_json_body_parse(const cl_req *r, int empty_ok, char *why, size_t whylen)
{
    if (r->body.len == 0 && empty_ok)
        return json_object();
    json_error_t jerr;
    json_t *body = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    if (!body) {
        snprintf(why, whylen, "invalid JSON in the request body at line %d column %d: %s",
                 jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        snprintf(why, whylen, "the request body must be a JSON object");
        return NULL;
    }
    return body;
}

json_t *cl_api_json_body(cl_req *r, int empty_ok)
{
    char why[300];
    json_t *body = cl_json_body_parse(r, empty_ok, why, sizeof why);
    if (!body)
        cl_api_error(r, CL_ERR_INVALID_REQUEST, why, "{\"field\":\"body\"}", NULL);
    return body;
}
