/* The OpenAI-compatible wire decoder on single payloads: chunk fields,
 * usage from each of its three sources, in-stream errors, malformed input,
 * error bodies, whole completions, and the JSON writers (parsed back with
 * jansson). Whole streams are in test_sse.c. */
#include "chatloop/llm_wire.h"
#include "test.h"

#include <jansson.h>

static char g_err[256];

static int chunk(cl_llm_result *r, const char *json)
{
    g_err[0] = 0;
    return cl_llm_decode_chunk(r, json, strlen(json), NULL, NULL, g_err, sizeof g_err);
}

static void test_content_and_meta(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                           "\"delta\":{\"role\":\"assistant\",\"content\":null}}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\u0000b\"},"
                           "\"future_field\":[1,2]}],\"new\":{}}"), CL_WIRE_OK);
    /* A choice with another index first (n > 1): only index 0 counts. */
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"index\":1,\"delta\":{\"content\":\"X\"}},"
                           "{\"index\":0,\"delta\":{\"content\":\"c\"},\"finish_reason\":\"stop\"}]}"),
                 CL_WIRE_OK);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"index\":2,\"delta\":{\"content\":\"Y\"}}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.content.len, 4);
    CHECK(memcmp(r.content.data, "a\0bc", 4) == 0);
    CHECK_EQ_STR(r.finish_reason, "stop");
    CHECK_EQ_STR(r.id, "c1");
    CHECK_EQ_STR(r.model, "m");
    CHECK_EQ_INT(r.chunks, 4);
    CHECK(!r.usage.present);
    cl_llm_result_free(&r);
    CHECK_EQ_INT(r.content.len, 0);
    CHECK_EQ_INT(r.chunks, 0);
    CHECK_EQ_STR(r.model, "");
    /* Reusable after free. */
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"content\":\"again\"}}]}"), CL_WIRE_OK);
    CHECK_EQ_STR(cl_buf_cstr(&r.content), "again");
    cl_llm_result_free(&r);
}

static void collect(void *ud, const char *text, size_t len)
{
    cl_buf_append(ud, text, len);
}

/* The scanner path must agree with jansson on every plain chunk, and leave
 * anything else to it. */
