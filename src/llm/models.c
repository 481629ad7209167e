/*
 * models.c — GET <base_url>/models through the worker's curl multi: the model
 * list endpoints and the API-key check use it. The mock provider answers
 * from a timer (never synchronously, so callers see one code path).
 */
#include "llm_internal.h"

#include "chatloop/log.h"

#include <stdlib.h>
#include <string.h>

#define MAX_MODELS_BODY (1024 * 1024)

struct cl_llm_get {
    cl_llm *llm;
    CURL *easy;
    struct curl_slist *headers;
    uv_timer_t timer;           /* the mock's answer; also keeps free in one place */
    cl_buf body;
    void (*done)(void *ud, int status, const char *body, size_t len);
    void *ud;
    int finished;
};

static void on_get_closed(uv_handle_t *h)
{
    free(h->data);
}

static void get_release(cl_llm_get *g)
{
    g->finished = 1;
    if (g->easy) {
        cl_curl_loop_remove(g->llm->curl, g->easy);
        cl_llm__easy_put(g->llm, g->easy);
        g->easy = NULL;
    }
    curl_slist_free_all(g->headers);
    g->headers = NULL;
    cl_buf_release(&g->body);
    uv_close((uv_handle_t *)&g->timer, on_get_closed);
}

void cl_llm_get_cancel(cl_llm_get *g)
{
    if (g && !g->finished)
        get_release(g);
}

static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    cl_llm_get *g = ud;
    size_t len = size * n;
    if (cl_buf_append(&g->body, p, len) != 0)
        return CURL_WRITEFUNC_ERROR;
    return len;
}

static void on_done(CURL *easy, CURLcode rc, void *ud)
{
    cl_llm_get *g = ud;
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    else
        CL_DEBUG("GET models failed: %s", curl_easy_strerror(rc));
    const char *body = cl_buf_cstr(&g->body);
    g->done(g->ud, (int)status, body ? body : "", g->body.len);
    get_release(g);
}

static void on_mock_answer(uv_timer_t *t)
{
    cl_llm_get *g = t->data;
    char *json = cl_llm__mock_models_json(g->llm->cfg);
    if (json)
        g->done(g->ud, 200, json, strlen(json));
    else
        g->done(g->ud, 0, "", 0);
    free(json);
    get_release(g);
}

cl_llm_get *cl_llm_models(cl_llm *llm, const char *api_key,
                          void (*done)(void *ud, int status, const char *body, size_t len),
                          void *ud)
{
    cl_llm_get *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->llm = llm;
    g->done = done;
    g->ud = ud;
    cl_buf_init(&g->body, MAX_MODELS_BODY);
    uv_timer_init(llm->loop, &g->timer);
    g->timer.data = g;
    if (llm->provider == CL_PROVIDER_MOCK) {
        uv_timer_start(&g->timer, on_mock_answer, 0, 0);
        return g;
    }
    const char *key = api_key ? api_key : llm->cfg->api_key;
    size_t hl = strlen(key) + 32;
    char *auth = malloc(hl);
    g->easy = cl_llm__easy_get(llm);
    if (!auth || !g->easy)
        goto fail;
    snprintf(auth, hl, "Authorization: Bearer %s", key);
    g->headers = curl_slist_append(NULL, auth);
    memset(auth, 0, hl);
    free(auth);
    auth = NULL;
    if (!g->headers)
        goto fail;
    curl_easy_setopt(g->easy, CURLOPT_URL, llm->models_url);
    curl_easy_setopt(g->easy, CURLOPT_HTTPHEADER, g->headers);
    curl_easy_setopt(g->easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(g->easy, CURLOPT_WRITEDATA, g);
    curl_easy_setopt(g->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(g->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)llm->cfg->connect_timeout_ms);
    curl_easy_setopt(g->easy, CURLOPT_TIMEOUT_MS, (long)llm->cfg->first_token_timeout_ms);
    if (cl_curl_loop_add(llm->curl, g->easy, on_done, g) != 0)
        goto fail;
    return g;
fail:
    free(auth);
    get_release(g);
    return NULL;
}
