#include "chatloop/api.h"
#include "chatloop/jsonw.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int status;
} g_errs[CL_ERR__COUNT] = {
    [CL_ERR_INVALID_REQUEST] = {"INVALID_REQUEST", 400},
    [CL_ERR_UNAUTHORIZED] = {"UNAUTHORIZED", 401},
    [CL_ERR_FORBIDDEN] = {"FORBIDDEN", 403},
    [CL_ERR_NOT_FOUND] = {"NOT_FOUND", 404},
    [CL_ERR_METHOD_NOT_ALLOWED] = {"METHOD_NOT_ALLOWED", 405},
    [CL_ERR_REQUEST_TIMEOUT_HEAD] = {"REQUEST_TIMEOUT", 408},
    [CL_ERR_PAYLOAD_TOO_LARGE] = {"PAYLOAD_TOO_LARGE", 413},
    [CL_ERR_URI_TOO_LONG] = {"URI_TOO_LONG", 414},
    [CL_ERR_HEADERS_TOO_LARGE] = {"HEADERS_TOO_LARGE", 431},
    [CL_ERR_RATE_LIMITED] = {"RATE_LIMITED", 429},
    [CL_ERR_PROCESSING_ERROR] = {"PROCESSING_ERROR", 500},
    [CL_ERR_LLM_ERROR] = {"LLM_ERROR", 502},
    [CL_ERR_DB_UNAVAILABLE] = {"DB_UNAVAILABLE", 503},
    [CL_ERR_SERVICE_UNAVAILABLE] = {"SERVICE_UNAVAILABLE", 503},
    [CL_ERR_LLM_TIMEOUT] = {"LLM_TIMEOUT", 504},
    [CL_ERR_REQUEST_TIMEOUT] = {"REQUEST_TIMEOUT", 504},
};

const char *cl_err_name(cl_err_code code)
{
    return (unsigned)code < CL_ERR__COUNT ? g_errs[code].name : "PROCESSING_ERROR";
}

int cl_err_status(cl_err_code code)
{
    return (unsigned)code < CL_ERR__COUNT ? g_errs[code].status : 500;
}

static int metadata(cl_buf *b, const char *request_id, double ms)
{
    int rc = cl_buf_append_str(b, ",\"metadata\":{\"request_id\":");
    rc |= cl_jsonw_cstr(b, request_id ? request_id : "");
    rc |= cl_buf_append_str(b, ",\"processing_ms\":");
    rc |= cl_jsonw_ms(b, ms);
    rc |= cl_buf_append_str(b, "}}");
    return rc ? -1 : 0;
}

int cl_envelope_ok(cl_buf *b, const char *message, const char *data_json,
                   const char *request_id, double ms)
{
    int rc = cl_buf_append_str(b, "{\"success\":true,\"message\":");
    rc |= cl_jsonw_cstr(b, message ? message : "");
    rc |= cl_buf_append_str(b, ",\"data\":");
    rc |= cl_buf_append_str(b, data_json ? data_json : "null");
    rc |= metadata(b, request_id, ms);
    return rc ? -1 : 0;
}

int cl_envelope_error(cl_buf *b, cl_err_code code, const char *message,
                      const char *details_json, const char *request_id, double ms)
{
    int rc = cl_buf_append_str(b, "{\"success\":false,\"message\":");
    rc |= cl_jsonw_cstr(b, message ? message : cl_err_name(code));
    rc |= cl_buf_append_str(b, ",\"data\":null,\"error\":{\"code\":\"");
    rc |= cl_buf_append_str(b, cl_err_name(code));
    rc |= cl_buf_append_str(b, "\",\"details\":");
    rc |= cl_buf_append_str(b, details_json ? details_json : "{}");
    rc |= cl_buf_append_char(b, '}');
    rc |= metadata(b, request_id, ms);
    return rc ? -1 : 0;
}

/* Envelopes are small; a stack buffer covers nearly all of them and the
 * cl_buf grows onto the heap only for large data. */
void cl_api_ok(cl_req *r, int status, const char *message, const char *data_json)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    if (cl_envelope_ok(&b, message, data_json, r->request_id, cl_req_elapsed_ms(r)) != 0) {
        cl_buf_release(&b);
        cl_res_send(r, 500, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    cl_res_send(r, status, "application/json", NULL, b.data, b.len);
    cl_buf_release(&b);
}

void cl_api_error(cl_req *r, cl_err_code code, const char *message, const char *details_json,
                  const char *extra_headers)
{
    cl_api_error_status(r, cl_err_status(code), code, message, details_json, extra_headers);
}

void cl_api_error_status(cl_req *r, int status, cl_err_code code, const char *message,
                         const char *details_json, const char *extra_headers)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    if (cl_envelope_error(&b, code, message, details_json, r->request_id,
                          cl_req_elapsed_ms(r)) != 0) {
        cl_buf_release(&b);
        cl_res_send(r, 500, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    cl_res_send(r, status, "application/json", extra_headers, b.data, b.len);
    cl_buf_release(&b);
}
