/* The SSE parser fed recorded upstream streams at every split point (STYLE
 * 17): two pieces cut at each offset, byte by byte, and three pieces for the
 * short streams. Each run's events must equal the whole-stream parse, which
 * is itself checked against the expected events. The streams are then
 * decoded with the wire decoder as the provider would. */
#include "chatloop/llm_wire.h"
#include "chatloop/sse.h"
#include "test.h"

#include <jansson.h>

/* Test JSON is written with ' for " and ` for \" so it stays readable. */
static void unquote(cl_buf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\'')
            cl_buf_append_char(out, '"');
        else if (*s == '`')
            cl_buf_append(out, "\\\"", 2);
        else
            cl_buf_append_char(out, *s);
    }
}

/* "data: <chunk>\n\n" for each chunk, then "data: [DONE]\n\n". */
static void build_stream(cl_buf *out, const char *const *chunks)
{
    for (; *chunks; chunks++) {
        cl_buf_append_str(out, "data: ");
        unquote(out, *chunks);
        cl_buf_append_str(out, "\n\n");
    }
    cl_buf_append_str(out, "data: [DONE]\n\n");
}

/* The same text with every LF replaced by eol. */
static void with_eol(cl_buf *out, const char *s, size_t n, const char *eol)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            cl_buf_append_str(out, eol);
        else
            cl_buf_append_char(out, s[i]);
    }
}

/* ---- the split harness --------------------------------------------------- */

typedef struct rec {
    cl_buf out;
    int stop_at;    /* return 99 from this event (1-based); 0 = never */
    int n;
} rec;

static int record(void *ud, const char *event, const char *data, size_t len)
{
    rec *r = ud;
    if (data[len] != '\0')
        cl_buf_append_str(&r->out, "<unterminated>");
    cl_buf_printf(&r->out, "[%s]%zu:", event, len);
    cl_buf_append(&r->out, data, len);
    cl_buf_append_char(&r->out, '\n');
    return ++r->n == r->stop_at ? 99 : 0;
}

static long long g_runs;

/* Parses s fed in the pieces the cuts make; the record ends in "rc=N". */
static void parse_cuts(const char *s, size_t n, const size_t *cuts, int ncuts, size_t max_line,
                       int stop_at, cl_buf *out)
{
    cl_sse_parser p;
    cl_sse_init(&p, max_line);
    rec r = {.stop_at = stop_at};
    cl_buf_init(&r.out, 0);
    size_t at = 0;
    int rc = 0;
    for (int i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        rc = cl_sse_feed(&p, s + at, end - at, record, &r);
        at = end;
    }
    cl_buf_printf(&r.out, "rc=%d", rc);
    cl_buf_reset(out);
    cl_buf_append(out, r.out.data, r.out.len);
    cl_buf_release(&r.out);
    cl_sse_free(&p);
    g_runs++;
}

