/*
 * mock.c — the built-in `mock` provider: deterministic answers on loop
 * timers, no network. It writes the same Groq-format chunks an upstream
 * would and feeds them through the call's decoder (cl_llm__on_event), so the
 * relay, the turn and the usage accounting run exactly as with a real
 * upstream.
 *
 * The answer to any request is mock_tokens tokens (or max_tokens if
 * smaller), the same words chatloop-mock sends (mock_text.h: "tok1 tok2
 * ..."), reproducible from the count alone so tests and chatbench can check
 * every answer.
 */
#include "llm_internal.h"

#include "chatloop/jsonw.h"
#include "chatloop/mock_text.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* A rough prompt size: a token is about four characters of text. */

/* Writes the common head of a chunk: {"id":..,"object":..,"created":..,"model":.., */
static void chunk_head(cl_llm_call *c, cl_buf *b)
{
    cl_buf_printf(b, "{\"id\":\"chatcmpl-mock-%lu\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                  c->mock_serial, (long long)time(NULL));
    cl_jsonw_cstr(b, c->models[c->model_idx]);
    cl_buf_append_str(b, ",\"system_fingerprint\":\"fp_mock\",");
}

/* Feeds one chunk; returns 0 to go on, -1 when the call ended. */
static int emit(cl_llm_call *c, cl_buf *b)
{
    int rc = cl_llm__on_event(c, b->data, b->len);
    cl_buf_reset(b);
    if (cl_llm__call_over(c))
        return -1;
    if (rc != 0 || c->fail_code) {
        cl_llm__fail(c, c->fail_code ? (cl_err_code)(c->fail_code - 1) : CL_ERR_LLM_ERROR,
                     c->fail_code ? c->fail_msg : "mock provider failed", 0, NULL);
        return -1;
    }
    return 0;
}

static int emit_token(cl_llm_call *c, cl_buf *b, int i)
{
    char tok[CL_MOCK_TOKEN_MAX];
    size_t n = cl_mock_token((unsigned)i, tok);
    chunk_head(c, b);
    cl_buf_append_str(b, "\"choices\":[{\"index\":0,\"delta\":{");
    if (i == 0)
        cl_buf_append_str(b, "\"role\":\"assistant\",");
    cl_buf_append_str(b, "\"content\":");
    cl_jsonw_str(b, tok, n);
    cl_buf_append_str(b, "},\"logprobs\":null,\"finish_reason\":null}]}");
    return emit(c, b);
}

static int emit_end(cl_llm_call *c, cl_buf *b)
{
    int p = c->mock_prompt_tokens, n = c->mock_n;
    chunk_head(c, b);
    cl_buf_printf(b, "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
                     "\"x_groq\":{\"id\":\"req_mock_%lu\",\"usage\":{\"prompt_tokens\":%d,"
                     "\"completion_tokens\":%d,\"total_tokens\":%d}}}",
                  c->mock_serial, p, n, p + n);
    if (emit(c, b) != 0)
        return -1;
    /* the usage-only chunk a client gets with stream_options.include_usage */
    chunk_head(c, b);
    cl_buf_printf(b, "\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                     "\"total_tokens\":%d}}",
                  p, n, p + n);
    if (emit(c, b) != 0)
        return -1;
    cl_buf_append_str(b, "[DONE]");
    return emit(c, b);
}

static void on_mock_timer(uv_timer_t *t)
{
    cl_llm_call *c = t->data;
    if (cl_llm__call_over(c))
        return;
    if (c->want_pause) {
        c->paused = 1; /* cl_llm__mock_resume restarts the pacing */
        return;
    }
    const cl_config *cfg = c->llm->cfg;
    cl_buf b;
    cl_buf_init(&b, 0);
    if (!c->stream) {
        for (int i = 0; i < c->mock_n; i++) {
            char tok[CL_MOCK_TOKEN_MAX];
            size_t n = cl_mock_token((unsigned)i, tok);
            cl_buf_append(&c->result.content, tok, n);
        }
        snprintf(c->result.finish_reason, sizeof c->result.finish_reason, "stop");
        snprintf(c->result.model, sizeof c->result.model, "%s", c->models[c->model_idx]);
        snprintf(c->result.id, sizeof c->result.id, "chatcmpl-mock-%lu", c->mock_serial);
        c->result.usage.prompt_tokens = c->mock_prompt_tokens;
        c->result.usage.completion_tokens = c->mock_n;
        c->result.usage.total_tokens = c->mock_prompt_tokens + c->mock_n;
        c->result.usage.present = 1;
        cl_llm__finish_ok(c, NULL, 0);
        cl_buf_release(&b);
        return;
    }
    /* An interval of 0 means as fast as possible: the whole answer now. */
    do {
        if (c->mock_i < c->mock_n) {
            if (emit_token(c, &b, c->mock_i++) != 0)
                goto out;
        }
        if (c->mock_i >= c->mock_n) {
            if (emit_end(c, &b) == 0)
                cl_llm__finish_ok(c, NULL, 0);
            goto out;
        }
    } while (cfg->mock_token_interval_ms == 0 && !c->want_pause);
    if (c->want_pause) {
        c->paused = 1;
        goto out;
    }
    uv_timer_start(&c->mock_timer, on_mock_timer, cfg->mock_token_interval_ms, 0);
out:
    cl_buf_release(&b);
}

void cl_llm__mock_start(cl_llm_call *c)
{
    static unsigned long serial;
    const cl_config *cfg = c->llm->cfg;
    c->mock_serial = ++serial;
    c->mock_i = 0;
    c->mock_n = cfg->mock_tokens;
    json_t *mt = json_object_get(c->request, "max_completion_tokens");
    if (!json_is_integer(mt))
        mt = json_object_get(c->request, "max_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0 && json_integer_value(mt) < c->mock_n)
        c->mock_n = (int)json_integer_value(mt);
    c->mock_prompt_tokens = (int)(cl_llm__prompt_chars(c) / 4) + 1;
    uv_timer_start(&c->mock_timer, on_mock_timer, cfg->mock_first_token_ms, 0);
}

void cl_llm__mock_resume(cl_llm_call *c)
{
    uv_timer_start(&c->mock_timer, on_mock_timer, 0, 0);
}

void cl_llm__mock_stop(cl_llm_call *c)
{
    uv_timer_stop(&c->mock_timer);
}

char *cl_llm__mock_models_json(const cl_config *cfg)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"object\":\"list\",\"data\":[");
    const char *models[] = {cfg->model, "mock-small", "mock-large"};
    int first = 1;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (i > 0 && strcmp(models[i], cfg->model) == 0)
            continue;
        cl_buf_append_str(&b, first ? "{\"id\":" : ",{\"id\":");
        first = 0;
        cl_jsonw_cstr(&b, models[i]);
        cl_buf_append_str(&b, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"chatloop-mock\",\"active\":true}");
    }
    cl_buf_append_str(&b, "]}");
    const char *s = cl_buf_cstr(&b);
    char *out = s ? strdup(s) : NULL;
    cl_buf_release(&b);
    return out;
}
