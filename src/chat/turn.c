/*
 * turn.c — the chat turn state machine (see turn.h).
 *
 * One object per turn, one setter (turn_set_state) that checks every
 * transition against turn_next[], logs it at debug level and runs the
 * state's entry work; nothing else assigns t->state. The turn owns one
 * timer (the LOADING deadline, then the STORING acknowledgement wait) and
 * is freed in that timer's close callback, never under a caller (STYLE 1).
 *
 * Persistence, in the order a client can observe it:
 *   - LOADING's one statement stores the user message, so from the first
 *     token on a crash cannot lose it;
 *   - the end of the turn writes the assistant message and its usage event
 *     in one durable statement keyed by ids made here (a replay after an
 *     outage stores them once). The usage event does not depend on the
 *     conversation: if it was deleted mid-turn the answer has nowhere to
 *     go, but its tokens are still billed;
 *   - only a complete answer is acknowledged (`done`), and only once that
 *     write is confirmed by the database or spooled to disk (db.h); a write
 *     refused for good, or one that could be neither, is an error instead.
 *   An answer cut short (upstream error, cancel, client gone) is stored the
 *   same way with status error or cancelled; nobody waits for that write.
 */
#include "turn_internal.h"

#include "chatloop/auth.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"

#include "chatloop/limits.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* STORING waits this long for the database to confirm the answer before it
 * spools the write to disk and acknowledges from there. */
#define ACK_WAIT_MS 1000

typedef enum { OUT_NONE, OUT_DONE, OUT_ERROR } turn_outcome;

/* Result columns of the load statements (SQL_LOAD_RESULT). */
enum {
    LC_ID, LC_SYSTEM_PROMPT, LC_MODEL, LC_HISTORY, LC_COUNT, LC_BYTES, LC_TEMPERATURE,
    LC_MAX_TOKENS, LC_TOP_P, LC_EFFORT, LC_K, LC_COLLECTION, LC_TOOLS, LC_AGENT_OK,
    LC_LIMIT_ALLOWED, LC_LIMIT_WHICH, LC_LIMIT_RETRY_MS, LC_LEASE_USER, LC_HOLDER, LC_LEASE
};

struct cl_turn {
    cl_app *app;
    turn_state state;
    cl_turn_sink sink;
    void *ud;
    uv_timer_t timer;               /* LOADING: request_timeout; STORING: ACK_WAIT_MS */
    cl_db_query *load;              /* LOADING */
    cl_llm_call *call;              /* GENERATING */
    cl_db_query *store;             /* STORING: the answer's write */
    turn_outcome outcome;           /* what FINISHED tells the sink */
    cl_err_code err_code;
    char err_msg[256];
    cl_buf done_json;               /* what on_done says */
    cl_llm_usage usage;             /* STORING: the answer's usage and model */
    char model_used[160];
    char user_id[37];
    char api_key_id[37];            /* "" when not called with a key */
    int limited;                    /* the load statement took a limit (limits.h) ... */
    int leased;                     /* ... and holds a place (given back by the store) */
    char holder[16];                /* that place's number (turn_slots) */
    cl_limit_kind refused_kind;     /* RATE_LIMITED: which limit, and when to retry */
    long refused_retry_ms;
    char conversation_id[37];
    char user_msg_id[37];
    char assistant_msg_id[37];
    char started_at[40];            /* ISO 8601, the user message's timestamp */
    char *session_key;
    char *message;
    char *model_override;
    char *effort_override;
    cl_llm_params params;
    char *conv_system_prompt;
    char *conv_model;
    char agent_id[37];              /* the turn's agent_id, "" when none was given */
    char *agent_effort;             /* the agent's reasoning_effort, when it is the one used */
    /* Retrieval and tools: the turn's, else the agent's. Carried for issue
     * 12 (RETRIEVING, TOOL_RUNNING); nothing reads them yet. */
    int k;
    char *collection;
    char *tools_json;               /* a JSON array of tool set names, or NULL */
    cl_buf content;                 /* the answer so far */
    int history_count;              /* history messages sent upstream */
    size_t prompt_chars;            /* bytes of message text sent upstream */
    int64_t prompt_estimate;
    cl_transport transport;         /* the metrics' label */
    uint64_t started_ns;            /* uv_hrtime at the start, for TTFT and duration */
    uint64_t first_token_ns;        /* 0 until a token was relayed */
};

/* ---- the transition table -------------------------------------------------- */

#define B(s) (1u << (s))
static const unsigned turn_next[TURN__COUNT] = {
    [TURN_LOADING] = B(TURN_GENERATING) | B(TURN_FINISHED),
    [TURN_GENERATING] = B(TURN_STORING) | B(TURN_FINISHED),
    [TURN_STORING] = B(TURN_FINISHED),
    [TURN_FINISHED] = 0,
};
#undef B

static const char *const turn_names[TURN__COUNT] = {"LOADING", "GENERATING", "STORING",
                                                    "FINISHED"};

