/*
 * agents.c — the caller's agents (SPEC §3): named defaults for a turn.
 *   POST   /api/v1/agents        {name, system_prompt?, model?, temperature?, max_tokens?,
 *                                 top_p?, reasoning_effort?, k?, collection?, tools?} → 201
 *   GET    /api/v1/agents        ?limit=1..100 (100) &offset=, newest first
 *   GET    /api/v1/agents/{id}
 *   PATCH  /api/v1/agents/{id}   any subset of the fields; null clears one (k to 0,
 *                                 tools to [])
 *   DELETE /api/v1/agents/{id}   its conversations stay (their agent_id is set null)
 * How a turn uses an agent is src/chat/turn.c's load statement.
 *
 * The same shape as conversations.c: authenticate → validate → one query
 * scoped by user_id, another user's agent (or a path id that is no UUID)
 * answered 404, JSON built by PostgreSQL. Unlike a conversation's create,
 * a field that is not an agent's is refused: a misspelt "temprature"
 * silently dropped would leave an agent that does not do what its author
 * wrote, and for PATCH it would turn a typo into an "updated" answer.
 *
 * The validated body goes to PostgreSQL whole, as one jsonb parameter:
 * the statements pick the fields from it (`p ? 'model'` tells PATCH a
 * field given — possibly as null — from one absent), so there is one
 * static statement per route rather than SQL assembled per request, and
 * numbers reach their columns without a round trip through C text.
 */
#include "chatloop/api.h"
#include "chatloop/api_query.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/query_args.h"
#include "chatloop/router.h"
#include "chatloop/turn.h"
#include "chatloop/utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_CHARS 100
#define SYSTEM_PROMPT_MAX_BYTES 32768   /* as a conversation's */
#define LIST_DEFAULT 100
#define LIST_MAX 100
#define OFFSET_MAX 1000000

/* A timestamptz column as ISO 8601 UTC text (SQL fragment). */
#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* An agent as the API shows it, from a row `a`. */
#define AGENT_COLS                                                                                 \
    "a.id, a.name, a.system_prompt, a.model, a.temperature, a.max_tokens, a.top_p,"               \
    " a.reasoning_effort, a.k, a.collection, a.tools, " ISO("a.created_at") " AS created_at, "    \
    ISO("a.updated_at") " AS updated_at"

static const char *const fields[] = {"name",  "system_prompt",    "model", "temperature",
                                     "max_tokens", "top_p", "reasoning_effort", "k",
                                     "collection", "tools"};
#define FIELD_LIST "name, system_prompt, model, temperature, max_tokens, top_p, " \
                   "reasoning_effort, k, collection, tools"

static void field_error(cl_req *r, const char *field, const char *message)
{
    cl_api_field_error(r, 400, field, message);
}

/* ---- validation ------------------------------------------------------------------ */

static int known_field(const char *key)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(key, fields[i]) == 0)
            return 1;
    return 0;
}

/* Checks every field of an agent body (POST: name required; PATCH: at
 * least one field). Returns 0, or -1 after answering 400 naming the first
 * bad field. */
static int validate(cl_req *r, json_t *body, int patch)
{
    const char *key;
    json_t *v;
    char why[256];
    json_object_foreach(body, key, v) {
        if (!known_field(key)) {
            /* a long key is not echoed: the answer stays small */
            int echo = strlen(key) <= 64;
            snprintf(why, sizeof why, "'%s' is not a field of an agent (fields: " FIELD_LIST ")",
                     echo ? key : "…");
            field_error(r, echo ? key : "", why);
            return -1;
        }
        if (strcmp(key, "name") == 0) {
            const char *s = json_string_value(v);
            if (json_is_null(v)) {
                field_error(r, "name", patch ? "'name' cannot be cleared" : "'name' is required");
                return -1;
            }
            if (!s || !*s || cl_utf8_chars(s) > NAME_MAX_CHARS || cl_utf8_has_control(s)) {
                field_error(r, "name", "'name' must be a string of 1 to 100 characters, "
                                       "without control characters");
                return -1;
            }
        } else if (json_is_null(v)) {
            continue;           /* clears the field (PATCH) or leaves it unset (POST) */
        } else if (strcmp(key, "system_prompt") == 0) {
            if (!json_is_string(v) || json_string_length(v) > SYSTEM_PROMPT_MAX_BYTES) {
                field_error(r, "system_prompt",
                            "'system_prompt' must be a string of at most 32768 bytes");
                return -1;
            }
        } else if (cl_turn_param_check(key, v, why, sizeof why) != 0) {
            field_error(r, key, why);
            return -1;
        }
    }
    if (!patch && !json_object_get(body, "name")) {
        field_error(r, "name", "'name' is required");
        return -1;
    }
    if (patch && json_object_size(body) == 0) {
        field_error(r, "body", "the patch is empty: give at least one of " FIELD_LIST);
        return -1;
    }
    return 0;
}

