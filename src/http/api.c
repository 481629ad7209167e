/*
 * api.c — the /api/v1 envelope of api.h: success and error bodies with
 * their metadata (request id, processing time), and the answers built from
 * them. The codes and their HTTP statuses live in base/err.c.
 */
#include "chatloop/api.h"
#include "chatloop/jsonw.h"

#include <stdio.h>
#include <string.h>

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
