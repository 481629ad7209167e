/* input.c — validating a chat turn's request body (SPEC §3), field by field,
 * so every refusal names the field and what was wrong with it. */
#include "chatloop/turn.h"
#include "chatloop/utf8.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define BAD(f, ...) do { *field = (f); snprintf(why, whylen, __VA_ARGS__); return -1; } while (0)

int cl_turn_parse_input(json_t *body, const cl_config *cfg, cl_turn_input *in, int *stream,
                        const char **field, char *why, size_t whylen)
{
    memset(&in->params, 0, sizeof in->params);
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
    if ((v = json_object_get(body, "model")) && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 128)
            BAD("model", "'model' must be a string of 1 to 128 characters");
        in->params.model = json_string_value(v);
    }
    if ((v = json_object_get(body, "temperature")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2)
            BAD("temperature", "'temperature' must be a number from 0 to 2");
        in->params.has_temperature = 1;
        in->params.temperature = json_number_value(v);
    }
    if ((v = json_object_get(body, "max_tokens")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 131072)
            BAD("max_tokens", "'max_tokens' must be an integer from 1 to 131072");
        in->params.has_max_tokens = 1;
        in->params.max_tokens = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "top_p")) && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1)
            BAD("top_p", "'top_p' must be a number from 0 to 1");
        in->params.has_top_p = 1;
        in->params.top_p = json_number_value(v);
    }
    if ((v = json_object_get(body, "reasoning_effort")) && !json_is_null(v)) {
        static const char *const ok[] = {"low", "medium", "high", "none", "default"};
        const char *s = json_string_value(v);
        size_t i = 0;
        while (s && i < sizeof ok / sizeof ok[0] && strcmp(s, ok[i]) != 0)
            i++;
        if (!s || i == sizeof ok / sizeof ok[0])
            BAD("reasoning_effort", "'reasoning_effort' must be one of low, medium, high, none, default");
        in->params.reasoning_effort = s;
    }
    if ((v = json_object_get(body, "k")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 20)
            BAD("k", "'k' must be an integer from 0 to 20");
    }
    if ((v = json_object_get(body, "collection")) && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) > 128)
            BAD("collection", "'collection' must be a string of at most 128 characters");
    }
    if ((v = json_object_get(body, "tools")) && !json_is_null(v)) {
        if (!json_is_array(v))
            BAD("tools", "'tools' must be an array of tool set names, e.g. [\"tasks\"]");
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!json_is_string(t) || strcmp(json_string_value(t), "tasks") != 0)
                BAD("tools", "'tools[%zu]' is not a known tool set (known: \"tasks\")", i);
        }
    }
    return 0;
}