static void test_plain_chunk(void)
{
    static const char *const plain[] = {
        "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok2\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":null}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{}}]}",
        "{ \"choices\" : [ { \"delta\" : { \"content\" : \"x\\u0000y\" } , \"logprobs\" : null } ] , \"x\" : [1, {\"a\": \"}\"}] }",
    };
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        cl_llm_result a, b;
        cl_buf ca, cb;
        cl_llm_result_init(&a);
        cl_llm_result_init(&b);
        cl_buf_init(&ca, 0);
        cl_buf_init(&cb, 0);
        size_t n = strlen(plain[i]);
        CHECK_EQ_INT(cl_llm_decode_chunk(&a, plain[i], n, collect, &ca, g_err, sizeof g_err), CL_WIRE_OK);
        CHECK_EQ_INT(cl_llm_decode_plain_chunk(&b, plain[i], n, collect, &cb), CL_WIRE_OK);
        CHECK_EQ_INT(a.content.len, b.content.len);
        CHECK(a.content.len == 0 || memcmp(a.content.data, b.content.data, a.content.len) == 0);
        CHECK_EQ_INT(ca.len, cb.len);
        CHECK(ca.len == 0 || memcmp(ca.data, cb.data, ca.len) == 0);
        CHECK_EQ_INT(a.chunks, b.chunks);
        cl_llm_result_free(&a);
        cl_llm_result_free(&b);
        cl_buf_release(&ca);
        cl_buf_release(&cb);
    }
    /* not plain: the caller must use the full decoder */
    static const char *const other[] = {
        "{\"choices\":[{\"index\":1,\"delta\":{\"content\":\"X\"}},{\"index\":0,\"delta\":{\"content\":\"c\"}}]}",
        "{\"choices\":[]}",
        "{\"object\":\"chat.completion.chunk\"}",
        "{\"choices\":[{\"delta\":{\"content\":\"a\"}}]",
        "{\"choices\":[{\"delta\":{\"content\":\"bad \\x escape\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":[{\"type\":\"text\"}]}}]}",
        "{\"choices\":{\"delta\":{}}}",
        "{not json",
        "[1,2]",
        "{\"error\":\"overloaded\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
        "{\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"x_groq\":{\"error\":{\"message\":\"m\"}}}",
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        cl_llm_result r;
        cl_llm_result_init(&r);
        CHECK_EQ_INT(cl_llm_decode_plain_chunk(&r, other[i], strlen(other[i]), NULL, NULL), 1);
        CHECK_EQ_INT(r.content.len, 0);
        CHECK_EQ_INT(r.chunks, 0);
        cl_llm_result_free(&r);
    }
}

/* JSON whitespace between any two tokens, every kind ('~' in a template):
 * the scanner path must still read the plain shape, and agree with jansson. */
static void test_plain_chunk_whitespace(void)
{
    static const char *const ws[] = {"", " ", "\t", "\n", "\r\n", " \n\t\r "};
    static const char *const tmpl[] = {
        "~{~\"id\"~:~\"c\"~,~\"choices\"~:~[~{~\"index\"~:~0~,~\"delta\"~:~{~\"content\"~:~\" tok2\"~}~,"
        "~\"finish_reason\"~:~null~}~]~}~",
        "~{~\"choices\"~:~[~{~\"delta\"~:~{~\"content\"~:~null~}~}~]~,~\"x_groq\"~:~{~\"id\"~:~\"q\"~}~}~",
        "~{~\"choices\"~:~[~{~\"delta\"~:~{~\"role\"~:~\"assistant\"~,~\"content\"~:~\"a\\nb\"~}~,"
        "~\"logprobs\"~:~null~}~]~}~",
    };
    const char *want[] = {" tok2", "", "a\nb"};
    for (size_t t = 0; t < sizeof tmpl / sizeof tmpl[0]; t++) {
        for (size_t v = 0; v < sizeof ws / sizeof ws[0]; v++) {
            cl_buf d;
            cl_buf_init(&d, 0);
            for (const char *p = tmpl[t]; *p; p++) {
                if (*p == '~')
                    cl_buf_append_str(&d, ws[v]);
                else
                    cl_buf_append_char(&d, *p);
            }
            cl_llm_result a, b;
            cl_llm_result_init(&a);
            cl_llm_result_init(&b);
            CHECK_EQ_INT(cl_llm_decode_chunk(&a, d.data, d.len, NULL, NULL, g_err, sizeof g_err),
                         CL_WIRE_OK);
            CHECK_EQ_INT(cl_llm_decode_plain_chunk(&b, d.data, d.len, NULL, NULL), CL_WIRE_OK);
            CHECK_EQ_STR(cl_buf_cstr(&b.content) ? cl_buf_cstr(&b.content) : "", want[t]);
            CHECK_EQ_INT(a.content.len, b.content.len);
            CHECK_EQ_INT(a.chunks, b.chunks);
            cl_llm_result_free(&a);
            cl_llm_result_free(&b);
            cl_buf_release(&d);
        }
    }
}

static void test_usage_sources(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{}}],\"usage\":null}"), CL_WIRE_OK);
    CHECK(!r.usage.present);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],"
                           "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}"),
                 CL_WIRE_OK);
    CHECK(r.usage.present);
    CHECK_EQ_INT(r.usage.total_tokens, 7);
    cl_llm_result_free(&r);

    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{}}],\"x_groq\":{\"id\":\"req\",\"usage\":"
                           "{\"queue_time\":0.1,\"prompt_tokens\":10,\"completion_tokens\":2,"
                           "\"total_tokens\":12,\"total_time\":0.3}}}"), CL_WIRE_OK);
    CHECK(r.usage.present);
    CHECK_EQ_INT(r.usage.prompt_tokens, 10);
    CHECK_EQ_INT(r.usage.completion_tokens, 2);
    CHECK_EQ_INT(r.usage.total_tokens, 12);
    cl_llm_result_free(&r);

    /* Usage-only chunk with choices: [] (this crashed another gateway), then
     * one with choices missing entirely; total computed when absent. */
    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,"
                           "\"completion_tokens\":1,\"total_tokens\":2}}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.usage.total_tokens, 2);
    CHECK_EQ_INT(chunk(&r, "{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.usage.prompt_tokens, 5);
    CHECK_EQ_INT(r.usage.total_tokens, 11);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":null}"), CL_WIRE_OK);
    CHECK_EQ_INT(chunk(&r, "{}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.usage.total_tokens, 11);

    cl_buf out;
    cl_buf_init(&out, 0);
    CHECK_EQ_INT(cl_llm_usage_json(&r.usage, &out), 0);
    CHECK_EQ_STR(cl_buf_cstr(&out), "{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}");
    cl_buf_release(&out);
    cl_llm_result_free(&r);
}

static void test_upstream_errors(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"content\":\"part\"}}]}"), CL_WIRE_OK);
    /* Groq's in-stream error; its usage is still recorded. */
    CHECK_EQ_INT(chunk(&r, "{\"id\":\"c\",\"x_groq\":{\"id\":\"req\",\"error\":"
                           "\"Internal server error: model overloaded\",\"usage\":"
                           "{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}}"),
                 CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "Internal server error: model overloaded");
    CHECK(r.usage.present);
    CHECK_EQ_INT(r.usage.total_tokens, 5);
    CHECK_EQ_STR(cl_buf_cstr(&r.content), "part");
    CHECK_EQ_INT(chunk(&r, "{\"x_groq\":{\"error\":{\"message\":\"rate\\nlimited\",\"type\":\"t\"}}}"),
                 CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "rate limited"); /* one line */
    CHECK_EQ_INT(chunk(&r, "{\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}"),
                 CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "The server had an error");
    CHECK_EQ_INT(chunk(&r, "{\"error\":{\"code\":\"overloaded\"}}"), CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "overloaded");
    CHECK_EQ_INT(chunk(&r, "{\"error\":{}}"), CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "upstream error");
    /* Null errors are no errors; error chunks do not add content. */
    CHECK_EQ_INT(chunk(&r, "{\"error\":null,\"x_groq\":{\"error\":null},\"choices\":[{\"delta\":"
                           "{\"content\":\"!\"}}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(chunk(&r, "{\"error\":\"x\",\"choices\":[{\"delta\":{\"content\":\"?\"}}]}"),
                 CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(cl_buf_cstr(&r.content), "part!");
    /* NULL err is allowed. */
    CHECK_EQ_INT(cl_llm_decode_chunk(&r, "{\"error\":{}}", 12, NULL, NULL, NULL, 0),
                 CL_WIRE_UPSTREAM_ERROR);
    cl_llm_result_free(&r);
}

static void test_malformed(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"content\":\"a\"}}"), CL_WIRE_MALFORMED);
    CHECK_CONTAINS(g_err, "line 1, column");
    CHECK_EQ_INT(chunk(&r, "{\n\"a\": tru}"), CL_WIRE_MALFORMED);
    CHECK_CONTAINS(g_err, "line 2");
    CHECK_EQ_INT(chunk(&r, ""), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "[1,2]"), CL_WIRE_MALFORMED);
    CHECK_CONTAINS(g_err, "not a JSON object");
    CHECK_EQ_INT(chunk(&r, "42"), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "\"[DONE]\""), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":{}}"), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[3]}"), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":\"x\"}]}"), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":{}}}]}"), CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":\"0\"}]}}]}"),
                 CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":-1}]}}]}"),
                 CL_WIRE_MALFORMED);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":9999999999}]}}]}"),
                 CL_WIRE_MALFORMED);
    CHECK_CONTAINS(g_err, "out of range");
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[7]}}]}"), CL_WIRE_MALFORMED);
    /* Wrong-typed scalars are ignored, like unknown fields. */
    CHECK_EQ_INT(chunk(&r, "{\"id\":5,\"model\":[],\"usage\":\"x\",\"choices\":[{\"delta\":"
                           "{\"content\":7},\"finish_reason\":1}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.content.len, 0);
    CHECK_EQ_INT(r.ntool_calls, 0);
    cl_llm_result_free(&r);
}

static void test_tool_call_limits(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    /* Sparse and out-of-order indexes end up sorted; index absent = position. */
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":500,\"id\":\"z\","
                           "\"function\":{\"name\":\"f\"}},{\"index\":3,\"id\":\"y\"}]}}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(chunk(&r, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"w\","
                           "\"function\":{\"name\":\"g\",\"arguments\":{\"k\":[1]}}}]}}]}"), CL_WIRE_OK);
    CHECK_EQ_INT(r.ntool_calls, 3);
    if (r.ntool_calls == 3) {
        CHECK_EQ_INT(r.tool_calls[0].index, 0);
        CHECK_EQ_STR(r.tool_calls[0].id, "w");
        CHECK_EQ_STR(cl_buf_cstr(&r.tool_calls[0].arguments), "{\"k\":[1]}");
        CHECK_EQ_INT(r.tool_calls[1].index, 3);
        CHECK_EQ_INT(r.tool_calls[2].index, 500);
        CHECK_EQ_STR(r.tool_calls[2].name, "f");
    }
    cl_buf out;
    cl_buf_init(&out, 0);
    CHECK_EQ_INT(cl_llm_tool_calls_json(&r, &out), 0);
    /* A call with no type or arguments yet still writes valid JSON. */
    CHECK_CONTAINS(cl_buf_cstr(&out), "{\"id\":\"y\",\"type\":\"function\",\"function\":"
                                      "{\"name\":\"\",\"arguments\":\"{}\"}}");
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    CHECK(json_is_array(j) && json_array_size(j) == 3);
    json_decref(j);
    cl_buf_release(&out);
    cl_llm_result_free(&r);

    cl_llm_result_init(&r);
    char buf[128];
    int rc = CL_WIRE_OK;
    for (int i = 0; i < 200 && rc == CL_WIRE_OK; i++) {
        snprintf(buf, sizeof buf, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":%d}]}}]}", i);
        rc = chunk(&r, buf);
    }
    CHECK_EQ_INT(rc, CL_WIRE_MALFORMED);
    CHECK_EQ_INT(r.ntool_calls, 128);
    CHECK_CONTAINS(g_err, "tool calls");
    cl_llm_result_free(&r);

    /* Empty result writes an empty array. */
    cl_buf_init(&out, 0);
    cl_llm_result_init(&r);
    CHECK_EQ_INT(cl_llm_tool_calls_json(&r, &out), 0);
    CHECK_EQ_STR(cl_buf_cstr(&out), "[]");
    cl_buf_release(&out);
}