static int same(cl_buf *a, cl_buf *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static void mismatch(const char *how, const size_t *cuts, int ncuts, cl_buf *got, cl_buf *want)
{
    fprintf(stderr, "  %s split at", how);
    for (int i = 0; i < ncuts && i < 3; i++)
        fprintf(stderr, " %zu", cuts[i]);
    fprintf(stderr, ":\n  got  %s\n  want %s\n", cl_buf_cstr(got), cl_buf_cstr(want));
}

/* Checks the whole-stream parse against `expected` (the record format of
 * record()), then every split against the whole-stream parse. */
static void check_splits(const char *s, size_t n, size_t max_line, int stop_at,
                         const char *expected)
{
    cl_buf whole, got;
    cl_buf_init(&whole, 0);
    cl_buf_init(&got, 0);
    parse_cuts(s, n, NULL, 0, max_line, stop_at, &whole);
    CHECK_EQ_STR(cl_buf_cstr(&whole), expected);
    int bad = 0;
    size_t cuts[2];
    for (size_t a = 0; a <= n && bad < 3; a++) {
        cuts[0] = a;
        parse_cuts(s, n, cuts, 1, max_line, stop_at, &got);
        if (!same(&got, &whole)) {
            mismatch("2-piece", cuts, 1, &got, &whole);
            bad++;
        }
    }
    size_t *all = calloc(n ? n : 1, sizeof *all);
    for (size_t i = 0; i + 1 < n; i++)
        all[i] = i + 1;
    parse_cuts(s, n, all, n ? (int)n - 1 : 0, max_line, stop_at, &got);
    if (!same(&got, &whole)) {
        mismatch("byte-by-byte", all, 0, &got, &whole);
        bad++;
    }
    free(all);
    if (n <= 400) {
        for (size_t a = 0; a <= n && bad < 3; a++) {
            for (size_t b = a; b <= n && bad < 3; b++) {
                cuts[0] = a;
                cuts[1] = b;
                parse_cuts(s, n, cuts, 2, max_line, stop_at, &got);
                if (!same(&got, &whole)) {
                    mismatch("3-piece", cuts, 2, &got, &whole);
                    bad++;
                }
            }
        }
    }
    CHECK_EQ_INT(bad, 0);
    cl_buf_release(&whole);
    cl_buf_release(&got);
}

static void check_str(const char *s, size_t max_line, const char *expected)
{
    check_splits(s, strlen(s), max_line, 0, expected);
}

/* ---- decoding a stream as the provider will --------------------------------- */

typedef struct dec {
    cl_llm_result res;
    cl_buf streamed;  /* concatenated on_content text */
    int done;         /* saw [DONE] */
    int events;
    int last_rc;      /* last non-OK wire result */
    char err[256];
    char last_event[64];
} dec;

static void on_content(void *ud, const char *text, size_t len)
{
    dec *d = ud;
    cl_buf_append(&d->streamed, text, len);
}

static int decode_event(void *ud, const char *event, const char *data, size_t len)
{
    dec *d = ud;
    d->events++;
    snprintf(d->last_event, sizeof d->last_event, "%s", event);
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        d->done = 1;
        return 0;
    }
    int rc = cl_llm_decode_chunk(&d->res, data, len, on_content, d, d->err, sizeof d->err);
    if (rc != CL_WIRE_OK)
        d->last_rc = rc;
    return 0;
}

static void dec_init(dec *d)
{
    memset(d, 0, sizeof *d);
    cl_llm_result_init(&d->res);
    cl_buf_init(&d->streamed, 0);
}

static void dec_free(dec *d)
{
    cl_llm_result_free(&d->res);
    cl_buf_release(&d->streamed);
}

/* Feeds the stream `step` bytes at a time into a fresh decoder. */
static int decode_stream(dec *d, const char *s, size_t n, size_t step)
{
    cl_sse_parser p;
    cl_sse_init(&p, 4096);
    int rc = 0;
    for (size_t at = 0; at < n && rc == 0; at += step)
        rc = cl_sse_feed(&p, s + at, n - at < step ? n - at : step, decode_event, d);
    cl_sse_free(&p);
    return rc;
}

/* ---- (a) Groq ------------------------------------------------------------ */

#define GROQ_HEAD "{'id':'chatcmpl-1','object':'chat.completion.chunk','created':1," \
    "'model':'llama-3.3-70b-versatile','system_fingerprint':'fp_x','choices':[{'index':0,"

static const char *const groq_chunks[] = {
    GROQ_HEAD "'delta':{'role':'assistant','content':''},'logprobs':null,'finish_reason':null}],"
              "'x_groq':{'id':'req_1'}}",
    GROQ_HEAD "'delta':{'content':'Hello'},'logprobs':null,'finish_reason':null}]}",
    GROQ_HEAD "'delta':{'content':', wor'},'logprobs':null,'finish_reason':null}]}",
    GROQ_HEAD "'delta':{'content':'ld! caf\\u00e9 `quoted`\\n'},'logprobs':null,"
              "'finish_reason':null}]}",
    GROQ_HEAD "'delta':{'content':'\xe2\x9c\x93'},'logprobs':null,'finish_reason':null}]}",
    GROQ_HEAD "'delta':{},'logprobs':null,'finish_reason':'stop'}],'x_groq':{'id':'req_1',"
              "'usage':{'queue_time':0.01,'prompt_tokens':12,'prompt_time':0.001,"
              "'completion_tokens':5,'completion_time':0.01,'total_tokens':17,'total_time':0.02}}}",
    NULL,
};

