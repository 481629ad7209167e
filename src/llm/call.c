/*
 * call.c — one completion request: attempts, retries with backoff, fallback
 * models, timeouts, and the curl transport. The states and their table are
 * in llm_internal.h; call_set_state below is the only writer of the state.
 *
 * Teardown is written once (call_release): stop the transport, unlink, close
 * both timers, free in the last close callback. Every path ends there: the
 * entry of DONE, FAILED and CANCELLED, and cl_llm_free at worker exit.
 */
#include "llm_internal.h"
#include "chatloop/metrics.h"

#include "chatloop/auth.h"
#include "chatloop/log.h"

#include <assert.h>
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SSE_MAX_LINE (1024 * 1024)
#define MAX_ERROR_BODY (64 * 1024)
#define MAX_COMPLETION_BODY (16 * 1024 * 1024)
#define BACKOFF_BASE_MS 250
#define BACKOFF_MAX_MS 8000
#define RETRY_AFTER_MAX_MS 60000

static void arm_timeout(cl_llm_call *c);
static void estimate_usage(cl_llm_call *c);
static void on_retry_timer(uv_timer_t *t);

uint64_t cl_llm__now(const cl_llm *llm)
{
    return uv_now(llm->loop);
}

/* ---- teardown -------------------------------------------------------------- */

static void on_call_closed(uv_handle_t *h)
{
    cl_llm_call *c = h->data;
    if (--c->pending_closes > 0)
        return;
    for (int i = 0; i < c->nmodels; i++)
        free(c->models[i]);
    free(c->models);
    free(c);
}

CURL *cl_llm__easy_get(cl_llm *llm)
{
    return llm->nidle ? llm->idle_easy[--llm->nidle] : curl_easy_init();
}

void cl_llm__easy_put(cl_llm *llm, CURL *easy)
{
    if (llm->nidle < (int)(sizeof llm->idle_easy / sizeof llm->idle_easy[0])) {
        curl_easy_reset(easy);
        llm->idle_easy[llm->nidle++] = easy;
    } else {
        curl_easy_cleanup(easy);
    }
}

static void stop_transfer(cl_llm_call *c)
{
    if (c->easy) {
        cl_curl_loop_remove(c->llm->curl, c->easy);
        cl_llm__easy_put(c->llm, c->easy);
        c->easy = NULL;
    }
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    free(c->body);
    c->body = NULL;
}