const char *cl_turn__state_name(turn_state s)
{
    return s < TURN__COUNT ? turn_names[s] : "?";
}

int cl_turn__legal(turn_state from, turn_state to)
{
    return from < TURN__COUNT && to < TURN__COUNT && (turn_next[from] & (1u << to)) != 0;
}

static void enter_generating(cl_turn *t, const cl_db_res *loaded);
static void enter_storing(cl_turn *t);
static void enter_finished(cl_turn *t);

/* The one setter. `loaded` is LOADING's result, for GENERATING's entry. */
static void turn_set_state(cl_turn *t, turn_state to, const cl_db_res *loaded)
{
    turn_state from = t->state;
    assert(cl_turn__legal(from, to));
    if (!cl_turn__legal(from, to)) {
        CL_ERROR("turn %s: illegal transition %s -> %s", t->assistant_msg_id,
                 cl_turn__state_name(from), cl_turn__state_name(to));
        return;
    }
    CL_DEBUG("turn %s: %s -> %s", t->assistant_msg_id, cl_turn__state_name(from),
             cl_turn__state_name(to));
    t->state = to;
    switch (to) {
    case TURN_GENERATING:
        enter_generating(t, loaded);
        return;
    case TURN_STORING:
        enter_storing(t);
        return;
    case TURN_FINISHED:
        enter_finished(t);
        return;
    default:
        return;
    }
}

/* Ends the turn telling the sink `code` / `message`. */
static void fail(cl_turn *t, cl_err_code code, const char *message)
{
    t->outcome = OUT_ERROR;
    t->err_code = code;
    snprintf(t->err_msg, sizeof t->err_msg, "%s", message);
    turn_set_state(t, TURN_FINISHED, NULL);
}

/* ---- teardown ---------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    cl_turn *t = h->data;
    free(t->session_key);
    free(t->message);
    free(t->model_override);
    free(t->effort_override);
    free(t->conv_system_prompt);
    free(t->conv_model);
    free(t->agent_effort);
    free(t->collection);
    free(t->tools_json);
    cl_buf_release(&t->content);
    cl_buf_release(&t->done_json);
    free(t);
}

/* A turn that holds a lease but will store no answer gives it back (an
 * ordinary write: if it is lost, the lease lapses by itself). */
static void release_lease_of(cl_db *db, const char *user, const char *holder,
                             const char *lease)
{
    static const char sql[] = CL_SQL_END_TURN;
    const char *p[] = {user, holder, lease};
    cl_db_exec(db, sql, 3, p, CL_DB_PREPARED, NULL, NULL);
}

static void release_lease(cl_turn *t)
{
    if (!t->leased)
        return;
    t->leased = 0;
    release_lease_of(t->app->db, t->user_id, t->holder, t->assistant_msg_id);
}

/* The load of a turn that ended while it ran (the client left, the
 * deadline passed) still commits: if it took a lease, the row says whose,
 * and it goes back. */
static void on_orphan_load(void *ud, const cl_db_res *res)
{
    cl_db *db = ud;
    if (!res->ok || cl_db_rows(res) != 1)
        return;
    const char *allowed = cl_db_get(res, 0, LC_LIMIT_ALLOWED);
    const char *user = cl_db_get(res, 0, LC_LEASE_USER), *holder = cl_db_get(res, 0, LC_HOLDER);
    const char *lease = cl_db_get(res, 0, LC_LEASE);
    if (allowed && strcmp(allowed, "t") == 0 && user && holder && lease)
        release_lease_of(db, user, holder, lease);
}

/* FINISHED: whatever is still attached is let go (a durable write goes on
 * without us), the sink hears the outcome once, and the memory goes when
 * the timer's close callback runs — after every caller has returned. */
static void enter_finished(cl_turn *t)
{
    if (t->load && t->limited && t->app->w->cfg->max_turns_per_user > 0)
        cl_db_redirect(t->load, on_orphan_load, t->app->db);
    else
        cl_db_cancel(t->load);
    t->load = NULL;
    release_lease(t);
    cl_db_cancel(t->store);
    t->store = NULL;
    assert(!t->call);
    uv_close((uv_handle_t *)&t->timer, on_timer_closed);
    uint64_t now = uv_hrtime();
    cl_metrics_turn_end(t->transport,
                        t->outcome == OUT_DONE    ? CL_OUTCOME_COMPLETED
                        : t->outcome == OUT_ERROR ? CL_OUTCOME_FAILED
                                                  : CL_OUTCOME_CANCELLED,
                        (double)(now - t->started_ns) / 1e6,
                        t->first_token_ns ? (double)(t->first_token_ns - t->started_ns) / 1e6 : -1);
    if (t->outcome == OUT_DONE && t->sink.on_done) {
        const char *json = cl_buf_cstr(&t->done_json);
        t->sink.on_done(t->ud, json ? json : "{}");
    } else if (t->outcome == OUT_ERROR && t->sink.on_error) {
        t->sink.on_error(t->ud, t->err_code, t->err_msg);
    }
}