/* The expected record: one [message] event per chunk, then [DONE]. */
static void expected_for(cl_buf *want, const char *const *chunks)
{
    for (; *chunks; chunks++) {
        cl_buf json;
        cl_buf_init(&json, 0);
        unquote(&json, *chunks);
        cl_buf_printf(want, "[message]%zu:", json.len);
        cl_buf_append(want, json.data, json.len);
        cl_buf_append_char(want, '\n');
        cl_buf_release(&json);
    }
    cl_buf_append_str(want, "[message]6:[DONE]\nrc=0");
}

static void check_stream_all_eols(const char *const *chunks)
{
    cl_buf s, want;
    cl_buf_init(&s, 0);
    cl_buf_init(&want, 0);
    build_stream(&s, chunks);
    expected_for(&want, chunks);
    const char *eols[] = {"\n", "\r\n", "\r"};
    for (size_t i = 0; i < 3; i++) {
        cl_buf v;
        cl_buf_init(&v, 0);
        with_eol(&v, s.data, s.len, eols[i]);
        check_splits(v.data, v.len, 4096, 0, cl_buf_cstr(&want));
        cl_buf_release(&v);
    }
    cl_buf_release(&s);
    cl_buf_release(&want);
}

static void test_groq_stream_splits(void)
{
    check_stream_all_eols(groq_chunks);
}

static void test_groq_stream_decode(void)
{
    cl_buf s;
    cl_buf_init(&s, 0);
    build_stream(&s, groq_chunks);
    size_t steps[] = {1, 7, 64, 100000};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        dec d;
        dec_init(&d);
        CHECK_EQ_INT(decode_stream(&d, s.data, s.len, steps[i]), 0);
        CHECK_EQ_INT(d.last_rc, 0);
        CHECK(d.done);
        CHECK_EQ_INT(d.events, 7);
        CHECK_EQ_INT(d.res.chunks, 6);
        CHECK_EQ_STR(cl_buf_cstr(&d.res.content), "Hello, world! caf\xc3\xa9 \"quoted\"\n\xe2\x9c\x93");
        CHECK_EQ_STR(cl_buf_cstr(&d.streamed), cl_buf_cstr(&d.res.content));
        CHECK_EQ_STR(d.res.finish_reason, "stop");
        CHECK_EQ_STR(d.res.model, "llama-3.3-70b-versatile");
        CHECK_EQ_STR(d.res.id, "chatcmpl-1");
        CHECK(d.res.usage.present);
        CHECK_EQ_INT(d.res.usage.prompt_tokens, 12);
        CHECK_EQ_INT(d.res.usage.completion_tokens, 5);
        CHECK_EQ_INT(d.res.usage.total_tokens, 17);
        CHECK_EQ_INT(d.res.ntool_calls, 0);
        dec_free(&d);
    }
    cl_buf_release(&s);
}

/* ---- (b) OpenAI with stream_options.include_usage ------------------------ */

#define OAI_HEAD "{'id':'chatcmpl-B','object':'chat.completion.chunk','created':2," \
    "'model':'gpt-4o-mini-2024-07-18','system_fingerprint':'fp_y',"

static const char *const openai_chunks[] = {
    OAI_HEAD "'choices':[{'index':0,'delta':{'role':'assistant','content':'','refusal':null},"
             "'logprobs':null,'finish_reason':null}],'usage':null}",
    OAI_HEAD "'choices':[{'index':0,'delta':{'content':'Two'},'logprobs':null,"
             "'finish_reason':null}],'usage':null}",
    OAI_HEAD "'choices':[{'index':0,'delta':{'content':' words'},'logprobs':null,"
             "'finish_reason':null}],'usage':null}",
    OAI_HEAD "'choices':[{'index':0,'delta':{},'logprobs':null,'finish_reason':'length'}],"
             "'usage':null}",
    OAI_HEAD "'choices':[],'usage':{'prompt_tokens':9,'completion_tokens':2,'total_tokens':11,"
             "'prompt_tokens_details':{'cached_tokens':0},"
             "'completion_tokens_details':{'reasoning_tokens':0}}}",
    NULL,
};

