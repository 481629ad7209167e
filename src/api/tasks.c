/*
 * tasks.c — the caller's tasks (SPEC §3), what the task tools act on:
 *   POST   /api/v1/tasks        {title, description?} → 201
 *   GET    /api/v1/tasks        ?status=all|pending|completed (all) &limit=1..100 (50)
 *                               &offset=, newest first
 *   GET    /api/v1/tasks/{id}
 *   PATCH  /api/v1/tasks/{id}   {title?, description?, status?} (at least one)
 *   DELETE /api/v1/tasks/{id}
 * {id} is the task's UUID or its number. Each task has a number of its
 * own user's (1, 2, 3, ... never reused after a delete): models, and
 * people, say "complete task 1" far more reliably than they copy UUIDs.
 *
 * The shape of agents.c: authenticate → validate (a field that is not a
 * task's is refused) → one statement scoped by user_id, with the body as
 * one jsonb parameter → JSON built by PostgreSQL. Another user's task, or
 * an {id} that is neither a UUID nor a number, is 404.
 */
#include "chatloop/api.h"
#include "chatloop/api_query.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/query_args.h"
#include "chatloop/router.h"
#include "chatloop/tasks.h"
#include "chatloop/utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_DEFAULT 50
#define LIST_MAX 100
#define OFFSET_MAX 1000000

#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* A task as the API shows it, from a row `t`. */
#define TASK_COLS                                                                                  \
    "t.id, t.number, t.title, t.description, t.status, " ISO("t.created_at") " AS created_at, "   \
    ISO("t.updated_at") " AS updated_at, " ISO("t.completed_at") " AS completed_at"

#define FIELD_LIST "title, description, status"

static void field_error(cl_req *r, const char *field, const char *message)
{
    cl_api_field_error(r, 400, field, message);
}

/* ---- validation (shared with the task tools) ---------------------------------------- */

int cl_task_field_check(const char *key, json_t *v, char *why, size_t len)
{
    if (strcmp(key, "title") == 0) {
        const char *s = json_string_value(v);
        if (!s || cl_utf8_chars(s) < 1 || cl_utf8_chars(s) > CL_TASK_TITLE_MAX_CHARS ||
            cl_utf8_has_control(s) || strspn(s, " ") == strlen(s)) {
            snprintf(why, len, "'title' must be a string of 1 to %d characters, not blank and "
                               "without control characters", CL_TASK_TITLE_MAX_CHARS);
            return -1;
        }
    } else if (strcmp(key, "description") == 0) {
        if (!json_is_null(v) &&
            (!json_is_string(v) || json_string_length(v) > CL_TASK_DESCRIPTION_MAX_BYTES)) {
            snprintf(why, len, "'description' must be a string of at most %d bytes, or null",
                     CL_TASK_DESCRIPTION_MAX_BYTES);
            return -1;
        }
    } else if (strcmp(key, "status") == 0) {
        const char *s = json_string_value(v);
        if (!s || (strcmp(s, "pending") != 0 && strcmp(s, "completed") != 0)) {
            snprintf(why, len, "'status' must be \"pending\" or \"completed\"");
            return -1;
        }
    } else {
        int echo = strlen(key) <= 64;
        snprintf(why, len, "'%s' is not a field of a task (fields: " FIELD_LIST ")",
                 echo ? key : "…");
        return -1;
    }
    return 0;
}

/* POST: title required, status not given (a task starts pending);
 * PATCH: at least one field. 0, or -1 after answering 400. */
static int validate(cl_req *r, json_t *body, int patch)
{
    const char *key;
    json_t *v;
    char why[160];
    json_object_foreach(body, key, v) {
        if (!patch && strcmp(key, "status") == 0) {
            field_error(r, "status", "a new task is pending: 'status' is for PATCH");
            return -1;
        }
        if (cl_task_field_check(key, v, why, sizeof why) != 0) {
            field_error(r, strlen(key) <= 64 ? key : "", why);
            return -1;
        }
    }
    if (!patch && !json_object_get(body, "title")) {
        field_error(r, "title", "'title' is required");
        return -1;
    }
    if (patch && json_object_size(body) == 0) {
        field_error(r, "body", "the patch is empty: give at least one of " FIELD_LIST);
        return -1;
    }
    return 0;
}

