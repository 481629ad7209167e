/*
 * auth_check.c — who is calling: the guard every protected route passes
 * (routes registered with cl_router_add_guarded and a CL_GUARD_* class).
 *
 * Two steps:
 *   - the token (JWT HS256): checked as soon as the request head is
 *     complete, before a body byte is read (guard_head), or at dispatch
 *     for a request without a body — an HMAC, synchronous;
 *     An API key (`cl-…`, apikey.h) instead: this worker's cache of keys
 *     answers at once when it has heard of the key within
 *     CL_API_KEY_TRUST_MS; otherwise one lookup at dispatch (which proves
 *     the user too: keys go with their user);
 *   - the user it names still exists: a per-worker cache of users seen in
 *     the database within the last USER_TTL_MS, else one indexed lookup
 *     before the handler runs. So a token outliving its user (a deleted
 *     account) is refused within USER_TTL_MS on every worker, and costs no
 *     database round trip per request otherwise. While the database is
 *     unavailable, a user seen before (even long ago) is let through — the
 *     routes that need the database say so themselves — and an unknown one
 *     gets 503.
 */
#include "chatloop/api.h"
#include "chatloop/apikey.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/hex.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* A user seen in the database is trusted without a lookup this long. */
#define USER_TTL_MS 5000
/* Direct-mapped: a collision evicts, which only costs a lookup later. */
#define USER_CACHE_SLOTS 4096

typedef struct known_user {
    uint8_t id[16];
    uint64_t checked_ms;        /* 0: empty slot */
} known_user;

/* One loop per process: the cache is the worker's. */
static known_user g_users[USER_CACHE_SLOTS];

static int uuid_bytes(const char *s, uint8_t out[16])
{
    int n = 0;
    for (; *s && n < 32; s++) {
        if (*s == '-')
            continue;
        int v = cl_hexval(*s);
        if (v < 0)
            return -1;
        if (n % 2 == 0)
            out[n / 2] = (uint8_t)(v << 4);
        else
            out[n / 2] |= (uint8_t)v;
        n++;
    }
    return n == 32 && !*s ? 0 : -1;
}

static known_user *user_slot(const uint8_t id[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ id[i]) * 16777619u;
    return &g_users[h % USER_CACHE_SLOTS];
}

static uint64_t now_ms(void)
{
    cl_app *app = cl_app_current();
    return app ? uv_now(app->w->loop) : 0;
}

/* ---- answers ------------------------------------------------------------------ */

static void unauthorized(cl_req *r, cl_auth_style style, const char *why)
{
    if (style == CL_AUTH_OPENAI) {
        cl_buf b;
        cl_buf_init(&b, 0);
        cl_buf_append_str(&b, "{\"error\":{\"message\":");
        cl_jsonw_cstr(&b, why);
        cl_buf_append_str(&b, ",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}");
        cl_res_send(r, 401, "application/json", "WWW-Authenticate: Bearer\r\n", b.data, b.len);
        cl_buf_release(&b);
        return;
    }
    cl_api_error(r, CL_ERR_UNAUTHORIZED, why, NULL, "WWW-Authenticate: Bearer\r\n");
}

static cl_auth_style style_of(int guard)
{
    return guard == CL_GUARD_TOKEN_OPENAI ? CL_AUTH_OPENAI : CL_AUTH_ENVELOPE;
}

static void refuse_envelope(cl_req *r)
{
    unauthorized(r, CL_AUTH_ENVELOPE, r->auth_error);
}

static void refuse_openai(cl_req *r)
{
    unauthorized(r, CL_AUTH_OPENAI, r->auth_error);
}

/* ---- the token ------------------------------------------------------------------ */

int cl_auth_token_user(const cl_config *cfg, const char *tok, size_t tlen, char user_id[37],
                       int64_t *exp, char *why, size_t whylen)
{
    if (exp)
        *exp = 0;
    if (cfg->auth == CL_AUTH_OFF) {
        memcpy(user_id, CL_LOCAL_USER_ID, sizeof CL_LOCAL_USER_ID);
        return 1;
    }
    char sub[64];
    int64_t e = 0;
    cl_jwt_status st = cl_jwt_verify(cfg->jwt_secret, strlen(cfg->jwt_secret), tok, tlen,
                                     (int64_t)time(NULL), sub, sizeof sub, &e);
    if (st != CL_JWT_OK) {
        snprintf(why, whylen, "invalid token: %s", cl_jwt_status_text(st));
        return 0;
    }
    if (!cl_uuid_valid(sub)) {
        snprintf(why, whylen, "invalid token: bad subject");
        return 0;
    }
    memcpy(user_id, sub, 37);
    if (exp)
        *exp = e;
    return 1;
}

