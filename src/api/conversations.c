/*
 * conversations.c — the caller's conversations and usage (SPEC §3):
 *   POST   /api/v1/conversations        {title?, agent_id?, system_prompt?, model?} → 201
 *   GET    /api/v1/conversations        ?limit=1..100 (20) &before=<cursor>, newest first
 *   GET    /api/v1/conversations/{id}   one conversation with its messages in order
 *   DELETE /api/v1/conversations/{id}   it and (by cascade) its messages
 *   GET    /api/v1/usage                ?days=1..366 (30): tokens per UTC day and model
 * (The turn endpoints, .../{id}/messages and /api/v1/chat, are src/chat/.)
 *
 * Every handler is: authenticate → validate → cl_db_require → one query.
 * Each query is a single statement scoped by user_id = the caller, so a
 * row of another user is indistinguishable from a missing one: 404, never
 * 403 (a 403 would confirm the id exists). A path id that is not a UUID is
 * answered the same way — 404 — rather than 400: to the caller it names no
 * conversation of theirs either, and one answer keeps the handlers simple
 * (it also keeps PostgreSQL from ever seeing a bad ::uuid cast).
 *
 * The response data is built by PostgreSQL (row_to_json over a subselect,
 * which keeps column order and writes compact JSON) and passed through as text: one round trip, no per-column C code, and
 * jsonb tool_calls arrive as JSON rather than as a string to re-parse.
 * Timestamps are ISO 8601 in UTC with microseconds ("...T12:00:00.123456Z"),
 * the same form the chat turn writes.
 *
 * Pagination cursor (`before`, `next_before`): "<updated_at as microseconds
 * since the epoch>_<id>" — opaque to clients, URL-safe without escaping,
 * and exact, so paging by (updated_at, id) never skips or repeats a row
 * that has not moved. A conversation that receives a turn while a client
 * pages moves to the front (updated_at is bumped), as newest-first implies.
 */
#include "chatloop/api.h"
#include "chatloop/api_query.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/log.h"
#include "chatloop/query_args.h"
#include "chatloop/router.h"
#include "chatloop/utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TITLE_MAX_CHARS 200
#define SYSTEM_PROMPT_MAX_BYTES 32768
#define MODEL_MAX_CHARS 128
#define LIST_DEFAULT 20
#define LIST_MAX 100
#define USAGE_DEFAULT_DAYS 30
#define USAGE_MAX_DAYS 366

/* A timestamptz column as ISO 8601 UTC text (SQL fragment). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* Another user's agent is a missing one, as everywhere (404, not 400). */
static void agent_not_found(cl_req *r)
{
    cl_api_error(r, CL_ERR_NOT_FOUND, "agent not found", "{\"field\":\"agent_id\"}", NULL);
}

static void field_error(cl_req *r, const char *field, const char *message)
{
    char details[64];
    snprintf(details, sizeof details, "{\"field\":\"%s\"}", field);
    cl_api_error(r, CL_ERR_INVALID_REQUEST, message, details, NULL);
}

/* ---- input helpers --------------------------------------------------------------- */

/* ---- POST /api/v1/conversations ----------------------------------------------------- */

static void created(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    int has_agent = p->a;
    cl_req *r = cl_req_resume(p);
    if (!res->ok) {
        /* 23503 with an agent: it was deleted between the check and the
         * insert (without one, the caller's user row is gone: a 500). */
        if (has_agent && strcmp(res->sqlstate, "23503") == 0)
            agent_not_found(r);
        else
            cl_db_error_reply(r, res, "create conversation");
        return;
    }
    if (cl_db_rows(res) != 1) {
        /* The insert's WHERE found no agent of this user with that id. */
        agent_not_found(r);
        return;
    }
    cl_api_ok(r, 201, "conversation created", cl_db_get(res, 0, 0));
}

static const char SQL_CREATE[] =
    "WITH c AS ("
    " INSERT INTO conversations (id, user_id, title, agent_id, system_prompt, model)"
    " SELECT $1::uuid, $2::uuid, $3::text, $4::uuid, $5::text, $6::text"
    " WHERE $4::uuid IS NULL"
    "  OR EXISTS (SELECT 1 FROM agents a WHERE a.id = $4::uuid AND a.user_id = $2::uuid)"
    " RETURNING *)"
    " SELECT row_to_json(x)::text FROM (SELECT c.id, c.title, c.agent_id, c.system_prompt,"
    "  c.model, " ISO("c.created_at") " AS created_at, " ISO("c.updated_at") " AS updated_at"
    "  FROM c) x";

/* An optional string field: absent and null mean "not given" (*out NULL).
 * Returns 0, or -1 after answering 400 naming the field. */
