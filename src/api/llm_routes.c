/*
 * llm_routes.c — the native provider endpoints, in the /api/v1 envelope:
 *   GET  /api/v1/models          the provider's models, cached 60 s per worker
 *   GET  /api/v1/llm/test        a tiny round trip, with its latency
 *   POST /api/v1/llm/verify-key  {api_key} → {valid}; the key is never
 *                                logged or stored (it lives in the request
 *                                buffers and one curl header list only)
 */
#include "chatloop/api.h"
#include "chatloop/app.h"
#include "chatloop/json_body.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/router.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MODELS_TTL_MS 60000
#define MAX_WAITERS 1024

/* One fetch serves every request that arrives while it runs. */
struct cl_models_cache {
    char *data_json;            /* envelope data of the last good answer */
    uint64_t fetched_ms;
    cl_llm_get *get;            /* fetch in flight */
    cl_req *waiters[MAX_WAITERS];
    int nwaiters;
};

void cl_models_cache_free(cl_models_cache *c)
{
    if (!c)
        return;
    cl_llm_get_cancel(c->get);
    free(c->data_json);
    free(c);
}

static void send_models(cl_req *r, const char *data_json, int cached)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_printf(&b, "{\"provider\":\"%s\",\"cached\":%s,\"models\":%s}",
                  cl_llm_provider_name(cl_app_current()->llm), cached ? "true" : "false", data_json);
    cl_api_ok(r, 200, "models", cl_buf_cstr(&b));
    cl_buf_release(&b);
}

/* Turns an OpenAI model list into [{"id":..,"owned_by":..}, ...]. */
static char *models_data(const char *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    json_t *list = json_object_get(j, "data");
    if (!json_is_array(list)) {
        json_decref(j);
        return NULL;
    }
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_char(&b, '[');
    size_t i, n = 0;
    json_t *m;
    json_array_foreach(list, i, m) {
        const char *id = json_string_value(json_object_get(m, "id"));
        if (!id)
            continue;
        if (n++)
            cl_buf_append_char(&b, ',');
        cl_buf_append_str(&b, "{\"id\":");
        cl_jsonw_cstr(&b, id);
        cl_buf_append_str(&b, ",\"owned_by\":");
        cl_jsonw_cstr(&b, json_string_value(json_object_get(m, "owned_by")));
        cl_buf_append_char(&b, '}');
    }
    cl_buf_append_char(&b, ']');
    json_decref(j);
    const char *s = cl_buf_cstr(&b);
    char *out = s ? strdup(s) : NULL;
    cl_buf_release(&b);
    return out;
}

static void models_waiter_abort(cl_req *r)
{
    cl_models_cache *c = cl_app_current()->models;
    for (int i = 0; i < c->nwaiters; i++) {
        if (c->waiters[i] == r) {
            c->waiters[i] = c->waiters[--c->nwaiters];
            break;
        }
    }
}

static void models_fetched(void *ud, int status, const char *body, size_t len)
{
    cl_models_cache *c = ud;
    c->get = NULL;
    char *data = status == 200 ? models_data(body, len) : NULL;
    if (data) {
        free(c->data_json);
        c->data_json = data;
        c->fetched_ms = uv_now(cl_app_current()->w->loop);
    }
    /* answer everyone who waited; the list is ours again afterwards */
    int n = c->nwaiters;
    cl_req *waiting[MAX_WAITERS];
    memcpy(waiting, c->waiters, (size_t)n * sizeof waiting[0]);
    c->nwaiters = 0;
    for (int i = 0; i < n; i++) {
        cl_req *r = waiting[i];
        r->on_abort = NULL;
        if (data) {
            send_models(r, data, 0);
        } else {
            char msg[96];
            snprintf(msg, sizeof msg, "the provider's model list is unavailable (upstream status %d)", status);
            char details[48];
            snprintf(details, sizeof details, "{\"upstream_status\":%d}", status);
            cl_api_error(r, CL_ERR_LLM_ERROR, msg, details, NULL);
        }
    }
}

static void api_models(cl_req *r)
{
    cl_app *app = cl_app_current();
    if (!app->models && !(app->models = calloc(1, sizeof *app->models))) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    cl_models_cache *c = app->models;
    uint64_t now = uv_now(app->w->loop);
    if (c->data_json && now - c->fetched_ms < MODELS_TTL_MS) {
        send_models(r, c->data_json, 1);
        return;
    }
    if (c->nwaiters == MAX_WAITERS) {
        cl_api_error(r, CL_ERR_SERVICE_UNAVAILABLE, "too many requests waiting for the model list",
                     NULL, "Retry-After: 1\r\n");
        return;
    }
    c->waiters[c->nwaiters++] = r;
    r->on_abort = models_waiter_abort;
    if (!c->get) {
        c->get = cl_llm_models(app->llm, NULL, models_fetched, c);
        if (!c->get)
            models_fetched(c, 0, "", 0);
    }
}

/* ---- GET /api/v1/llm/test ------------------------------------------------------- */

