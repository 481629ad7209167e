/*
 * libFuzzer target for the upstream stream path: arbitrary bytes, cut into
 * pieces of a size the input chooses (as curl's write callback would), go
 * through the SSE parser, and every event's payload through the chunk
 * decoder into one result, exactly as the provider does. Whatever the
 * bytes, nothing may crash, read out of bounds or leak, and the events must
 * be the same as when the whole input is fed at once.
 *
 * Each payload also goes through the call's byte filter (cl_llm__scan_chunk)
 * and the scanner decoder, which must agree with jansson: a chunk the filter
 * lets skip the parse carries no finish reason, usage, tool call or error;
 * `"choices": []` is always marked usage-only; and the scanner reads the
 * same content as jansson.
 */
#include "../../src/llm/llm_internal.h"
#include "chatloop/llm_wire.h"
#include "chatloop/sse.h"

#include <jansson.h>
#include <stdint.h>
#include <string.h>

typedef struct fuzz_state {
    cl_llm_result res;
    size_t streamed;
    cl_buf events;  /* every event as name NUL len data, to compare runs */
    int decode;
} fuzz_state;

static void on_content(void *ud, const char *text, size_t len)
{
    fuzz_state *st = ud;
    /* Touch every byte so ASan sees a read past the end, if any. */
    for (size_t i = 0; i < len; i++)
        st->streamed += (unsigned char)text[i] != 0;
}

static int empty_choices(const char *data, size_t len)
{
    json_t *root = json_loadb(data, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    json_t *ch = json_object_get(root, "choices");
    int empty = json_is_array(ch) && json_array_size(ch) == 0;
    json_decref(root);
    return empty;
}

static void check_filter(const char *data, size_t len)
{
    /* Key names written with \u escapes are out of scope: the filter and
     * the scanner compare keys as written (no upstream escapes them), and
     * content with \u escapes is common enough to stay on the fast path. */
    if (memmem(data, len, "\\u", 2))
        return;
    int scan = cl_llm__scan_chunk(data, len);
    cl_llm_result full, plain;
    cl_llm_result_init(&full);
    cl_llm_result_init(&plain);
    char err[128];
    int rc = cl_llm_decode_chunk(&full, data, len, NULL, NULL, err, sizeof err);
    if (!(scan & CL_LLM_SCAN_DECODE) &&
        (rc == CL_WIRE_UPSTREAM_ERROR ||
         (rc == CL_WIRE_OK && (full.finish_reason[0] || full.usage.present || full.ntool_calls))))
        __builtin_trap(); /* the filter would have hidden it from a relay */
    if (rc == CL_WIRE_OK && !(scan & CL_LLM_SCAN_USAGE_ONLY) && empty_choices(data, len))
        __builtin_trap(); /* a usage-only chunk not marked as one */
    if (!(scan & CL_LLM_SCAN_DECODE) && rc == CL_WIRE_OK &&
        cl_llm_decode_plain_chunk(&plain, data, len, NULL, NULL) == CL_WIRE_OK &&
        (plain.content.len != full.content.len ||
         (full.content.len && memcmp(plain.content.data, full.content.data, full.content.len))))
        __builtin_trap(); /* the scanner read other content than jansson */
    cl_llm_result_free(&full);
    cl_llm_result_free(&plain);
}

static int on_event(void *ud, const char *event, const char *data, size_t len)
{
    fuzz_state *st = ud;
    char err[128];
    if (data[len] != '\0')
        __builtin_trap(); /* the header promises a terminator */
    cl_buf_append(&st->events, event, strlen(event) + 1);
    cl_buf_append(&st->events, &len, sizeof len);
    cl_buf_append(&st->events, data, len);
    if (!st->decode)
        return 0;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0)
        return 0;
    check_filter(data, len);
    cl_llm_decode_chunk(&st->res, data, len, on_content, st, err, sizeof err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte picks the piece size, so splits are explored too; a
     * small max_line lets the fuzzer reach the line and event caps. */
    size_t step = (size_t)data[0] % 64 + 1;
    size_t max_line = data[0] & 0x80 ? 4096 : 256;
    data++;
    size--;
    cl_sse_parser p;
    cl_sse_init(&p, max_line);
    fuzz_state st = {.decode = 1};
    cl_llm_result_init(&st.res);
    cl_buf_init(&st.events, 0);
    int rc = 0;
    for (size_t at = 0; at < size && rc == 0; at += step) {
        size_t n = size - at < step ? size - at : step;
        rc = cl_sse_feed(&p, (const char *)data + at, n, on_event, &st);
    }
    cl_sse_free(&p);

    cl_sse_init(&p, max_line);
    fuzz_state whole = {.decode = 0};
    cl_buf_init(&whole.events, 0);
    int whole_rc = cl_sse_feed(&p, (const char *)data, size, on_event, &whole);
    if (whole_rc != rc || whole.events.len != st.events.len ||
        (st.events.len && memcmp(whole.events.data, st.events.data, st.events.len) != 0))
        __builtin_trap(); /* a split changed the events */
    cl_buf_release(&whole.events);
    cl_buf_release(&st.events);
    cl_buf out;
    cl_buf_init(&out, 0);
    cl_llm_tool_calls_json(&st.res, &out);
    cl_llm_usage_json(&st.res.usage, &out);
    cl_buf_release(&out);
    cl_llm_result_free(&st.res);
    cl_sse_free(&p);
    return 0;
}
