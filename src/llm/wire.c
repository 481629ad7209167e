#include "chatloop/llm_wire.h"
#include "chatloop/jscan.h"
#include "chatloop/jsonw.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Caps on what one completion may accumulate (STYLE 8). They sit far above
 * any real reply (a 32k-token answer is ~128 KiB) and exist so a runaway or
 * hostile upstream fails the turn instead of exhausting the worker. */
#define WIRE_MAX_CONTENT ((size_t)8 << 20)
#define WIRE_MAX_ARGUMENTS ((size_t)1 << 20)
#define WIRE_MAX_TOOL_CALLS 128
/* Tool-call indexes come from the upstream; the array is kept dense and
 * sorted, so a large index costs nothing, but it must still fit an int. */
#define WIRE_MAX_TOOL_INDEX 65535
/* Error excerpts end up in logs and client messages: keep them short. */
#define WIRE_MAX_EXCERPT 200

/* ---- small string helpers ---------------------------------------------- */

/* Drops a UTF-8 sequence cut short at s[len) by truncation. */
static size_t utf8_trim(const char *s, size_t len)
{
    size_t k = 0;
    while (k < 3 && k < len && ((unsigned char)s[len - 1 - k] & 0xc0) == 0x80)
        k++;
    if (k == len)
        return len;
    unsigned char lead = (unsigned char)s[len - 1 - k];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    return want > k + 1 ? len - 1 - k : len;
}

/* Copies src into dst as one line: messages end up in single-line logs and
 * in err strings, so control characters become spaces. Truncation never
 * splits a UTF-8 sequence. */
