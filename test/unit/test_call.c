/* The provider call's state machine: its transition table pair by pair, and
 * whole calls on a real uv loop with the built-in mock provider (no
 * sockets): the states a stream passes through, a cancel from inside a
 * callback, the first-token timeout, and back-pressure. Every test ends
 * with uv_loop_close() == 0, so a handle left open fails it. */
#include "../../src/llm/llm_internal.h"
#include "chatloop/log.h"
#include "test.h"

#include <unistd.h>

/* ---- the table ------------------------------------------------------------ */

/* Written out here rather than read from call.c, so a change to the table
 * has to be made twice, once on purpose. */
static int expected_legal(call_state from, call_state to)
{
    switch (from) {
    case CALL_NEW:
        return to == CALL_REQUESTING || to == CALL_CANCELLED;
    case CALL_REQUESTING:
        return to == CALL_STREAMING || to == CALL_WAIT_RETRY || to == CALL_DONE ||
               to == CALL_FAILED || to == CALL_CANCELLED;
    case CALL_STREAMING:
        return to == CALL_DONE || to == CALL_FAILED || to == CALL_CANCELLED;
    case CALL_WAIT_RETRY:
        return to == CALL_REQUESTING || to == CALL_CANCELLED;
    default:
        return 0; /* DONE, FAILED and CANCELLED are final */
    }
}

static void test_transition_table(void)
{
    int legal = 0;
    for (int f = 0; f < CALL__COUNT; f++) {
        for (int t = 0; t < CALL__COUNT; t++) {
            int got = cl_llm__call_legal((call_state)f, (call_state)t);
            if (got != expected_legal((call_state)f, (call_state)t)) {
                fprintf(stderr, "  %s -> %s: legal is %d\n", cl_llm__call_state_name(f),
                        cl_llm__call_state_name(t), got);
                CHECK(0);
            }
            legal += got;
        }
        CHECK(!cl_llm__call_legal((call_state)f, (call_state)f)); /* no self-loops */
        CHECK(!cl_llm__call_legal((call_state)f, CALL__COUNT));
        CHECK(!cl_llm__call_legal(CALL__COUNT, (call_state)f));
    }
    CHECK_EQ_INT(legal, 2 + 5 + 3 + 2);
    CHECK_EQ_STR(cl_llm__call_state_name(CALL_NEW), "NEW");
    CHECK_EQ_STR(cl_llm__call_state_name(CALL_WAIT_RETRY), "WAIT_RETRY");
    CHECK_EQ_STR(cl_llm__call_state_name(CALL_CANCELLED), "CANCELLED");
    CHECK_EQ_STR(cl_llm__call_state_name(CALL__COUNT), "?");
}

/* ---- calls on a loop ------------------------------------------------------- */

#define T(a) ((uint32_t)(a))
#define TRAIL2(a, b) (T(a) << 4 | T(b))
#define TRAIL3(a, b, c) (T(a) << 8 | T(b) << 4 | T(c))

typedef struct rec {
    cl_llm_call *call;
    cl_buf text;
    int contents, chunks, dones, errors;
    int ended;                  /* cancel or a final callback happened */
    int after_end;              /* callbacks after that: must stay 0 */
    cl_err_code code;
    uint32_t trail;             /* at the final callback (or the cancel) */
    call_state state_in_content;
    int cancel_at;              /* cancel inside on_content number N (0: never) */
    int pause_at;               /* pause inside on_content number N (0: never) */
    int contents_while_paused;
    uint64_t t0, t_end;
    uv_loop_t *loop;
    uv_timer_t resume;
} rec;

static void on_chunk(void *ud, const char *data, size_t len, unsigned flags)
{
    rec *r = ud;
    r->after_end += r->ended;
    r->chunks++;
}

static void on_content(void *ud, const char *text, size_t len)
{
    rec *r = ud;
    r->after_end += r->ended;
    r->contents++;
    r->state_in_content = r->call->state;
    cl_buf_append(&r->text, text, len);
    if (r->contents == r->pause_at)
        cl_llm_call_pause(r->call, 1);
    if (r->contents == r->cancel_at) {
        cl_llm_cancel(r->call);
        /* the call's memory lives until its close callbacks have run */
        r->trail = r->call->trail;
        CHECK_EQ_INT(r->call->state, CALL_CANCELLED);
        r->ended = 1;
    }
}