static void call_release(cl_llm_call *c)
{
    cl_llm *llm = c->llm;
    stop_transfer(c);
    cl_llm__mock_stop(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        llm->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    llm->active--;
    json_decref(c->request);
    c->request = NULL;
    free(c->messages_json);
    c->messages_json = NULL;
    cl_sse_free(&c->sse);
    cl_llm_result_free(&c->result);
    cl_buf_release(&c->resp);
    c->pending_closes = 2;
    uv_close((uv_handle_t *)&c->timer, on_call_closed);
    uv_close((uv_handle_t *)&c->mock_timer, on_call_closed);
}

/* ---- the state machine (llm_internal.h) ------------------------------------ */

#define B(s) (1u << (s))
/* Legal transitions: call_next[from] has bit `to` set. The final states
 * have none: a call that ended never starts again. */
static const unsigned call_next[CALL__COUNT] = {
    [CALL_NEW] = B(CALL_REQUESTING) | B(CALL_CANCELLED),
    [CALL_REQUESTING] = B(CALL_STREAMING) | B(CALL_WAIT_RETRY) | B(CALL_DONE) | B(CALL_FAILED) |
                        B(CALL_CANCELLED),
    [CALL_STREAMING] = B(CALL_DONE) | B(CALL_FAILED) | B(CALL_CANCELLED),
    [CALL_WAIT_RETRY] = B(CALL_REQUESTING) | B(CALL_CANCELLED),
    [CALL_DONE] = 0,
    [CALL_FAILED] = 0,
    [CALL_CANCELLED] = 0,
};
#undef B

static const char *const call_names[CALL__COUNT] = {
    "NEW", "REQUESTING", "STREAMING", "WAIT_RETRY", "DONE", "FAILED", "CANCELLED",
};

const char *cl_llm__call_state_name(call_state s)
{
    return (unsigned)s < CALL__COUNT ? call_names[s] : "?";
}

int cl_llm__call_legal(call_state from, call_state to)
{
    return (unsigned)from < CALL__COUNT && (unsigned)to < CALL__COUNT &&
           (call_next[from] & (1u << to)) != 0;
}

static void enter_requesting(cl_llm_call *c);
static void enter_wait_retry(cl_llm_call *c);
static void enter_done(cl_llm_call *c);
static void enter_failed(cl_llm_call *c);
static void enter_cancelled(cl_llm_call *c);

/* The one setter. Entry work may itself end the call (an attempt that
 * cannot start fails it), so nothing follows the switch. */
static void call_set_state(cl_llm_call *c, call_state to)
{
    call_state from = c->state;
    assert(cl_llm__call_legal(from, to));
    if (!cl_llm__call_legal(from, to)) {
        CL_ERROR("llm call %llu: illegal transition %s -> %s", (unsigned long long)c->id,
                 cl_llm__call_state_name(from), cl_llm__call_state_name(to));
        return;
    }
    CL_DEBUG("llm call %llu: %s -> %s (model %s)", (unsigned long long)c->id,
             cl_llm__call_state_name(from), cl_llm__call_state_name(to),
             c->model_idx < c->nmodels ? c->models[c->model_idx] : "-");
    c->state = to;
    c->trail = c->trail << 4 | (uint32_t)to;
    switch (to) {
    case CALL_REQUESTING:
        enter_requesting(c);
        return;
    case CALL_WAIT_RETRY:
        enter_wait_retry(c);
        return;
    case CALL_DONE:
        enter_done(c);
        return;
    case CALL_FAILED:
        enter_failed(c);
        return;
    case CALL_CANCELLED:
        enter_cancelled(c);
        return;
    default:
        return; /* STREAMING: its only effect is that retries are over */
    }
}

void cl_llm_cancel(cl_llm_call *c)
{
    if (!c || cl_llm__call_over(c))
        return;
    call_set_state(c, CALL_CANCELLED);
}

static void enter_cancelled(cl_llm_call *c)
{
    if (c->in_curl_cb) {
        /* curl is on the stack: the write callback returns an error and
         * the transfer's end (next info_read) releases the call. */
        uv_timer_stop(&c->timer);
        return;
    }
    call_release(c);
}

/* ---- final outcomes ------------------------------------------------------- */

size_t cl_llm__prompt_chars(const cl_llm_call *c)
{
    if (c->messages_json)
        return c->prompt_chars;
    size_t chars = 0, i;
    json_t *m;
    json_array_foreach(json_object_get(c->request, "messages"), i, m) {
        const char *content = json_string_value(json_object_get(m, "content"));
        if (content)
            chars += strlen(content);
    }
    return chars;
}

/* When the upstream reported no usage (cut short, or it never does), count
 * what we can: about four characters a token for the prompt, and for the
 * answer the larger of its characters / 4 and the chunks that carried it. */
static void estimate_usage(cl_llm_call *c)
{
    cl_llm_usage *u = &c->result.usage;
    if (u->present)
        return;
    u->prompt_tokens = (int64_t)(cl_llm__prompt_chars(c) / 4) + 1;
    int64_t by_text = (int64_t)(c->result.content.len + 3) / 4;
    int64_t by_chunks = c->result.chunks > 1 ? c->result.chunks - 1 : c->result.chunks;
    u->completion_tokens = by_text > by_chunks ? by_text : by_chunks;
    u->total_tokens = u->prompt_tokens + u->completion_tokens;
    u->estimated = 1;
}

void cl_llm__fail(cl_llm_call *c, cl_err_code code, const char *msg, int status, const char *body)
{
    if (cl_llm__call_over(c))
        return;
    c->end.code = code;
    c->end.msg = msg;
    c->end.status = status;
    c->end.body = body;
    c->end.len = 0;
    call_set_state(c, CALL_FAILED);
}

/* The metric label of a failure: the upstream's answer when it gave one. */
static cl_upstream_error failure_kind(const cl_llm_call *c)
{
    int s = c->end.status;
    if (c->end.code == CL_ERR_LLM_TIMEOUT)
        return CL_UPSTREAM_TIMEOUT;
    if (s == 429)
        return CL_UPSTREAM_429;
    if (s >= 400 && s < 500)
        return CL_UPSTREAM_4XX;
    if (s >= 500)
        return CL_UPSTREAM_5XX;
    return s ? CL_UPSTREAM_STREAM : CL_UPSTREAM_TRANSPORT;
}

static void enter_failed(cl_llm_call *c)
{
    estimate_usage(c);
    cl_metrics_upstream_error(failure_kind(c));
    CL_DEBUG("llm call %llu failed: %s (%s, upstream status %d)", (unsigned long long)c->id,
             c->end.msg, cl_err_name(c->end.code), c->end.status);
    if (c->cb.on_error)
        c->cb.on_error(c->ud, c->end.code, c->end.msg, c->end.status, c->end.body, &c->result);
    c->end.msg = c->end.body = NULL; /* borrowed from cl_llm__fail's caller */
    call_release(c);
}

void cl_llm__finish_ok(cl_llm_call *c, const char *body, size_t len)
{
    if (cl_llm__call_over(c))
        return;
    c->end.body = body;
    c->end.len = len;
    call_set_state(c, CALL_DONE);
}

static void enter_done(cl_llm_call *c)
{
    estimate_usage(c);
    if (c->cb.on_done)
        c->cb.on_done(c->ud, &c->result, c->end.body, c->end.len);
    c->end.body = NULL;
    call_release(c);
}

/* ---- retries and fallbacks ------------------------------------------------- */

static int retryable_status(long s)
{
    return s == 429 || s == 498 || (s >= 500 && s <= 599);
}

static int retryable_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PARTIAL_FILE:
        return 1;
    default:
        return 0;
    }
}

