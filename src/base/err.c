#include "chatloop/err.h"

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

/* The cast to unsigned folds "negative" and "too large" into one check:
 * a code read back from an int field (fail_code - 1, refuse_code) may be
 * anything if a caller got it wrong, and a wrong name beats a wild read. */
const char *cl_err_name(cl_err_code code)
{
    return (unsigned)code < CL_ERR__COUNT ? g_errs[code].name : "PROCESSING_ERROR";
}

int cl_err_status(cl_err_code code)
{
    return (unsigned)code < CL_ERR__COUNT ? g_errs[code].status : 500;
}
