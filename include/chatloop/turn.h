/**
 * turn.h — one chat turn, shared by every transport (REST, SSE, WebSocket).
 *
 *   LOADING ──loaded──> GENERATING ──answer complete──> STORING ──stored──> FINISHED
 *      │                    │ (tokens to the sink)         │                 (on_done)
 *      └──── error ─────────┴──── error ───────────────────┴──> FINISHED (on_error)
 *   any state ──cl_turn_cancel──> FINISHED (the sink hears nothing)
 *
 * LOADING is one statement: it checks the conversation belongs to the
 * caller (or creates the session-keyed one) and that the agent, when one
 * is given, is the caller's (NOT_FOUND "agent not found" otherwise, with
 * nothing stored), reads the agent, the last history_messages messages and
 * stores the user message — so the first
 * token never waits for a second round trip, and a crash mid-stream never
 * loses what the user sent. GENERATING streams the provider's answer.
 * STORING writes the assistant message and its usage event in one durable
 * statement keyed by ids made here (an outage delays it, a replay stores it
 * once); on_done fires only after the database confirmed that write or it
 * was spooled to disk (spool_dir). An answer that cannot be stored is
 * reported through on_error, never as done: DB_UNAVAILABLE when the write
 * queue is full or neither the database nor the disk took it, NOT_FOUND
 * when the conversation was deleted meanwhile (its usage is still billed),
 * PROCESSING_ERROR when the database refused it.
 *
 * An answer cut short (provider error, cancel) is stored with status error
 * or cancelled, with the usage the provider reported (or an estimate);
 * nobody waits for that write. LOADING has a deadline: request_timeout
 * (REQUEST_TIMEOUT); the provider call has its own timeouts (llm.h).
 *
 * The sink's callbacks fire on the loop, never inside cl_turn_start; after
 * on_done or on_error (exactly one of them, unless cancelled) the turn is
 * gone. cl_turn_cancel stops everything at once and fires nothing.
 */
#ifndef CHATLOOP_TURN_H
#define CHATLOOP_TURN_H

#include <jansson.h>

#include "chatloop/api.h"
#include "chatloop/app.h"
#include "chatloop/llm.h"
#include "chatloop/metrics.h"

typedef struct cl_turn cl_turn;

typedef struct cl_turn_sink {
    /** History loaded, generation starting: ids for `start` events. */
    void (*on_start)(void *ud, const char *conversation_id, const char *message_id);
    /** One content delta. */
    void (*on_token)(void *ud, const char *text, size_t len);
    /** The answer is complete; `data_json` is the SPEC §3 object
     *  {response, model_used, message_id, conversation_id, usage,
     *  documents_retrieved, tool_calls}. */
    void (*on_done)(void *ud, const char *data_json);
    /** The turn failed (before or during generation). */
    void (*on_error)(void *ud, cl_err_code code, const char *message);
} cl_turn_sink;

typedef struct cl_turn_input {
    const char *user_id;
    const char *api_key_id;         /* the API key the caller used (its usage names it), or NULL/"" */
    const char *conversation_id;    /* this conversation ... */
    const char *session_key;        /* ... or the one keyed by this (created on first use) */
    const char *agent_id;           /* the turn's agent (a UUID), else the conversation's */
    const char *message;            /* the user's new message */
    cl_llm_params params;           /* per-turn overrides (stream is ignored: always streamed upstream) */
    cl_transport transport;         /* how the client asked: the label of its metrics */
    /* Retrieval and tools (carried for issue 12; nothing reads them yet). */
    int has_k;
    int k;
    const char *collection;
    json_t *tools;                  /* borrowed: an array of tool set names */
} cl_turn_input;

/**
 * Starts a turn. Copies what it needs from `in`. Returns NULL only when out
 * of memory (nothing fires then). The sink never fires before this returns.
 */
cl_turn *cl_turn_start(cl_app *app, const cl_turn_input *in, const cl_turn_sink *sink, void *ud);

/** Back-pressure from a slow client: hold (1) or resume (0) the upstream. */
void cl_turn_pause(cl_turn *t, int on);

/** The client is gone or asked to stop: the upstream transfer is dropped in
 *  this loop iteration, the partial answer is stored as cancelled, and the
 *  sink hears nothing more. NULL is ignored. */
void cl_turn_cancel(cl_turn *t);

/** "LOADING", "GENERATING", ... (logs, tests). */
const char *cl_turn_state_name(const cl_turn *t);

/** For a turn that failed with RATE_LIMITED (read in the sink's on_error):
 *  which limit and when to retry. 1, or 0 for any other failure. */
int cl_turn_refusal(const cl_turn *t, cl_limit_kind *kind, long *retry_after_ms);

/** The largest max_tokens a turn or an agent may ask for. */
#define CL_TURN_MAX_TOKENS 131072

/**
 * Checks one model parameter shared by turns and agents — model,
 * temperature, max_tokens, top_p, reasoning_effort, k, collection, tools —
 * whose value `v` is not null. Returns 0 when valid, -1 with `why` naming
 * the field, 1 when `name` is none of these.
 */
int cl_turn_param_check(const char *name, json_t *v, char *why, size_t whylen);

/**
 * Validates a turn request body (SPEC §3: message, stream?, agent_id?, model?,
 * temperature?, max_tokens?, top_p?, reasoning_effort?, k?, collection?,
 * tools?) into `in` (pointers into `body`, which must outlive `in`).
 * Returns 0, or -1 with `field` and `why` describing the first problem.
 */
int cl_turn_parse_input(json_t *body, const cl_config *cfg, cl_turn_input *in, int *stream,
                        const char **field, char *why, size_t whylen);

#endif