static void on_retry_timer(uv_timer_t *t)
{
    cl_llm_call *c = t->data;
    if (c->state == CALL_WAIT_RETRY)
        call_set_state(c, CALL_REQUESTING);
}

/* Before the first chunk: try again (same model, with backoff and jitter,
 * or after retry-after), then the next fallback model. Returns 1 when a new
 * attempt is scheduled, 0 when the caller should fail the call. */
static int schedule_retry(cl_llm_call *c)
{
    const cl_config *cfg = c->llm->cfg;
    if (c->state != CALL_REQUESTING)
        return 0; /* a chunk arrived: what streamed cannot be taken back */
    uint64_t delay;
    if (c->attempt < cfg->retries) {
        c->attempt++;
        if (c->retry_after_s > 0) {
            delay = (uint64_t)(c->retry_after_s * 1000.0);
            if (delay > RETRY_AFTER_MAX_MS)
                delay = RETRY_AFTER_MAX_MS;
        } else {
            double base = BACKOFF_BASE_MS * pow(2.0, c->attempt - 1);
            if (base > BACKOFF_MAX_MS)
                base = BACKOFF_MAX_MS;
            /* jitter in [base/2, base]: retries from many turns spread */
            delay = cl_llm__jitter_ms(c->llm, base);
        }
    } else if (c->model_idx + 1 < c->nmodels) {
        c->model_idx++;
        c->attempt = 0;
        delay = 0;
        CL_INFO("llm: falling back to model %s", c->models[c->model_idx]);
    } else {
        return 0;
    }
    uint64_t now = cl_llm__now(c->llm);
    if (now + delay >= c->start_ms + cfg->turn_timeout_ms)
        return 0;
    c->retry_delay_ms = delay;
    cl_metrics_upstream_retry();
    call_set_state(c, CALL_WAIT_RETRY);
    return 1;
}

static void enter_wait_retry(cl_llm_call *c)
{
    /* The failed attempt leaves nothing behind; its error body is only
     * needed when there is no next attempt. */
    stop_transfer(c);
    cl_llm_result_free(&c->result);
    cl_llm_result_init(&c->result);
    cl_sse_free(&c->sse);
    cl_sse_init(&c->sse, SSE_MAX_LINE);
    cl_buf_release(&c->resp);
    uv_timer_start(&c->timer, on_retry_timer, c->retry_delay_ms, 0);
}

/* ---- timeouts -------------------------------------------------------------- */

static void on_timeout_timer(uv_timer_t *t)
{
    cl_llm_call *c = t->data;
    if (c->state != CALL_REQUESTING && c->state != CALL_STREAMING)
        return;
    const cl_config *cfg = c->llm->cfg;
    uint64_t now = cl_llm__now(c->llm);
    uint64_t total = c->start_ms + cfg->turn_timeout_ms;
    uint64_t phase = c->got_token ? c->last_chunk_ms + cfg->idle_chunk_timeout_ms
                                  : c->attempt_ms + cfg->first_token_timeout_ms;
    uint64_t due = phase < total ? phase : total;
    if (now < due) {
        /* Chunks moved the deadline: wait the rest. Re-arming here instead
         * of on every chunk keeps timer work off the per-token path. */
        uv_timer_start(&c->timer, on_timeout_timer, due - now, 0);
        return;
    }
    char msg[160];
    if (due == total)
        snprintf(msg, sizeof msg, "the model did not finish within turn_timeout (%llums)",
                 (unsigned long long)cfg->turn_timeout_ms);
    else if (c->got_token)
        snprintf(msg, sizeof msg, "the model sent nothing for idle_chunk_timeout (%llums)",
                 (unsigned long long)cfg->idle_chunk_timeout_ms);
    else
        snprintf(msg, sizeof msg, "no first token within first_token_timeout (%llums)",
                 (unsigned long long)cfg->first_token_timeout_ms);
    stop_transfer(c);
    cl_llm__fail(c, CL_ERR_LLM_TIMEOUT, msg, 0, NULL);
}

static void arm_timeout(cl_llm_call *c)
{
    const cl_config *cfg = c->llm->cfg;
    uint64_t ms = cfg->first_token_timeout_ms;
    uint64_t left = c->start_ms + cfg->turn_timeout_ms - cl_llm__now(c->llm);
    if (left < ms)
        ms = left;
    uv_timer_start(&c->timer, on_timeout_timer, ms ? ms : 1, 0);
}