static void test_openai_usage_stream(void)
{
    check_stream_all_eols(openai_chunks);
    cl_buf s;
    cl_buf_init(&s, 0);
    build_stream(&s, openai_chunks);
    dec d;
    dec_init(&d);
    CHECK_EQ_INT(decode_stream(&d, s.data, s.len, 3), 0);
    CHECK_EQ_INT(d.last_rc, 0);
    CHECK(d.done);
    CHECK_EQ_STR(cl_buf_cstr(&d.res.content), "Two words");
    CHECK_EQ_STR(d.res.finish_reason, "length");
    CHECK_EQ_STR(d.res.model, "gpt-4o-mini-2024-07-18");
    CHECK(d.res.usage.present);
    CHECK_EQ_INT(d.res.usage.prompt_tokens, 9);
    CHECK_EQ_INT(d.res.usage.completion_tokens, 2);
    CHECK_EQ_INT(d.res.usage.total_tokens, 11);
    dec_free(&d);
    cl_buf_release(&s);
}

/* ---- (c) tool-call deltas ------------------------------------------------- */

#define TC_HEAD "{'id':'chatcmpl-C','object':'chat.completion.chunk','created':3," \
    "'model':'gpt-4o','choices':[{'index':0,'delta':{"

static const char *const tool_chunks[] = {
    TC_HEAD "'role':'assistant','content':null,'tool_calls':[{'index':0,'id':'call_a',"
            "'type':'function','function':{'name':'get_weather','arguments':''}}]},"
            "'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':1,'id':'call_b','type':'function',"
            "'function':{'name':'get_time','arguments':''}}]},'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':0,'function':{'arguments':'{`ci'}}]},'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':1,'function':{'arguments':'{`tz`:'}}]},'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':0,'function':{'arguments':'ty`: `Par'}}]},"
            "'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':1,'id':'','function':{'name':'','arguments':'`UTC`}'}}]},"
            "'finish_reason':null}]}",
    TC_HEAD "'tool_calls':[{'index':0,'function':{'arguments':'is`}'}}]},'finish_reason':null}]}",
    TC_HEAD "},'finish_reason':'tool_calls'}]}",
    NULL,
};

static void test_tool_call_stream(void)
{
    check_stream_all_eols(tool_chunks);
    cl_buf s;
    cl_buf_init(&s, 0);
    build_stream(&s, tool_chunks);
    dec d;
    dec_init(&d);
    CHECK_EQ_INT(decode_stream(&d, s.data, s.len, 5), 0);
    CHECK_EQ_INT(d.last_rc, 0);
    CHECK_EQ_INT(d.res.content.len, 0);
    CHECK_EQ_STR(d.res.finish_reason, "tool_calls");
    CHECK_EQ_INT(d.res.ntool_calls, 2);
    if (d.res.ntool_calls == 2) {
        cl_llm_tool_call *a = &d.res.tool_calls[0], *b = &d.res.tool_calls[1];
        CHECK_EQ_INT(a->index, 0);
        CHECK_EQ_STR(a->id, "call_a");
        CHECK_EQ_STR(a->type, "function");
        CHECK_EQ_STR(a->name, "get_weather");
        CHECK_EQ_STR(cl_buf_cstr(&a->arguments), "{\"city\": \"Paris\"}");
        CHECK_EQ_INT(b->index, 1);
        CHECK_EQ_STR(b->id, "call_b"); /* the later "id":"" did not erase it */
        CHECK_EQ_STR(b->name, "get_time");
        CHECK_EQ_STR(cl_buf_cstr(&b->arguments), "{\"tz\":\"UTC\"}");
    }
    cl_buf out;
    cl_buf_init(&out, 0);
    CHECK_EQ_INT(cl_llm_tool_calls_json(&d.res, &out), 0);
    json_error_t je;
    json_t *j = json_loadb(out.data, out.len, 0, &je);
    CHECK(json_is_array(j) && json_array_size(j) == 2);
    json_t *fn = json_object_get(json_array_get(j, 0), "function");
    CHECK_EQ_STR(json_string_value(json_object_get(json_array_get(j, 0), "id")), "call_a");
    CHECK_EQ_STR(json_string_value(json_object_get(json_array_get(j, 0), "type")), "function");
    CHECK_EQ_STR(json_string_value(json_object_get(fn, "name")), "get_weather");
    CHECK_EQ_STR(json_string_value(json_object_get(fn, "arguments")), "{\"city\": \"Paris\"}");
    fn = json_object_get(json_array_get(j, 1), "function");
    CHECK_EQ_STR(json_string_value(json_object_get(fn, "arguments")), "{\"tz\":\"UTC\"}");
    json_decref(j);
    cl_buf_release(&out);
    dec_free(&d);
    cl_buf_release(&s);
}

