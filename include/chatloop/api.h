/**
 * api.h — the /api/v1 envelope (SPEC §3).
 *
 *   {"success":true,"message":"...","data":{...},"metadata":{"request_id":"...","processing_ms":1.2}}
 *   {"success":false,"message":"...","data":null,"error":{"code":"...","details":{...}},"metadata":{...}}
 *
 * The error codes (err.h) are shared with SSE and WebSocket errors.
 */
#ifndef CHATLOOP_API_H
#define CHATLOOP_API_H

#include "chatloop/buf.h"
#include "chatloop/err.h"
#include "chatloop/http.h"

/** Writes a success envelope. `data_json` is a JSON value or NULL (null). */
int cl_envelope_ok(cl_buf *b, const char *message, const char *data_json,
                   const char *request_id, double processing_ms);
/** Writes an error envelope. `details_json` is a JSON object or NULL ({}). */
int cl_envelope_error(cl_buf *b, cl_err_code code, const char *message,
                      const char *details_json, const char *request_id, double processing_ms);

/** Sends a success envelope as the response to r. */
void cl_api_ok(cl_req *r, int status, const char *message, const char *data_json);
/** Sends an error envelope with the code's status (and `extra_headers`,
 *  e.g. "Allow: GET\r\n" or "Retry-After: 3\r\n", or NULL). */
void cl_api_error(cl_req *r, cl_err_code code, const char *message, const char *details_json,
                  const char *extra_headers);

/** As cl_api_error with an explicit HTTP status (417, 408, ...) for the
 *  few answers whose status is not the code's usual one. */
void cl_api_error_status(cl_req *r, int status, cl_err_code code, const char *message,
                         const char *details_json, const char *extra_headers);

#endif