static void on_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    rec *r = ud;
    r->after_end += r->ended;
    r->ended = 1;
    r->dones++;
    r->trail = r->call->trail;
    r->t_end = uv_now(r->loop);
    CHECK_EQ_INT(r->call->state, CALL_DONE);
    CHECK(body == NULL); /* the mock provider has no upstream body */
    CHECK_EQ_STR(res->finish_reason, "stop");
    CHECK(res->usage.present);
}

static void on_error(void *ud, cl_err_code code, const char *message, int status,
                     const char *body, const cl_llm_result *partial)
{
    rec *r = ud;
    r->after_end += r->ended;
    r->ended = 1;
    r->errors++;
    r->code = code;
    r->trail = r->call->trail;
    r->t_end = uv_now(r->loop);
    CHECK_EQ_INT(r->call->state, CALL_FAILED);
    CHECK(partial != NULL);
    CHECK_EQ_INT(status, 0);
}

static const cl_llm_callbacks callbacks = {
    .on_chunk = on_chunk, .on_content = on_content, .on_done = on_done, .on_error = on_error,
};

typedef struct env {
    uv_loop_t loop;
    cl_config cfg;
    cl_llm *llm;
} env;

static void env_init(env *e, int tokens, uint64_t interval_ms, uint64_t first_ms)
{
    char err[CL_ERRBUF];
    CHECK(uv_loop_init(&e->loop) == 0);
    CHECK(cl_config_init(&e->cfg, err) == 0);
    e->cfg.mock_tokens = tokens;
    e->cfg.mock_token_interval_ms = interval_ms;
    e->cfg.mock_first_token_ms = first_ms;
    CHECK(e->cfg.api_key && e->cfg.api_key[0] == '\0'); /* so the mock provider answers */
    e->llm = cl_llm_new(&e->loop, &e->cfg);
    CHECK(e->llm != NULL);
    CHECK_EQ_STR(cl_llm_provider_name(e->llm), "mock");
}

static void env_done(env *e)
{
    cl_llm_free(e->llm);
    uv_run(&e->loop, UV_RUN_DEFAULT); /* the calls' close callbacks */
    CHECK_EQ_INT(uv_loop_close(&e->loop), 0);
    cl_config_free(&e->cfg);
}

static cl_llm_call *start(env *e, rec *r, int stream)
{
    json_t *m = json_pack("[{s:s,s:s}]", "role", "user", "content", "hello there");
    cl_llm_params p = {.stream = stream};
    json_t *req = cl_llm_build_request(&e->cfg, m, &p);
    r->loop = &e->loop;
    r->t0 = uv_now(&e->loop);
    cl_buf_init(&r->text, 0);
    r->call = cl_llm_start(e->llm, req, &callbacks, r);
    json_decref(req);
    json_decref(m);
    CHECK(r->call != NULL);
    return r->call;
}

/* Runs fn with stderr going to a file, and returns what was written. */
static char *capture_stderr(void (*fn)(void))
{
    FILE *f = tmpfile();
    int saved = dup(STDERR_FILENO);
    dup2(fileno(f), STDERR_FILENO);
    fn();
    cl_log_flush();
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t n = lseek(fileno(f), 0, SEEK_END);
    char *out = calloc(1, n > 0 ? (size_t)n + 1 : 1);
    lseek(fileno(f), 0, SEEK_SET);
    if (n > 0 && read(fileno(f), out, (size_t)n) != (ssize_t)n)
        out[0] = '\0';
    fclose(f);
    return out;
}

