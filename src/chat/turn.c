/*
 * turn.c — the chat turn state machine (see turn.h).
 *
 * One object per turn, one exit (turn_end): it stores the assistant
 * message with whatever status the turn ended in, then frees everything.
 * The two database writes are durable (CL_DB_DURABLE) and keyed by ids made
 * here, so a database outage delays them but never loses or doubles them;
 * they complete on their own after the turn object is gone.
 */
#include "chatloop/turn.h"
#include "chatloop/auth.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

typedef enum { TURN_LOADING, TURN_GENERATING, TURN_STORING, TURN_FINISHED } turn_state;

struct cl_turn {
    cl_app *app;
    turn_state state;
    cl_turn_sink sink;
    void *ud;
    cl_db_query *load;
    cl_db_query *store;             /* STORING: the answer's write, acknowledged when it is in */
    cl_buf done_json;               /* STORING: what on_done will say */
    struct ack_timer *ack_timer;    /* STORING: acknowledges anyway if the write is held up */
    cl_llm_call *call;
    char user_id[37];
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
    cl_buf content;                 /* the answer so far */
    int history_count;              /* history messages sent upstream */
    size_t prompt_chars;            /* bytes of message text sent upstream */
    int64_t prompt_estimate;
};

/* ---- small helpers --------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void turn_free(cl_turn *t)
{
    free(t->session_key);
    free(t->message);
    free(t->model_override);
    free(t->effort_override);
    free(t->conv_system_prompt);
    free(t->conv_model);
    cl_buf_release(&t->content);
    cl_buf_release(&t->done_json);
    free(t);
}

/* Durable writes outlive the turn: their callback has no turn to report
 * to, only a log line when the database refused the write for good. */
static void on_write_done(void *ud, const cl_db_res *res)
{
    (void)ud;
    if (!res->ok)
        CL_ERROR("storing a chat message failed: %s%s%s", res->error ? res->error : "?",
                 res->sqlstate[0] ? " SQLSTATE " : "", res->sqlstate);
}

/* The user message, the answer and its usage, in one statement: all or nothing. */
static const char SQL_INSERT_ASSISTANT[] =
    "WITH um AS ("
    " INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at)"
    " VALUES ($15::uuid, $2::uuid, $3::uuid, 'user', $16, 'complete', $17::timestamptz)"
    " ON CONFLICT (id) DO NOTHING), "
    "m AS ("
    " INSERT INTO messages (id, conversation_id, user_id, role, content, status, tool_calls,"
    "  model, prompt_tokens, completion_tokens, error, created_at)"
    " VALUES ($1::uuid, $2::uuid, $3::uuid, 'assistant', $4, $5, $6::jsonb, $7, $8::int, $9::int,"
    "  $10, $11::timestamptz)"
    " ON CONFLICT (id) DO NOTHING RETURNING id)"
    " INSERT INTO usage_events (user_id, idempotency_key, conversation_id, message_id, model,"
    "  prompt_tokens, completion_tokens, total_tokens, estimated, source)"
    " SELECT $3::uuid, $12, $2::uuid, $1::uuid, $7, $8::int, $9::int, $8::int + $9::int,"
    "  $13::boolean, 'chat' WHERE $14::boolean"
    " ON CONFLICT (idempotency_key) DO NOTHING";

