/* input.c — validating a chat turn's request body (SPEC §3), field by field,
 * so every refusal names the field and what was wrong with it. The checks
 * of the model parameters are shared with the agents routes (an agent holds
 * the same parameters as defaults), so a value an agent accepts is one a
 * turn accepts and the other way round. */
#include "chatloop/turn.h"
#include "chatloop/utf8.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define BAD(f, ...) do { *field = (f); snprintf(why, whylen, __VA_ARGS__); return -1; } while (0)
#define WHY(...) do { snprintf(why, whylen, __VA_ARGS__); return -1; } while (0)

/* Groq's qwen models take "none" and "default" besides OpenAI's three. */
static const char *const efforts[] = {"low", "medium", "high", "none", "default"};

int cl_turn_param_check(const char *name, json_t *v, char *why, size_t whylen)
{
    if (strcmp(name, "model") == 0) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 128)
            WHY("'model' must be a string of 1 to 128 characters");
    } else if (strcmp(name, "temperature") == 0) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2)
            WHY("'temperature' must be a number from 0 to 2");
    } else if (strcmp(name, "max_tokens") == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > CL_TURN_MAX_TOKENS)
            WHY("'max_tokens' must be an integer from 1 to %d", CL_TURN_MAX_TOKENS);
    } else if (strcmp(name, "top_p") == 0) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            WHY("'top_p' must be a number from 0 to 1");
    } else if (strcmp(name, "reasoning_effort") == 0) {
        const char *s = json_string_value(v);
        size_t i = 0;
        while (s && i < sizeof efforts / sizeof efforts[0] && strcmp(s, efforts[i]) != 0)
            i++;
        if (!s || i == sizeof efforts / sizeof efforts[0])
            WHY("'reasoning_effort' must be one of low, medium, high, none, default");
    } else if (strcmp(name, "k") == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 20)
            WHY("'k' must be an integer from 0 to 20");
    } else if (strcmp(name, "collection") == 0) {
        if (!json_is_string(v) || json_string_length(v) > 128)
            WHY("'collection' must be a string of at most 128 characters");
    } else if (strcmp(name, "tools") == 0) {
        if (!json_is_array(v))
            WHY("'tools' must be an array of tool set names, e.g. [\"tasks\"]");
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!json_is_string(t) || strcmp(json_string_value(t), "tasks") != 0)
                WHY("'tools[%zu]' is not a known tool set (known: \"tasks\")", i);
        }
    } else {
        return 1;
    }
    return 0;
}

int cl_turn_parse_input(json_t *body, const cl_config *cfg, cl_turn_input *in, int *stream,
                        const char **field, char *why, size_t whylen)
{
    memset(&in->params, 0, sizeof in->params);
    in->agent_id = NULL;
    in->has_k = 0;
    in->collection = NULL;
    in->tools = NULL;
    *stream = 0;
    if (!json_is_object(body))
        BAD("body", "the request body must be a JSON object");
    json_t *v = json_object_get(body, "message");
    if (!v)
        BAD("message", "'message' is required");
    if (!json_is_string(v))
        BAD("message", "'message' must be a string");
    in->message = json_string_value(v);
    if (in->message[0] == '\0')
        BAD("message", "'message' must not be empty");
    if (strlen(in->message) != json_string_length(v))
        BAD("message", "'message' must not contain NUL characters");
    size_t chars = cl_utf8_chars(in->message);
    if (chars > (size_t)cfg->max_message_chars)
        BAD("message", "'message' has %zu characters; the limit is %d (max_message_chars)", chars,
            cfg->max_message_chars);

    if ((v = json_object_get(body, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v))
            BAD("stream", "'stream' must be a boolean");
        *stream = json_is_true(v);
    }
    /* Whether it names one of the caller's agents is the load statement's
     * to say (404); a string that is not a UUID names none (the caller
     * answers 404 before the turn starts). */
    if ((v = json_object_get(body, "agent_id")) && !json_is_null(v)) {
        if (!json_is_string(v))
            BAD("agent_id", "'agent_id' must be a string (an agent's id)");
        in->agent_id = json_string_value(v);
    }
    static const char *const params[] = {"model", "temperature", "max_tokens", "top_p",
                                         "reasoning_effort", "k", "collection", "tools"};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        if ((v = json_object_get(body, params[i])) && !json_is_null(v) &&
            cl_turn_param_check(params[i], v, why, whylen) != 0) {
            *field = params[i];
            return -1;
        }
    }
    if ((v = json_object_get(body, "model")) && !json_is_null(v))
        in->params.model = json_string_value(v);
    if ((v = json_object_get(body, "temperature")) && !json_is_null(v)) {
        in->params.has_temperature = 1;
        in->params.temperature = json_number_value(v);
    }
    if ((v = json_object_get(body, "max_tokens")) && !json_is_null(v)) {
        in->params.has_max_tokens = 1;
        in->params.max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "top_p")) && !json_is_null(v)) {
        in->params.has_top_p = 1;
        in->params.top_p = json_number_value(v);
    }
    if ((v = json_object_get(body, "reasoning_effort")) && !json_is_null(v))
        in->params.reasoning_effort = json_string_value(v);
    if ((v = json_object_get(body, "k")) && !json_is_null(v)) {
        in->has_k = 1;
        in->k = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "collection")) && !json_is_null(v))
        in->collection = json_string_value(v);
    if ((v = json_object_get(body, "tools")) && !json_is_null(v))
        in->tools = v;
    return 0;
}