/* ---- events from any transport -------------------------------------------- */

static void on_content_delta(void *ud, const char *text, size_t len)
{
    cl_llm_call *c = ud;
    if (c->cb.on_content && !cl_llm__call_over(c))
        c->cb.on_content(c->ud, text, len);
}

/*
 * A relay (no on_content) forwards chunks verbatim and needs from them only
 * what is not plain content: tool calls, the finish reason, usage and errors
 * (the model is the one it asked for: cl_llm_call_model). A chunk that mentions none of those can
 * skip the JSON parse — jansson costs microseconds per chunk, which is most
 * of a relay's CPU. This is a filter, not a parser: it looks at the word
 * after each '"' and sends anything that might matter (including content
 * that merely contains one of these words) to jansson; the braces check
 * sends anything that is not an object, like a truncated chunk, to the
 * parser, which reports it as malformed. Glibc's memmem was tried first and
 * cost more than the parse it saved. JSON allows whitespace between any two
 * tokens (a pretty-printed or multi-line `data:` payload has plenty), so
 * every look past a key skips it: a filter that only knew `"key":value`
 * let `"finish_reason" : "stop"` through unparsed.
 */
static int json_ws(char ch)
{
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && json_ws(*p))
        p++;
    return p;
}

/* p is just past a key's closing quote: its value, or NULL when no colon
 * follows (the word was a string value, not a key). */
static const char *member_value(const char *p, const char *end)
{
    p = skip_ws(p, end);
    if (p >= end || *p != ':')
        return NULL;
    return skip_ws(p + 1, end);
}

static int is_word(const char *p, const char *end, const char *w)
{
    size_t n = strlen(w);
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0;
}

/* A finish_reason other than null: the relay must see it. */
static int scan_finish(const char *p, const char *end)
{
    const char *v = member_value(p, end);
    return !v || !is_word(v, end, "null");
}

/* "choices": [] — the usage-only chunk. */
static int scan_empty_choices(const char *p, const char *end)
{
    const char *v = member_value(p, end);
    if (!v || v >= end || *v != '[')
        return 0;
    v = skip_ws(v + 1, end);
    return v < end && *v == ']';
}

int cl_llm__scan_chunk(const char *d, size_t len)
{
    while (len && json_ws(*d)) {
        d++;
        len--;
    }
    while (len && json_ws(d[len - 1]))
        len--;
    if (len < 2 || d[0] != '{' || d[len - 1] != '}')
        return CL_LLM_SCAN_DECODE;
    int flags = 0;
    const char *end = d + len;
    /* A plain byte loop: quotes are a few bytes apart, and a memchr call
     * per quote cost twice as much as looking at every byte. */
    for (const char *q = d; q < end; q++) {
        if (*q != '"')
            continue;
        const char *p = q + 1;
        size_t left = (size_t)(end - p);
#define IS(word) (left >= sizeof(word) - 1 && memcmp(p, word, sizeof(word) - 1) == 0)
        switch (*p) {
        case 'u':
            if (IS("usage\""))
                flags |= CL_LLM_SCAN_DECODE;
            break;
        case 'e':
            if (IS("error"))
                flags |= CL_LLM_SCAN_DECODE;
            break;
        case 't':
            if (IS("tool_calls\""))
                flags |= CL_LLM_SCAN_DECODE;
            break;
        case 'f':
            if (IS("finish_reason\"") && scan_finish(p + sizeof "finish_reason\"" - 1, end))
                flags |= CL_LLM_SCAN_DECODE;
            break;
        case 'c':
            if (IS("choices\"") && scan_empty_choices(p + sizeof "choices\"" - 1, end))
                flags |= CL_LLM_SCAN_USAGE_ONLY | CL_LLM_SCAN_DECODE;
            break;
        }
#undef IS
    }
    return flags;
}

int cl_llm__role_only(const char *d, size_t len)
{
    if (!memmem(d, len, "\"role\"", 6) || memmem(d, len, "tool_calls", 10))
        return 0;
    const char *k = memmem(d, len, "\"content\"", 9);
    if (!k)
        return 1;
    const char *end = d + len, *v = member_value(k + 9, end);
    return v && (is_word(v, end, "\"\"") || is_word(v, end, "null"));
}