static void stream_to_done(void)
{
    env e;
    env_init(&e, 5, 1, 0);
    rec r = {0};
    cl_llm_call *c = start(&e, &r, 1);
    CHECK_EQ_INT(c->state, CALL_REQUESTING); /* nothing fires before start returns */
    CHECK_EQ_INT(r.chunks + r.contents + r.dones + r.errors, 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(r.dones, 1);
    CHECK_EQ_INT(r.errors, 0);
    CHECK_EQ_INT(r.after_end, 0);
    CHECK_EQ_INT(r.state_in_content, CALL_STREAMING);
    CHECK_EQ_INT(r.trail, TRAIL3(CALL_REQUESTING, CALL_STREAMING, CALL_DONE));
    CHECK_EQ_STR(cl_buf_cstr(&r.text), "tok1 tok2 tok3 tok4 tok5");
    CHECK_EQ_INT(r.contents, 5);
    CHECK_EQ_INT(r.chunks, 7); /* five tokens, the finish chunk, the usage-only chunk */
    CHECK_EQ_INT(cl_llm_active(e.llm), 0);
    cl_buf_release(&r.text);
    env_done(&e);
}

static void test_stream_reaches_done(void)
{
    cl_log_setup(CL_LOG_DEBUG, CL_LOG_TEXT, "test");
    char *log = capture_stderr(stream_to_done);
    cl_log_setup(CL_LOG_WARN, CL_LOG_TEXT, "test");
    /* each change is logged once, old -> new, at debug level */
    CHECK_CONTAINS(log, "debug test llm call 1: NEW -> REQUESTING");
    CHECK_CONTAINS(log, "llm call 1: REQUESTING -> STREAMING");
    CHECK_CONTAINS(log, "llm call 1: STREAMING -> DONE");
    const char *second = strstr(log, "-> STREAMING");
    CHECK(second && !strstr(second + 1, "-> STREAMING"));
    free(log);
}

static void test_not_streamed(void)
{
    env e;
    env_init(&e, 3, 0, 0);
    rec r = {0};
    start(&e, &r, 0);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(r.dones, 1);
    CHECK_EQ_INT(r.chunks + r.contents, 0); /* the answer comes whole, in on_done */
    CHECK_EQ_INT(r.trail, TRAIL2(CALL_REQUESTING, CALL_DONE));
    cl_buf_release(&r.text);
    env_done(&e);
}

/* Interval 0 writes the whole answer inside one timer callback: the cancel
 * lands in the middle of that loop. */
static void test_cancel_inside_on_content(void)
{
    for (int interval = 0; interval <= 1; interval++) {
        env e;
        env_init(&e, 6, (uint64_t)interval, 0);
        rec r = {.cancel_at = 2};
        start(&e, &r, 1);
        uv_run(&e.loop, UV_RUN_DEFAULT);
        CHECK_EQ_INT(r.contents, 2);
        CHECK_EQ_INT(r.dones + r.errors, 0);
        CHECK_EQ_INT(r.after_end, 0);
        CHECK_EQ_INT(r.trail, TRAIL3(CALL_REQUESTING, CALL_STREAMING, CALL_CANCELLED));
        CHECK_EQ_STR(cl_buf_cstr(&r.text), "tok1 tok2");
        CHECK_EQ_INT(cl_llm_active(e.llm), 0);
        cl_buf_release(&r.text);
        env_done(&e);
    }
}

static void test_cancel_before_first_token(void)
{
    env e;
    env_init(&e, 3, 0, 50);
    rec r = {0};
    cl_llm_call *c = start(&e, &r, 1);
    cl_llm_cancel(c);
    cl_llm_cancel(c); /* a second cancel is a no-op, not an illegal transition */
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(r.chunks + r.contents + r.dones + r.errors, 0);
    cl_buf_release(&r.text);
    env_done(&e);
}

static void test_first_token_timeout(void)
{
    env e;
    env_init(&e, 3, 0, 400);
    e.cfg.first_token_timeout_ms = 30;
    rec r = {0};
    start(&e, &r, 1);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(r.errors, 1);
    CHECK_EQ_INT(r.code, CL_ERR_LLM_TIMEOUT);
    CHECK_EQ_INT(r.contents + r.chunks + r.dones, 0);
    CHECK_EQ_INT(r.after_end, 0);
    CHECK_EQ_INT(r.trail, TRAIL2(CALL_REQUESTING, CALL_FAILED));
    uint64_t took = r.t_end - r.t0;
    CHECK(took >= 30 && took < 400);
    cl_buf_release(&r.text);
    env_done(&e);
}

static void on_resume(uv_timer_t *t)
{
    rec *r = t->data;
    r->contents_while_paused = r->contents;
    CHECK_EQ_INT(r->call->state, CALL_STREAMING);
    CHECK(r->call->paused);
    cl_llm_call_pause(r->call, 0);
    uv_close((uv_handle_t *)&r->resume, NULL);
}

static void test_back_pressure(void)
{
    for (int interval = 0; interval <= 2; interval += 2) {
        env e;
        env_init(&e, 6, (uint64_t)interval, 0);
        rec r = {.pause_at = 2};
        start(&e, &r, 1);
        uv_timer_init(&e.loop, &r.resume);
        r.resume.data = &r;
        uv_timer_start(&r.resume, on_resume, 40, 0);
        uv_run(&e.loop, UV_RUN_DEFAULT);
        CHECK_EQ_INT(r.contents_while_paused, 2); /* nothing came while paused */
        CHECK_EQ_INT(r.dones, 1);
        CHECK_EQ_INT(r.contents, 6);
        CHECK_EQ_STR(cl_buf_cstr(&r.text), "tok1 tok2 tok3 tok4 tok5 tok6");
        CHECK(r.t_end - r.t0 >= 40);
        CHECK_EQ_INT(r.trail, TRAIL3(CALL_REQUESTING, CALL_STREAMING, CALL_DONE));
        cl_buf_release(&r.text);
        env_done(&e);
    }
}

/* cl_llm_free with calls still running: they end without callbacks. */
static void test_free_with_live_calls(void)
{
    env e;
    env_init(&e, 3, 0, 1000);
    rec a = {0}, b = {0};
    start(&e, &a, 1);
    start(&e, &b, 0);
    CHECK_EQ_INT(cl_llm_active(e.llm), 2);
    env_done(&e);
    CHECK_EQ_INT(a.chunks + a.contents + a.dones + a.errors, 0);
    CHECK_EQ_INT(b.dones + b.errors, 0);
    cl_buf_release(&a.text);
    cl_buf_release(&b.text);
}

/* ---- the plain-chunk filter ---------------------------------------------- */

/* JSON whitespace as upstreams write it: none, one of each kind, CRLF, a
 * mixed run. A chunk template has '~' wherever JSON allows whitespace. */
static const char *const ws_variants[] = {"", " ", "\t", "\n", "\r\n", " \n\t\r "};
#define NWS (sizeof ws_variants / sizeof ws_variants[0])

/* variant -1: rotate through the kinds, one per '~'. */
static char *expand(const char *tmpl, int variant)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    int k = 0;
    for (const char *p = tmpl; *p; p++) {
        if (*p != '~')
            cl_buf_append_char(&b, *p);
        else
            cl_buf_append_str(&b, ws_variants[variant >= 0 ? (size_t)variant : (size_t)k++ % NWS]);
    }
    char *out = strdup(cl_buf_cstr(&b));
    cl_buf_release(&b);
    return out;
}