static cl_db_query *store_assistant_message(cl_turn *t, const char *status, const char *model,
                                            const cl_llm_usage *u, const char *error,
                                            cl_db_cb cb, void *ud)
{
    char created[40], prompt[24], completion[24], key[48];
    cl_iso_now(created);
    snprintf(prompt, sizeof prompt, "%lld", (long long)u->prompt_tokens);
    snprintf(completion, sizeof completion, "%lld", (long long)u->completion_tokens);
    snprintf(key, sizeof key, "turn:%s", t->assistant_msg_id);
    /* usage is recorded when anything was spent: a reported usage, or text */
    int spend = u->present || u->completion_tokens > 0;
    const char *content = cl_buf_cstr(&t->content);
    const char *p[] = {t->assistant_msg_id, t->conversation_id, t->user_id, content ? content : "",
                       status, NULL, model, prompt, completion, error, created, key,
                       u->present ? "false" : "true", spend ? "true" : "false",
                       t->user_msg_id, t->message, t->started_at};
    cl_db_query *q = cl_db_exec(t->app->db, SQL_INSERT_ASSISTANT, 17, p, CL_DB_DURABLE,
                                cb ? cb : on_write_done, ud);
    if (!q)
        CL_ERROR("turn %s: the answer could not be queued for storage", t->assistant_msg_id);
    return q;
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

/* ---- generation -------------------------------------------------------------- */

static void on_content(void *ud, const char *text, size_t len)
{
    cl_turn *t = ud;
    cl_buf_append(&t->content, text, len);
    if (t->sink.on_token)
        t->sink.on_token(t->ud, text, len);
}

/* STORING waits for the write at most this long: a write caught by an
 * outage is requeued until the database is back, and the client is not
 * kept waiting for that (the write is durable; it lands later). */
#define ACK_WAIT_MS 1000

struct ack_timer {
    uv_timer_t h;
    cl_turn *t;                     /* NULL once the turn no longer waits */
};

static void ack_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void ack_timer_drop(cl_turn *t)
{
    if (!t->ack_timer)
        return;
    t->ack_timer->t = NULL;
    uv_close((uv_handle_t *)&t->ack_timer->h, ack_timer_closed);
    t->ack_timer = NULL;
}

static void ack_done(cl_turn *t)
{
    ack_timer_drop(t);
    t->state = TURN_FINISHED;
    const char *json = cl_buf_cstr(&t->done_json);
    if (t->sink.on_done)
        t->sink.on_done(t->ud, json ? json : "{}");
    turn_free(t);
}

/* The answer is stored: only now is it acknowledged, so the client's next
 * request (on any worker) reads it. */
static void on_answer_stored(void *ud, const cl_db_res *res)
{
    cl_turn *t = ud;
    t->store = NULL;
    on_write_done(NULL, res);
    ack_done(t);
}

static void on_ack_timeout(uv_timer_t *h)
{
    struct ack_timer *at = h->data;
    cl_turn *t = at->t;
    if (!t)
        return;
    cl_db_cancel(t->store); /* the write goes on; nobody waits for it now */
    t->store = NULL;
    CL_WARN("turn %s: the answer is not stored yet; acknowledged anyway (its write is queued)",
            t->assistant_msg_id);
    ack_done(t);
}

static void on_llm_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    cl_turn *t = ud;
    (void)body;
    (void)len;
    t->call = NULL;
    t->state = TURN_FINISHED;
    const char *model = res->model[0] ? res->model : t->params.model;
    cl_llm_usage u;
    usage_or_estimate(t, res, &u);
    cl_buf *d = &t->done_json;
    cl_buf_append_str(d, "{\"response\":");
    cl_jsonw_str(d, t->content.data ? t->content.data : "", t->content.len);
    cl_buf_append_str(d, ",\"model_used\":");
    cl_jsonw_cstr(d, model);
    cl_buf_printf(d, ",\"message_id\":\"%s\",\"conversation_id\":\"%s\",\"usage\":",
                  t->assistant_msg_id, t->conversation_id);
    cl_llm_usage_json(&u, d);
    cl_buf_printf(d, ",\"documents_retrieved\":[],\"tool_calls\":[],\"history_messages\":%d}",
                  t->history_count);
    /* With the database up, the answer is acknowledged once stored; while
     * it is down the write waits in the queue and the client hears now. */
    int up = cl_db_available(t->app->db);
    t->store = store_assistant_message(t, "complete", model ? model : "", &u, NULL,
                                       up ? on_answer_stored : NULL, up ? t : NULL);
    if (!up || !t->store) {
        t->store = NULL;
        ack_done(t);
        return;
    }
    t->state = TURN_STORING;
    struct ack_timer *at = calloc(1, sizeof *at);
    if (at) {
        at->t = t;
        at->h.data = at;
        uv_timer_init(t->app->w->loop, &at->h);
        uv_timer_start(&at->h, on_ack_timeout, ACK_WAIT_MS, 0);
        t->ack_timer = at;
    }
}