/* ---- (d) malformed and edge cases ----------------------------------------- */

static void test_not_json_chunk(void)
{
    const char *s = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                    "data: {not json\n\n"
                    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n";
    check_str(s, 4096,
              "[message]39:{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n"
              "[message]9:{not json\n"
              "[message]39:{\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\nrc=0");
    dec d;
    dec_init(&d);
    CHECK_EQ_INT(decode_stream(&d, s, strlen(s), 2), 0);
    CHECK_EQ_INT(d.last_rc, CL_WIRE_MALFORMED);
    CHECK_CONTAINS(d.err, "line 1");
    CHECK_CONTAINS(d.err, "column");
    CHECK_EQ_STR(cl_buf_cstr(&d.res.content), "ab");
    dec_free(&d);
}

static void test_line_too_long(void)
{
    char s[512];
    char x[101];
    memset(x, 'x', 100);
    x[100] = 0;
    /* "data: " + 58 = 64 bytes: exactly max_line is fine. */
    snprintf(s, sizeof s, "data: short\n\ndata: %.58s\n\ndata: %s\n\ndata: after\n\n", x, x);
    char want[256];
    snprintf(want, sizeof want, "[message]5:short\n[message]58:%.58s\nrc=%d", x,
             CL_SSE_ERR_LINE_TOO_LONG);
    check_str(s, 64, want);
    /* One byte over, with the terminator in the same feed and not. */
    snprintf(s, sizeof s, "data: %.59s\n\n", x);
    snprintf(want, sizeof want, "rc=%d", CL_SSE_ERR_LINE_TOO_LONG);
    check_str(s, 64, want);
    snprintf(s, sizeof s, "data: %.59s", x);
    check_str(s, 64, want);
    snprintf(s, sizeof s, "data: %.58s", x);
    check_str(s, 64, "rc=0");

    /* A failed parser stays failed. */
    cl_sse_parser p;
    cl_sse_init(&p, 16);
    rec r = {0};
    cl_buf_init(&r.out, 0);
    CHECK_EQ_INT(cl_sse_feed(&p, "data: 0123456789abcdef", 22, record, &r), CL_SSE_ERR_LINE_TOO_LONG);
    CHECK_EQ_INT(cl_sse_feed(&p, "\n\ndata: ok\n\n", 12, record, &r), CL_SSE_ERR_LINE_TOO_LONG);
    CHECK_EQ_INT(cl_sse_feed(&p, "", 0, record, &r), CL_SSE_ERR_LINE_TOO_LONG);
    CHECK_EQ_INT(r.n, 0);
    cl_sse_free(&p);
    cl_buf_release(&r.out);
}

static void test_event_data_cap(void)
{
    /* max_line 16 caps one event's data at 64 bytes: five joined lines of
     * 10 are 54 bytes, the sixth would make 65. */
    const char *five = "data: 0123456789\ndata: 0123456789\ndata: 0123456789\n"
                       "data: 0123456789\ndata: 0123456789\n\n";
    check_str(five, 16,
              "[message]54:0123456789\n0123456789\n0123456789\n0123456789\n0123456789\nrc=0");
    char six[256];
    snprintf(six, sizeof six, "%.*sdata: 0123456789\n\n", (int)strlen(five) - 1, five);
    char want[32];
    snprintf(want, sizeof want, "rc=%d", CL_SSE_ERR_LINE_TOO_LONG);
    check_str(six, 16, want);
}

