/*
 * wire.c — the bytes chatloop-mock answers with, in Groq's flavour of the
 * OpenAI format: stream chunks, whole completions, error bodies.
 *
 * Written with jsonw into a caller's cl_buf (the app's scratch buffer), never
 * through a JSON tree: a paced stream costs one small append per token.
 * Token texts are ASCII by construction (mock_text.h) and need no escaping;
 * the model and tool names come from the request and are escaped.
 */
#include "mock.h"

#include "chatloop/jsonw.h"
#include "chatloop/mock_text.h"

#include <stdio.h>
#include <string.h>

/* `data: {"id":..,"object":"chat.completion.chunk",..,"choices":[`. With
 * X-Mock-Multiline-Data each member starts a new `data:` line: legal SSE
 * (the lines of one event join with "\n", which is JSON whitespace), and
 * what a pretty-printing upstream sends. */
static int chunk_prefix(cl_buf *b, const mock_gen *g)
{
    const char *sep = g->plan.multiline ? ",\ndata: " : ",";
    cl_buf_append_str(b, "data: {\"id\":\"chatcmpl-mock-");
    cl_buf_append_u64(b, g->id);
    cl_buf_append_str(b, "\"");
    cl_buf_append_str(b, sep);
    cl_buf_append_str(b, "\"object\":\"chat.completion.chunk\"");
    cl_buf_append_str(b, sep);
    cl_buf_append_str(b, "\"created\":");
    cl_buf_append_u64(b, (unsigned long long)g->created);
    cl_buf_append_str(b, sep);
    cl_buf_append_str(b, "\"model\":");
    cl_jsonw_cstr(b, g->plan.model);
    cl_buf_append_str(b, sep);
    cl_buf_append_str(b, "\"system_fingerprint\":\"fp_mock\"");
    cl_buf_append_str(b, sep);
    return cl_buf_append_str(b, "\"choices\":[");
}

static int x_groq_id(cl_buf *b, const mock_gen *g)
{
    cl_buf_append_str(b, "\"x_groq\":{\"id\":\"req_mock_");
    cl_buf_append_u64(b, g->id);
    return cl_buf_append_char(b, '"');
}

int mock_wire_role_chunk(cl_buf *b, const mock_gen *g)
{
    chunk_prefix(b, g);
    cl_buf_append_str(b, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                         "\"logprobs\":null,\"finish_reason\":null}],");
    x_groq_id(b, g);
    return cl_buf_append_str(b, "}}\n\n");
}

/* Piece `i` (0-based) of the answer: token i of the text, or for a tool
 * call the opening delta (i = 0) and then the argument fragments. */