/* ---- storing the answer -------------------------------------------------------- */

/* The assistant message and its usage, in one statement, whether or not
 * the conversation still exists: the lock (FOR KEY SHARE) keeps it from
 * being deleted between the check and the insert, and the usage event's
 * conversation_id is NULL when it is gone. The result row says whether
 * the conversation (hence the message) was there. */
static const char SQL_STORE_ANSWER[] =
    "WITH c AS (SELECT id FROM conversations WHERE id = $2::uuid AND user_id = $3::uuid"
    " FOR KEY SHARE), "
    "m AS (INSERT INTO messages (id, conversation_id, user_id, role, content, status, tool_calls,"
    "  model, prompt_tokens, completion_tokens, error, created_at)"
    " SELECT $1::uuid, c.id, $3::uuid, 'assistant', $4, $5, $6::jsonb, $7, $8::int, $9::int,"
    "  $10, $11::timestamptz FROM c"
    " ON CONFLICT (id) DO NOTHING), "
    "u AS (INSERT INTO usage_events (user_id, idempotency_key, conversation_id, message_id, model,"
    "  prompt_tokens, completion_tokens, total_tokens, estimated, source, api_key_id)"
    " SELECT $3::uuid, $12, (SELECT id FROM c), $1::uuid, $7, $8::int, $9::int,"
    "  $8::int + $9::int, $13::boolean, 'chat', $15::uuid WHERE $14::boolean"
    " ON CONFLICT (idempotency_key) DO NOTHING), "
    /* the turn's place under max_turns_per_user, given back with its answer */
    "rl AS (UPDATE turn_slots SET lease = NULL"
    " WHERE user_id = $3::uuid AND slot = $16::int AND lease = $1::text) "
    "SELECT count(*) FROM c";

/* PostgreSQL text cannot hold NUL (and a C string parameter would end at
 * one): a model that emits U+0000 gets U+FFFD in the stored copy, so the
 * rest of the answer is not silently dropped. NULL when there is none. */
static char *without_nul(const cl_buf *b)
{
    if (!b->len || !memchr(b->data, 0, b->len))
        return NULL;
    cl_buf out;
    cl_buf_init(&out, 0);
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i])
            cl_buf_append_char(&out, b->data[i]);
        else
            cl_buf_append(&out, "\xEF\xBF\xBD", 3);
    }
    const char *s = cl_buf_cstr(&out);
    char *copy = s ? strdup(s) : NULL;
    cl_buf_release(&out);
    return copy;
}

static void on_background_write(void *ud, const cl_db_res *res)
{
    (void)ud;
    if (!res->ok)
        CL_ERROR("storing a chat answer failed: %s%s%s", res->error ? res->error : "?",
                 res->sqlstate[0] ? " SQLSTATE " : "", res->sqlstate);
}

static cl_db_query *store_answer(cl_turn *t, const char *status, const char *model,
                                 const cl_llm_usage *u, const char *error, cl_db_cb cb, void *ud)
{
    char created[40], prompt[24], completion[24], key[48];
    cl_iso_now(created);
    snprintf(prompt, sizeof prompt, "%lld", (long long)u->prompt_tokens);
    snprintf(completion, sizeof completion, "%lld", (long long)u->completion_tokens);
    snprintf(key, sizeof key, "turn:%s", t->assistant_msg_id);
    /* usage is recorded when anything was spent: a reported usage, or text */
    int spend = u->present || u->completion_tokens > 0;
    char *clean = without_nul(&t->content);
    const char *content = clean ? clean : cl_buf_cstr(&t->content);
    const char *p[] = {t->assistant_msg_id, t->conversation_id, t->user_id, content ? content : "",
                       status, NULL, model, prompt, completion, error, created, key,
                       u->present ? "false" : "true", spend ? "true" : "false",
                       t->api_key_id[0] ? t->api_key_id : NULL,
                       t->leased ? t->holder : NULL};
    t->leased = 0;
    cl_db_query *q = cl_db_exec(t->app->db, SQL_STORE_ANSWER, 16, p, CL_DB_DURABLE | CL_DB_PREPARED,
                                cb ? cb : on_background_write, ud);
    free(clean);
    if (!q)
        CL_ERROR("turn %s: the answer could not be queued for storage (db_write_queue is full)",
                 t->assistant_msg_id);
    return q;
}