static int opt_string(cl_req *r, json_t *body, const char *field, const char **out)
{
    json_t *v = json_object_get(body, field);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        char msg[96];
        snprintf(msg, sizeof msg, "'%s' must be a string", field);
        field_error(r, field, msg);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static void conversation_create(cl_req *r)
{
    /* An empty body is an empty object: every field is optional. */
    json_t *body = cl_api_json_body(r, 1);
    if (!body)
        return;
    const char *title, *agent_id, *system_prompt, *model;
    if (opt_string(r, body, "title", &title) || opt_string(r, body, "agent_id", &agent_id) ||
        opt_string(r, body, "system_prompt", &system_prompt) ||
        opt_string(r, body, "model", &model))
        goto done;
    if (title && (cl_utf8_chars(title) > TITLE_MAX_CHARS || cl_utf8_has_control(title))) {
        field_error(r, "title", "'title' must be at most 200 characters, without control characters");
        goto done;
    }
    if (agent_id && !cl_uuid_valid(agent_id)) {
        agent_not_found(r);     /* it names no agent of theirs, as a missing one */
        goto done;
    }
    if (system_prompt && strlen(system_prompt) > SYSTEM_PROMPT_MAX_BYTES) {
        field_error(r, "system_prompt", "'system_prompt' must be at most 32768 bytes");
        goto done;
    }
    if (model && (!model[0] || cl_utf8_chars(model) > MODEL_MAX_CHARS || cl_utf8_has_control(model))) {
        field_error(r, "model",
                    "'model' must be a non-empty string of at most 128 characters, "
                    "without control characters");
        goto done;
    }
    if (!cl_db_require(r))
        goto done;
    /* The id is made here (not by the column default) so nothing about the
     * answer depends on how the schema fills it. */
    char id[37];
    if (cl_uuid_v4(id) != 0) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "no randomness available", NULL, NULL);
        goto done;
    }
    const char *params[6] = {id, r->user_id, title, agent_id, system_prompt, model};
    cl_api_query *p = cl_api_query_run(r, SQL_CREATE, 6, params, 0, created);    /* the parameters are copied */
    if (p)
        p->a = agent_id != NULL;
done:
    json_decref(body);
}

/* ---- GET /api/v1/conversations ---------------------------------------------------------- */

/* Column 0: the item's JSON; column 1: its cursor. One row more than the
 * page is asked for, to know whether another page follows. */
static const char SQL_LIST[] =
    "SELECT (SELECT row_to_json(x) FROM (SELECT c.id, c.title, c.agent_id, c.model,"
    "   " ISO("c.created_at") " AS created_at, " ISO("c.updated_at") " AS updated_at,"
    "   (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count) x)::text,"
    " (extract(epoch FROM c.updated_at) * 1000000)::bigint::text || '_' || c.id::text"
    " FROM conversations c"
    " WHERE c.user_id = $1::uuid"
    "  AND ($2::bigint IS NULL OR (c.updated_at, c.id) <"
    /* microseconds → timestamptz in two exact steps (no float rounding) */
    "   ('epoch'::timestamptz + ($2::bigint / 1000000) * interval '1 second'"
    "    + ($2::bigint % 1000000) * interval '1 microsecond', $3::uuid))"
    " ORDER BY c.updated_at DESC, c.id DESC"
    " LIMIT $4::int";

static void listed(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    int limit = p->a;
    cl_req *r = cl_req_resume(p);
    if (!res->ok) {
        cl_db_error_reply(r, res, "list conversations");
        return;
    }
    int n = cl_db_rows(res);
    int shown = n > limit ? limit : n;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"conversations\":[");
    for (int i = 0; i < shown; i++) {
        if (i)
            cl_buf_append_char(&b, ',');
        cl_buf_append_str(&b, cl_db_get(res, i, 0));
    }
    cl_buf_append_str(&b, "],\"next_before\":");
    if (n > limit)      /* the cursor is digits, '_' and hex: no escaping needed */
        cl_buf_printf(&b, "\"%s\"", cl_db_get(res, shown - 1, 1));
    else
        cl_buf_append_str(&b, "null");
    cl_buf_append_char(&b, '}');
    const char *data = cl_buf_cstr(&b);
    if (data)
        cl_api_ok(r, 200, "conversations", data);
    else
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
    cl_buf_release(&b);
}

/* Splits "<digits>_<uuid>" into its parts. Returns 0, or -1 if malformed. */
static int parse_cursor(char *s, char **us, char **id)
{
    char *sep = strchr(s, '_');
    if (!sep || sep == s || sep - s > 17 || !cl_uuid_valid(sep + 1))
        return -1;
    for (char *d = s; d < sep; d++)
        if (*d < '0' || *d > '9')
            return -1;
    *sep = '\0';
    *us = s;
    *id = sep + 1;
    return 0;
}

static void conversation_list(cl_req *r)
{
    long limit = cl_query_int(r, "limit", LIST_DEFAULT, 1, LIST_MAX);
    if (limit < 0)
        return;
    char cursor[80];
    char *before_us = NULL, *before_id = NULL;
    int got = cl_query_param(r, "before", cursor, sizeof cursor);
    if (got != 0 && (got < 0 || parse_cursor(cursor, &before_us, &before_id) != 0)) {
        field_error(r, "before",
                    "'before' must be a cursor from a previous page's next_before");
        return;
    }
    if (!cl_db_require(r))
        return;
    char fetch[24];
    snprintf(fetch, sizeof fetch, "%ld", limit + 1);
    const char *params[4] = {r->user_id, before_us, before_id, fetch};
    cl_api_query *p = cl_api_query_run(r, SQL_LIST, 4, params, 0, listed);
    if (p)
        p->a = (int)limit;
}