/* The answer to an insert or update of one agent. */
static void written(cl_req *r, const cl_db_res *res, int status, const char *what)
{
    if (!res->ok) {
        /* the only unique index a write can hit is (user_id, name) (the
         * id is a fresh v4 UUID) */
        if (strcmp(res->sqlstate, "23505") == 0)
            cl_api_field_error(r, 409, "name", "you already have an agent with this name");
        else
            cl_db_error_reply(r, res, what);
        return;
    }
    if (cl_db_rows(res) != 1) {
        cl_api_not_found(r, "agent");
        return;
    }
    cl_api_ok(r, status, status == 201 ? "agent created" : "agent updated", cl_db_get(res, 0, 0));
}

/* Validates the body and runs `sql` with ($1 id, $2 user, $3 the body). */
static void write_agent(cl_req *r, const char *id, int patch, const char *sql, cl_db_cb cb)
{
    json_t *body = cl_api_json_body(r, 0);
    if (!body)
        return;
    char *text = NULL;
    if (validate(r, body, patch) != 0 || !cl_db_require(r))
        goto done;
    text = json_dumps(body, JSON_COMPACT);
    if (!text) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        goto done;
    }
    const char *params[3] = {id, r->user_id, text};
    cl_api_query_run(r, sql, 3, params, 0, cb);     /* the parameters are copied */
done:
    free(text);
    json_decref(body);
}

/* ---- POST /api/v1/agents ------------------------------------------------------------ */

static const char SQL_CREATE[] =
    "WITH a AS (INSERT INTO agents (id, user_id, name, system_prompt, model, temperature,"
    "  max_tokens, top_p, reasoning_effort, k, collection, tools)"
    " SELECT $1::uuid, $2::uuid, p->>'name', p->>'system_prompt', p->>'model',"
    "  (p->>'temperature')::float8, (p->>'max_tokens')::int, (p->>'top_p')::float8,"
    "  p->>'reasoning_effort', coalesce((p->>'k')::int, 0), p->>'collection',"
    "  coalesce(nullif(p->'tools', 'null'::jsonb), '[]'::jsonb)"
    " FROM (SELECT $3::jsonb AS p) s"
    " RETURNING *)"
    " SELECT row_to_json(x)::text FROM (SELECT " AGENT_COLS " FROM a) x";

static void created(void *ud, const cl_db_res *res)
{
    written(cl_req_resume(ud), res, 201, "create agent");
}

static void agent_create(cl_req *r)
{
    /* made here, not by the column default: nothing in the answer depends
     * on how the schema fills it */
    char id[37];
    if (cl_uuid_v4(id) != 0) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "no randomness available", NULL, NULL);
        return;
    }
    write_agent(r, id, 0, SQL_CREATE, created);
}

/* ---- PATCH /api/v1/agents/{id} ------------------------------------------------------ */

/* A column from the patch when given (null included), else as it was. */
#define SET(col, expr) " " col " = CASE WHEN p ? '" col "' THEN " expr " ELSE a." col " END,"

static const char SQL_PATCH[] =
    "WITH a2 AS (UPDATE agents a SET"
    SET("name", "p->>'name'")
    SET("system_prompt", "p->>'system_prompt'")
    SET("model", "p->>'model'")
    SET("temperature", "(p->>'temperature')::float8")
    SET("max_tokens", "(p->>'max_tokens')::int")
    SET("top_p", "(p->>'top_p')::float8")
    SET("reasoning_effort", "p->>'reasoning_effort'")
    SET("k", "coalesce((p->>'k')::int, 0)")
    SET("collection", "p->>'collection'")
    SET("tools", "coalesce(nullif(p->'tools', 'null'::jsonb), '[]'::jsonb)")
    " updated_at = now()"
    " FROM (SELECT $3::jsonb AS p) s"
    " WHERE a.id = $1::uuid AND a.user_id = $2::uuid"
    " RETURNING a.*)"
    " SELECT row_to_json(x)::text FROM (SELECT " AGENT_COLS " FROM a2 a) x";