/* {id}: a UUID into uuid_out, or a task number (1 to 9 digits, no leading
 * zero) into num_out; the other is left empty. 404 and 0 for anything else. */
static int task_ref(cl_req *r, char uuid_out[37], char num_out[12])
{
    char v[40];
    uuid_out[0] = num_out[0] = '\0';
    if (cl_req_param(r, "id", v, sizeof v) == 0) {
        size_t n = strlen(v);
        if (cl_uuid_valid(v)) {
            memcpy(uuid_out, v, 37);
            return 1;
        }
        if (n >= 1 && n <= 9 && v[0] != '0' && strspn(v, "0123456789") == n) {
            memcpy(num_out, v, n + 1);
            return 1;
        }
    }
    cl_api_not_found(r, "task");
    return 0;
}

/* A statement's one task row (or none: 404). */
static void answered_one(cl_req *r, const cl_db_res *res, int status, const char *message,
                         const char *what)
{
    if (!res->ok)
        cl_db_error_reply(r, res, what);
    else if (cl_db_rows(res) != 1)
        cl_api_not_found(r, "task");
    else
        cl_api_ok(r, status, message, cl_db_get(res, 0, 0));
}

/* ---- POST /api/v1/tasks ---------------------------------------------------------------- */

/* The number comes from the user's counter (one row per user, so two
 * creates of one user take turns on it); past the per-user budget of
 * tasks nothing is written. */
static const char SQL_CREATE[] =
    "WITH p AS (SELECT $3::jsonb AS p),"
    " room AS (SELECT count(*) < $2::int AS ok FROM tasks WHERE user_id = $1::uuid),"
    " n AS (INSERT INTO task_numbers (user_id, last) SELECT $1::uuid, 1 WHERE (SELECT ok FROM room)"
    "  ON CONFLICT (user_id) DO UPDATE SET last = task_numbers.last + 1 RETURNING last),"
    " t AS (INSERT INTO tasks (user_id, number, title, description)"
    "  SELECT $1::uuid, n.last, p->>'title', p->>'description' FROM n, p RETURNING *)"
    " SELECT (SELECT row_to_json(x)::text FROM (SELECT " TASK_COLS " FROM t) x),"
    " (SELECT ok FROM room)";

static void created(void *ud, const cl_db_res *res)
{
    cl_req *r = cl_req_resume(ud);
    if (res->ok && cl_db_rows(res) == 1 && !cl_db_get(res, 0, 0)) {
        char msg[96];
        snprintf(msg, sizeof msg, "at most %d tasks per user: delete some first",
                 CL_TASKS_PER_USER);
        cl_api_error(r, CL_ERR_INVALID_REQUEST, msg, NULL, NULL);
        return;
    }
    answered_one(r, res, 201, "task created", "create task");
}

/* Validates the body and runs `sql` with params[0..n), the body's compact
 * JSON as the last of them (the parameters are copied). */
static void write_task(cl_req *r, int patch, const char *sql, const char **params, int n,
                       cl_db_cb cb)
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
    params[n - 1] = text;
    cl_api_query_run(r, sql, n, params, 0, cb);
done:
    free(text);
    json_decref(body);
}

static void task_create(cl_req *r)
{
    char cap[16];
    snprintf(cap, sizeof cap, "%d", CL_TASKS_PER_USER);
    const char *params[] = {r->user_id, cap, NULL};
    write_task(r, 0, SQL_CREATE, params, 3, created);
}

/* ---- GET /api/v1/tasks ----------------------------------------------------------------- */

/* One row more than the page, to know whether another follows. */
static const char SQL_LIST[] =
    "SELECT (SELECT row_to_json(x) FROM (SELECT " TASK_COLS ") x)::text"
    " FROM tasks t WHERE t.user_id = $1::uuid AND ($4::text IS NULL OR t.status = $4)"
    " ORDER BY t.created_at DESC, t.number DESC LIMIT $2::int OFFSET $3::int";

static void listed(void *ud, const cl_db_res *res)
{
    cl_api_page_reply(ud, res, "tasks", "list tasks");
}

