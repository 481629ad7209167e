/*
 * routes.c — chatloop-mock's endpoints: the OpenAI-compatible API under
 * /v1, /openai/v1 (Groq's prefix) and the bare root, plus /_mock/ for tests
 * and /health, /metrics. (Not chatloop's builtin /health: that one reads
 * chatloop's own per-worker app, which the mock does not have.)
 */
#include "mock.h"

#include "chatloop/jsonw.h"
#include "chatloop/metrics.h"
#include "chatloop/version.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* The ids GET /models lists (any model name is served, these are just the
 * ones a client discovers). */
static const char *const g_models[] = {
    "llama-3.3-70b-versatile", "llama-3.1-8b-instant", "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",      "mock",
};
#define MODEL_CREATED 1733447754

/* "Authorization: Bearer bad..." is refused like a wrong key, so clients can
 * test key verification; any other key, or none, is accepted. */
static int bad_key(cl_req *r)
{
    size_t len;
    const char *v = cl_req_header(r, "authorization", &len);
    return v && len >= 10 && strncasecmp(v, "Bearer bad", 10) == 0;
}

static void send_bad_key(mock_app *a, cl_req *r)
{
    mock_send_error(a, r, 401, "invalid_request_error", "invalid_api_key", "Invalid API Key",
                    NULL);
}

static void h_chat(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    a->stats.requests++;
    json_error_t err;
    json_t *root = r->body.len ? json_loadb(r->body.data, r->body.len, 0, &err) : NULL;
    mock_record_request(a, r, root != NULL);
    if (bad_key(r)) {
        json_decref(root);
        send_bad_key(a, r);
        return;
    }
    if (!root) {
        char msg[300];
        if (r->body.len == 0)
            snprintf(msg, sizeof msg, "the request body is empty; expected a JSON object");
        else
            snprintf(msg, sizeof msg, "could not parse the JSON body: %s (line %d, column %d)",
                     err.text, err.line, err.column);
        mock_send_error(a, r, 400, "invalid_request_error", "invalid_json", msg, NULL);
        return;
    }
    mock_plan p;
    int rc = mock_plan_build(a, r, root, &p);
    json_decref(root);
    if (rc == 0)
        mock_gen_start(a, r, &p);
}

static void write_model(cl_buf *b, const char *id)
{
    cl_buf_append_str(b, "{\"id\":");
    cl_jsonw_cstr(b, id);
    cl_buf_printf(b, ",\"object\":\"model\",\"created\":%d,\"owned_by\":\"mock\",\"active\":true,"
                     "\"context_window\":131072}",
                  MODEL_CREATED);
}

static void h_models(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    a->stats.requests++;
    mock_record_request(a, r, 0);
    if (bad_key(r)) {
        send_bad_key(a, r);
        return;
    }
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    cl_buf_append_str(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < sizeof g_models / sizeof g_models[0]; i++) {
        if (i)
            cl_buf_append_char(b, ',');
        write_model(b, g_models[i]);
    }
    cl_buf_append_str(b, "]}");
    cl_res_send(r, 200, "application/json", NULL, b->data, b->len);
}

/* GET /v1/models/{id}: any id exists except "mock-404" (for model checks). */
static void h_model(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    a->stats.requests++;
    mock_record_request(a, r, 0);
    if (bad_key(r)) {
        send_bad_key(a, r);
        return;
    }
    char id[MOCK_MODEL_MAX];
    if (cl_req_param(r, "id", id, sizeof id) != 0 || strcmp(id, "mock-404") == 0) {
        mock_send_status_fault(a, r, 404);
        return;
    }
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    write_model(b, id);
    cl_res_send(r, 200, "application/json", NULL, b->data, b->len);
}

static void h_stats(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    mock_stats_json(a, b);
    cl_res_send(r, 200, "application/json", "Cache-Control: no-store\r\n", b->data, b->len);
}

static void h_faults_delete(cl_req *r)
{
    mock_faults_clear(mock_app_of(r));
    cl_res_send(r, 200, "application/json", NULL, "{\"cleared\":true}", 16);
}

static void h_health(cl_req *r)
{
    char body[160];
    int n = snprintf(body, sizeof body,
                     "{\"status\":\"ok\",\"version\":\"%s\",\"mock\":true,\"pid\":%d}",
                     CL_VERSION, (int)getpid());
    cl_res_send(r, 200, "application/json", "Cache-Control: no-store\r\n", body, (size_t)n);
}

static void h_metrics(cl_req *r)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    if (cl_metrics_render(&b) != 0)
        mock_send_error(mock_app_of(r), r, 500, "internal_server_error", "out_of_memory",
                        "metrics unavailable", NULL);
    else
        cl_res_send(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                    "Cache-Control: no-store\r\n", b.data, b.len);
    cl_buf_release(&b);
}

/* POST /_mock/reset: recordings, fault counters and counters start over
 * (answers in flight keep running and still count as open). */
static void h_reset(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    mock_record_free(a);
    mock_faults_clear(a);
    memset(&a->stats, 0, sizeof a->stats);
    cl_res_send(r, 200, "application/json", NULL, "{\"reset\":true}", 14);
}

cl_router *mock_routes_build(const cl_config *cfg)
{
    cl_router *rt = cl_router_new();
    if (!rt)
        return NULL;
    static const char *const prefixes[] = {"/v1", "/openai/v1", ""};
    int rc = 0;
    rc |= cl_router_add(rt, "GET", "/health", h_health);
    rc |= cl_router_add(rt, "GET", "/metrics", h_metrics);
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "%s/chat/completions", prefixes[i]);
        rc |= cl_router_add(rt, "POST", path, h_chat);
        snprintf(path, sizeof path, "%s/models", prefixes[i]);
        rc |= cl_router_add(rt, "GET", path, h_models);
        snprintf(path, sizeof path, "%s/models/{id}", prefixes[i]);
        rc |= cl_router_add(rt, "GET", path, h_model);
    }
    rc |= cl_router_add(rt, "GET", "/_mock/requests", mock_h_requests_get);
    rc |= cl_router_add(rt, "DELETE", "/_mock/requests", mock_h_requests_delete);
    rc |= cl_router_add(rt, "GET", "/_mock/stats", h_stats);
    rc |= cl_router_add(rt, "DELETE", "/_mock/faults", h_faults_delete);
    rc |= cl_router_add(rt, "POST", "/_mock/reset", h_reset);
    if (rc != 0) {
        cl_router_free(rt);
        return NULL;
    }
    return rt;
}
