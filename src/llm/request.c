/* request.c — building OpenAI /chat/completions requests (see llm.h). */
#include "chatloop/llm.h"

json_t *cl_llm_build_request(const cl_config *cfg, json_t *messages, const cl_llm_params *p)
{
    static const cl_llm_params none;
    if (!p)
        p = &none;
    json_t *req = json_object();
    if (!req)
        return NULL;
    int rc = 0;
    rc |= json_object_set_new(req, "model", json_string(p->model && *p->model ? p->model : cfg->model));
    if (messages) /* NULL: the caller splices them in as text (cl_llm_start_messages) */
        rc |= json_object_set(req, "messages", messages);
    rc |= json_object_set_new(req, "temperature",
                              json_real(p->has_temperature ? p->temperature : cfg->temperature));
    rc |= json_object_set_new(req, "max_tokens",
                              json_integer(p->has_max_tokens ? p->max_tokens : cfg->max_tokens));
    rc |= json_object_set_new(req, "top_p", json_real(p->has_top_p ? p->top_p : cfg->top_p));
    const char *effort = p->reasoning_effort ? p->reasoning_effort : cfg->reasoning_effort;
    /* Only reasoning models accept it; an empty setting means "do not send". */
    if (effort && *effort)
        rc |= json_object_set_new(req, "reasoning_effort", json_string(effort));
    if (p->tools && json_array_size(p->tools) > 0) {
        rc |= json_object_set(req, "tools", p->tools);
        if (p->tool_choice)
            rc |= json_object_set_new(req, "tool_choice", json_string(p->tool_choice));
    }
    rc |= json_object_set_new(req, "stream", json_boolean(p->stream));
    if (p->stream)
        rc |= json_object_set_new(req, "stream_options", json_pack("{s:b}", "include_usage", 1));
    if (rc != 0) {
        json_decref(req);
        return NULL;
    }
    return req;
}