static void on_answer_stored(void *ud, const cl_db_res *res)
{
    cl_turn *t = ud;
    t->store = NULL;
    if (res->ok && cl_db_rows(res) == 1 && strcmp(cl_db_get(res, 0, 0), "0") == 0) {
        fail(t, CL_ERR_NOT_FOUND, "the conversation was deleted while the answer was generated: "
                                  "the answer was not stored (its usage was recorded)");
        return;
    }
    if (!res->ok) {
        on_background_write(NULL, res);
        fail(t, res->unavailable ? CL_ERR_DB_UNAVAILABLE : CL_ERR_PROCESSING_ERROR,
             "the answer could not be stored");
        return;
    }
    t->outcome = OUT_DONE;
    turn_set_state(t, TURN_FINISHED, NULL);
}

static void on_answer_spooled(void *ud, int ok)
{
    cl_turn *t = ud;
    if (t->state != TURN_STORING)
        return;
    if (!ok) {
        /* Neither the database nor the disk has it: not acknowledged. The
         * write stays queued (it lands when the database is back). */
        fail(t, CL_ERR_DB_UNAVAILABLE,
             "the database did not confirm the answer and spool_dir could not keep it; "
             "it is queued, but not acknowledged");
        return;
    }
    t->outcome = OUT_DONE;
    turn_set_state(t, TURN_FINISHED, NULL); /* the write goes on without us */
}

static void on_ack_wait(uv_timer_t *h)
{
    cl_turn *t = h->data;
    if (t->state == TURN_STORING && t->store) {
        CL_INFO("turn %s: the database has not confirmed the answer within %dms; spooling it",
                t->assistant_msg_id, ACK_WAIT_MS);
        cl_db_spool(t->store, on_answer_spooled, t);
    }
}

/* STORING: the complete answer's write; acknowledged when the database
 * confirms it, or when it is on disk — at once if the database is down,
 * else after ACK_WAIT_MS without an answer. */
static void enter_storing(cl_turn *t)
{
    t->store = store_answer(t, "complete", t->model_used, &t->usage, NULL, on_answer_stored, t);
    if (!t->store) {
        fail(t, CL_ERR_DB_UNAVAILABLE,
             "the database write queue is full (db_write_queue): the answer was not stored");
        return;
    }
    if (!cl_db_available(t->app->db))
        cl_db_spool(t->store, on_answer_spooled, t);
    else
        uv_timer_start(&t->timer, on_ack_wait, ACK_WAIT_MS, 0);
}

/* ---- generation -------------------------------------------------------------- */

static void on_content(void *ud, const char *text, size_t len)
{
    cl_turn *t = ud;
    if (!t->first_token_ns)
        t->first_token_ns = uv_hrtime();
    cl_metrics_tokens(t->transport, 1);
    cl_buf_append(&t->content, text, len);
    if (t->sink.on_token)
        t->sink.on_token(t->ud, text, len);
}

/* When the provider could not say (cut short, cancelled), estimate. */
static void usage_or_estimate(cl_turn *t, const cl_llm_result *res, cl_llm_usage *u)
{
    if (res && (res->usage.present || res->usage.estimated)) {
        *u = res->usage;
        return;
    }
    memset(u, 0, sizeof *u);
    u->prompt_tokens = t->prompt_estimate;
    u->completion_tokens = (int64_t)(t->content.len + 3) / 4;
    u->total_tokens = u->prompt_tokens + u->completion_tokens;
    u->estimated = 1;
}

static void on_llm_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    cl_turn *t = ud;
    (void)body;
    (void)len;
    t->call = NULL;
    const char *model = res->model[0] ? res->model : t->params.model;
    snprintf(t->model_used, sizeof t->model_used, "%s", model ? model : "");
    usage_or_estimate(t, res, &t->usage);
    cl_buf *d = &t->done_json;
    cl_buf_append_str(d, "{\"response\":");
    cl_jsonw_str(d, t->content.data ? t->content.data : "", t->content.len);
    cl_buf_append_str(d, ",\"model_used\":");
    cl_jsonw_cstr(d, model);
    cl_buf_printf(d, ",\"message_id\":\"%s\",\"conversation_id\":\"%s\",\"usage\":",
                  t->assistant_msg_id, t->conversation_id);
    cl_llm_usage_json(&t->usage, d);
    cl_buf_printf(d, ",\"documents_retrieved\":[],\"tool_calls\":[],\"history_messages\":%d}",
                  t->history_count);
    turn_set_state(t, TURN_STORING, NULL);
}

static void on_llm_error(void *ud, cl_err_code code, const char *message, int status,
                         const char *upstream_body, const cl_llm_result *partial)
{
    cl_turn *t = ud;
    (void)status;
    (void)upstream_body;
    t->call = NULL;
    cl_llm_usage u;
    usage_or_estimate(t, partial, &u);
    store_answer(t, "error", t->params.model ? t->params.model : "", &u, message, NULL, NULL);
    fail(t, code, message);
}

static const cl_llm_callbacks turn_llm_callbacks = {
    .on_content = on_content,
    .on_done = on_llm_done,
    .on_error = on_llm_error,
};