static void test_line_endings(void)
{
    check_str("data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\n", 4096,
              "[message]1:a\n[message]1:b\n[message]1:c\n[message]1:d\nrc=0");
    /* CR CR is two line ends, CR LF one, LF CR two. */
    check_str("data: a\r\rdata: b\r\n\rdata: c\n\r", 4096,
              "[message]1:a\n[message]1:b\n[message]1:c\nrc=0");
    check_str("data: a\r\n\rdata: b\n\r\ndata: c\r\r\n", 4096,
              "[message]1:a\n[message]1:b\n[message]1:c\nrc=0");
    /* An event never terminated by a blank line is not dispatched. */
    check_str("data: a\r\ndata: b\r\n", 4096, "rc=0");
    check_str("data: a\n\ndata: b", 4096, "[message]1:a\nrc=0");
}

static void test_comments_and_fields(void)
{
    check_str(": ping\n\n:\ndata: x\n: keep-alive\n\n", 4096, "[message]1:x\nrc=0");
    /* One optional space is stripped, not two; no colon means empty value. */
    check_str("data:x\n\ndata:  y\n\ndata\n\ndata:\n\n", 4096,
              "[message]1:x\n[message]2: y\n[message]0:\n[message]0:\nrc=0");
    check_str("data: a\ndata: b\ndata:\ndata: c\n\n", 4096, "[message]6:a\nb\n\nc\nrc=0");
    check_str("id: 5\nretry: 100\nfoo: bar\nDATA: no\ndata: z\nid\n\n", 4096,
              "[message]1:z\nrc=0");
    /* Blank lines without data dispatch nothing but reset the event name. */
    check_str("\n\n\nevent: foo\n\ndata: y\n\n", 4096, "[message]1:y\nrc=0");
    check_str("data: 1\nfield with spaces: v\n\n", 4096, "[message]1:1\nrc=0");
    /* A NUL inside a line is just a byte. */
    check_splits("data: a\0b\n\n", 11, 4096, 0, "[message]3:a\0b\nrc=0");
}

static void test_event_names(void)
{
    check_str("event: error\ndata: {\"error\":{\"message\":\"boom\"}}\n\ndata: next\n\n", 4096,
              "[error]28:{\"error\":{\"message\":\"boom\"}}\n[message]4:next\nrc=0");
    check_str("event:\ndata: a\n\nevent\ndata: b\n\nevent: x\nevent: y\ndata: c\n\n", 4096,
              "[message]1:a\n[message]1:b\n[y]1:c\nrc=0");
    /* Names past 63 bytes are truncated. */
    char s[256], want[256], name[101];
    memset(name, 'n', 100);
    name[100] = 0;
    snprintf(s, sizeof s, "event: %s\ndata: d\n\n", name);
    snprintf(want, sizeof want, "[%.63s]1:d\nrc=0", name);
    check_str(s, 4096, want);

    /* An error event decoded as a chunk is an upstream error. */
    const char *es = "event: error\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
    dec d;
    dec_init(&d);
    CHECK_EQ_INT(decode_stream(&d, es, strlen(es), 1), 0);
    CHECK_EQ_STR(d.last_event, "error");
    CHECK_EQ_INT(d.last_rc, CL_WIRE_UPSTREAM_ERROR);
    CHECK_EQ_STR(d.err, "boom");
    dec_free(&d);
}

static void test_callback_stops(void)
{
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    check_splits(s, strlen(s), 4096, 2, "[message]1:1\n[message]1:2\nrc=99");
    check_splits(s, strlen(s), 4096, 1, "[message]1:1\nrc=99");
}

static void test_split_count(void)
{
    /* Not a behaviour check: proves the harness really ran every split. */
    CHECK(g_runs > 50000);
    printf("     (%lld split parses)\n", g_runs);
}

CL_TEST_MAIN(test_groq_stream_splits, test_groq_stream_decode, test_openai_usage_stream,
             test_tool_call_stream, test_not_json_chunk, test_line_too_long, test_event_data_cap,
             test_line_endings, test_comments_and_fields, test_event_names, test_callback_stops,
             test_split_count)