static void test_content_cap(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    size_t n = 1 << 20;
    char *big = malloc(n + 64);
    int len = snprintf(big, 64, "{\"choices\":[{\"delta\":{\"content\":\"");
    memset(big + len, 'a', n);
    memcpy(big + len + n, "\"}}]}", 6);
    int rc = CL_WIRE_OK, i;
    for (i = 0; i < 20 && rc == CL_WIRE_OK; i++)
        rc = cl_llm_decode_chunk(&r, big, strlen(big), NULL, NULL, g_err, sizeof g_err);
    CHECK_EQ_INT(rc, CL_WIRE_NOMEM);
    CHECK_EQ_INT(i, 9); /* 8 MiB fit, the ninth MiB does not */
    CHECK_EQ_INT(r.content.len, 8 << 20);
    CHECK_CONTAINS(g_err, "exceeds");
    free(big);
    cl_llm_result_free(&r);
}

static void test_error_body(void)
{
    char msg[64], type[32], code[32];
    const char *b = "{\"error\":{\"message\":\"Rate limit reached for model `llama` in organization\","
                    "\"type\":\"tokens\",\"code\":\"rate_limit_exceeded\"}}";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, type, sizeof type, code,
                                     sizeof code), 0);
    CHECK_EQ_STR(msg, "Rate limit reached for model `llama` in organization");
    CHECK_EQ_STR(type, "tokens");
    CHECK_EQ_STR(code, "rate_limit_exceeded");
    b = "{\"error\":{\"message\":\"bad\",\"code\":400,\"param\":null}}";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, type, sizeof type, code,
                                     sizeof code), 0);
    CHECK_EQ_STR(msg, "bad");
    CHECK_EQ_STR(type, "");
    CHECK_EQ_STR(code, "400");
    b = "{\"error\":{\"message\":\"only\"}}";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, NULL, 0, NULL, 0), 0);
    CHECK_EQ_STR(msg, "only");
    b = "{\"error\":\"model 'x' not found\"}";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, type, sizeof type, code,
                                     sizeof code), 0);
    CHECK_EQ_STR(msg, "model 'x' not found");
    /* Not the shape: a sanitized excerpt. Long messages are truncated on a
     * UTF-8 boundary. */
    b = "<html>\r\n  <body>502 Bad\tGateway \xc3\xa9\x01</body>\n</html>";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, type, sizeof type, code,
                                     sizeof code), -1);
    CHECK_EQ_STR(msg, "<html> <body>502 Bad Gateway ?? </body> </html>");
    CHECK_EQ_STR(type, "");
    CHECK_EQ_INT(cl_llm_decode_error("", 0, msg, sizeof msg, NULL, 0, NULL, 0), -1);
    CHECK_EQ_STR(msg, "empty body");
    b = "{\"detail\":\"nope\"}";
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), msg, sizeof msg, NULL, 0, NULL, 0), -1);
    CHECK_EQ_STR(msg, "{\"detail\":\"nope\"}");
    char tiny[8];
    b = "{\"error\":{\"message\":\"ab\xc3\xa9\xc3\xa9\xc3\xa9\"}}"; /* 2 + 3*2 bytes */
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), tiny, sizeof tiny, NULL, 0, NULL, 0), 0);
    CHECK_EQ_STR(tiny, "ab\xc3\xa9\xc3\xa9");
    CHECK_EQ_INT(cl_llm_decode_error(b, strlen(b), NULL, 0, NULL, 0, NULL, 0), 0);
}