/* The prompt: system prompt (conversation's, else agent's), the history
 * oldest first, then the new message, as the JSON text of a "messages"
 * array. The history is PostgreSQL's own JSON (json_agg), spliced in
 * unparsed: parsing it into a tree only to write it out again was a fifth
 * of a turn's CPU in a long conversation. Returns 0, or -1 when out of
 * memory or when the history is not an array. */
static int build_messages(cl_turn *t, const cl_db_res *res, cl_buf *out)
{
    const char *hist = cl_db_get(res, 0, LC_HISTORY);
    size_t hlen = hist ? strlen(hist) : 0;
    /* strip the brackets (and PostgreSQL's whitespace) to splice the elements */
    while (hlen && (hist[hlen - 1] == ' ' || hist[hlen - 1] == '\n'))
        hlen--;
    while (hlen && (*hist == ' ' || *hist == '\n')) {
        hist++;
        hlen--;
    }
    if (hlen < 2 || hist[0] != '[' || hist[hlen - 1] != ']')
        return -1;
    hist++;
    hlen -= 2;
    size_t bytes = 0;
    int rc = cl_buf_append_char(out, '[');
    if (t->conv_system_prompt && *t->conv_system_prompt) {
        rc |= cl_buf_append_str(out, "{\"role\":\"system\",\"content\":");
        rc |= cl_jsonw_cstr(out, t->conv_system_prompt);
        rc |= cl_buf_append_str(out, "},");
        bytes += strlen(t->conv_system_prompt);
    }
    int n = atoi(cl_db_get(res, 0, LC_COUNT));
    if (n > 0) {
        rc |= cl_buf_append(out, hist, hlen);
        rc |= cl_buf_append_char(out, ',');
    }
    rc |= cl_buf_append_str(out, "{\"role\":\"user\",\"content\":");
    rc |= cl_jsonw_cstr(out, t->message);
    rc |= cl_buf_append_str(out, "}]");
    t->history_count = n;
    bytes += strtoull(cl_db_get(res, 0, LC_BYTES), NULL, 10) + strlen(t->message);
    t->prompt_chars = bytes;
    t->prompt_estimate = (int64_t)(bytes / 4) + 1;
    return rc ? -1 : 0;
}

/* The agent's parameters where the turn gave none (turn > conversation >
 * agent > configuration; the conversation holds only a system prompt and a
 * model, which the load statement already chose between). */
static void apply_agent(cl_turn *t, const cl_db_res *res)
{
    const char *v;
    if (!t->params.has_temperature && (v = cl_db_get(res, 0, LC_TEMPERATURE))) {
        t->params.has_temperature = 1;
        t->params.temperature = strtod(v, NULL);
    }
    if (!t->params.has_max_tokens && (v = cl_db_get(res, 0, LC_MAX_TOKENS))) {
        t->params.has_max_tokens = 1;
        t->params.max_tokens = atoi(v);
    }
    if (!t->params.has_top_p && (v = cl_db_get(res, 0, LC_TOP_P))) {
        t->params.has_top_p = 1;
        t->params.top_p = strtod(v, NULL);
    }
    if (!t->params.reasoning_effort && (v = cl_db_get(res, 0, LC_EFFORT))) {
        t->agent_effort = strdup(v);
        t->params.reasoning_effort = t->agent_effort;
    }
    if (t->k < 0 && (v = cl_db_get(res, 0, LC_K)))
        t->k = atoi(v);
    if (!t->collection && (v = cl_db_get(res, 0, LC_COLLECTION)))
        t->collection = strdup(v);
    if (!t->tools_json && (v = cl_db_get(res, 0, LC_TOOLS)))
        t->tools_json = strdup(v);
    if (t->k < 0)
        t->k = 0;
}

/* GENERATING: the conversation is loaded and the user message stored;
 * start the provider call and tell the sink the ids. */
static void enter_generating(cl_turn *t, const cl_db_res *res)
{
    uv_timer_stop(&t->timer);
    snprintf(t->conversation_id, sizeof t->conversation_id, "%s", cl_db_get(res, 0, LC_ID));
    const char *sp = cl_db_get(res, 0, LC_SYSTEM_PROMPT), *model = cl_db_get(res, 0, LC_MODEL);
    t->conv_system_prompt = sp ? strdup(sp) : NULL;
    t->conv_model = model ? strdup(model) : NULL;
    if (!t->params.model && t->conv_model && *t->conv_model)
        t->params.model = t->conv_model;
    apply_agent(t, res);
    cl_buf msgs;
    cl_buf_init(&msgs, 0);
    t->params.stream = 1;
    json_t *req = build_messages(t, res, &msgs) == 0
                      ? cl_llm_build_request(t->app->w->cfg, NULL, &t->params)
                      : NULL;
    if (!req) {
        cl_buf_release(&msgs);
        fail(t, CL_ERR_PROCESSING_ERROR, "cannot build the request");
        return;
    }
    if (!t->params.model)
        t->params.model = t->app->w->cfg->model;
    t->call = cl_llm_start_messages(t->app->llm, req, cl_buf_cstr(&msgs), t->prompt_chars,
                                    &turn_llm_callbacks, t);
    json_decref(req);
    cl_buf_release(&msgs);
    if (!t->call) {
        fail(t, CL_ERR_PROCESSING_ERROR, "cannot start the model call");
        return;
    }
    if (t->sink.on_start)
        t->sink.on_start(t->ud, t->conversation_id, t->assistant_msg_id);
}