int cl_llm__on_event(cl_llm_call *c, const char *data, size_t len)
{
    if (cl_llm__call_over(c))
        return -1;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->done_seen = 1;
        return 0;
    }
    if (c->state == CALL_REQUESTING)
        call_set_state(c, CALL_STREAMING);
    c->last_chunk_ms = cl_llm__now(c->llm);
    int role_chunk = 0;
    if (!c->got_token && c->nchunks_attempt++ == 0 && cl_llm__role_only(data, len))
        role_chunk = 1;
    if (!c->got_token && !role_chunk) {
        /* the first token: from now on the idle timeout applies, which may
         * be due before the first-token timer would fire */
        c->got_token = 1;
        const cl_config *cfg = c->llm->cfg;
        uint64_t ms = cfg->idle_chunk_timeout_ms;
        uint64_t left = c->start_ms + cfg->turn_timeout_ms - c->last_chunk_ms;
        uv_timer_start(&c->timer, on_timeout_timer, (left < ms ? left : ms) ? (left < ms ? left : ms) : 1, 0);
    }
    int scan = cl_llm__scan_chunk(data, len);
    if (!(scan & CL_LLM_SCAN_DECODE) && !c->cb.on_content) {
        c->result.chunks++;
        c->skipped_chunks++;
        if (c->cb.on_chunk)
            c->cb.on_chunk(c->ud, data, len, role_chunk ? 0 : CL_LLM_CHUNK_CONTENT);
        return cl_llm__call_over(c) ? -1 : 0;
    }
    /* A turn needs the text of every chunk: plain content chunks are read
     * by the scanner (a fraction of jansson's cost); the first chunk of an
     * attempt still goes through jansson for the model and id. */
    if (!(scan & CL_LLM_SCAN_DECODE) && c->result.chunks > 0 &&
        cl_llm_decode_plain_chunk(&c->result, data, len, on_content_delta, c) == CL_WIRE_OK) {
        c->scanned_chunks++;
        if (cl_llm__call_over(c))
            return -1;
        if (c->cb.on_chunk)
            c->cb.on_chunk(c->ud, data, len, CL_LLM_CHUNK_CONTENT);
        return cl_llm__call_over(c) ? -1 : 0;
    }
    char err[200];
    size_t content_before = c->result.content.len;
    int rc = cl_llm_decode_chunk(&c->result, data, len, on_content_delta, c, err, sizeof err);
    if (rc == CL_WIRE_UPSTREAM_ERROR || rc == CL_WIRE_MALFORMED || rc == CL_WIRE_NOMEM) {
        c->fail_code = CL_ERR_LLM_ERROR + 1;
        snprintf(c->fail_msg, sizeof c->fail_msg, "%s: %s",
                 rc == CL_WIRE_UPSTREAM_ERROR ? "upstream error in stream" : "malformed upstream chunk",
                 err);
        return -1;
    }
    if (cl_llm__call_over(c))
        return -1;
    if (c->cb.on_chunk)
        c->cb.on_chunk(c->ud, data, len,
                       ((scan & CL_LLM_SCAN_USAGE_ONLY) ? CL_LLM_CHUNK_USAGE_ONLY : 0) |
                           (c->result.content.len > content_before ? CL_LLM_CHUNK_CONTENT : 0));
    return cl_llm__call_over(c) ? -1 : 0;
}

/* ---- curl transport -------------------------------------------------------- */

static int sse_event(void *ud, const char *event, const char *data, size_t len)
{
    cl_llm_call *c = ud;
    if (strcmp(event, "error") == 0) {
        c->fail_code = CL_ERR_LLM_ERROR + 1;
        snprintf(c->fail_msg, sizeof c->fail_msg, "upstream error event: %.*s",
                 (int)(len < 200 ? len : 200), data);
        return -1;
    }
    return cl_llm__on_event(c, data, len) == 0 ? 0 : -1;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    cl_llm_call *c = ud;
    size_t len = size * n;
    if (len > 5 && strncmp(p, "HTTP/", 5) == 0) {
        c->retry_after_s = 0; /* a new response (after 100 or a redirect) */
        return len;
    }
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        char v[32];
        size_t vl = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
        memcpy(v, p + 12, vl);
        v[vl] = '\0';
        char *end;
        double s = strtod(v, &end);
        /* seconds (Groq sends fractions); an HTTP date falls back to backoff */
        if (end != v && s > 0 && isfinite(s))
            c->retry_after_s = s;
    }
    return len;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    cl_llm_call *c = ud;
    size_t len = size * n;
    if (cl_llm__call_over(c))
        return CURL_WRITEFUNC_ERROR;
    if (c->want_pause && !c->paused) {
        /* curl keeps these bytes and hands them over again on resume;
         * meanwhile the socket is not read, so TCP pushes back upstream */
        c->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (!c->http_status)
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->http_status);
    if (c->http_status < 200 || c->http_status > 299) {
        /* keep the error body (bounded) for the message and the relay */
        size_t room = MAX_ERROR_BODY - c->resp.len;
        cl_buf_append(&c->resp, p, len < room ? len : room);
        return len;
    }
    if (!c->stream) {
        if (cl_buf_append(&c->resp, p, len) != 0) {
            c->fail_code = CL_ERR_LLM_ERROR + 1;
            snprintf(c->fail_msg, sizeof c->fail_msg, "upstream completion larger than %d bytes",
                     MAX_COMPLETION_BODY);
            return CURL_WRITEFUNC_ERROR;
        }
        return len;
    }
    c->in_curl_cb = 1;
    int rc = cl_sse_feed(&c->sse, p, len, sse_event, c);
    c->in_curl_cb = 0;
    if (rc == CL_SSE_ERR_LINE_TOO_LONG || rc == CL_SSE_ERR_NOMEM) {
        c->fail_code = CL_ERR_LLM_ERROR + 1;
        snprintf(c->fail_msg, sizeof c->fail_msg, "upstream sent an SSE line over %d bytes",
                 SSE_MAX_LINE);
    }
    if (rc != 0 || cl_llm__call_over(c))
        return CURL_WRITEFUNC_ERROR;
    return len;
}

