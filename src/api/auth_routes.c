/*
 * auth_routes.c — accounts and sessions (SPEC §3, §8):
 *   POST /api/v1/auth/register  {email, password} → 201 {user_id, email}
 *   POST /api/v1/auth/login     {email, password} → 200 {access_token,
 *                               token_type:"bearer", expires_in, user_id}
 *
 * Both are asynchronous in two steps, neither on the loop's time:
 *   register: validate → hash (threadpool) → INSERT ... ON CONFLICT DO NOTHING
 *   login:    validate → SELECT by lower(email) → verify (threadpool) → sign
 * One op struct per request holds whichever step is pending; on_abort
 * cancels that step and frees the op, and no step touches the req after.
 *
 * Emails are stored as given and matched case-insensitively (the unique
 * index is on lower(email)), so "A@x.io" and "a@x.io" are one account.
 *
 * The KDF queue is bounded: at most kdf_queue_max register/login ops per
 * worker hold a place from admission until their KDF job ends; past that
 * they answer 503 SERVICE_UNAVAILABLE (Retry-After) before any database
 * work, so a flood of logins cannot make every login wait behind it.
 *
 * Passwords and tokens are never logged. The op's copy of a login password
 * is wiped when the op is freed; the hashing jobs wipe their own copies.
 */
#include "chatloop/api.h"
#include "chatloop/limits.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/utf8.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EMAIL_MIN 3
#define EMAIL_MAX 254           /* RFC 5321's path limit, in octets */
#define PASSWORD_MIN 8          /* characters (code points) */
#define PASSWORD_MAX 1024

/* The request's state while a step is pending (cl_req_defer owns it). */
typedef struct auth_op {
    int kdf_admitted;           /* holds a place in g_kdf_waiting (see kdf_admit) */
    cl_password_job *job;       /* the pending KDF step, or NULL */
    cl_db_query *q;             /* the pending query, or NULL */
    char *password;             /* login only: kept for the verify step; wiped */
    size_t password_len;
    char email[EMAIL_MAX + 1];
    char user_id[37];
} auth_op;

/* Ops admitted whose KDF job does not exist yet (the SELECT of a login is
 * still running): they count against kdf_queue_max with the jobs alive
 * (cl_password_jobs), or a burst would all pass the check before any job
 * was queued. File scope: a worker is a process with one loop, and an op
 * may end after the worker's app state is gone. */
static unsigned g_kdf_waiting;

/* Admits the op into the KDF queue, or answers 503 and returns 0. */
static int kdf_admit(cl_req *r)
{
    const cl_config *cfg = r->conn->w->cfg;
    if (g_kdf_waiting + cl_password_jobs() >= (unsigned)cfg->kdf_queue_max) {
        cl_api_error(r, CL_ERR_SERVICE_UNAVAILABLE,
                     "too many logins and registrations in progress; try again shortly", NULL,
                     "Retry-After: 1\r\n");
        return 0;
    }
    return 1;
}

/* The op's place passes to its job once queued (the job counts itself
 * until its KDF has stopped), or is given back when the op ends first. */
static void kdf_release(auth_op *op)
{
    if (op->kdf_admitted) {
        op->kdf_admitted = 0;
        g_kdf_waiting--;
    }
}

/* What the op owns besides itself: its KDF place and the password copy. */
static void op_release(auth_op *op)
{
    kdf_release(op);
    if (op->password) {
        explicit_bzero(op->password, op->password_len);
        free(op->password);
        op->password = NULL;
    }
}

/* The client left: both cancels guarantee the callback will not run; the
 * KDF may still finish on its thread, and its job frees itself then. */
static void op_cancel(void *state)
{
    auth_op *op = state;
    cl_password_cancel(op->job);
    cl_db_cancel(op->q);
    op_release(op);
}

/* Ends the op (read what you need from it first): the req is answered
 * right after by the caller. */
static cl_req *op_finish(auth_op *op)
{
    op_release(op);
    return cl_req_resume(op);
}

/* ---- input ------------------------------------------------------------------- */

static void field_error(cl_req *r, const char *field, const char *message)
{
    char details[64];
    snprintf(details, sizeof details, "{\"field\":\"%s\"}", field);
    cl_api_error(r, CL_ERR_INVALID_REQUEST, message, details, NULL);
}