/* ---- loading ------------------------------------------------------------------------ */

static void on_loaded(void *ud, const cl_db_res *res)
{
    cl_turn *t = ud;
    t->load = NULL;
    if (!res->ok) {
        if (res->unavailable)
            fail(t, CL_ERR_DB_UNAVAILABLE,
                 res->timed_out ? "the database did not answer within db_query_timeout; try again"
                                : "the database is unavailable; try again shortly");
        else if (strcmp(res->sqlstate, "22P02") == 0)
            fail(t, CL_ERR_NOT_FOUND, "conversation not found");
        else if (strcmp(res->sqlstate, "23503") == 0 && t->agent_id[0])
            /* the agent was deleted between the check and the new
             * conversation's insert (its foreign key) */
            fail(t, CL_ERR_NOT_FOUND, "agent not found");
        else {
            CL_ERROR("loading a conversation failed: %s", res->error);
            fail(t, CL_ERR_PROCESSING_ERROR, "internal error while loading the conversation");
        }
        return;
    }
    if (cl_db_rows(res) != 1) {
        fail(t, CL_ERR_PROCESSING_ERROR, "internal error while loading the conversation");
        return;
    }
    const char *agent_ok = cl_db_get(res, 0, LC_AGENT_OK);
    if (!agent_ok || strcmp(agent_ok, "t") != 0) {
        fail(t, CL_ERR_NOT_FOUND, "agent not found");
        return;
    }
    const char *allowed = cl_db_get(res, 0, LC_LIMIT_ALLOWED);
    if (allowed && strcmp(allowed, "f") == 0) {
        const cl_config *cfg = t->app->w->cfg;
        const char *ms = cl_db_get(res, 0, LC_LIMIT_RETRY_MS);
        t->refused_kind = cl_limits_kind(cl_db_get(res, 0, LC_LIMIT_WHICH));
        t->refused_retry_ms = ms ? atol(ms) : 1000;
        char msg[200];
        cl_limits_message(cfg, t->refused_kind, cl_limits_retry_s(t->refused_retry_ms), msg,
                          sizeof msg);
        cl_metrics_rate_limited(t->refused_kind);
        fail(t, CL_ERR_RATE_LIMITED, msg);
        return;
    }
    /* a lease is held from here until the answer's store gives it back */
    const char *holder = cl_db_get(res, 0, LC_HOLDER);
    t->leased = allowed && holder != NULL;
    if (holder)
        snprintf(t->holder, sizeof t->holder, "%s", holder);
    if (!cl_db_get(res, 0, LC_ID)) {
        release_lease(t);
        fail(t, CL_ERR_NOT_FOUND, "conversation not found");
        return;
    }
    turn_set_state(t, TURN_GENERATING, res);
}

static void on_load_deadline(uv_timer_t *h)
{
    cl_turn *t = h->data;
    if (t->state == TURN_LOADING)
        fail(t, CL_ERR_REQUEST_TIMEOUT,
             "the conversation could not be loaded within request_timeout");
}

/* The history, oldest first, as the JSON text of a "messages" array (sent
 * upstream as it is: see build_messages), with its count and bytes of text.
 * It is read from the statement's snapshot, so the user message stored by
 * the same statement is not part of it. */
#define SQL_HISTORY                                                                                \
    " CROSS JOIN LATERAL (SELECT"                                                                  \
    " coalesce(json_agg(json_build_object('role', x.role, 'content', x.content)"                  \
    "  ORDER BY x.created_at, x.id), '[]'::json) AS msgs,"                                         \
    " count(*) AS n, coalesce(sum(octet_length(x.content)), 0) AS bytes"                           \
    " FROM (SELECT role, content, created_at, id FROM messages"                                    \
    "  WHERE conversation_id = c.id AND role IN ('user', 'assistant') AND content <> ''"           \
    "  ORDER BY created_at DESC, id DESC LIMIT $3::int) x) h"

/* The user message, stored by the statement that loads the conversation. */
#define SQL_STORE_USER_MESSAGE(user, id, content, at)                                              \
    "um AS (INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at)" \
    " SELECT " id "::uuid, c.id, " user "::uuid, 'user', " content ", 'complete', " at             \
    "::timestamptz FROM c ON CONFLICT (id) DO NOTHING) "

/* The turn's agent, when one was given: `ok` is false when it is not one
 * of the caller's agents, and then the statement neither touches the
 * conversation nor stores the message (each write below is conditional on
 * it), so a bad agent_id leaves nothing behind. */
