/*
 * llm_internal.h — the call object shared by the state machine (call.c) and
 * the transports (curl in call.c, the built-in mock in mock.c). Not a public
 * header: everything outside src/llm/ goes through chatloop/llm.h.
 */
#ifndef CHATLOOP_LLM_INTERNAL_H
#define CHATLOOP_LLM_INTERNAL_H

#include "chatloop/curl_loop.h"
#include "chatloop/llm.h"
#include "chatloop/sse.h"

/*
 * The call's states. One setter (call_set_state in call.c) checks each
 * change against the table cl_llm__call_legal reads, logs it at debug level
 * and runs the entry work of the new state; nothing else writes `state`.
 *
 *   NEW ──> REQUESTING ──first chunk──> STREAMING ──> DONE | FAILED
 *            │   ^   └───(non-streamed, or [DONE] alone)──> DONE | FAILED
 *  retryable │   │ backoff timer
 *            v   │
 *           WAIT_RETRY
 *   any state but DONE and FAILED ──cancel──> CANCELLED
 *
 * Cancelled is a state, not a flag beside the state: "no callback may fire
 * any more" then has one test (cl_llm__call_over) instead of two that every
 * callback site had to remember, and the table forbids leaving it.
 */
typedef enum {
    CALL_NEW,           /* allocated in cl_llm_start, no attempt yet */
    CALL_REQUESTING,    /* an attempt is out and no chunk came yet: it may be retried */
    CALL_STREAMING,     /* a chunk arrived: no more retries or fallbacks */
    CALL_WAIT_RETRY,    /* the attempt failed before any chunk; the timer runs the backoff */
    CALL_DONE,          /* final: entry fires on_done, then tears the call down */
    CALL_FAILED,        /* final: entry fires on_error once, then tears the call down */
    CALL_CANCELLED,     /* final, no callback: cl_llm_cancel, cl_llm_free, or a start
                         * that failed inside cl_llm_start (which then returns NULL) */
    CALL__COUNT
} call_state;

/** 1 when the table allows from -> to. */
int cl_llm__call_legal(call_state from, call_state to);
/** "REQUESTING", ...; "?" out of range. */
const char *cl_llm__call_state_name(call_state s);

struct cl_llm {
    uv_loop_t *loop;
    const cl_config *cfg;
    cl_provider_kind provider;
    cl_curl_loop *curl;             /* NULL for the mock provider */
    char *chat_url;                 /* <base_url>/chat/completions */
    char *models_url;               /* <base_url>/models */
    char *auth_header;              /* "Authorization: Bearer ..." — secret, never logged */
    cl_llm_call *calls;             /* every live call, for cl_llm_free */
    int active;
    uint64_t next_call_id;          /* names calls in debug lines */
    uint64_t rng;                   /* retry jitter (splitmix64), seeded per context: the
                                     * global rand() is unseeded, so every worker drew the
                                     * same "random" backoffs and retried in lockstep */
    /* Easy handles kept for reuse: curl_easy_reset keeps a handle's
     * buffers, so a new request allocates (and faults in) nothing. */
    CURL *idle_easy[64];
    int nidle;
};

struct cl_llm_call {
    cl_llm *llm;
    cl_llm_call *prev, *next;
    json_t *request;
    char *messages_json;            /* the "messages" array as JSON text, spliced into
                                     * every attempt's body (NULL: in request) */
    size_t prompt_chars;            /* with messages_json: bytes of message text */
    cl_llm_callbacks cb;
    void *ud;
    call_state state;               /* written only by call_set_state (call.c) */
    uint32_t trail;                 /* states entered, 4 bits each, newest lowest (the
                                     * last eight): the path, for tests and core dumps */
    uint64_t id;
    int stream;
    int client_wants_usage;         /* stream_options.include_usage as the caller sent it */

    char **models;                  /* the request's model, then fallback_models */
    int nmodels, model_idx;
    int attempt;                    /* retries done for the current model */

