/*
 * libFuzzer target for the JSON scanner (src/base/jscan.c), which reads
 * upstream chunks on the turn's hot path: whatever the bytes, nothing may
 * crash or read out of bounds, and the scanner must agree with jansson —
 * when the plain-chunk fast path accepts a payload, the full decoder must
 * accept it too and produce the same text and chunk count.
 */
#include "chatloop/jscan.h"
#include "chatloop/llm_wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    static const char *const keys[] = {"choices", "delta", "content", "error", "type"};
    cl_json_span v[5];
    if (cl_json_members(s, size, keys, v, 5) == 0) {
        for (int i = 0; i < 5; i++) {
            if (!v[i].p)
                continue;
            if (v[i].p < s || v[i].p + v[i].n > s + size)
                abort();
            char out[256];
            long n = cl_json_string(v[i], out, sizeof out);
            if (n > (long)sizeof out)
                abort();
            cl_json_span f = cl_json_first(v[i]);
            if (f.p && (f.p < v[i].p || f.p + f.n > v[i].p + v[i].n))
                abort();
        }
    }
    cl_llm_result fast, full;
    cl_llm_result_init(&fast);
    cl_llm_result_init(&full);
    if (cl_llm_decode_plain_chunk(&fast, s, size, NULL, NULL) == CL_WIRE_OK) {
        char err[128];
        /* jansson refuses numbers past its range (valid JSON all the same);
         * nothing else may differ */
        if (cl_llm_decode_chunk(&full, s, size, NULL, NULL, err, sizeof err) != CL_WIRE_OK) {
            if (strstr(err, "too big") || strstr(err, "overflow"))
                goto out;
            abort();
        }
        if (fast.content.len != full.content.len || fast.chunks != full.chunks ||
            (fast.content.len && memcmp(fast.content.data, full.content.data, fast.content.len)))
            abort();
    }
out:
    cl_llm_result_free(&fast);
    cl_llm_result_free(&full);
    return 0;
}