static void copy_line(char *dst, size_t dstlen, const char *src, size_t srclen)
{
    if (!dst || dstlen == 0)
        return;
    size_t n = srclen < dstlen - 1 ? srclen : dstlen - 1;
    if (n < srclen)
        n = utf8_trim(src, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (char)(c < 0x20 || c == 0x7f ? ' ' : c);
    }
    dst[n] = '\0';
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    copy_line(err, errlen, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void copy_json_str(char *dst, size_t dstlen, json_t *v)
{
    if (json_is_string(v) && json_string_length(v) > 0)
        copy_line(dst, dstlen, json_string_value(v), json_string_length(v));
}

/* Replaces *dst with the string v when v is a non-empty string. Some
 * OpenAI-compatible servers repeat "id": "" or "name": "" in continuation
 * deltas; an empty value must not erase the one the first delta gave. */
static int set_dup(char **dst, json_t *v)
{
    if (!json_is_string(v) || json_string_length(v) == 0)
        return 0;
    char *s = strndup(json_string_value(v), json_string_length(v));
    if (!s)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

/* ---- result ------------------------------------------------------------ */

void cl_llm_result_init(cl_llm_result *r)
{
    memset(r, 0, sizeof *r);
    cl_buf_init(&r->content, WIRE_MAX_CONTENT);
}

void cl_llm_result_free(cl_llm_result *r)
{
    cl_buf_release(&r->content);
    for (int i = 0; i < r->ntool_calls; i++) {
        free(r->tool_calls[i].id);
        free(r->tool_calls[i].type);
        free(r->tool_calls[i].name);
        cl_buf_release(&r->tool_calls[i].arguments);
    }
    free(r->tool_calls);
    cl_llm_result_init(r);
}

/* The tool call with this index, created in index order when new. New tool
 * calls are rare (a few per turn), so growing by one is fine. */
static cl_llm_tool_call *tool_call_at(cl_llm_result *r, int index, int *rc, char *err,
                                      size_t errlen)
{
    int i = 0;
    while (i < r->ntool_calls && r->tool_calls[i].index < index)
        i++;
    if (i < r->ntool_calls && r->tool_calls[i].index == index)
        return &r->tool_calls[i];
    if (r->ntool_calls >= WIRE_MAX_TOOL_CALLS) {
        seterr(err, errlen, "more than %d tool calls", WIRE_MAX_TOOL_CALLS);
        *rc = CL_WIRE_MALFORMED;
        return NULL;
    }
    cl_llm_tool_call *t = realloc(r->tool_calls, (size_t)(r->ntool_calls + 1) * sizeof *t);
    if (!t) {
        *rc = CL_WIRE_NOMEM;
        return NULL;
    }
    r->tool_calls = t;
    memmove(t + i + 1, t + i, (size_t)(r->ntool_calls - i) * sizeof *t);
    memset(&t[i], 0, sizeof t[i]);
    t[i].index = index;
    cl_buf_init(&t[i].arguments, WIRE_MAX_ARGUMENTS);
    r->ntool_calls++;
    return &t[i];
}

/* Appends with an explicit cap check, so a zero-initialized result (whose
 * buffers have no max) is bounded too, and a refusal can say why. */
static int append_capped(cl_buf *b, const char *s, size_t n, size_t cap, const char *what,
                         char *err, size_t errlen)
{
    if (n > cap || b->len > cap - n) {
        seterr(err, errlen, "%s exceeds %zu bytes", what, cap);
        return CL_WIRE_NOMEM;
    }
    if (cl_buf_append(b, s, n) != 0) {
        seterr(err, errlen, "out of memory");
        return CL_WIRE_NOMEM;
    }
    return CL_WIRE_OK;
}

/* ---- pieces shared by chunks and completions ----------------------------- */

static int read_count(json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        *out = (int64_t)json_real_value(v);
        return 1;
    }
    return 0;
}

static void read_usage(cl_llm_usage *u, json_t *o)
{
    if (!json_is_object(o))
        return;
    int64_t p = 0, c = 0, t = 0;
    int hp = read_count(o, "prompt_tokens", &p);
    int hc = read_count(o, "completion_tokens", &c);
    int ht = read_count(o, "total_tokens", &t);
    if (!hp && !hc && !ht)
        return;
    u->prompt_tokens = p;
    u->completion_tokens = c;
    u->total_tokens = ht ? t : p + c;
    u->present = 1;
}

/* id, model and usage may ride on any chunk, including error and usage-only
 * ones: a turn cut short by an upstream error still records its usage. */
static void read_meta(cl_llm_result *r, json_t *root)
{
    copy_json_str(r->id, sizeof r->id, json_object_get(root, "id"));
    copy_json_str(r->model, sizeof r->model, json_object_get(root, "model"));
    json_t *xg = json_object_get(root, "x_groq");
    if (json_is_object(xg))
        read_usage(&r->usage, json_object_get(xg, "usage"));
    read_usage(&r->usage, json_object_get(root, "usage"));
}

/* A string, or an object with message (else type or code): the upstream's
 * own words are the most useful thing to log and to show the client. */
static int error_text(json_t *e, char *err, size_t errlen)
{
    if (json_is_string(e)) {
        copy_json_str(err, errlen, e);
        if (err && errlen && json_string_length(e) == 0)
            seterr(err, errlen, "upstream error");
        return 1;
    }
    if (!json_is_object(e))
        return 0;
    const char *keys[] = {"message", "type", "code"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(e, keys[i]);
        if (json_is_string(v) && json_string_length(v) > 0) {
            copy_json_str(err, errlen, v);
            return 1;
        }
    }
    seterr(err, errlen, "upstream error");
    return 1;
}

/* x_groq.error (Groq's in-stream failures) or a top-level "error" (OpenAI
 * and most compatible servers when a stream fails after the 200). */
static int upstream_error(json_t *root, char *err, size_t errlen)
{
    json_t *xg = json_object_get(root, "x_groq");
    if (json_is_object(xg) && error_text(json_object_get(xg, "error"), err, errlen))
        return 1;
    return error_text(json_object_get(root, "error"), err, errlen);
}

/* The choice with index 0. With n > 1 a chunk may carry other choices
 * first, so position alone is not enough; a missing index means 0. */
static int choice0(json_t *root, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    json_t *choices = json_object_get(root, "choices");
    if (!choices || json_is_null(choices))
        return CL_WIRE_OK; /* usage-only and keep-alive chunks */
    if (!json_is_array(choices)) {
        seterr(err, errlen, "\"choices\" is not an array");
        return CL_WIRE_MALFORMED;
    }
    size_t i;
    json_t *c;
    json_array_foreach(choices, i, c) {
        if (!json_is_object(c)) {
            seterr(err, errlen, "choices[%zu] is not an object", i);
            return CL_WIRE_MALFORMED;
        }
        json_t *idx = json_object_get(c, "index");
        if (!idx || (json_is_integer(idx) && json_integer_value(idx) == 0)) {
            *out = c;
            return CL_WIRE_OK;
        }
    }
    return CL_WIRE_OK;
}

static int tool_index(json_t *tc, size_t pos, int *index, char *err, size_t errlen)
{
    json_t *v = json_object_get(tc, "index");
    json_int_t i = (json_int_t)pos; /* servers that omit it send one call per array slot */
    if (v) {
        if (!json_is_integer(v)) {
            seterr(err, errlen, "tool call index is not an integer");
            return CL_WIRE_MALFORMED;
        }
        i = json_integer_value(v);
    }
    if (i < 0 || i > WIRE_MAX_TOOL_INDEX) {
        seterr(err, errlen, "tool call index %" JSON_INTEGER_FORMAT " out of range", i);
        return CL_WIRE_MALFORMED;
    }
    *index = (int)i;
    return CL_WIRE_OK;
}

/* Merges one tool-call object (a streamed delta or a whole call) into r. */
static int merge_tool_call(cl_llm_result *r, json_t *tc, size_t pos, char *err, size_t errlen)
{
    if (!json_is_object(tc)) {
        seterr(err, errlen, "tool call is not an object");
        return CL_WIRE_MALFORMED;
    }
    int index, rc = tool_index(tc, pos, &index, err, errlen);
    if (rc != CL_WIRE_OK)
        return rc;
    cl_llm_tool_call *t = tool_call_at(r, index, &rc, err, errlen);
    if (!t)
        return rc;
    json_t *fn = json_object_get(tc, "function");
    if (set_dup(&t->id, json_object_get(tc, "id")) != 0 ||
        set_dup(&t->type, json_object_get(tc, "type")) != 0 ||
        set_dup(&t->name, json_object_get(fn, "name")) != 0) {
        seterr(err, errlen, "out of memory");
        return CL_WIRE_NOMEM;
    }
    json_t *args = json_object_get(fn, "arguments");
    if (json_is_string(args))
        return append_capped(&t->arguments, json_string_value(args), json_string_length(args),
                             WIRE_MAX_ARGUMENTS, "tool call arguments", err, errlen);
    if (json_is_object(args) || json_is_array(args)) {
        /* A few servers send arguments as a JSON value, not as text. */
        char *s = json_dumps(args, JSON_COMPACT);
        if (!s) {
            seterr(err, errlen, "out of memory");
            return CL_WIRE_NOMEM;
        }
        rc = append_capped(&t->arguments, s, strlen(s), WIRE_MAX_ARGUMENTS,
                           "tool call arguments", err, errlen);
        free(s);
    }
    return rc;
}

static int merge_tool_calls(cl_llm_result *r, json_t *arr, char *err, size_t errlen)
{
    if (!arr || json_is_null(arr))
        return CL_WIRE_OK;
    if (!json_is_array(arr)) {
        seterr(err, errlen, "\"tool_calls\" is not an array");
        return CL_WIRE_MALFORMED;
    }
    size_t i;
    json_t *tc;
    json_array_foreach(arr, i, tc) {
        int rc = merge_tool_call(r, tc, i, err, errlen);
        if (rc != CL_WIRE_OK)
            return rc;
    }
    return CL_WIRE_OK;
}

/* delta (streamed) and message (whole) carry the same fields. */
static int merge_choice(cl_llm_result *r, json_t *choice, const char *key,
                        void (*on_content)(void *, const char *, size_t), void *ud, char *err,
                        size_t errlen)
{
    copy_json_str(r->finish_reason, sizeof r->finish_reason,
                  json_object_get(choice, "finish_reason"));
    json_t *m = json_object_get(choice, key);
    if (!m || json_is_null(m))
        return CL_WIRE_OK;
    if (!json_is_object(m)) {
        seterr(err, errlen, "\"%s\" is not an object", key);
        return CL_WIRE_MALFORMED;
    }
    json_t *content = json_object_get(m, "content");
    size_t n = json_string_length(content);
    if (json_is_string(content) && n > 0) {
        const char *s = json_string_value(content);
        int rc = append_capped(&r->content, s, n, WIRE_MAX_CONTENT, "content", err, errlen);
        if (rc != CL_WIRE_OK)
            return rc;
        if (on_content)
            on_content(ud, s, n);
    }
    return merge_tool_calls(r, json_object_get(m, "tool_calls"), err, errlen);
}

/* Parses and checks the outer shape; NULL with err set on failure. */
static json_t *load_object(const char *json, size_t len, const char *what, char *err,
                           size_t errlen)
{
    json_error_t je;
    /* JSON_ALLOW_NUL: a model that emits \u0000 should not kill the turn;
     * lengths are carried everywhere, so the NUL is just a byte. */
    json_t *root = json_loadb(json, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!root) {
        seterr(err, errlen, "invalid JSON in %s: %s at line %d, column %d", what, je.text,
               je.line, je.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        seterr(err, errlen, "%s is not a JSON object", what);
        json_decref(root);
        return NULL;
    }
    return root;
}

/* ---- public decoders ----------------------------------------------------- */

int cl_llm_decode_chunk(cl_llm_result *r, const char *json, size_t len,
                        void (*on_content)(void *ud, const char *text, size_t len), void *ud,
                        char *err, size_t errlen)
{
    json_t *root = load_object(json, len, "chunk", err, errlen);
    if (!root)
        return CL_WIRE_MALFORMED;
    r->chunks++;
    read_meta(r, root);
    json_t *choice;
    int rc;
    if (upstream_error(root, err, errlen))
        rc = CL_WIRE_UPSTREAM_ERROR;
    else if ((rc = choice0(root, &choice, err, errlen)) == CL_WIRE_OK && choice)
        rc = merge_choice(r, choice, "delta", on_content, ud, err, errlen);
    json_decref(root);
    return rc;
}

int cl_llm_decode_plain_chunk(cl_llm_result *r, const char *json, size_t len,
                              void (*on_content)(void *ud, const char *text, size_t len), void *ud)
{
    static const char *const top[] = {"choices", "error", "x_groq"};
    static const char *const in_choice[] = {"index", "delta"};
    static const char *const in_delta[] = {"content"};
    static const char *const in_groq[] = {"error"};
    cl_json_span t[3], f[2], content, groq_error;
    if (cl_json_members(json, len, top, t, 3) != 0 || !t[0].p || t[0].p[0] != '[')
        return 1;
    /* an error, in either form, is the full decoder's to report */
    if (t[1].p || (t[2].p && t[2].p[0] == '{' &&
                   (cl_json_members(t[2].p, t[2].n, in_groq, &groq_error, 1) != 0 || groq_error.p)))
        return 1;
    cl_json_span choices = t[0];
    cl_json_span first = cl_json_first(choices);
    if (!first.p || first.p[0] != '{' || cl_json_members(first.p, first.n, in_choice, f, 2) != 0)
        return 1;
    if (f[0].p && !(f[0].n == 1 && f[0].p[0] == '0'))
        return 1; /* choice 0 is elsewhere: the full decoder finds it */
    if (!f[1].p || f[1].p[0] != '{' ||
        cl_json_members(f[1].p, f[1].n, in_delta, &content, 1) != 0)
        return 1;
    if (!content.p || (content.n == 4 && memcmp(content.p, "null", 4) == 0)) {
        r->chunks++;
        return CL_WIRE_OK;
    }
    if (content.p[0] != '"')
        return 1;
    /* unescaped text is never longer than its JSON form */
    size_t room = content.n - 2;
    if (room > WIRE_MAX_CONTENT || r->content.len > WIRE_MAX_CONTENT - room ||
        cl_buf_reserve(&r->content, room) != 0)
        return 1; /* the full decoder reports the cap */
    char *text = r->content.data + r->content.len;
    long n = cl_json_string(content, text, room);
    if (n < 0)
        return 1;
    r->content.len += (size_t)n;
    r->chunks++;
    if (n > 0 && on_content)
        on_content(ud, text, (size_t)n);
    return CL_WIRE_OK;
}

int cl_llm_decode_completion(cl_llm_result *r, const char *json, size_t len, char *err,
                             size_t errlen)
{
    json_t *root = load_object(json, len, "completion", err, errlen);
    if (!root)
        return CL_WIRE_MALFORMED;
    read_meta(r, root);
    json_t *choice;
    int rc;
    if (upstream_error(root, err, errlen)) {
        rc = CL_WIRE_UPSTREAM_ERROR;
    } else if (!json_object_get(root, "choices")) {
        /* Unlike a chunk, a completion without choices is not a reply. */
        seterr(err, errlen, "completion has no \"choices\"");
        rc = CL_WIRE_MALFORMED;
    } else if ((rc = choice0(root, &choice, err, errlen)) == CL_WIRE_OK && choice) {
        rc = merge_choice(r, choice, "message", NULL, NULL, err, errlen);
    }
    json_decref(root);
    return rc;
}

/* Printable ASCII only, whitespace runs folded: error bodies are often HTML
 * pages from a proxy, and the excerpt goes into logs and client messages. */
static void excerpt(const char *body, size_t len, char *out, size_t outlen)
{
    if (!out || outlen == 0)
        return;
    size_t o = 0, max = outlen - 1 < WIRE_MAX_EXCERPT ? outlen - 1 : WIRE_MAX_EXCERPT;
    int space = 1; /* also trims leading whitespace */
    for (size_t i = 0; i < len && o < max; i++) {
        unsigned char c = (unsigned char)body[i];
        if (c <= 0x20 || c == 0x7f) {
            if (!space)
                out[o++] = ' ';
            space = 1;
            continue;
        }
        out[o++] = (char)(c < 0x7f ? c : '?');
        space = 0;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    if (o == 0)
        snprintf(out, outlen, "%s", "empty body");
}

int cl_llm_decode_error(const char *body, size_t len, char *message, size_t msglen, char *type,
                        size_t typelen, char *code, size_t codelen)
{
    if (message && msglen)
        message[0] = '\0';
    if (type && typelen)
        type[0] = '\0';
    if (code && codelen)
        code[0] = '\0';
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, &je);
    json_t *e = json_is_object(root) ? json_object_get(root, "error") : NULL;
    int rc = -1;
    if (json_is_object(e)) {
        copy_json_str(message, msglen, json_object_get(e, "message"));
        copy_json_str(type, typelen, json_object_get(e, "type"));
        json_t *c = json_object_get(e, "code");
        if (json_is_integer(c) && code && codelen)
            snprintf(code, codelen, "%" JSON_INTEGER_FORMAT, json_integer_value(c));
        else
            copy_json_str(code, codelen, c);
        rc = 0;
    } else if (json_is_string(e)) {
        /* {"error": "..."}: Ollama and some proxies; the message is what
         * matters, so it counts as the error shape. */
        copy_json_str(message, msglen, e);
        rc = 0;
    } else {
        excerpt(body, len, message, msglen);
    }
    json_decref(root);
    return rc;
}

/* ---- writers ------------------------------------------------------------- */

int cl_llm_usage_json(const cl_llm_usage *u, cl_buf *out)
{
    return cl_buf_printf(out,
                         "{\"prompt_tokens\":%" PRId64 ",\"completion_tokens\":%" PRId64
                         ",\"total_tokens\":%" PRId64 "}",
                         u->prompt_tokens, u->completion_tokens, u->total_tokens);
}

int cl_llm_tool_calls_json(const cl_llm_result *r, cl_buf *out)
{
    if (cl_buf_append_char(out, '[') != 0)
        return -1;
    for (int i = 0; i < r->ntool_calls; i++) {
        const cl_llm_tool_call *t = &r->tool_calls[i];
        /* Empty arguments are not valid JSON text, and upstreams reject
         * them when the call is echoed back in the next request. */
        const char *args = t->arguments.len ? t->arguments.data : "{}";
        size_t alen = t->arguments.len ? t->arguments.len : 2;
        if ((i && cl_buf_append_char(out, ',') != 0) ||
            cl_buf_append_str(out, "{\"id\":") != 0 || cl_jsonw_cstr(out, t->id) != 0 ||
            cl_buf_append_str(out, ",\"type\":") != 0 ||
            cl_jsonw_cstr(out, t->type ? t->type : "function") != 0 ||
            cl_buf_append_str(out, ",\"function\":{\"name\":") != 0 ||
            cl_jsonw_cstr(out, t->name ? t->name : "") != 0 ||
            cl_buf_append_str(out, ",\"arguments\":") != 0 ||
            cl_jsonw_str(out, args, alen) != 0 || cl_buf_append_str(out, "}}") != 0)
            return -1;
    }
    return cl_buf_append_char(out, ']');
}
