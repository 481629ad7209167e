/*
 * api_query.c — one query per request for the /api/v1 handlers
 * (api_query.h).
 */
#include "chatloop/api_query.h"
#include "chatloop/api.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/buf.h"
#include "chatloop/jsonw.h"

#include <stdio.h>
#include <string.h>

static void query_cancel(void *state)
{
    cl_api_query *p = state;
    cl_db_cancel(p->q);         /* its callback will not run */
    memset(p->secret, 0, sizeof p->secret);
}

cl_api_query *cl_api_query_run(cl_req *r, const char *sql, int n, const char *const *params,
                               int flags, cl_db_cb cb)
{
    cl_api_query *p = cl_req_defer(r, sizeof *p, query_cancel);
    if (!p)
        return NULL;
    p->q = cl_db_exec(cl_app_current()->db, sql, n, params, flags, cb, p);
    if (!p->q) {
        cl_api_error(cl_req_resume(p), CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return NULL;
    }
    return p;
}

void cl_api_not_found(cl_req *r, const char *noun)
{
    char msg[64];
    snprintf(msg, sizeof msg, "%s not found", noun);
    cl_api_error(r, CL_ERR_NOT_FOUND, msg, NULL, NULL);
}

int cl_api_path_id(cl_req *r, char out[37], const char *noun)
{
    if (cl_req_param(r, "id", out, 37) != 0 || !cl_uuid_valid(out)) {
        cl_api_not_found(r, noun);
        return 0;
    }
    return 1;
}

void cl_api_removed(void *ud, const cl_db_res *res)
{
    cl_api_query *p = ud;
    char id[37], what[64];
    const char *noun = p->noun, *removed = p->removed;
    memcpy(id, p->id, sizeof id);
    cl_req *r = cl_req_resume(p);
    if (!res->ok) {
        snprintf(what, sizeof what, "remove %s", noun);
        cl_db_error_reply(r, res, what);
        return;
    }
    if (cl_db_rows(res) != 1) {
        cl_api_not_found(r, noun);
        return;
    }
    char data[96];
    snprintf(data, sizeof data, "{\"id\":\"%s\",\"%s\":true}", id, removed); /* a checked UUID */
    snprintf(what, sizeof what, "%s %s", noun, removed);
    cl_api_ok(r, 200, what, data);
}

void cl_api_field_error(cl_req *r, int status, const char *field, const char *message)
{
    cl_buf d;
    cl_buf_init(&d, 0);
    cl_buf_append_str(&d, "{\"field\":");
    cl_jsonw_cstr(&d, field);
    cl_buf_append_char(&d, '}');
    const char *details = cl_buf_cstr(&d);
    cl_api_error_status(r, status, CL_ERR_INVALID_REQUEST, message, details ? details : "{}",
                        NULL);
    cl_buf_release(&d);
}

void cl_api_page_reply(void *ud, const cl_db_res *res, const char *key, const char *what)
{
    cl_api_query *p = ud;
    int limit = p->a, offset = p->b;
    cl_req *r = cl_req_resume(p);
    if (!res->ok) {
        cl_db_error_reply(r, res, what);
        return;
    }
    int n = cl_db_rows(res);
    int shown = n > limit ? limit : n;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_printf(&b, "{\"%s\":[", key);
    for (int i = 0; i < shown; i++) {
        if (i)
            cl_buf_append_char(&b, ',');
        cl_buf_append_str(&b, cl_db_get(res, i, 0));
    }
    cl_buf_append_str(&b, "],\"next_offset\":");
    if (n > limit)
        cl_buf_printf(&b, "%d", offset + limit);
    else
        cl_buf_append_str(&b, "null");
    cl_buf_append_char(&b, '}');
    const char *data = cl_buf_cstr(&b);
    if (data)
        cl_api_ok(r, 200, key, data);
    else
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
    cl_buf_release(&b);
}