static void on_llm_error(void *ud, cl_err_code code, const char *message, int status,
                         const char *upstream_body, const cl_llm_result *partial)
{
    cl_turn *t = ud;
    (void)status;
    (void)upstream_body;
    t->call = NULL;
    t->state = TURN_FINISHED;
    cl_llm_usage u;
    usage_or_estimate(t, partial, &u);
    store_assistant_message(t, "error", t->params.model ? t->params.model : "", &u, message, NULL, NULL);
    if (t->sink.on_error)
        t->sink.on_error(t->ud, code, message);
    turn_free(t);
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
    const char *hist = cl_db_get(res, 0, 3);
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
    int n = atoi(cl_db_get(res, 0, 4));
    if (n > 0) {
        rc |= cl_buf_append(out, hist, hlen);
        rc |= cl_buf_append_char(out, ',');
    }
    rc |= cl_buf_append_str(out, "{\"role\":\"user\",\"content\":");
    rc |= cl_jsonw_cstr(out, t->message);
    rc |= cl_buf_append_str(out, "}]");
    t->history_count = n;
    bytes += strtoull(cl_db_get(res, 0, 5), NULL, 10) + strlen(t->message);
    t->prompt_chars = bytes;
    t->prompt_estimate = (int64_t)(bytes / 4) + 1;
    return rc ? -1 : 0;
}

static void fail(cl_turn *t, cl_err_code code, const char *message)
{
    t->state = TURN_FINISHED;
    if (t->sink.on_error)
        t->sink.on_error(t->ud, code, message);
    turn_free(t);
}

static void on_loaded(void *ud, const cl_db_res *res)
{
    cl_turn *t = ud;
    t->load = NULL;
    if (!res->ok) {
        if (res->unavailable)
            fail(t, CL_ERR_DB_UNAVAILABLE, "the database is unavailable; try again shortly");
        else if (strcmp(res->sqlstate, "22P02") == 0)
            fail(t, CL_ERR_NOT_FOUND, "conversation not found");
        else {
            CL_ERROR("loading a conversation failed: %s", res->error);
            fail(t, CL_ERR_PROCESSING_ERROR, "internal error while loading the conversation");
        }
        return;
    }
    if (cl_db_rows(res) == 0) {
        fail(t, CL_ERR_NOT_FOUND, "conversation not found");
        return;
    }
    snprintf(t->conversation_id, sizeof t->conversation_id, "%s", cl_db_get(res, 0, 0));
    t->conv_system_prompt = dup_or_null(cl_db_get(res, 0, 1));
    t->conv_model = dup_or_null(cl_db_get(res, 0, 2));
    if (!t->params.model && t->conv_model && *t->conv_model)
        t->params.model = t->conv_model;
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
    t->state = TURN_GENERATING;
    t->call = cl_llm_start_messages(t->app->llm, req, cl_buf_cstr(&msgs), t->prompt_chars,
                                    &turn_llm_callbacks, t);
    json_decref(req);
    cl_buf_release(&msgs);
    if (!t->call) {
        fail(t, CL_ERR_PROCESSING_ERROR, "cannot start the model call");
        return;
    }
    /* The user message is stored with the answer, in one statement, when
     * the turn ends (complete, error or cancelled): nothing to wait for here. */
    if (t->sink.on_start)
        t->sink.on_start(t->ud, t->conversation_id, t->assistant_msg_id);
}

/* ---- public ------------------------------------------------------------------------ */

/* The history, oldest first, as the JSON text of a "messages" array (sent
 * upstream as it is: see build_messages), with its count and bytes of text. */
