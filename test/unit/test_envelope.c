/* The /api/v1 envelope and the JSON writer it is built on. Every envelope
 * is parsed back with jansson to prove it is valid JSON of the right shape. */
#include "chatloop/api.h"
#include "chatloop/jsonw.h"
#include "test.h"

#include <jansson.h>

static json_t *parse(cl_buf *b)
{
    json_error_t e;
    json_t *j = json_loadb(b->data, b->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!j)
        fprintf(stderr, "  invalid JSON: %s: %.*s\n", e.text, (int)b->len, b->data);
    return j;
}

static void test_ok_envelope(void)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    CHECK(cl_envelope_ok(&b, "created", "{\"id\":7}", "abc123", 1.23456) == 0);
    json_t *j = parse(&b);
    CHECK(j != NULL);
    if (j) {
        CHECK(json_is_true(json_object_get(j, "success")));
        CHECK_EQ_STR(json_string_value(json_object_get(j, "message")), "created");
        CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "data"), "id")), 7);
        json_t *md = json_object_get(j, "metadata");
        CHECK_EQ_STR(json_string_value(json_object_get(md, "request_id")), "abc123");
        CHECK(json_real_value(json_object_get(md, "processing_ms")) > 1.234);
        CHECK(json_real_value(json_object_get(md, "processing_ms")) < 1.236);
        CHECK(json_object_get(j, "error") == NULL);
        json_decref(j);
    }
    cl_buf_reset(&b);
    CHECK(cl_envelope_ok(&b, NULL, NULL, "x", 0) == 0);
    j = parse(&b);
    CHECK(j && json_is_null(json_object_get(j, "data")));
    json_decref(j);
    cl_buf_release(&b);
}

static void test_error_envelope(void)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    CHECK(cl_envelope_error(&b, CL_ERR_RATE_LIMITED, "slow down \"now\"", "{\"retry_after\":3}",
                            "rid", 0.5) == 0);
    json_t *j = parse(&b);
    CHECK(j != NULL);
    if (j) {
        CHECK(json_is_false(json_object_get(j, "success")));
        CHECK_EQ_STR(json_string_value(json_object_get(j, "message")), "slow down \"now\"");
        CHECK(json_is_null(json_object_get(j, "data")));
        json_t *err = json_object_get(j, "error");
        CHECK_EQ_STR(json_string_value(json_object_get(err, "code")), "RATE_LIMITED");
        CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(err, "details"), "retry_after")), 3);
        CHECK_EQ_STR(json_string_value(json_object_get(json_object_get(j, "metadata"), "request_id")), "rid");
        json_decref(j);
    }
    cl_buf_reset(&b);
    CHECK(cl_envelope_error(&b, CL_ERR_NOT_FOUND, NULL, NULL, "r", 0) == 0);
    j = parse(&b);
    CHECK(j && json_object_size(json_object_get(json_object_get(j, "error"), "details")) == 0);
    CHECK(j && strcmp(json_string_value(json_object_get(j, "message")), "NOT_FOUND") == 0);
    json_decref(j);
    cl_buf_release(&b);
}

static void test_codes_and_statuses(void)
{
    CHECK_EQ_INT(cl_err_status(CL_ERR_INVALID_REQUEST), 400);
    CHECK_EQ_INT(cl_err_status(CL_ERR_UNAUTHORIZED), 401);
    CHECK_EQ_INT(cl_err_status(CL_ERR_FORBIDDEN), 403);
    CHECK_EQ_INT(cl_err_status(CL_ERR_NOT_FOUND), 404);
    CHECK_EQ_INT(cl_err_status(CL_ERR_PAYLOAD_TOO_LARGE), 413);
    CHECK_EQ_INT(cl_err_status(CL_ERR_RATE_LIMITED), 429);
    CHECK_EQ_INT(cl_err_status(CL_ERR_PROCESSING_ERROR), 500);
    CHECK_EQ_INT(cl_err_status(CL_ERR_LLM_ERROR), 502);
    CHECK_EQ_INT(cl_err_status(CL_ERR_DB_UNAVAILABLE), 503);
    CHECK_EQ_INT(cl_err_status(CL_ERR_LLM_TIMEOUT), 504);
    CHECK_EQ_INT(cl_err_status(CL_ERR_REQUEST_TIMEOUT), 504);
    CHECK_EQ_STR(cl_err_name(CL_ERR_HEADERS_TOO_LARGE), "HEADERS_TOO_LARGE");
    for (int i = 0; i < CL_ERR__COUNT; i++) {
        CHECK(cl_err_name((cl_err_code)i) != NULL);
        CHECK(cl_err_status((cl_err_code)i) >= 400);
    }
}