static void task_list(cl_req *r)
{
    char status[16];
    int got = cl_query_param(r, "status", status, sizeof status);
    if (got < 0 || (got == 1 && strcmp(status, "all") != 0 && strcmp(status, "pending") != 0 &&
                    strcmp(status, "completed") != 0)) {
        field_error(r, "status", "'status' must be all, pending or completed");
        return;
    }
    long limit = cl_query_int(r, "limit", LIST_DEFAULT, 1, LIST_MAX);
    if (limit < 0)
        return;
    long offset = cl_query_int(r, "offset", 0, 0, OFFSET_MAX);
    if (offset < 0 || !cl_db_require(r))
        return;
    char fetch[24], skip[24];
    snprintf(fetch, sizeof fetch, "%ld", limit + 1);
    snprintf(skip, sizeof skip, "%ld", offset);
    const char *filter = got == 1 && strcmp(status, "all") != 0 ? status : NULL;
    const char *params[4] = {r->user_id, fetch, skip, filter};
    cl_api_query *p = cl_api_query_run(r, SQL_LIST, 4, params, 0, listed);
    if (p) {
        p->a = (int)limit;
        p->b = (int)offset;
    }
}

/* ---- GET /api/v1/tasks/{id} ------------------------------------------------------------ */

#define BY_REF " t.user_id = $2::uuid AND (t.id = $1::uuid OR t.number = $3::int)"

static const char SQL_GET[] =
    "SELECT row_to_json(x)::text FROM (SELECT " TASK_COLS " FROM tasks t WHERE" BY_REF ") x";

static void got_one(void *ud, const cl_db_res *res)
{
    answered_one(cl_req_resume(ud), res, 200, "task", "get task");
}

static void task_get(cl_req *r)
{
    char id[37], num[12];
    if (!task_ref(r, id, num) || !cl_db_require(r))
        return;
    const char *params[3] = {id[0] ? id : NULL, r->user_id, num[0] ? num : NULL};
    cl_api_query_run(r, SQL_GET, 3, params, 0, got_one);
}

/* ---- PATCH /api/v1/tasks/{id} ---------------------------------------------------------- */

/* completed_at follows the status: set when it becomes completed, kept
 * while it stays so, cleared when it is pending again. */
static const char SQL_PATCH[] =
    "WITH t2 AS (UPDATE tasks t SET"
    " title = CASE WHEN p ? 'title' THEN p->>'title' ELSE t.title END,"
    " description = CASE WHEN p ? 'description' THEN p->>'description' ELSE t.description END,"
    " status = coalesce(p->>'status', t.status),"
    " completed_at = CASE coalesce(p->>'status', t.status) WHEN 'completed'"
    "  THEN coalesce(t.completed_at, now()) ELSE NULL END,"
    " updated_at = now()"
    " FROM (SELECT $4::jsonb AS p) s WHERE" BY_REF " RETURNING t.*)"
    " SELECT row_to_json(x)::text FROM (SELECT " TASK_COLS " FROM t2 t) x";

static void patched(void *ud, const cl_db_res *res)
{
    answered_one(cl_req_resume(ud), res, 200, "task updated", "update task");
}

static void task_patch(cl_req *r)
{
    char id[37], num[12];
    if (!task_ref(r, id, num))
        return;
    const char *params[4] = {id[0] ? id : NULL, r->user_id, num[0] ? num : NULL, NULL};
    write_task(r, 1, SQL_PATCH, params, 4, patched);
}

/* ---- DELETE /api/v1/tasks/{id} --------------------------------------------------------- */

static const char SQL_DELETE[] =
    "WITH d AS (DELETE FROM tasks t WHERE" BY_REF " RETURNING t.id, t.number)"
    " SELECT json_build_object('id', id, 'number', number, 'deleted', true)::text FROM d";

static void deleted(void *ud, const cl_db_res *res)
{
    answered_one(cl_req_resume(ud), res, 200, "task deleted", "delete task");
}

static void task_delete(cl_req *r)
{
    char id[37], num[12];
    if (!task_ref(r, id, num) || !cl_db_require(r))
        return;
    const char *params[3] = {id[0] ? id : NULL, r->user_id, num[0] ? num : NULL};
    cl_api_query_run(r, SQL_DELETE, 3, params, 0, deleted);
}

int cl_task_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/tasks", task_create, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/tasks", task_list, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/tasks/{id}", task_get, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "PATCH", "/api/v1/tasks/{id}", task_patch, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "DELETE", "/api/v1/tasks/{id}", task_delete, CL_GUARD_TOKEN);
    return rc;
}