/* Parses the body as a JSON object and takes email and password out of it.
 * `strict` (register) applies the account rules; login only checks types
 * and bounds, so a login never reveals what the rules are for an account
 * that may not exist, and rules tightened later do not lock anyone out.
 * Returns the parsed body (owning the strings) or NULL after answering. */
static json_t *read_credentials(cl_req *r, int strict, const char **email, const char **password)
{
    json_t *body = cl_api_json_body(r, 0);
    if (!body)
        return NULL;
    const char *e = json_string_value(json_object_get(body, "email"));
    size_t elen = e ? strlen(e) : 0;
    const char *at = e ? strrchr(e, '@') : NULL;
    int bad = !e || elen < EMAIL_MIN || elen > EMAIL_MAX || !at || at == e || at[1] == '\0' ||
              e[0] == '@';
    for (size_t i = 0; !bad && i < elen; i++) {
        unsigned char c = (unsigned char)e[i];
        bad = c <= 0x20 || c == 0x7f;       /* spaces and control characters */
    }
    if (bad) {
        json_decref(body);
        field_error(r, "email",
                    "'email' is required: a string of 3 to 254 characters with an '@' "
                    "between its local part and domain, and no spaces or control characters");
        return NULL;
    }
    const char *p = json_string_value(json_object_get(body, "password"));
    size_t pchars = p ? cl_utf8_chars(p) : 0;
    if (!p || pchars > PASSWORD_MAX || (strict ? pchars < PASSWORD_MIN : pchars == 0)) {
        json_decref(body);
        field_error(r, "password",
                    strict ? "'password' is required: a string of 8 to 1024 characters"
                           : "'password' is required: a non-empty string of at most 1024 "
                             "characters");
        return NULL;
    }
    *email = e;
    *password = p;
    return body;
}

static auth_op *op_new(cl_req *r, const char *email)
{
    auth_op *op = cl_req_defer(r, sizeof *op, op_cancel);
    if (!op)
        return NULL;
    op->kdf_admitted = 1; /* the caller ran kdf_admit just before */
    g_kdf_waiting++;
    snprintf(op->email, sizeof op->email, "%s", email);   /* length checked: fits */
    return op;
}

/* ---- register -------------------------------------------------------------------- */

static void register_inserted(void *ud, const cl_db_res *res)
{
    auth_op *op = ud;
    op->q = NULL;
    char email[EMAIL_MAX + 1], user_id[37] = "";
    memcpy(email, op->email, sizeof email);
    int found = res->ok && cl_db_rows(res) == 1 && cl_db_get(res, 0, 0);
    if (found)
        snprintf(user_id, sizeof user_id, "%s", cl_db_get(res, 0, 0));
    cl_req *r = op_finish(op);
    if (!res->ok) {
        cl_db_error_reply(r, res, "register: insert user");
        return;
    }
    if (!found) {
        /* ON CONFLICT DO NOTHING returned no row: the lower(email) index
         * (or, astronomically rarely, the fresh id) already exists. */
        cl_api_error_status(r, 409, CL_ERR_INVALID_REQUEST, "email already registered",
                            "{\"field\":\"email\"}", NULL);
        return;
    }
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"user_id\":");
    cl_jsonw_cstr(&b, user_id);
    cl_buf_append_str(&b, ",\"email\":");
    cl_jsonw_cstr(&b, email);
    cl_buf_append_char(&b, '}');
    cl_api_ok(r, 201, "registered", cl_buf_cstr(&b));
    cl_buf_release(&b);
}

static void register_hashed(void *ud, const char *encoded)
{
    auth_op *op = ud;
    op->job = NULL;
    if (!encoded) {
        cl_req *r = op_finish(op);
        CL_ERROR("register: password hashing failed");
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "could not hash the password", NULL, NULL);
        return;
    }
    /* The id is made here rather than by a column default so the answer
     * never depends on how the schema fills it. */
    const char *params[3] = {op->user_id, op->email, encoded};
    op->q = cl_db_exec(cl_app_current()->db,
                       "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3) "
                       "ON CONFLICT DO NOTHING RETURNING id",
                       3, params, 0, register_inserted, op);
    if (!op->q) {
        cl_req *r = op_finish(op);
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
    }
}

/* ---- auth_rate_limit_per_minute: per client address, before any hashing ---------- */

typedef struct ip_check {
    cl_db_query *q;
    void (*next)(cl_req *r);
} ip_check;