static const struct {
    const char *tmpl;
    int flags;
    int role_only;
} scan_cases[] = {
    /* plain content, finish_reason null: skips the parse */
    {"~{~\"id\"~:~\"c\"~,~\"choices\"~:~[~{~\"index\"~:~0~,~\"delta\"~:~{~\"content\"~:~\"hi\"~}~,"
     "~\"finish_reason\"~:~null~}~]~}~", 0, 0},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"content\"~:~\"hi\"~}~,~\"finish_reason\"~:~\"stop\"~}~]~}~",
     CL_LLM_SCAN_DECODE, 0},
    {"~{~\"id\"~:~\"c\"~,~\"choices\"~:~[~]~,~\"usage\"~:~{~\"prompt_tokens\"~:~1~,"
     "~\"completion_tokens\"~:~2~,~\"total_tokens\"~:~3~}~}~",
     CL_LLM_SCAN_DECODE | CL_LLM_SCAN_USAGE_ONLY, 0},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"tool_calls\"~:~[~{~\"index\"~:~0~}~]~}~}~]~}~",
     CL_LLM_SCAN_DECODE, 0},
    {"~{~\"error\"~:~{~\"message\"~:~\"m\"~}~}~", CL_LLM_SCAN_DECODE, 0},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"role\"~:~\"assistant\"~,~\"content\"~:~\"\"~}~}~]~}~", 0,
     1},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"role\"~:~\"assistant\"~,~\"content\"~:~null~}~}~]~}~", 0,
     1},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"role\"~:~\"assistant\"~,~\"content\"~:~\"a\"~}~}~]~}~", 0,
     0},
    {"~{~\"choices\"~:~[~{~\"delta\"~:~{~\"role\"~:~\"assistant\"~}~}~]~}~", 0, 1},
};
#define NCASES (sizeof scan_cases / sizeof scan_cases[0])

static void test_scan_whitespace(void)
{
    for (size_t i = 0; i < NCASES; i++) {
        for (int v = -1; v < (int)NWS; v++) {
            char *d = expand(scan_cases[i].tmpl, v);
            int flags = cl_llm__scan_chunk(d, strlen(d));
            int role = cl_llm__role_only(d, strlen(d));
            if (flags != scan_cases[i].flags || role != scan_cases[i].role_only) {
                fprintf(stderr, "  case %zu variant %d: flags %d role_only %d for %s\n", i, v, flags,
                        role, d);
                CHECK(0);
            }
            free(d);
        }
    }
    /* what the filter must keep sending to the parser */
    static const char *const decode[] = {
        "", "{", "}", " [1] ", "{\"a\":1", "\"finish_reason\"}",
        "{\"x\":\"finish_reason\"}", /* a value, not a key: parse, to be safe */
        "{\"finish_reason\" : \"length\"}", "{\"finish_reason\":\n\"stop\"}",
    };
    for (size_t i = 0; i < sizeof decode / sizeof decode[0]; i++)
        CHECK(cl_llm__scan_chunk(decode[i], strlen(decode[i])) & CL_LLM_SCAN_DECODE);
    CHECK_EQ_INT(cl_llm__scan_chunk("{\"choices\": [ 1 ]}", 18), 0);
    CHECK_EQ_INT(cl_llm__scan_chunk("{\"finish_reason\" :\tnull}", 24), 0);
}