/* The token of a request: `Authorization: Bearer`, or for the WebSocket
 * upgrade also ?token= (browsers cannot set headers on a WebSocket). */
static const char *request_token(cl_req *r, int guard, size_t *len, const char **why)
{
    if (guard == CL_GUARD_TOKEN_WS) {
        size_t qlen;
        const char *q = cl_req_query(r, &qlen);
        for (const char *p = q; p && p < q + qlen;) {
            const char *amp = memchr(p, '&', (size_t)(q + qlen - p));
            const char *end = amp ? amp : q + qlen;
            if (end - p > 6 && memcmp(p, "token=", 6) == 0) {
                *len = (size_t)(end - p - 6);
                return p + 6;
            }
            p = amp ? amp + 1 : end;
        }
    }
    size_t hl = 0;
    const char *h = cl_req_header(r, "authorization", &hl);
    if (!h) {
        *why = guard == CL_GUARD_TOKEN_WS
                   ? "missing token: pass ?token=<JWT> or Authorization: Bearer <JWT>"
                   : "missing Authorization: Bearer token";
        return NULL;
    }
    if (hl < 7 || strncasecmp(h, "Bearer ", 7) != 0) {
        *why = "the Authorization header must be \"Bearer <token>\"";
        return NULL;
    }
    h += 7;
    hl -= 7;
    while (hl && *h == ' ') {
        h++;
        hl--;
    }
    *len = hl;
    return h;
}

static int db_up(void)
{
    cl_app *app = cl_app_current();
    return app && app->db && cl_db_available(app->db);
}

/* An API key: known fresh (authed), known bad (0), or to look up at
 * dispatch (key_pending). */
static int check_key(cl_req *r, const char *tok, size_t len)
{
    cl_api_key_hash(tok, len, r->key_hash);
    switch (cl_api_key_cached(r->key_hash, now_ms(), db_up(), r->user_id, r->api_key_id)) {
    case CL_KEY_VALID:
        r->authed = 1;
        return 1;
    case CL_KEY_INVALID:
        cl_metrics_api_key_failure();
        snprintf(r->auth_error, sizeof r->auth_error, "invalid API key: unknown or revoked");
        return 0;
    case CL_KEY_ASK:
        break;
    }
    r->key_pending = 1;
    return 1;
}

/* Fills r->user_id / token_exp / authed (or key_pending), or r->auth_error.
 * 1 or 0. */
static int check_token(cl_req *r, int guard)
{
    const cl_config *cfg = r->conn->w->cfg;
    if (r->authed || r->key_pending)
        return 1;
    if (cfg->auth == CL_AUTH_OFF) {
        memcpy(r->user_id, CL_LOCAL_USER_ID, sizeof CL_LOCAL_USER_ID);
        r->authed = 1;
        return 1;
    }
    const char *why = NULL;
    size_t len = 0;
    const char *tok = request_token(r, guard, &len, &why);
    if (!tok) {
        snprintf(r->auth_error, sizeof r->auth_error, "%s", why);
        return 0;
    }
    if (cl_api_key_shaped(tok, len))
        return check_key(r, tok, len);
    if (!cl_auth_token_user(cfg, tok, len, r->user_id, &r->token_exp, r->auth_error,
                            sizeof r->auth_error))
        return 0;
    r->authed = 1;
    return 1;
}

int cl_auth_guard_head(cl_req *r, int guard)
{
    if (check_token(r, guard))
        return 1;
    r->refuse_status = 401;
    r->refuse_code = CL_ERR_UNAUTHORIZED;
    r->refuse_answer = style_of(guard) == CL_AUTH_OPENAI ? refuse_openai : refuse_envelope;
    return 0;
}

/* ---- the user ------------------------------------------------------------------ */

/* The caller could not be checked for want of the database. */
static void check_failed(cl_req *r, cl_auth_style style, const cl_db_res *res)
{
    if (style == CL_AUTH_OPENAI) {
        static const char body[] =
            "{\"error\":{\"message\":\"the database is unavailable; try again shortly\","
            "\"type\":\"server_error\",\"param\":null,\"code\":\"db_unavailable\"}}";
        cl_res_send(r, 503, "application/json", "Retry-After: 1\r\n", body, sizeof body - 1);
        return;
    }
    cl_db_error_reply(r, res, "checking the caller");
}

static void run_handler(cl_req *r)
{
    void (*fn)(cl_req *) = r->handler;
    r->handler = NULL;
    fn(r);
}