#undef SET

static void patched(void *ud, const cl_db_res *res)
{
    written(cl_req_resume(ud), res, 200, "update agent");
}

static void agent_patch(cl_req *r)
{
    char id[37];
    if (cl_api_path_id(r, id, "agent"))
        write_agent(r, id, 1, SQL_PATCH, patched);
}

/* ---- GET /api/v1/agents ------------------------------------------------------------- */

/* One row more than the page, to know whether another follows. */
static const char SQL_LIST[] =
    "SELECT (SELECT row_to_json(x) FROM (SELECT " AGENT_COLS ") x)::text"
    " FROM agents a WHERE a.user_id = $1::uuid"
    " ORDER BY a.created_at DESC, a.id DESC LIMIT $2::int OFFSET $3::int";

static void listed(void *ud, const cl_db_res *res)
{
    cl_api_page_reply(ud, res, "agents", "list agents");
}

static void agent_list(cl_req *r)
{
    long limit = cl_query_int(r, "limit", LIST_DEFAULT, 1, LIST_MAX);
    if (limit < 0)
        return;
    long offset = cl_query_int(r, "offset", 0, 0, OFFSET_MAX);
    if (offset < 0 || !cl_db_require(r))
        return;
    char fetch[24], skip[24];
    snprintf(fetch, sizeof fetch, "%ld", limit + 1);
    snprintf(skip, sizeof skip, "%ld", offset);
    const char *params[3] = {r->user_id, fetch, skip};
    cl_api_query *p = cl_api_query_run(r, SQL_LIST, 3, params, 0, listed);
    if (p) {
        p->a = (int)limit;
        p->b = (int)offset;
    }
}

/* ---- GET /api/v1/agents/{id} -------------------------------------------------------- */

static const char SQL_GET[] =
    "SELECT row_to_json(x)::text FROM (SELECT " AGENT_COLS
    " FROM agents a WHERE a.id = $1::uuid AND a.user_id = $2::uuid) x";

static void got_one(void *ud, const cl_db_res *res)
{
    cl_req *r = cl_req_resume(ud);
    if (!res->ok)
        cl_db_error_reply(r, res, "get agent");
    else if (cl_db_rows(res) != 1)
        cl_api_not_found(r, "agent");
    else
        cl_api_ok(r, 200, "agent", cl_db_get(res, 0, 0));
}

static void agent_get(cl_req *r)
{
    char id[37];
    if (!cl_api_path_id(r, id, "agent") || !cl_db_require(r))
        return;
    const char *params[2] = {id, r->user_id};
    cl_api_query_run(r, SQL_GET, 2, params, 0, got_one);
}

/* ---- DELETE /api/v1/agents/{id} ----------------------------------------------------- */

static void agent_delete(cl_req *r)
{
    char id[37];
    if (!cl_api_path_id(r, id, "agent") || !cl_db_require(r))
        return;
    /* Its conversations stay, readable and usable: the foreign key clears
     * their agent_id (ON DELETE SET NULL), and their turns fall back to
     * the configuration. */
    const char *params[2] = {id, r->user_id};
    cl_api_query *p = cl_api_query_run(
        r, "DELETE FROM agents WHERE id = $1::uuid AND user_id = $2::uuid RETURNING id", 2, params, 0,
        cl_api_removed);
    if (p) {
        memcpy(p->id, id, sizeof id);
        p->noun = "agent";
        p->removed = "deleted";
    }
}

int cl_agent_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/agents", agent_create, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/agents", agent_list, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/agents/{id}", agent_get, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "PATCH", "/api/v1/agents/{id}", agent_patch, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "DELETE", "/api/v1/agents/{id}", agent_delete, CL_GUARD_TOKEN);
    return rc;
}