static void test_string_escaping(void)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    const char raw[] = "q\"b\\s/\n\r\t\b\f\x01\x1f caf\xc3\xa9 \xf0\x9f\x98\x80 bad\xff\xc3 end";
    CHECK(cl_jsonw_str(&b, raw, sizeof raw - 1) == 0);
    json_t *j = parse(&b);
    CHECK(j && json_is_string(j));
    if (j) {
        const char *s = json_string_value(j);
        CHECK(strncmp(s, "q\"b\\s/\n\r\t\b\f\x01\x1f caf\xc3\xa9 \xf0\x9f\x98\x80 bad", 28) == 0);
        CHECK_CONTAINS(s, "bad\xef\xbf\xbd\xef\xbf\xbd end");
    }
    json_decref(j);
    /* embedded NUL, surrogate encoded in UTF-8, overlong form */
    cl_buf_reset(&b);
    const char raw2[] = "a\0b\xed\xa0\x80\xc0\xaf";
    CHECK(cl_jsonw_str(&b, raw2, sizeof raw2 - 1) == 0);
    j = parse(&b);
    CHECK(j != NULL);
    if (j)
        CHECK_EQ_INT(json_string_length(j), 3 + 5 * 3);
    json_decref(j);
    cl_buf_reset(&b);
    CHECK(cl_jsonw_cstr(&b, NULL) == 0);
    CHECK(b.len == 4 && memcmp(b.data, "null", 4) == 0);
    cl_buf_release(&b);
}

static void test_ms_format(void)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_jsonw_ms(&b, 0.0004);
    cl_buf_append_char(&b, ' ');
    cl_jsonw_ms(&b, 12.3456);
    cl_buf_append_char(&b, ' ');
    cl_jsonw_ms(&b, -1);
    cl_buf_append_char(&b, ' ');
    cl_jsonw_ms(&b, 1.0 / 0.0);
    CHECK_EQ_STR(cl_buf_cstr(&b), "0.000 12.346 0.000 null");
    cl_buf_release(&b);
}

static void test_buf_caps(void)
{
    cl_buf b;
    cl_buf_init(&b, 8);
    CHECK(cl_buf_append(&b, "12345678", 8) == 0);
    CHECK(cl_buf_append(&b, "9", 1) != 0);
    CHECK_EQ_INT(b.len, 8);
    CHECK_EQ_STR(cl_buf_cstr(&b), "12345678");
    CHECK(cl_buf_printf(&b, "%d", 1) != 0);
    cl_buf_consume(&b, 3);
    CHECK_EQ_STR(cl_buf_cstr(&b), "45678");
    CHECK(cl_buf_append_char(&b, 'x') == 0);
    CHECK(cl_buf_append_u64(&b, 12) == 0);
    CHECK_EQ_STR(cl_buf_cstr(&b), "45678x12");
    CHECK(cl_buf_append_u64(&b, 1) != 0);
    cl_buf_release(&b);
    CHECK(b.data == NULL && b.len == 0);
    /* the terminator always has room, whatever length the appends reach
     * (found by the fuzzer: an append ending exactly at capacity) */
    for (size_t n = 1; n < 300; n++) {
        char chunk[300];
        memset(chunk, 'z', n);
        cl_buf_init(&b, 0);
        cl_buf_append(&b, "x", 1);
        cl_buf_append(&b, chunk, n);
        CHECK(cl_buf_cstr(&b) && strlen(b.data) == n + 1);
        cl_buf_release(&b);
    }
    cl_buf_init(&b, 0);
    CHECK(cl_buf_printf(&b, "%0300d", 5) == 0);
    CHECK_EQ_INT(b.len, 300);
    cl_buf_release(&b);
}

CL_TEST_MAIN(test_ok_envelope, test_error_envelope, test_codes_and_statuses, test_string_escaping,
             test_ms_format, test_buf_caps)