    uv_timer_t timer;               /* timeouts and retry backoff */
    uv_timer_t mock_timer;          /* the mock transport's pacing */
    int pending_closes;
    uint64_t start_ms, attempt_ms, last_chunk_ms;
    int got_token;                  /* a chunk beyond the role-only opening one */
    int nchunks_attempt;
    int done_seen;                  /* "[DONE]" arrived */
    int in_start, start_failed;     /* the first attempt runs inside cl_llm_start */

    /* curl transport */
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    long http_status;
    double retry_after_s;           /* from the last answer's retry-after, or 0 */
    int in_curl_cb;                 /* inside a curl write/header callback */
    cl_buf resp;                    /* error body, or the non-streamed body */

    /* what DONE's or FAILED's entry reports: set by cl_llm__finish_ok and
     * cl_llm__fail just before the transition (borrowed, read only there) */
    struct {
        cl_err_code code;
        const char *msg, *body;
        size_t len;
        int status;
    } end;
    uint64_t retry_delay_ms;        /* WAIT_RETRY's backoff, set before entering it */

    /* a failure found inside a curl callback, reported when the transfer ends */
    int fail_code;                  /* cl_err_code + 1, 0 = none */
    char fail_msg[256];

    /* mock transport */
    int mock_i, mock_n, mock_prompt_tokens;
    unsigned long mock_serial;

    cl_sse_parser sse;
    cl_llm_result result;
    int64_t skipped_chunks;         /* relayed without a JSON parse (content only) */
    int64_t scanned_chunks;         /* content read by the scanner, not jansson */
    int want_pause;                 /* the consumer is congested: hold the upstream */
    int paused;                     /* the transfer (or mock timer) is held */
};

/** The call ended (DONE, FAILED or CANCELLED): no callback may fire any more. */
static inline int cl_llm__call_over(const cl_llm_call *c)
{
    return c->state == CALL_DONE || c->state == CALL_FAILED || c->state == CALL_CANCELLED;
}

/* call.c, for the transports: one decoded event of the stream ("[DONE]"
 * included). Returns 0, or -1 when the call failed or was cancelled. */
int cl_llm__on_event(cl_llm_call *c, const char *data, size_t len);
/* The transport finished cleanly (stream ended / whole body decoded). */
void cl_llm__finish_ok(cl_llm_call *c, const char *body, size_t len);
void cl_llm__fail(cl_llm_call *c, cl_err_code code, const char *msg, int status,
                  const char *body);
uint64_t cl_llm__now(const cl_llm *llm);
/** Bytes of message text in the request (for estimates). */
size_t cl_llm__prompt_chars(const cl_llm_call *c);

/* call.c: the byte filter that lets a plain content chunk skip the JSON
 * parse. CL_LLM_SCAN_DECODE: it may carry a finish reason, usage, tool calls
 * or an error (or is not an object): parse it. CL_LLM_SCAN_USAGE_ONLY: it
 * has "choices": [] (relayed only to clients that asked for usage). */
enum { CL_LLM_SCAN_DECODE = 1, CL_LLM_SCAN_USAGE_ONLY = 2 };
int cl_llm__scan_chunk(const char *data, size_t len);
/* The opening chunk that only announces the assistant's role (content ""
 * or null or absent, no tool call): not yet a token. */
int cl_llm__role_only(const char *data, size_t len);

/* call.c: the next value of the context's jitter generator, and a delay
 * drawn from it uniformly in [base_ms/2, base_ms]. Not for secrets. */
uint64_t cl_llm__random(cl_llm *llm);
uint64_t cl_llm__jitter_ms(cl_llm *llm, double base_ms);

/* call.c: a cleared easy handle from the pool (or a new one), and back. */
CURL *cl_llm__easy_get(cl_llm *llm);
void cl_llm__easy_put(cl_llm *llm, CURL *easy);

/* mock.c */
void cl_llm__mock_start(cl_llm_call *c);
void cl_llm__mock_stop(cl_llm_call *c);
void cl_llm__mock_resume(cl_llm_call *c);
char *cl_llm__mock_models_json(const cl_config *cfg);

#endif
