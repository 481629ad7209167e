/* auth_check.c — who is calling: the JWT check every protected route runs. */
#include "chatloop/api.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

int cl_auth_token_user(const cl_config *cfg, const char *tok, size_t tlen, char user_id[37],
                       char *why, size_t whylen)
{
    if (cfg->auth == CL_AUTH_OFF) {
        memcpy(user_id, CL_LOCAL_USER_ID, sizeof CL_LOCAL_USER_ID);
        return 1;
    }
    char sub[64];
    int64_t exp;
    cl_jwt_status st = cl_jwt_verify(cfg->jwt_secret, strlen(cfg->jwt_secret), tok, tlen,
                                     (int64_t)time(NULL), sub, sizeof sub, &exp);
    if (st != CL_JWT_OK) {
        snprintf(why, whylen, "invalid token: %s", cl_jwt_status_text(st));
        return 0;
    }
    if (!cl_uuid_valid(sub)) {
        snprintf(why, whylen, "invalid token: bad subject");
        return 0;
    }
    memcpy(user_id, sub, 37);
    return 1;
}

int cl_auth_check(cl_req *r, cl_auth_style style)
{
    const cl_config *cfg = r->conn->w->cfg;
    if (cfg->auth == CL_AUTH_OFF) {
        memcpy(r->user_id, CL_LOCAL_USER_ID, sizeof CL_LOCAL_USER_ID);
        return 1;
    }
    size_t len = 0;
    const char *h = cl_req_header(r, "authorization", &len);
    if (!h) {
        unauthorized(r, style, "missing Authorization: Bearer token");
        return 0;
    }
    if (len < 7 || strncasecmp(h, "Bearer ", 7) != 0) {
        unauthorized(r, style, "the Authorization header must be \"Bearer <token>\"");
        return 0;
    }
    const char *tok = h + 7;
    size_t tlen = len - 7;
    while (tlen && *tok == ' ') {
        tok++;
        tlen--;
    }
    char why[96];
    if (!cl_auth_token_user(cfg, tok, tlen, r->user_id, why, sizeof why)) {
        unauthorized(r, style, why);
        return 0;
    }
    return 1;
}

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