static void error_message(cl_llm_call *c, char *out, size_t outlen)
{
    char msg[200] = "", type[64] = "", code[64] = "";
    cl_llm_decode_error(c->resp.data ? c->resp.data : "", c->resp.len, msg, sizeof msg, type,
                        sizeof type, code, sizeof code);
    snprintf(out, outlen, "upstream answered %ld%s%s", c->http_status, msg[0] ? ": " : "", msg);
}

static void on_transfer_done(CURL *easy, CURLcode rc, void *ud)
{
    cl_llm_call *c = ud;
    (void)easy;
    if (c->state == CALL_CANCELLED) {
        call_release(c); /* the cancel that came inside a curl callback */
        return;
    }
    if (!c->http_status)
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->http_status);
    long status = c->http_status;
    char msg[320];
    if (c->fail_code) {
        stop_transfer(c);
        cl_llm__fail(c, (cl_err_code)(c->fail_code - 1), c->fail_msg, (int)status, NULL);
        return;
    }
    if (rc != CURLE_OK && !(status >= 300 && rc == CURLE_WRITE_ERROR)) {
        int connect_phase = status == 0;
        if (retryable_curl(rc) && schedule_retry(c))
            return;
        if (c->state == CALL_STREAMING)
            snprintf(msg, sizeof msg, "upstream stream broke off: %s", curl_easy_strerror(rc));
        else
            snprintf(msg, sizeof msg, "upstream request failed: %s", curl_easy_strerror(rc));
        stop_transfer(c);
        cl_llm__fail(c, rc == CURLE_OPERATION_TIMEDOUT && connect_phase ? CL_ERR_LLM_TIMEOUT
                                                                        : CL_ERR_LLM_ERROR,
                     msg, (int)status, NULL);
        return;
    }
    if (status < 200 || status > 299) {
        if (retryable_status(status) && schedule_retry(c))
            return;
        error_message(c, msg, sizeof msg);
        const char *body = cl_buf_cstr(&c->resp);
        stop_transfer(c);
        cl_llm__fail(c, CL_ERR_LLM_ERROR, msg, (int)status, body);
        return;
    }
    if (c->stream) {
        if (!c->done_seen && !c->result.finish_reason[0]) {
            stop_transfer(c);
            cl_llm__fail(c, CL_ERR_LLM_ERROR, "upstream stream ended without [DONE]", (int)status,
                         NULL);
            return;
        }
        stop_transfer(c);
        cl_llm__finish_ok(c, NULL, 0);
        return;
    }
    char err[200];
    int drc = cl_llm_decode_completion(&c->result, c->resp.data ? c->resp.data : "", c->resp.len,
                                       err, sizeof err);
    if (drc != CL_WIRE_OK) {
        snprintf(msg, sizeof msg, "malformed upstream completion: %s", err);
        stop_transfer(c);
        cl_llm__fail(c, CL_ERR_LLM_ERROR, msg, (int)status, NULL);
        return;
    }
    stop_transfer(c);
    /* The body stays alive in c->resp until release, after on_done returns. */
    cl_llm__finish_ok(c, c->resp.data, c->resp.len);
}

static int curl_start(cl_llm_call *c)
{
    cl_llm *llm = c->llm;
    const cl_config *cfg = llm->cfg;
    c->easy = cl_llm__easy_get(llm);
    if (!c->easy)
        return -1;
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, c->stream ? "Accept: text/event-stream"
                                                         : "Accept: application/json");
    if (llm->auth_header)
        c->headers = curl_slist_append(c->headers, llm->auth_header);
    c->headers = curl_slist_append(c->headers, "User-Agent: chatloop");
    /* Each answer is a fresh request: no 100-continue round trip. */
    c->headers = curl_slist_append(c->headers, "Expect:");
    if (!c->headers)
        return -1;
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, llm->chat_url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(c->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    return cl_curl_loop_add(llm->curl, e, on_transfer_done, c);
}