/* The relay's view (no on_content): chunks spelled with any whitespace must
 * still give it the finish reason, and mark the usage-only chunk so it
 * reaches only clients that asked for usage. */
typedef struct relay_rec {
    int chunks, usage_only, errors, dones;
} relay_rec;

static void relay_chunk(void *ud, const char *data, size_t len, unsigned flags)
{
    relay_rec *r = ud;
    r->chunks++;
    r->usage_only += (flags & CL_LLM_CHUNK_USAGE_ONLY) != 0;
}

static void relay_error(void *ud, cl_err_code code, const char *message, int status,
                        const char *body, const cl_llm_result *partial)
{
    ((relay_rec *)ud)->errors++;
}

static void relay_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    ((relay_rec *)ud)->dones++;
}

static void test_relay_reads_spaced_chunks(void)
{
    static const cl_llm_callbacks relay_cb = {
        .on_chunk = relay_chunk, .on_done = relay_done, .on_error = relay_error,
    };
    for (int v = -1; v < (int)NWS; v++) {
        env e;
        env_init(&e, 3, 0, 60000); /* the mock stays silent: the test feeds the chunks */
        json_t *m = json_pack("[{s:s,s:s}]", "role", "user", "content", "hi");
        cl_llm_params p = {.stream = 1};
        json_t *req = cl_llm_build_request(&e.cfg, m, &p);
        relay_rec r = {0};
        cl_llm_call *c = cl_llm_start(e.llm, req, &relay_cb, &r);
        json_decref(req);
        json_decref(m);
        for (size_t i = 0; i < 3; i++) {
            char *d = expand(scan_cases[i].tmpl, v);
            CHECK_EQ_INT(cl_llm__on_event(c, d, strlen(d)), 0);
            free(d);
        }
        CHECK_EQ_INT(r.chunks, 3);
        CHECK_EQ_INT(r.usage_only, 1);
        CHECK_EQ_INT(r.errors, 0);
        CHECK_EQ_STR(c->result.finish_reason, "stop");
        CHECK(c->result.usage.present);
        CHECK_EQ_INT(c->result.usage.total_tokens, 3);
        cl_llm_cancel(c);
        CHECK_EQ_INT(r.dones + r.errors, 0);
        env_done(&e);
    }
}

/* ---- retry jitter ------------------------------------------------------------ */

/* Two contexts (two workers) draw different jitter: with one unseeded
 * generator shared by every process, all workers backed off in lockstep. */
static void test_jitter_per_context(void)
{
    env a, b;
    env_init(&a, 1, 0, 0);
    env_init(&b, 1, 0, 0);
    uint64_t sa[16], sb[16];
    int same = 0, repeats = 0;
    for (int i = 0; i < 16; i++) {
        sa[i] = cl_llm__jitter_ms(a.llm, 8000);
        sb[i] = cl_llm__jitter_ms(b.llm, 8000);
        CHECK(sa[i] >= 4000 && sa[i] <= 8000);
        CHECK(sb[i] >= 4000 && sb[i] <= 8000);
        same += sa[i] == sb[i];
        repeats += i > 0 && sa[i] == sa[i - 1];
    }
    CHECK(same < 3);    /* equal draws happen (1 in 4000 each), a shared sequence would be 16 */
    CHECK(repeats < 3); /* and the sequence moves */
    /* the whole range is used: 200 draws spread over both halves */
    int low = 0, high = 0;
    for (int i = 0; i < 200; i++) {
        uint64_t d = cl_llm__jitter_ms(a.llm, 1000);
        CHECK(d >= 500 && d <= 1000);
        low += d < 750;
        high += d >= 750;
    }
    CHECK(low > 50 && high > 50);
    env_done(&a);
    env_done(&b);
}

CL_TEST_MAIN(test_transition_table, test_stream_reaches_done, test_not_streamed,
             test_cancel_inside_on_content, test_cancel_before_first_token,
             test_first_token_timeout, test_back_pressure, test_free_with_live_calls,
             test_scan_whitespace, test_relay_reads_spaced_chunks, test_jitter_per_context)
