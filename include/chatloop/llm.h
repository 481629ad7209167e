/**
 * llm.h — calling the language model: one interface for every provider.
 *
 * A cl_llm_call is one completion request as the rest of chatloop sees it:
 * retries, fallback models and timeouts happen inside; the caller gets
 * callbacks. Two transports sit behind it:
 *   - `groq` / `openai`: any OpenAI-compatible /chat/completions endpoint
 *     through libcurl multi on the worker's loop (curl_loop.h);
 *   - `mock`: built in, deterministic, timers only, no network. It produces
 *     the same Groq-format chunks an upstream would and feeds them through
 *     the same decoder, so everything above it is exercised for real.
 *
 * The call's state machine (src/llm/call.c; the table in llm_internal.h):
 *
 *   NEW ──> REQUESTING ──first chunk──> STREAMING ──[DONE]──> DONE (on_done)
 *              │   ^ timer
 *              v   │      429/498/5xx/connect error before the first chunk:
 *            WAIT_RETRY   backoff, then the next fallback model, then FAILED
 *   any live state ──cl_llm_cancel──> CANCELLED (no callback fires afterwards)
 *   any live state ──timeout/error──> FAILED (on_error fires once)
 *
 * Timeouts run on one loop timer per call: connect (curl), first chunk
 * (first_token_timeout), idle between chunks (idle_chunk_timeout, reset by
 * every chunk so a healthy long stream is never cut), and the call's total
 * (turn_timeout). All end in CL_ERR_LLM_TIMEOUT.
 *
 * Ownership: the call owns its request JSON (a reference taken at start),
 * its transfer and its buffers; it frees itself after its final callback
 * (on_done or on_error) returns, or inside cl_llm_cancel. Callbacks may call
 * cl_llm_cancel on their own call.
 */
#ifndef CHATLOOP_LLM_H
#define CHATLOOP_LLM_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "chatloop/err.h"
#include "chatloop/config.h"
#include "chatloop/llm_wire.h"

typedef struct cl_llm cl_llm;           /* per-worker provider context */
typedef struct cl_llm_call cl_llm_call;

enum { CL_LLM_CHUNK_USAGE_ONLY = 1, CL_LLM_CHUNK_CONTENT = 2 };

typedef struct cl_llm_callbacks {
    /** Each SSE `data:` payload of a streamed answer, verbatim (the
     *  OpenAI-compatible relay forwards these). `flags`: CL_LLM_CHUNK_USAGE_ONLY
     *  marks the chunk with empty `choices` that carries only usage;
     *  CL_LLM_CHUNK_CONTENT one that carries answer text (the relay counts
     *  those as tokens). May be NULL. */
    void (*on_chunk)(void *ud, const char *data, size_t len, unsigned flags);
    /** Each content delta of choice 0. May be NULL. */
    void (*on_content)(void *ud, const char *text, size_t len);
    /** Success. `res` holds the whole answer, tool calls, finish reason,
     *  model and usage. For a non-streamed call, `body` is the upstream's
     *  raw completion JSON (NULL for the mock provider). */
    void (*on_done)(void *ud, const cl_llm_result *res, const char *body, size_t body_len);
    /** Failure, after retries and fallbacks. `upstream_status` is the HTTP
     *  status the upstream answered (0 if none); `partial` holds whatever
     *  streamed before the failure (its usage counts what was streamed). */
    void (*on_error)(void *ud, cl_err_code code, const char *message, int upstream_status,
                     const char *upstream_body, const cl_llm_result *partial);
} cl_llm_callbacks;

/**
 * Per-turn choices that override the configured defaults. Unset fields are
 * marked by the `has_` flags (or NULL pointers); the turn (SSE, WebSocket)
 * and /api/v1/llm/test build their requests with this.
 */