static void key_checked(void *ud, const cl_db_res *res)
{
    cl_req *r = ud;
    r->on_abort = NULL;
    r->handler_data = NULL;
    r->key_pending = 0;
    cl_auth_style style = style_of(r->guard);
    switch (cl_api_key_settle(r->key_hash, res, now_ms(), r->user_id, r->api_key_id)) {
    case CL_KEY_ASK:
        check_failed(r, style, res);
        return;
    case CL_KEY_INVALID:
        cl_metrics_api_key_failure();
        unauthorized(r, style, "invalid API key: unknown or revoked");
        return;
    case CL_KEY_VALID:
        break;
    }
    r->authed = 1;
    run_handler(r);
}

static void user_checked(void *ud, const cl_db_res *res)
{
    cl_req *r = ud;
    r->on_abort = NULL;
    r->handler_data = NULL;
    cl_auth_style style = style_of(r->guard);
    if (!res->ok) {
        check_failed(r, style, res);
        return;
    }
    if (cl_db_rows(res) != 1) {
        unauthorized(r, style, "invalid token: its user no longer exists");
        return;
    }
    uint8_t id[16];
    if (uuid_bytes(r->user_id, id) == 0) {
        known_user *k = user_slot(id);
        memcpy(k->id, id, 16);
        uint64_t now = now_ms();
        k->checked_ms = now ? now : 1;
    }
    run_handler(r);
}

static void user_check_abort(cl_req *r)
{
    cl_db_cancel(r->handler_data);
}

void cl_auth_guard_dispatch(cl_req *r, int guard, void (*fn)(cl_req *r))
{
    if (!check_token(r, guard)) {
        unauthorized(r, style_of(guard), r->auth_error);
        return;
    }
    cl_app *app = cl_app_current();
    if (r->key_pending) {
        if (!app || !app->db) {
            unauthorized(r, style_of(guard), "API keys need the database (database_url)");
            return;
        }
        r->handler = fn;
        r->guard = (uint8_t)guard;
        cl_db_query *q = cl_api_key_lookup(app->db, r->key_hash, key_checked, r);
        if (!q) {
            r->handler = NULL;
            cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
            return;
        }
        r->handler_data = q;
        r->on_abort = user_check_abort;
        return;
    }
    if (r->conn->w->cfg->auth == CL_AUTH_OFF || !app || !app->db || r->api_key_id[0]) {
        /* a key known valid proves its user: keys are deleted with them */
        fn(r);
        return;
    }
    uint8_t id[16];
    if (uuid_bytes(r->user_id, id) != 0) {
        unauthorized(r, style_of(guard), "invalid token: bad subject");
        return;
    }
    known_user *k = user_slot(id);
    int seen = k->checked_ms && memcmp(k->id, id, 16) == 0;
    uint64_t now = now_ms();
    if (seen && (now - k->checked_ms < USER_TTL_MS || !cl_db_available(app->db))) {
        fn(r);
        return;
    }
    const char *p[] = {r->user_id};
    r->handler = fn;
    r->guard = (uint8_t)guard;
    static const char sql[] = "SELECT 1 FROM users WHERE id = $1::uuid";
    cl_db_query *q = cl_db_exec(app->db, sql, 1, p, CL_DB_PREPARED, user_checked, r);
    if (!q) {
        r->handler = NULL;
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    r->handler_data = q;
    r->on_abort = user_check_abort;
}

/* ---- database helpers ------------------------------------------------------------ */

int cl_db_require(cl_req *r)
{
    cl_app *app = cl_app_current();
    if (app && app->db && cl_db_available(app->db))
        return 1;
    cl_api_error(r, CL_ERR_DB_UNAVAILABLE,
                 app && app->db ? "the database is unavailable; try again shortly"
                                : "no database is configured (database_url)",
                 NULL, "Retry-After: 1\r\n");
    return 0;
}

void cl_db_error_reply(cl_req *r, const cl_db_res *res, const char *what)
{
    if (res->unavailable) {
        /* the pool's own words (down, queue full, out of time): no parameters in them */
        char msg[200];
        snprintf(msg, sizeof msg, "%s; try again shortly",
                 res->error ? res->error : "the database is unavailable");
        cl_api_error(r, CL_ERR_DB_UNAVAILABLE, msg, NULL, "Retry-After: 1\r\n");
        return;
    }
    CL_ERROR("%s failed: %s", what, res->error ? res->error : "?");
    cl_api_error(r, CL_ERR_PROCESSING_ERROR, "internal error while accessing the database", NULL,
                 NULL);
}