/* ---- GET /api/v1/conversations/{id} -------------------------------------------------------- */

static const char SQL_GET[] =
    "SELECT row_to_json(x)::text FROM (SELECT c.id, c.title, c.agent_id, c.system_prompt,"
    "  c.model, " ISO("c.created_at") " AS created_at, " ISO("c.updated_at") " AS updated_at,"
    "  (SELECT coalesce(array_to_json(array_agg(row_to_json(mm)"
    /* fixed-width ISO text sorts as the timestamp does */
    "     ORDER BY mm.created_at, mm.id)), '[]'::json)"
    "   FROM (SELECT m.id, m.role, m.content, m.status, m.model, m.prompt_tokens,"
    "     m.completion_tokens, m.tool_calls, m.error, " ISO("m.created_at") " AS created_at"
    "    FROM messages m WHERE m.conversation_id = c.id AND m.user_id = c.user_id) mm)"
    "   AS messages"
    " FROM conversations c WHERE c.id = $1::uuid AND c.user_id = $2::uuid) x";

static void got_one(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    cl_req *r = cl_req_resume(p);
    if (!res->ok)
        cl_db_error_reply(r, res, "get conversation");
    else if (cl_db_rows(res) != 1)
        cl_api_not_found(r, "conversation");
    else
        cl_api_ok(r, 200, "conversation", cl_db_get(res, 0, 0));
}

static void conversation_get(cl_req *r)
{
    char id[37];
    if (!cl_api_path_id(r, id, "conversation") || !cl_db_require(r))
        return;
    const char *params[2] = {id, r->user_id};
    cl_api_query_run(r, SQL_GET, 2, params, 0, got_one);
}

/* ---- DELETE /api/v1/conversations/{id} ------------------------------------------------------- */

static void conversation_delete(cl_req *r)
{
    char id[37];
    if (!cl_api_path_id(r, id, "conversation") || !cl_db_require(r))
        return;
    /* Messages go with it (ON DELETE CASCADE); usage_events keep their
     * tokens (their conversation and message references are SET NULL). */
    const char *params[2] = {id, r->user_id};
    cl_api_query *p = cl_api_query_run(
        r, "DELETE FROM conversations WHERE id = $1::uuid AND user_id = $2::uuid RETURNING id", 2,
        params, 0, cl_api_removed);
    if (p) {
        memcpy(p->id, id, sizeof id);
        p->noun = "conversation";
        p->removed = "deleted";
    }
}

/* ---- GET /api/v1/usage --------------------------------------------------------------------------- */

/* The last `days` UTC calendar days, today included; newest day first. */
static const char SQL_USAGE[] =
    "WITH d AS (SELECT to_char(u.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, u.model,"
    "   sum(u.prompt_tokens) AS prompt_tokens, sum(u.completion_tokens) AS completion_tokens,"
    "   sum(u.total_tokens) AS total_tokens, count(*) AS turns"
    "  FROM usage_events u"
    "  WHERE u.user_id = $1::uuid"
    "   AND u.created_at >= ((now() AT TIME ZONE 'UTC')::date - ($2::int - 1))::timestamp"
    "       AT TIME ZONE 'UTC'"
    "  GROUP BY 1, 2)"
    " SELECT row_to_json(x)::text FROM (SELECT"
    "  (SELECT coalesce(array_to_json(array_agg(row_to_json(d) ORDER BY d.day DESC, d.model)),"
    "    '[]'::json) FROM d) AS usage,"
    "  (SELECT row_to_json(t) FROM (SELECT coalesce(sum(d.prompt_tokens), 0) AS prompt_tokens,"
    "    coalesce(sum(d.completion_tokens), 0) AS completion_tokens,"
    "    coalesce(sum(d.total_tokens), 0) AS total_tokens,"
    "    coalesce(sum(d.turns), 0) AS turns FROM d) t) AS totals) x";

static void usage_done(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    cl_req *r = cl_req_resume(p);
    if (!res->ok || cl_db_rows(res) != 1) {
        cl_db_error_reply(r, res, "usage");
        return;
    }
    cl_api_ok(r, 200, "usage", cl_db_get(res, 0, 0));
}

static void usage_get(cl_req *r)
{
    long days = cl_query_int(r, "days", USAGE_DEFAULT_DAYS, 1, USAGE_MAX_DAYS);
    if (days < 0 || !cl_db_require(r))
        return;
    char d[24];
    snprintf(d, sizeof d, "%ld", days);
    const char *params[2] = {r->user_id, d};
    cl_api_query_run(r, SQL_USAGE, 2, params, 0, usage_done);
}

int cl_conversation_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/conversations", conversation_create, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/conversations", conversation_list, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/conversations/{id}", conversation_get, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "DELETE", "/api/v1/conversations/{id}", conversation_delete,
                                CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/usage", usage_get, CL_GUARD_TOKEN);
    return rc;
}