/* ---- attempts ---------------------------------------------------------------- */

/* The request as JSON text. Messages given as text (a turn's history comes
 * from PostgreSQL already as JSON) are spliced in front of the other
 * members rather than parsed into a tree and written out again: for a long
 * conversation that parse and dump was a fifth of a turn's CPU. */
static char *request_body(cl_llm_call *c)
{
    char *rest = json_dumps(c->request, JSON_COMPACT);
    if (!rest || !c->messages_json)
        return rest;
    size_t ml = strlen(c->messages_json), rl = strlen(rest);
    char *body = malloc(sizeof "{\"messages\":," - 1 + ml + rl + 1);
    if (body) {
        int more = rl > 2; /* rest is "{...}": anything besides the braces? */
        int n = sprintf(body, "{\"messages\":%s%s", c->messages_json, more ? "," : "}");
        if (more)
            memcpy(body + n, rest + 1, rl); /* with rest's closing brace and NUL */
    }
    free(rest);
    return body;
}

static void enter_requesting(cl_llm_call *c)
{
    cl_llm *llm = c->llm;
    c->attempt_ms = cl_llm__now(llm);
    c->http_status = 0;
    c->retry_after_s = 0;
    c->done_seen = 0;
    c->got_token = 0;
    c->nchunks_attempt = 0;
    json_object_set_new(c->request, "model", json_string(c->models[c->model_idx]));
    arm_timeout(c);
    if (llm->provider == CL_PROVIDER_MOCK) {
        cl_llm__mock_start(c);
        return;
    }
    free(c->body);
    c->body = request_body(c);
    if (!c->body || curl_start(c) != 0) {
        stop_transfer(c);
        if (c->in_start) {
            /* inside cl_llm_start: it returns NULL; no callback may fire
             * before the caller even has the call */
            c->start_failed = 1;
            return;
        }
        cl_llm__fail(c, CL_ERR_PROCESSING_ERROR, "cannot start the upstream request", 0, NULL);
    }
}

static int add_model(cl_llm_call *c, const char *m, size_t len)
{
    if (len == 0)
        return 0;
    for (int i = 0; i < c->nmodels; i++)
        if (strlen(c->models[i]) == len && strncmp(c->models[i], m, len) == 0)
            return 0;
    char **p = realloc(c->models, (size_t)(c->nmodels + 1) * sizeof *p);
    if (!p)
        return -1;
    c->models = p;
    c->models[c->nmodels] = strndup(m, len);
    if (!c->models[c->nmodels])
        return -1;
    c->nmodels++;
    return 0;
}

cl_llm_call *cl_llm_start(cl_llm *llm, json_t *request, const cl_llm_callbacks *cb, void *ud)
{
    return cl_llm_start_messages(llm, request, NULL, 0, cb, ud);
}

cl_llm_call *cl_llm_start_messages(cl_llm *llm, json_t *request, const char *messages_json,
                                   size_t prompt_chars, const cl_llm_callbacks *cb, void *ud)
{
    const cl_config *cfg = llm->cfg;
    cl_llm_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (messages_json && !(c->messages_json = strdup(messages_json))) {
        free(c);
        return NULL;
    }
    c->prompt_chars = prompt_chars;
    c->llm = llm;
    c->cb = *cb;
    c->ud = ud;
    c->request = json_incref(request);
    c->id = ++llm->next_call_id;
    cl_sse_init(&c->sse, SSE_MAX_LINE);
    cl_llm_result_init(&c->result);
    cl_buf_init(&c->resp, MAX_COMPLETION_BODY);
    uv_timer_init(llm->loop, &c->timer);
    uv_timer_init(llm->loop, &c->mock_timer);
    c->timer.data = c->mock_timer.data = c;
    c->start_ms = cl_llm__now(llm);
    c->next = llm->calls;
    if (llm->calls)
        llm->calls->prev = c;
    llm->calls = c;
    llm->active++;

    c->stream = json_is_true(json_object_get(request, "stream"));
    if (c->stream) {
        json_t *so = json_object_get(request, "stream_options");
        c->client_wants_usage = json_is_true(json_object_get(so, "include_usage"));
        if (!json_is_object(so)) {
            so = json_object();
            json_object_set_new(request, "stream_options", so);
        }
        json_object_set_new(so, "include_usage", json_true());
    }
    const char *model = json_string_value(json_object_get(request, "model"));
    if (!model || !*model)
        model = cfg->model;
    int rc = add_model(c, model, strlen(model));
    for (const char *s = cfg->fallback_models; rc == 0 && s && *s;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        while (len && isspace((unsigned char)*s)) {
            s++;
            len--;
        }
        while (len && isspace((unsigned char)s[len - 1]))
            len--;
        rc = add_model(c, s, len);
        if (!comma)
            break;
        s = comma + 1;
    }
    if (rc != 0) {
        call_set_state(c, CALL_CANCELLED);
        return NULL;
    }
    c->in_start = 1;
    call_set_state(c, CALL_REQUESTING);
    c->in_start = 0;
    if (c->start_failed) {
        call_set_state(c, CALL_CANCELLED);
        return NULL;
    }
    return c;
}