static void test_completion(void)
{
    cl_llm_result r;
    cl_llm_result_init(&r);
    const char *b =
        "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"llama-3.1-8b-instant\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi there\"},"
        "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"queue_time\":0.02,"
        "\"prompt_tokens\":8,\"completion_tokens\":3,\"total_tokens\":11},"
        "\"system_fingerprint\":\"fp\",\"x_groq\":{\"id\":\"req_9\"}}";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err), CL_WIRE_OK);
    CHECK_EQ_STR(cl_buf_cstr(&r.content), "Hi there");
    CHECK_EQ_STR(r.finish_reason, "stop");
    CHECK_EQ_STR(r.model, "llama-3.1-8b-instant");
    CHECK_EQ_STR(r.id, "chatcmpl-9");
    CHECK(r.usage.present);
    CHECK_EQ_INT(r.usage.total_tokens, 11);
    cl_llm_result_free(&r);

    cl_llm_result_init(&r);
    b = "{\"id\":\"c2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
        "{\"name\":\"search\",\"arguments\":\"{\\\"q\\\":\\\"libuv\\\"}\"}},{\"id\":\"call_2\","
        "\"type\":\"function\",\"function\":{\"name\":\"now\",\"arguments\":\"{}\"}}]},"
        "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9,"
        "\"total_tokens\":29}}";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err), CL_WIRE_OK);
    CHECK_EQ_INT(r.content.len, 0);
    CHECK_EQ_STR(r.finish_reason, "tool_calls");
    CHECK_EQ_INT(r.ntool_calls, 2);
    if (r.ntool_calls == 2) {
        CHECK_EQ_STR(r.tool_calls[0].id, "call_1");
        CHECK_EQ_STR(r.tool_calls[0].name, "search");
        CHECK_EQ_STR(cl_buf_cstr(&r.tool_calls[0].arguments), "{\"q\":\"libuv\"}");
        CHECK_EQ_STR(r.tool_calls[1].id, "call_2");
        CHECK_EQ_INT(r.tool_calls[1].index, 1);
    }
    cl_buf out;
    cl_buf_init(&out, 0);
    CHECK_EQ_INT(cl_llm_tool_calls_json(&r, &out), 0);
    CHECK_EQ_STR(cl_buf_cstr(&out),
                 "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"search\","
                 "\"arguments\":\"{\\\"q\\\":\\\"libuv\\\"}\"}},{\"id\":\"call_2\",\"type\":"
                 "\"function\",\"function\":{\"name\":\"now\",\"arguments\":\"{}\"}}]");
    cl_buf_release(&out);
    cl_llm_result_free(&r);

    cl_llm_result_init(&r);
    b = "{\"error\":{\"message\":\"context length exceeded\",\"type\":\"invalid_request_error\"}}";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err),
                 CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(g_err, "context length exceeded");
    b = "{\"id\":\"x\"}";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err), CL_WIRE_MALFORMED);
    b = "{\"choices\":[]}";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err), CL_WIRE_OK);
    b = "not json";
    CHECK_EQ_INT(cl_llm_decode_completion(&r, b, strlen(b), g_err, sizeof g_err), CL_WIRE_MALFORMED);
    CHECK_CONTAINS(g_err, "column");
    cl_llm_result_free(&r);
}

CL_TEST_MAIN(test_content_and_meta, test_plain_chunk, test_plain_chunk_whitespace,
             test_usage_sources, test_upstream_errors, test_malformed, test_tool_call_limits,
             test_content_cap, test_error_body, test_completion)