#define SQL_AGENT_CHECK(user, agent)                                                               \
    "WITH ag AS (SELECT " agent "::uuid IS NULL OR EXISTS (SELECT 1 FROM agents"                  \
    " WHERE id = " agent "::uuid AND user_id = " user "::uuid) AS ok), "

/* The rate limits (limits.h), checked by the same statement: `lim` takes
 * a turn from the user's bucket and a lease under max_turns_per_user — only
 * when the agent is fine (a pseudo-constant WHERE: the function is not
 * called otherwise) — and `gate` is what every write below waits on, so a
 * refused turn stores nothing. $8..$12: interval, bucket, max, lapse
 * seconds, the lease (the assistant message's id). Without limits, `lim`
 * is a row of NULLs and costs nothing. */
#define SQL_LIMIT_GATE(user)                                                                       \
    "lim AS (SELECT * FROM " CL_SQL_TAKE_TURN(user, "$8", "$9", "$10", "$12", "$11")              \
    " WHERE (SELECT ok FROM ag)), "                                                                \
    "gate AS (SELECT (SELECT ok FROM ag) AND coalesce((SELECT allowed FROM lim), true) AS ok), "
#define SQL_NO_LIMIT_GATE                                                                          \
    "lim AS (SELECT NULL::boolean AS allowed, NULL::text AS which, NULL::int AS retry_after_ms,"  \
    " NULL::text AS holder), "                                                                     \
    "gate AS (SELECT ok FROM ag), "

/* One row, always: the conversation (NULL id when it is not the caller's
 * or the turn was refused), the prompt and model (conversation's, else
 * the agent's), the history, the agent's parameters (the turn's own win
 * over them, in enter_generating), whether the given agent was found, and
 * the limit's verdict with the lease (see on_orphan_load). The agent is
 * the turn's, else the conversation's. */
#define SQL_LOAD_RESULT(user, agent, lease)                                                        \
    "SELECT c.id, coalesce(c.system_prompt, a.system_prompt), coalesce(c.model, a.model),"        \
    " h.msgs, h.n, h.bytes, a.temperature, a.max_tokens, a.top_p, a.reasoning_effort, a.k,"       \
    " a.collection, a.tools::text, ag.ok, lim.allowed, lim.which, lim.retry_after_ms,"            \
    " " user "::text, lim.holder, " lease "::text"                                                 \
    " FROM ag LEFT JOIN lim ON true LEFT JOIN c ON true"                                           \
    " LEFT JOIN agents a ON a.id = coalesce(" agent "::uuid, c.agent_id)"                          \
    "  AND a.user_id = " user "::uuid" SQL_HISTORY

#define SQL_BY_ID_BODY                                                                             \
    "c AS (UPDATE conversations SET updated_at = now()"                                           \
    " WHERE id = $1::uuid AND user_id = $2::uuid AND (SELECT ok FROM gate)"                       \
    " RETURNING id, system_prompt, model, agent_id), "                                             \
    SQL_STORE_USER_MESSAGE("$2", "$4", "$5", "$6")

/* A conversation created here with an agent keeps it for later turns. */
#define SQL_BY_SESSION_BODY                                                                        \
    "c AS (INSERT INTO conversations (user_id, session_key, title, agent_id)"                      \
    " SELECT $1::uuid, $2, left($4, 80), $7::uuid WHERE (SELECT ok FROM gate)"                    \
    " ON CONFLICT (user_id, session_key) DO UPDATE SET updated_at = now()"                         \
    " RETURNING id, system_prompt, model, agent_id), "                                             \
    SQL_STORE_USER_MESSAGE("$1", "$5", "$4", "$6")

static const char SQL_LOAD_BY_ID[] =
    SQL_AGENT_CHECK("$2", "$7") SQL_NO_LIMIT_GATE SQL_BY_ID_BODY
    SQL_LOAD_RESULT("$2", "$7", "NULL");
static const char SQL_LOAD_BY_SESSION[] =
    SQL_AGENT_CHECK("$1", "$7") SQL_NO_LIMIT_GATE SQL_BY_SESSION_BODY
    SQL_LOAD_RESULT("$1", "$7", "NULL");
static const char SQL_LOAD_BY_ID_LIMITED[] =
    SQL_AGENT_CHECK("$2", "$7") SQL_LIMIT_GATE("$2") SQL_BY_ID_BODY
    SQL_LOAD_RESULT("$2", "$7", "$12");
static const char SQL_LOAD_BY_SESSION_LIMITED[] =
    SQL_AGENT_CHECK("$1", "$7") SQL_LIMIT_GATE("$1") SQL_BY_SESSION_BODY
    SQL_LOAD_RESULT("$1", "$7", "$12");

/* ---- public ------------------------------------------------------------------------ */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