void cl_llm_call_pause(cl_llm_call *c, int on)
{
    if (!c || cl_llm__call_over(c))
        return;
    c->want_pause = on;
    if (on || !c->paused)
        return;
    c->paused = 0;
    if (c->llm->provider == CL_PROVIDER_MOCK)
        cl_llm__mock_resume(c);
    else if (c->easy)
        cl_curl_loop_resume(c->llm->curl, c->easy);
}

void cl_llm_call_usage(cl_llm_call *c, cl_llm_usage *out)
{
    if (!c->result.usage.present)
        estimate_usage(c);
    *out = c->result.usage;
}

double cl_llm_call_retry_after(const cl_llm_call *c)
{
    return c ? c->retry_after_s : 0;
}

const char *cl_llm_call_model(const cl_llm_call *c)
{
    return c->models[c->model_idx];
}

/* ---- the provider context ------------------------------------------------- */

/* splitmix64: one add and two multiplies per draw, every seed (0 included)
 * gives a full-period sequence; plenty for spreading retries. */
uint64_t cl_llm__random(cl_llm *llm)
{
    uint64_t z = (llm->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t cl_llm__jitter_ms(cl_llm *llm, double base_ms)
{
    double u = (double)(cl_llm__random(llm) >> 11) * 0x1.0p-53; /* [0, 1) */
    return (uint64_t)(base_ms / 2 + u * base_ms / 2);
}

/* Each worker creates its context after the fork, so each gets its own
 * seed. The kernel's generator is the seed; should it fail, the clock, the
 * pid and the address still differ between workers. */
static void seed_jitter(cl_llm *llm)
{
    if (cl_random_bytes(&llm->rng, sizeof llm->rng) == 0)
        return;
    llm->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)llm;
}

static char *join_url(const char *base, const char *path)
{
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    size_t pl = strlen(path);
    char *u = malloc(bl + pl + 1);
    if (!u)
        return NULL;
    memcpy(u, base, bl);
    memcpy(u + bl, path, pl + 1);
    return u;
}

cl_llm *cl_llm_new(uv_loop_t *loop, const cl_config *cfg)
{
    cl_llm *llm = calloc(1, sizeof *llm);
    if (!llm)
        return NULL;
    llm->loop = loop;
    llm->cfg = cfg;
    seed_jitter(llm);
    /* Without a key there is nobody to call: the mock provider answers. */
    llm->provider = cfg->api_key[0] ? cfg->provider : CL_PROVIDER_MOCK;
    if (llm->provider == CL_PROVIDER_MOCK)
        return llm;
    llm->chat_url = join_url(cfg->base_url, "/chat/completions");
    llm->models_url = join_url(cfg->base_url, "/models");
    size_t hl = strlen(cfg->api_key) + 32;
    llm->auth_header = malloc(hl);
    llm->curl = cl_curl_loop_new(loop);
    if (!llm->chat_url || !llm->models_url || !llm->auth_header || !llm->curl) {
        cl_llm_free(llm);
        return NULL;
    }
    snprintf(llm->auth_header, hl, "Authorization: Bearer %s", cfg->api_key);
    return llm;
}

void cl_llm_free(cl_llm *llm)
{
    if (!llm)
        return;
    while (llm->calls) {
        cl_llm_call *c = llm->calls;
        c->in_curl_cb = 0; /* the worker is stopping: no curl callback is on the stack */
        if (cl_llm__call_over(c))
            call_release(c); /* cancelled inside a curl callback; its transfer's end never comes */
        else
            call_set_state(c, CALL_CANCELLED);
    }
    while (llm->nidle)
        curl_easy_cleanup(llm->idle_easy[--llm->nidle]);
    if (llm->curl)
        cl_curl_loop_free(llm->curl);
    free(llm->chat_url);
    free(llm->models_url);
    if (llm->auth_header) {
        /* the key should not outlive its use in freed heap memory */
        memset(llm->auth_header, 0, strlen(llm->auth_header));
        free(llm->auth_header);
    }
    free(llm);
}

int cl_llm_active(const cl_llm *llm)
{
    return llm->active;
}

const char *cl_llm_provider_name(const cl_llm *llm)
{
    switch (llm->provider) {
    case CL_PROVIDER_GROQ: return "groq";
    case CL_PROVIDER_OPENAI: return "openai";
    default: return "mock";
    }
}