#define SQL_HISTORY                                                                                \
    " CROSS JOIN LATERAL (SELECT"                                                                  \
    " coalesce(json_agg(json_build_object('role', x.role, 'content', x.content)"                  \
    "  ORDER BY x.created_at, x.id), '[]'::json) AS msgs,"                                         \
    " count(*) AS n, coalesce(sum(octet_length(x.content)), 0) AS bytes"                           \
    " FROM (SELECT role, content, created_at, id FROM messages"                                    \
    "  WHERE conversation_id = c.id AND role IN ('user', 'assistant') AND content <> ''"           \
    "  ORDER BY created_at DESC, id DESC LIMIT $3::int) x) h"

static const char SQL_LOAD_BY_ID[] =
    "WITH c AS (UPDATE conversations SET updated_at = now()"
    " WHERE id = $1::uuid AND user_id = $2::uuid"
    " RETURNING id, system_prompt, model, agent_id) "
    "SELECT c.id, coalesce(c.system_prompt, a.system_prompt), coalesce(c.model, a.model),"
    " h.msgs, h.n, h.bytes"
    " FROM c LEFT JOIN agents a ON a.id = c.agent_id AND a.user_id = $2::uuid" SQL_HISTORY;

static const char SQL_LOAD_BY_SESSION[] =
    "WITH c AS (INSERT INTO conversations (user_id, session_key, title)"
    " VALUES ($1::uuid, $2, left($4, 80))"
    " ON CONFLICT (user_id, session_key) DO UPDATE SET updated_at = now()"
    " RETURNING id, system_prompt, model, agent_id) "
    "SELECT c.id, coalesce(c.system_prompt, a.system_prompt), coalesce(c.model, a.model),"
    " h.msgs, h.n, h.bytes"
    " FROM c LEFT JOIN agents a ON a.id = c.agent_id AND a.user_id = $1::uuid" SQL_HISTORY;

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
    t->message = strdup(in->message);
    t->session_key = dup_or_null(in->session_key);
    t->params = in->params;
    t->model_override = dup_or_null(in->params.model);
    t->effort_override = dup_or_null(in->params.reasoning_effort);
    t->params.model = t->model_override;
    t->params.reasoning_effort = t->effort_override;
    t->params.tools = NULL; /* tools arrive with their issue */
    if (!t->message || cl_uuid_v4(t->user_msg_id) != 0 || cl_uuid_v4(t->assistant_msg_id) != 0) {
        turn_free(t);
        return NULL;
    }
    cl_iso_now(t->started_at);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", app->w->cfg->history_messages);
    if (in->conversation_id) {
        snprintf(t->conversation_id, sizeof t->conversation_id, "%s", in->conversation_id);
        const char *p[] = {t->conversation_id, t->user_id, limit};
        t->load = cl_db_exec(app->db, SQL_LOAD_BY_ID, 3, p, 0, on_loaded, t);
    } else {
        const char *p[] = {t->user_id, t->session_key, limit, t->message};
        t->load = cl_db_exec(app->db, SQL_LOAD_BY_SESSION, 4, p, 0, on_loaded, t);
    }
    if (!t->load) {
        turn_free(t);
        return NULL;
    }
    return t;
}

void cl_turn_pause(cl_turn *t, int on)
{
    if (t && t->state == TURN_GENERATING)
        cl_llm_call_pause(t->call, on);
}

void cl_turn_cancel(cl_turn *t)
{
    if (!t)
        return;
    switch (t->state) {
    case TURN_LOADING:
        cl_db_cancel(t->load);
        turn_free(t);
        return;
    case TURN_GENERATING: {
        /* drop the upstream now; keep what streamed, marked cancelled */
        cl_llm_cancel(t->call);
        t->call = NULL;
        t->state = TURN_FINISHED;
        cl_llm_usage u;
        usage_or_estimate(t, NULL, &u);
        store_assistant_message(t, "cancelled", t->params.model ? t->params.model : "", &u, NULL,
                                NULL, NULL);
        turn_free(t);
        return;
    }
    case TURN_STORING:
        /* the write goes on (durable); nobody is waiting for it now */
        cl_db_cancel(t->store);
        ack_timer_drop(t);
        turn_free(t);
        return;
    case TURN_FINISHED:
        return;
    }
}