cl_turn *cl_turn_start(cl_app *app, const cl_turn_input *in, const cl_turn_sink *sink, void *ud)
{
    cl_turn *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->app = app;
    t->sink = *sink;
    t->ud = ud;
    t->state = TURN_LOADING;
    cl_buf_init(&t->content, 0);
    cl_buf_init(&t->done_json, 0);
    snprintf(t->user_id, sizeof t->user_id, "%s", in->user_id);
    snprintf(t->api_key_id, sizeof t->api_key_id, "%s", in->api_key_id ? in->api_key_id : "");
    t->message = strdup(in->message);
    t->session_key = dup_or_null(in->session_key);
    t->params = in->params;
    t->model_override = dup_or_null(in->params.model);
    t->effort_override = dup_or_null(in->params.reasoning_effort);
    t->params.model = t->model_override;
    t->params.reasoning_effort = t->effort_override;
    t->params.tools = NULL; /* tools arrive with their issue */
    if (in->agent_id)
        snprintf(t->agent_id, sizeof t->agent_id, "%s", in->agent_id);
    t->k = in->has_k ? in->k : -1;
    t->collection = dup_or_null(in->collection);
    t->tools_json = in->tools ? json_dumps(in->tools, JSON_COMPACT) : NULL;
    uv_timer_init(app->w->loop, &t->timer);
    t->timer.data = t;
    if (!t->message || cl_uuid_v4(t->user_msg_id) != 0 || cl_uuid_v4(t->assistant_msg_id) != 0) {
        uv_close((uv_handle_t *)&t->timer, on_timer_closed);
        return NULL;
    }
    cl_iso_now(t->started_at);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", app->w->cfg->history_messages);
    const char *agent = t->agent_id[0] ? t->agent_id : NULL;
    cl_turn_limit_params lp;
    t->limited = cl_limits_turns_on(app->w->cfg);
    cl_limits_turn_params(app->w->cfg, &lp);
    int np = t->limited ? 12 : 7;
    if (in->conversation_id) {
        snprintf(t->conversation_id, sizeof t->conversation_id, "%s", in->conversation_id);
        const char *p[] = {t->conversation_id, t->user_id, limit, t->user_msg_id, t->message,
                           t->started_at, agent, lp.interval_us, lp.burst_us, lp.max, lp.lease_s,
                           t->assistant_msg_id};
        t->load = cl_db_exec(app->db, t->limited ? SQL_LOAD_BY_ID_LIMITED : SQL_LOAD_BY_ID, np, p,
                             CL_DB_PREPARED, on_loaded, t);
    } else {
        const char *p[] = {t->user_id, t->session_key, limit, t->message, t->user_msg_id,
                           t->started_at, agent, lp.interval_us, lp.burst_us, lp.max, lp.lease_s,
                           t->assistant_msg_id};
        t->load = cl_db_exec(app->db, t->limited ? SQL_LOAD_BY_SESSION_LIMITED : SQL_LOAD_BY_SESSION,
                             np, p, CL_DB_PREPARED, on_loaded, t);
    }
    if (!t->load) {
        uv_close((uv_handle_t *)&t->timer, on_timer_closed);
        return NULL;
    }
    uv_timer_start(&t->timer, on_load_deadline, app->w->cfg->request_timeout_ms, 0);
    t->transport = in->transport;
    t->started_ns = uv_hrtime();
    cl_metrics_turn_begin(t->transport);
    return t;
}

void cl_turn_pause(cl_turn *t, int on)
{
    if (t && t->state == TURN_GENERATING)
        cl_llm_call_pause(t->call, on);
}

void cl_turn_cancel(cl_turn *t)
{
    if (!t || t->state == TURN_FINISHED)
        return;
    t->outcome = OUT_NONE;
    if (t->state == TURN_GENERATING) {
        /* What the upstream reported so far (or an estimate of it), then
         * drop it now; keep what streamed, marked cancelled. */
        cl_llm_usage u;
        cl_llm_call_usage(t->call, &u);
        const char *model = cl_llm_call_model(t->call);
        char model_copy[160];
        snprintf(model_copy, sizeof model_copy, "%s", model ? model : "");
        cl_llm_cancel(t->call);
        t->call = NULL;
        store_answer(t, "cancelled", model_copy, &u, NULL, NULL, NULL);
    }
    /* LOADING: the statement may still commit the user message; STORING:
     * the answer's write goes on (durable). Nobody waits for either. */
    turn_set_state(t, TURN_FINISHED, NULL);
}

int cl_turn_refusal(const cl_turn *t, cl_limit_kind *kind, long *retry_after_ms)
{
    if (!t || t->err_code != CL_ERR_RATE_LIMITED || !t->limited)
        return 0;
    *kind = t->refused_kind;
    *retry_after_ms = t->refused_retry_ms;
    return 1;
}

const char *cl_turn_state_name(const cl_turn *t)
{
    return cl_turn__state_name(t->state);
}