int mock_wire_piece_chunk(cl_buf *b, const mock_gen *g, int i)
{
    chunk_prefix(b, g);
    cl_buf_append_str(b, "{\"index\":0,\"delta\":{");
    if (!g->plan.tool) {
        char tok[CL_MOCK_TOKEN_MAX];
        size_t n = cl_mock_token((unsigned)i, tok);
        if (i == mock_corrupt_piece(g))
            tok[n - 1] = 'X';
        cl_buf_append_str(b, "\"content\":\"");
        cl_buf_append(b, tok, n);
        cl_buf_append_char(b, '"');
    } else if (i == 0) {
        cl_buf_append_str(b, "\"tool_calls\":[{\"index\":0,\"id\":\"call_mock_1\",\"type\":"
                             "\"function\",\"function\":{\"name\":");
        cl_jsonw_cstr(b, g->plan.tool_name);
        cl_buf_append_str(b, ",\"arguments\":\"\"}}]");
    } else {
        cl_buf_append_str(b, "\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":");
        cl_jsonw_str(b, g->plan.tool_args + g->arg_off[i - 1],
                     (size_t)(g->arg_off[i] - g->arg_off[i - 1]));
        cl_buf_append_str(b, "}}]");
    }
    return cl_buf_append_str(b, "},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

static const char *finish_reason(const mock_gen *g)
{
    if (g->plan.tool)
        return "tool_calls";
    return g->plan.finish_length ? "length" : "stop";
}

/* Groq's usage object, with timings in seconds. */
static int groq_usage(cl_buf *b, const mock_gen *g, double completion_s)
{
    int p = g->plan.prompt_tokens, c = g->pieces;
    const double queue_s = 0.0001, prompt_s = 0.001;
    return cl_buf_printf(b,
                         "{\"queue_time\":%.6f,\"prompt_tokens\":%d,\"prompt_time\":%.6f,"
                         "\"completion_tokens\":%d,\"completion_time\":%.6f,"
                         "\"total_tokens\":%d,\"total_time\":%.6f}",
                         queue_s, p, prompt_s, c, completion_s, p + c, prompt_s + completion_s);
}

int mock_wire_final_chunks(cl_buf *b, const mock_gen *g, double completion_s)
{
    chunk_prefix(b, g);
    cl_buf_append_str(b, "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
    cl_buf_append_str(b, finish_reason(g));
    cl_buf_append_str(b, "\"}],");
    x_groq_id(b, g);
    cl_buf_append_str(b, ",\"usage\":");
    groq_usage(b, g, completion_s);
    cl_buf_append_str(b, "}}\n\n");
    if (g->plan.include_usage) {
        /* OpenAI's usage-only chunk: empty choices, plain usage. */
        chunk_prefix(b, g);
        cl_buf_printf(b, "],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                         "\"total_tokens\":%d}}\n\n",
                      g->plan.prompt_tokens, g->pieces, g->plan.prompt_tokens + g->pieces);
    }
    return cl_buf_append_str(b, "data: [DONE]\n\n");
}

/* Groq reports a failure inside a 200 stream as x_groq.error (a string). */
int mock_wire_groq_error_chunk(cl_buf *b, const mock_gen *g)
{
    chunk_prefix(b, g);
    cl_buf_append_str(b, "],\"x_groq\":{\"id\":\"req_mock_");
    cl_buf_append_u64(b, g->id);
    return cl_buf_append_str(b, "\",\"error\":\"mock upstream failure\"}}\n\n");
}

/* OpenAI's (and the SDKs') form of a mid-stream failure: a top-level error. */
int mock_wire_error_chunk(cl_buf *b)
{
    return cl_buf_append_str(b, "data: {\"error\":{\"message\":\"mock upstream failure\","
                                "\"type\":\"internal_server_error\",\"code\":\"internal_server_error\"}}\n\n");
}

int mock_wire_completion(cl_buf *b, const mock_gen *g, double completion_s)
{
    cl_buf_append_str(b, "{\"id\":\"chatcmpl-mock-");
    cl_buf_append_u64(b, g->id);
    cl_buf_append_str(b, "\",\"object\":\"chat.completion\",\"created\":");
    cl_buf_append_u64(b, (unsigned long long)g->created);
    cl_buf_append_str(b, ",\"model\":");
    cl_jsonw_cstr(b, g->plan.model);
    cl_buf_append_str(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    if (g->plan.tool) {
        cl_buf_append_str(b, "null,\"tool_calls\":[{\"id\":\"call_mock_1\",\"type\":\"function\","
                             "\"function\":{\"name\":");
        cl_jsonw_cstr(b, g->plan.tool_name);
        cl_buf_append_str(b, ",\"arguments\":");
        cl_jsonw_cstr(b, g->plan.tool_args);
        cl_buf_append_str(b, "}}]");
    } else {
        cl_buf_append_char(b, '"');
        char tok[CL_MOCK_TOKEN_MAX];
        int bad = mock_corrupt_piece(g);
        for (int i = 0; i < g->plan.ntokens; i++) {
            size_t n = cl_mock_token((unsigned)i, tok);
            if (i == bad)
                tok[n - 1] = 'X';
            cl_buf_append(b, tok, n);
        }
        cl_buf_append_char(b, '"');
    }
    cl_buf_append_str(b, "},\"logprobs\":null,\"finish_reason\":\"");
    cl_buf_append_str(b, finish_reason(g));
    cl_buf_append_str(b, "\"}],\"usage\":");
    groq_usage(b, g, completion_s);
    cl_buf_append_str(b, ",\"system_fingerprint\":\"fp_mock\",");
    x_groq_id(b, g);
    return cl_buf_append_str(b, "}}");
}

/* ---- error bodies ---------------------------------------------------------- */

void mock_send_error(mock_app *a, cl_req *r, int status, const char *type, const char *code,
                     const char *message, const char *extra_headers)
{
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    cl_buf_append_str(b, "{\"error\":{\"message\":");
    cl_jsonw_cstr(b, message);
    cl_buf_append_str(b, ",\"type\":");
    cl_jsonw_cstr(b, type);
    cl_buf_append_str(b, ",\"code\":");
    cl_jsonw_cstr(b, code); /* NULL is written as null */
    if (cl_buf_append_str(b, "}}") != 0) {
        cl_res_send(r, 500, "application/json", NULL, "{}", 2);
        return;
    }
    cl_res_send(r, status, "application/json", extra_headers, b->data, b->len);
}

void mock_send_status_fault(mock_app *a, cl_req *r, int status)
{
    const char *type = "api_error", *code = "api_error", *msg = "mock upstream error";
    switch (status) {
    case 400: type = "invalid_request_error"; code = "invalid_request"; msg = "mock bad request"; break;
    case 401: type = "invalid_request_error"; code = "invalid_api_key"; msg = "Invalid API Key"; break;
    case 403: type = "permission_error"; code = "permission_denied"; msg = "mock permission denied"; break;
    case 404: type = "invalid_request_error"; code = "model_not_found"; msg = "The model does not exist or you do not have access to it."; break;
    case 413: type = "invalid_request_error"; code = "request_too_large"; msg = "mock request too large"; break;
    case 429: type = "rate_limit_exceeded"; code = "rate_limit_exceeded"; msg = "Rate limit reached (mock). Please try again later."; break;
    case 498: type = "capacity_exceeded"; code = "flex_tier_capacity_exceeded"; msg = "mock capacity exceeded"; break;
    case 500: type = "internal_server_error"; code = "internal_server_error"; msg = "mock internal server error"; break;
    case 502: type = "bad_gateway"; code = "bad_gateway"; msg = "mock bad gateway"; break;
    case 503: type = "service_unavailable"; code = "service_unavailable"; msg = "mock service unavailable"; break;
    default: break;
    }
    /* retry-after: X-Mock-Retry-After (seconds, may be fractional), else 1
     * for 429; other statuses carry it only when asked. */
    char ra[24];
    int have = mock_header(r, "x-mock-retry-after", ra, sizeof ra) == 0 && ra[0];
    for (const char *s = ra; have && *s; s++)
        if (!((*s >= '0' && *s <= '9') || *s == '.'))
            have = 0;
    if (!have && status == 429) {
        snprintf(ra, sizeof ra, "1");
        have = 1;
    }
    char extra[64];
    if (have)
        snprintf(extra, sizeof extra, "retry-after: %s\r\n", ra);
    mock_send_error(a, r, status, type, code, msg, have ? extra : NULL);
}