static void ip_check_cancel(void *state)
{
    ip_check *c = state;
    cl_db_cancel(c->q);
}

static void ip_checked(void *ud, const cl_db_res *res)
{
    ip_check *c = ud;
    void (*next)(cl_req *) = c->next;
    cl_req *r = cl_req_resume(c);
    const char *allowed = res->ok && cl_db_rows(res) == 1 ? cl_db_get(res, 0, 0) : NULL;
    if (!res->ok) {
        cl_db_error_reply(r, res, "checking the sign-in rate");
        return;
    }
    if (allowed && strcmp(allowed, "f") == 0) {
        const char *ms = cl_db_get(res, 0, 1);
        cl_metrics_rate_limited(CL_LIMIT_AUTH_IP);
        cl_limits_refuse(r, CL_LIMIT_AUTH_IP, ms ? atol(ms) : 1000);
        return;
    }
    next(r);
}

/* The address without its port ("1.2.3.4:5678", "::1:5678"). Behind a
 * proxy every client has the proxy's address: see the README. */
static void peer_addr(const cl_req *r, char out[56])
{
    snprintf(out, 56, "%s", r->conn->peer);
    char *colon = strrchr(out, ':');
    if (colon)
        *colon = '\0';
}

/* Runs next(r) if the caller's address is within its budget, else answers
 * 429 — in one statement, before the KDF or any other database work. */
static void rate_checked(cl_req *r, void (*next)(cl_req *r))
{
    const cl_config *cfg = cl_app_current()->w->cfg;
    if (cfg->auth_rate_limit_per_minute <= 0) {
        next(r);
        return;
    }
    if (!cl_db_require(r))
        return;
    static const char sql[] = "SELECT allowed, retry_after_ms FROM chatloop_take_auth($1, $2::int, $3::int)";
    long interval = 60000000L / cfg->auth_rate_limit_per_minute;
    char addr[56], iv[24], burst[24];
    peer_addr(r, addr);
    snprintf(iv, sizeof iv, "%ld", interval);
    snprintf(burst, sizeof burst, "%ld", interval * cfg->auth_rate_limit_per_minute);
    ip_check *c = cl_req_defer(r, sizeof *c, ip_check_cancel);
    if (!c)
        return;
    c->next = next;
    const char *p[] = {addr, iv, burst};
    c->q = cl_db_exec(cl_app_current()->db, sql, 3, p, CL_DB_PREPARED, ip_checked, c);
    if (!c->q)
        cl_api_error(cl_req_resume(c), CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
}

static void do_register(cl_req *r)
{
    const char *email, *password;
    json_t *body = read_credentials(r, 1, &email, &password);
    if (!body)
        return;
    /* Checked before hashing: no point burning a KDF run on a write that
     * cannot happen. */
    if (!cl_db_require(r) || !kdf_admit(r)) {
        json_decref(body);
        return;
    }
    auth_op *op = op_new(r, email);
    if (!op) {
        json_decref(body);
        return;
    }
    if (cl_uuid_v4(op->user_id) != 0) {
        json_decref(body);
        cl_api_error(op_finish(op), CL_ERR_PROCESSING_ERROR, "no randomness available", NULL,
                     NULL);
        return;
    }
    cl_app *app = cl_app_current();
    op->job = cl_password_hash(app->w->loop, password, (uint32_t)app->w->cfg->kdf_iterations,
                               register_hashed, op);
    kdf_release(op);
    json_decref(body);
    if (!op->job)
        cl_api_error(op_finish(op), CL_ERR_PROCESSING_ERROR, "could not start hashing", NULL,
                     NULL);
}

/* ---- login ------------------------------------------------------------------------- */

/* What an unknown email is verified against, so that "no such user" costs
 * the same KDF run as "wrong password" and timing does not reveal which
 * emails have accounts. It needs no hashing to make: any well-formed
 * encoding with the configured iteration count costs exactly that count to
 * check, and an all-zero derived key is matched by no password in practice.
 * (Accounts hashed under an older kdf_iterations still cost their own
 * count; that difference is the operator's choice, not the caller's.) */
static void dummy_hash(char out[CL_PASSWORD_HASH_MAX], int iterations)
{
    snprintf(out, CL_PASSWORD_HASH_MAX, "pbkdf2-sha256$%d$%s$%s", iterations,
             "AAAAAAAAAAAAAAAAAAAAAA==",                        /* 16 zero bytes */
             "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");   /* 32 zero bytes */
}

static void login_verified(void *ud, int ok)
{
    auth_op *op = ud;
    op->job = NULL;
    char user_id[37];
    memcpy(user_id, op->user_id, sizeof user_id);
    cl_req *r = op_finish(op);
    if (!ok || !user_id[0]) {
        cl_api_error(r, CL_ERR_UNAUTHORIZED, "invalid email or password", NULL, NULL);
        return;
    }
    const cl_config *cfg = cl_app_current()->w->cfg;
    if (!cfg->jwt_secret || !cfg->jwt_secret[0]) {
        CL_ERROR("login: no jwt_secret configured; cannot issue session tokens");
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "session tokens are not configured", NULL, NULL);
        return;
    }
    int64_t ttl_s = (int64_t)(cfg->jwt_ttl_ms / 1000);
    if (ttl_s < 1)
        ttl_s = 1;
    char *token = cl_jwt_sign(cfg->jwt_secret, strlen(cfg->jwt_secret), user_id,
                              (int64_t)time(NULL), ttl_s);
    if (!token) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "could not sign the token", NULL, NULL);
        return;
    }
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"access_token\":");
    cl_jsonw_cstr(&b, token);
    cl_buf_printf(&b, ",\"token_type\":\"bearer\",\"expires_in\":%lld,\"user_id\":",
                  (long long)ttl_s);
    cl_jsonw_cstr(&b, user_id);
    cl_buf_append_char(&b, '}');
    /* Responses are not logged by body, so the token stays out of the log. */
    cl_api_ok(r, 200, "logged in", cl_buf_cstr(&b));
    explicit_bzero(b.data, b.len);
    cl_buf_release(&b);
    explicit_bzero(token, strlen(token));
    free(token);
}