typedef struct probe {
    cl_llm_call *call;
    uint64_t t0;
} probe;

static void probe_cancel(void *state)
{
    probe *p = state;
    cl_llm_cancel(p->call);
}

static void probe_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    probe *p = ud;
    (void)body;
    (void)len;
    double ms = (double)(uv_hrtime() - p->t0) / 1e6;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_printf(&b, "{\"ok\":true,\"provider\":\"%s\",\"model\":",
                  cl_llm_provider_name(cl_app_current()->llm));
    cl_jsonw_cstr(&b, res->model[0] ? res->model : NULL);
    cl_buf_append_str(&b, ",\"latency_ms\":");
    cl_jsonw_ms(&b, ms);
    cl_buf_append_str(&b, ",\"reply\":");
    cl_jsonw_str(&b, res->content.data ? res->content.data : "", res->content.len);
    cl_buf_append_str(&b, ",\"usage\":");
    cl_llm_usage_json(&res->usage, &b);
    cl_buf_append_char(&b, '}');
    cl_api_ok(cl_req_resume(p), 200, "the provider answered", cl_buf_cstr(&b));
    cl_buf_release(&b);
}

static void probe_error(void *ud, cl_err_code code, const char *message, int status,
                        const char *upstream_body, const cl_llm_result *partial)
{
    probe *p = ud;
    (void)upstream_body;
    (void)partial;
    char details[96];
    snprintf(details, sizeof details, "{\"upstream_status\":%d,\"latency_ms\":%.3f}", status,
             (double)(uv_hrtime() - p->t0) / 1e6);
    cl_api_error(cl_req_resume(p), code, message, details, NULL);
}

static const cl_llm_callbacks probe_callbacks = {.on_done = probe_done, .on_error = probe_error};

static void llm_test(cl_req *r)
{
    json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", "Reply with one word: pong");
    cl_llm_params params = {.has_max_tokens = 1, .max_tokens = 4};
    json_t *body = msgs ? cl_llm_build_request(r->conn->w->cfg, msgs, &params) : NULL;
    json_decref(msgs);
    if (!body) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    probe *p = cl_req_defer(r, sizeof *p, probe_cancel);
    if (!p) {
        json_decref(body);
        return;
    }
    p->t0 = uv_hrtime();
    p->call = cl_llm_start(cl_app_current()->llm, body, &probe_callbacks, p);
    json_decref(body);
    if (!p->call)
        cl_api_error(cl_req_resume(p), CL_ERR_PROCESSING_ERROR, "cannot start the test call", NULL,
                     NULL);
}

/* ---- POST /api/v1/llm/verify-key -------------------------------------------------- */

typedef struct verify {
    cl_llm_get *get;
} verify;

static void verify_cancel(void *state)
{
    verify *v = state;
    cl_llm_get_cancel(v->get);
}

static void verify_done(void *ud, int status, const char *body, size_t len)
{
    cl_req *r = cl_req_resume(ud);
    (void)body;
    (void)len;
    if (status == 200) {
        cl_api_ok(r, 200, "the key is valid", "{\"valid\":true}");
    } else if (status == 401 || status == 403) {
        cl_api_ok(r, 200, "the provider refused the key", "{\"valid\":false}");
    } else {
        char msg[96], details[40];
        snprintf(msg, sizeof msg, "could not check the key: the provider answered %d", status);
        snprintf(details, sizeof details, "{\"upstream_status\":%d}", status);
        cl_api_error(r, CL_ERR_LLM_ERROR, msg, details, NULL);
    }
}

static void verify_key(cl_req *r)
{
    json_t *body = cl_api_json_body(r, 0);
    if (!body)
        return;
    json_t *key = json_object_get(body, "api_key");
    const char *k = json_string_value(key);
    if (!k || !*k || strlen(k) > 512 || strpbrk(k, "\r\n")) {
        json_decref(body);
        cl_api_error(r, CL_ERR_INVALID_REQUEST,
                     "'api_key' is required: a non-empty string of at most 512 characters",
                     "{\"field\":\"api_key\"}", NULL);
        return;
    }
    cl_app *app = cl_app_current();
    if (strcmp(cl_llm_provider_name(app->llm), "mock") == 0) {
        json_decref(body);
        cl_api_error(r, CL_ERR_INVALID_REQUEST,
                     "the mock provider has no upstream to check a key against; "
                     "configure provider, base_url and api_key",
                     NULL, NULL);
        return;
    }
    verify *v = cl_req_defer(r, sizeof *v, verify_cancel);
    if (!v) {
        json_decref(body);
        return;
    }
    v->get = cl_llm_models(app->llm, k, verify_done, v);
    json_decref(body);
    if (!v->get)
        cl_api_error(cl_req_resume(v), CL_ERR_PROCESSING_ERROR, "cannot start the check", NULL,
                     NULL);
}

int cl_llm_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/models", api_models, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "GET", "/api/v1/llm/test", llm_test, CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/llm/verify-key", verify_key, CL_GUARD_TOKEN);
    return rc;
}
