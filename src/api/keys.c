/*
 * keys.c — the caller's API keys (SPEC §3):
 *   POST   /api/v1/keys        {name?} → 201 {id, name, key, prefix, created_at}
 *   GET    /api/v1/keys        {keys: [{id, name, prefix, created_at, last_used_at}]}
 *   DELETE /api/v1/keys/{id}   revokes it → {id, revoked: true}
 *
 * The key is shown once, in the 201: only its SHA-256 is stored
 * (apikey.h), with its first CL_API_KEY_SHOWN characters as the prefix a
 * person recognises it by. A revoked key stays in the table (its usage
 * rows name it) but is gone from the list. Another user's key, or an id
 * that is not a UUID, is 404, as everywhere.
 */
#include "chatloop/api.h"
#include "chatloop/api_query.h"
#include "chatloop/apikey.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/router.h"
#include "chatloop/utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#define KEY_NAME_MAX_CHARS 100
/* Active keys per user: a budget on the table, far above what a person
 * or a deployment juggles. */
#define KEYS_PER_USER 100

#define ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* ---- POST ---------------------------------------------------------------------------- */

static const char SQL_CREATE[] =
    "INSERT INTO api_keys (user_id, name, key_hash, prefix)"
    " SELECT $1::uuid, $2, $3, $4"
    " WHERE (SELECT count(*) FROM api_keys WHERE user_id = $1::uuid AND revoked_at IS NULL) < $5::int"
    " RETURNING id, name, prefix, " ISO("created_at");

static void created(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    char key[sizeof p->secret];
    memcpy(key, p->secret, sizeof key);
    memset(p->secret, 0, sizeof p->secret);
    cl_req *r = cl_req_resume(p);
    if (!res->ok) {
        cl_db_error_reply(r, res, "create API key");
        goto out;
    }
    if (cl_db_rows(res) != 1) {
        char msg[96];
        snprintf(msg, sizeof msg, "at most %d active API keys per user: revoke one first",
                 KEYS_PER_USER);
        cl_api_error(r, CL_ERR_INVALID_REQUEST, msg, NULL, NULL);
        goto out;
    }
    json_t *d = json_pack("{s:s, s:o, s:s, s:s, s:s}", "id", cl_db_get(res, 0, 0), "name",
                          cl_db_get(res, 0, 1) ? json_string(cl_db_get(res, 0, 1)) : json_null(),
                          "key", key, "prefix", cl_db_get(res, 0, 2), "created_at",
                          cl_db_get(res, 0, 3));
    char *s = d ? json_dumps(d, JSON_COMPACT) : NULL;
    if (s)
        cl_api_ok(r, 201, "API key created: it is shown only this once", s);
    else
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
    free(s);
    json_decref(d);
out:
    memset(key, 0, sizeof key);
}

static void key_create(cl_req *r)
{
    json_t *body = cl_api_json_body(r, 1);
    if (!body)
        return;
    json_t *jn = json_object_get(body, "name");
    const char *name = NULL;
    if (jn && !json_is_null(jn)) {
        name = json_string_value(jn);
        if (!name || !*name || cl_utf8_chars(name) > KEY_NAME_MAX_CHARS || cl_utf8_has_control(name)) {
            cl_api_error(r, CL_ERR_INVALID_REQUEST,
                         "'name' must be a string of 1 to 100 characters, without control characters",
                         "{\"field\":\"name\"}", NULL);
            goto done;
        }
    }
    if (!cl_db_require(r))
        goto done;
    char key[CL_API_KEY_LEN + 1], hash[65], prefix[CL_API_KEY_SHOWN + 1], cap[16];
    if (cl_api_key_generate(key) != 0) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "no randomness available", NULL, NULL);
        goto done;
    }
    cl_api_key_hash(key, CL_API_KEY_LEN, hash);
    memcpy(prefix, key, CL_API_KEY_SHOWN);
    prefix[CL_API_KEY_SHOWN] = '\0';
    snprintf(cap, sizeof cap, "%d", KEYS_PER_USER);
    const char *params[] = {r->user_id, name, hash, prefix, cap};
    cl_api_query *p = cl_api_query_run(r, SQL_CREATE, 5, params, CL_DB_PREPARED, created);
    if (p)
        memcpy(p->secret, key, sizeof key);
    memset(key, 0, sizeof key);
done:
    json_decref(body);
}

/* ---- GET ----------------------------------------------------------------------------- */

static const char SQL_LIST[] =
    "SELECT json_build_object('keys', coalesce(json_agg(json_build_object("
    "  'id', id, 'name', name, 'prefix', prefix, 'created_at', " ISO("created_at") ","
    "  'last_used_at', " ISO("last_used_at") ") ORDER BY created_at DESC, id), '[]'))::text"
    " FROM api_keys WHERE user_id = $1::uuid AND revoked_at IS NULL";

static void listed(void *ud, const cl_db_res *res)
{
    cl_req *r = cl_req_resume(ud);
    if (!res->ok || cl_db_rows(res) != 1) {
        cl_db_error_reply(r, res, "list API keys");
        return;
    }
    cl_api_ok(r, 200, "API keys", cl_db_get(res, 0, 0));
}

static void key_list(cl_req *r)
{
    if (!cl_db_require(r))
        return;
    const char *params[] = {r->user_id};
    cl_api_query_run(r, SQL_LIST, 1, params, CL_DB_PREPARED, listed);
}

/* ---- DELETE -------------------------------------------------------------------------- */

static const char SQL_REVOKE[] =
    "UPDATE api_keys SET revoked_at = now()"
    " WHERE id = $1::uuid AND user_id = $2::uuid AND revoked_at IS NULL RETURNING id";

/* This worker stops trusting the key at once; the others within the
 * trust window (apikey.h). */
static void revoked(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    if (res->ok && cl_db_rows(res) == 1)
        cl_api_key_forget_id(p->id);
    cl_api_removed(ud, res);
}

static void key_revoke(cl_req *r)
{
    char id[37];
    if (!cl_api_path_id(r, id, "API key") || !cl_db_require(r))
        return;
    const char *params[] = {id, r->user_id};
    cl_api_query *p = cl_api_query_run(r, SQL_REVOKE, 2, params, CL_DB_PREPARED, revoked);
    if (p) {
        memcpy(p->id, id, sizeof id);
        p->noun = "API key";
        p->removed = "revoked";
    }
}

int cl_key_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/keys", key_create, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/keys", key_list, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "DELETE", "/api/v1/keys/{id}", key_revoke, CL_GUARD_TOKEN);
    return rc;
}