typedef struct cl_llm_params {
    const char *model;              /* NULL: cfg->model */
    int has_temperature;
    double temperature;
    int has_max_tokens;
    int max_tokens;
    int has_top_p;
    double top_p;
    const char *reasoning_effort;   /* NULL: cfg's ("" there means not sent) */
    json_t *tools;                  /* an OpenAI tools array (borrowed), or NULL */
    const char *tool_choice;        /* "auto", "none", "required", or NULL */
    int stream;
} cl_llm_params;

/**
 * Builds an OpenAI /chat/completions request object: `messages` (a JSON
 * array, borrowed: the request takes its own reference), the model, and
 * temperature / max_tokens / top_p / reasoning_effort from `p` or else from
 * the configuration; tools and tool_choice when given; `stream` and, for
 * streams, stream_options.include_usage. Returns a new reference, or NULL
 * when out of memory.
 */
json_t *cl_llm_build_request(const cl_config *cfg, json_t *messages, const cl_llm_params *p);

/** Creates the worker's provider context (a curl multi on `loop` for the
 *  network providers). NULL on failure. */
cl_llm *cl_llm_new(uv_loop_t *loop, const cl_config *cfg);
/** Cancels every call still running and releases the context. */
void cl_llm_free(cl_llm *llm);
/** Calls in flight (for draining and metrics). */
int cl_llm_active(const cl_llm *llm);
/** "groq", "openai" or "mock" — the provider actually in use. */
const char *cl_llm_provider_name(const cl_llm *llm);

/**
 * Starts a chat completion. `request` is an OpenAI request object
 * (messages, and any of model, temperature, max_tokens, top_p,
 * reasoning_effort, tools, tool_choice, ...); the call takes its own
 * reference. A missing model gets the configured one; `stream` in the
 * request chooses streaming; streaming calls always ask for usage
 * (stream_options.include_usage). Returns NULL when out of memory or when
 * the request cannot even be started; no callback fires in that case, and
 * none fires before cl_llm_start has returned.
 */
cl_llm_call *cl_llm_start(cl_llm *llm, json_t *request, const cl_llm_callbacks *cb, void *ud);
/**
 * The same, with the "messages" array given as JSON text (`request` then has
 * no "messages"): it goes into every attempt's body as it is, unparsed. The
 * caller vouches that it is one valid JSON array of messages (a turn's
 * history comes that way from PostgreSQL). `prompt_chars`, the bytes of
 * message text, stands in for the count estimates would take from the tree.
 */
cl_llm_call *cl_llm_start_messages(cl_llm *llm, json_t *request, const char *messages_json,
                                   size_t prompt_chars, const cl_llm_callbacks *cb, void *ud);

/** Stops a call now: its transfer is removed and its socket closed in this
 *  loop iteration; no callback fires afterwards. NULL is ignored. */
void cl_llm_cancel(cl_llm_call *call);

/** The model of the attempt in progress (changes on fallback). */
const char *cl_llm_call_model(const cl_llm_call *call);

/**
 * Back-pressure: with `on`, the call stops taking chunks from the upstream
 * (curl pauses the transfer, so TCP pushes back; the mock stops its timer);
 * with 0 it resumes. Call from outside the call's own callbacks to resume.
 */
void cl_llm_call_pause(cl_llm_call *call, int on);

/** The usage so far: reported by the upstream, or estimated from what
 *  streamed (for a caller about to cancel, which gets no callback). */
void cl_llm_call_usage(cl_llm_call *call, cl_llm_usage *out);

/** The retry-after (seconds) of the call's last upstream answer, 0 if none. */
double cl_llm_call_retry_after(const cl_llm_call *call);

/**
 * GET <base_url>/models with `api_key` (NULL: the configured key).
 * `done` gets the HTTP status (0 on a transport error) and the body. The
 * mock provider answers with its model list without a network call.
 * Returns NULL when out of memory; cl_llm_get_cancel stops it.
 */
typedef struct cl_llm_get cl_llm_get;
cl_llm_get *cl_llm_models(cl_llm *llm, const char *api_key,
                          void (*done)(void *ud, int status, const char *body, size_t len),
                          void *ud);
void cl_llm_get_cancel(cl_llm_get *g);

#endif
