/**
 * err.h — the error codes shared by every layer (SPEC §3).
 *
 * One code names one kind of failure wherever it is reported: the HTTP
 * envelope (api.h), SSE `event: error`, WebSocket `error` messages, the
 * provider layer's on_error and the chat turn's. The code's HTTP status
 * lives here too, because the SSE and WebSocket paths report the same
 * status-less code that an HTTP answer would carry with its status.
 *
 * This header depends on nothing, so the layers below HTTP (llm/, db/,
 * base/) can name a failure without including the HTTP server.
 */
#ifndef CHATLOOP_ERR_H
#define CHATLOOP_ERR_H

typedef enum {
    CL_ERR_INVALID_REQUEST,
    CL_ERR_UNAUTHORIZED,
    CL_ERR_FORBIDDEN,
    CL_ERR_NOT_FOUND,
    CL_ERR_METHOD_NOT_ALLOWED,
    CL_ERR_REQUEST_TIMEOUT_HEAD,   /* 408: the request itself was too slow to arrive */
    CL_ERR_PAYLOAD_TOO_LARGE,
    CL_ERR_URI_TOO_LONG,
    CL_ERR_HEADERS_TOO_LARGE,
    CL_ERR_RATE_LIMITED,
    CL_ERR_PROCESSING_ERROR,
    CL_ERR_LLM_ERROR,
    CL_ERR_DB_UNAVAILABLE,
    CL_ERR_SERVICE_UNAVAILABLE,
    CL_ERR_LLM_TIMEOUT,
    CL_ERR_REQUEST_TIMEOUT,
    CL_ERR__COUNT
} cl_err_code;

/** The code's wire name ("RATE_LIMITED"), a static string; an out-of-range
 *  code reads as "PROCESSING_ERROR". */
const char *cl_err_name(cl_err_code code);
/** The code's HTTP status (429); 500 for an out-of-range code. */
int cl_err_status(cl_err_code code);

#endif