static void login_found(void *ud, const cl_db_res *res)
{
    auth_op *op = ud;
    op->q = NULL;
    if (!res->ok) {
        cl_db_error_reply(op_finish(op), res, "login: find user");
        return;
    }
    const char *id = cl_db_rows(res) == 1 ? cl_db_get(res, 0, 0) : NULL;
    const char *stored = id ? cl_db_get(res, 0, 1) : NULL;
    char dummy[CL_PASSWORD_HASH_MAX];
    if (id && stored) {
        snprintf(op->user_id, sizeof op->user_id, "%s", id);
    } else {
        /* No such account (or one without a password, like the auth = off
         * local user): same work, and login_verified refuses it because
         * user_id stays empty even if the dummy somehow matched. */
        op->user_id[0] = '\0';
        dummy_hash(dummy, cl_app_current()->w->cfg->kdf_iterations);
        stored = dummy;
    }
    op->job = cl_password_verify(cl_app_current()->w->loop, op->password, stored, login_verified,
                                 op);
    kdf_release(op);
    /* The job has its own copy now. */
    explicit_bzero(op->password, op->password_len);
    if (!op->job)
        cl_api_error(op_finish(op), CL_ERR_PROCESSING_ERROR, "could not start verification",
                     NULL, NULL);
}

static void do_login(cl_req *r)
{
    const char *email, *password;
    json_t *body = read_credentials(r, 0, &email, &password);
    if (!body)
        return;
    /* Admitted before the SELECT: a refused login costs no database work. */
    if (!cl_db_require(r) || !kdf_admit(r)) {
        json_decref(body);
        return;
    }
    auth_op *op = op_new(r, email);
    if (!op) {
        json_decref(body);
        return;
    }
    op->password_len = strlen(password);
    op->password = malloc(op->password_len + 1);
    if (op->password)
        memcpy(op->password, password, op->password_len + 1);
    json_decref(body);
    if (!op->password) {
        cl_api_error(op_finish(op), CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    const char *params[1] = {op->email};
    op->q = cl_db_exec(cl_app_current()->db,
                       "SELECT id, password_hash FROM users WHERE lower(email) = lower($1) LIMIT 1",
                       1, params, 0, login_found, op);
    if (!op->q)
        cl_api_error(op_finish(op), CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
}

static void auth_register(cl_req *r)
{
    rate_checked(r, do_register);
}

static void auth_login(cl_req *r)
{
    rate_checked(r, do_login);
}

int cl_auth_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add(r, "POST", "/api/v1/auth/register", auth_register);
    rc |= cl_router_add(r, "POST", "/api/v1/auth/login", auth_login);
    return rc;
}
