/*
 * plan.c — reads an OpenAI chat request (already parsed by jansson) and the
 * X-Mock-* headers into a mock_plan: how many tokens, how fast, which fault,
 * whether to call a tool. Everything the answer needs is copied out here so
 * the JSON tree can be freed before the answer starts.
 */
#include "mock.h"

#include "chatloop/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MOCK_MAX_TOKENS 100000
#define SLOW_FIRST_DEFAULT_MS 2000

int mock_header(cl_req *r, const char *name, char *out, size_t outlen)
{
    size_t len;
    const char *v = cl_req_header(r, name, &len);
    if (!v || len >= outlen)
        return -1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 0;
}

/* 1 when absent, 0 with *out set, -1 when present but not an integer in
 * [0, max] (the request is then refused with 400). */
static int header_uint(cl_req *r, const char *name, uint64_t max, uint64_t *out)
{
    char v[32];
    size_t len;
    if (!cl_req_header(r, name, &len))
        return 1;
    if (mock_header(r, name, v, sizeof v) != 0 || v[0] < '0' || v[0] > '9')
        return -1;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end != '\0' || n > max)
        return -1;
    *out = n;
    return 0;
}

int mock_fault_parse(const char *s, size_t len, mock_fault_kind *kind, int *status)
{
    /* '-' and '_' are the same here, so a model "mock-groq-error" and a
     * header "groq_error" name one fault. */
    char v[32];
    if (len == 0 || len >= sizeof v)
        return -1;
    for (size_t i = 0; i < len; i++)
        v[i] = s[i] == '-' ? '_' : (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
    v[len] = '\0';
    static const struct { const char *name; mock_fault_kind kind; } names[] = {
        {"cut", MOCK_FAULT_CUT},           {"stall", MOCK_FAULT_STALL},
        {"malformed", MOCK_FAULT_MALFORMED}, {"groq_error", MOCK_FAULT_GROQ_ERROR},
        {"slow_first", MOCK_FAULT_SLOW_FIRST}, {"error_chunk", MOCK_FAULT_ERROR_CHUNK},
        {"corrupt", MOCK_FAULT_CORRUPT},
        {"none", MOCK_FAULT_NONE},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(v, names[i].name) == 0) {
            *kind = names[i].kind;
            *status = 0;
            return 0;
        }
    }
    if (len == 3 && v[0] >= '1' && v[0] <= '5' && v[1] >= '0' && v[1] <= '9' && v[2] >= '0' &&
        v[2] <= '9') {
        int st = atoi(v);
        if (st < 400)
            return -1; /* a fault is an error; 2xx/3xx would not be one */
        *kind = MOCK_FAULT_STATUS;
        *status = st;
        return 0;
    }
    return -1;
}

static int contains_ci(const char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (strncasecmp(s + i, needle, m) == 0)
            return 1;
    return 0;
}

/* Bytes of text in a message's content: a string, or an array of parts
 * whose "text" members count. */
static size_t content_bytes(json_t *content, int *has_tool_word)
{
    size_t n = 0;
    if (json_is_string(content)) {
        n = json_string_length(content);
        if (has_tool_word && contains_ci(json_string_value(content), n, "tool"))
            *has_tool_word = 1;
        return n;
    }
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text))
            n += content_bytes(text, has_tool_word);
    }
    return n;
}

/* Arguments for a call of `tool` that its schema accepts: the first
 * required property (else the first property) set to a value of its type,
 * or to the first of its enum values. No schema: {}. */
static void tool_args(json_t *tool_fn, char *out, size_t outlen)
{
    json_t *params = json_object_get(tool_fn, "parameters");
    json_t *props = json_object_get(params, "properties");
    const char *name = NULL;
    json_t *req = json_array_get(json_object_get(params, "required"), 0);
    if (json_is_string(req) && json_object_get(props, json_string_value(req)))
        name = json_string_value(req);
    if (!name && json_is_object(props)) {
        void *it = json_object_iter(props);
        name = it ? json_object_iter_key(it) : NULL;
    }
    snprintf(out, outlen, "{}");
    if (!name)
        return;
    json_t *prop = json_object_get(props, name);
    cl_buf b;
    cl_buf_init(&b, outlen - 1);
    /* Any append that fails (too long for out) leaves the default "{}". */
    int rc = cl_buf_append_char(&b, '{');
    rc |= cl_jsonw_cstr(&b, name);
    rc |= cl_buf_append_char(&b, ':');
    json_t *first_enum = json_array_get(json_object_get(prop, "enum"), 0);
    const char *type = json_string_value(json_object_get(prop, "type"));
    if (first_enum) {
        char *v = json_dumps(first_enum, JSON_COMPACT | JSON_ENCODE_ANY);
        rc |= v ? cl_buf_append_str(&b, v) : -1;
        free(v);
    } else if (type && (strcmp(type, "integer") == 0 || strcmp(type, "number") == 0)) {
        rc |= cl_buf_append_char(&b, '1');
    } else if (type && strcmp(type, "boolean") == 0) {
        rc |= cl_buf_append_str(&b, "true");
    } else if (type && strcmp(type, "array") == 0) {
        rc |= cl_buf_append_str(&b, "[]");
    } else if (type && strcmp(type, "object") == 0) {
        rc |= cl_buf_append_str(&b, "{}");
    } else {
        rc |= cl_buf_append_str(&b, "\"mock\"");
    }
    if (rc == 0 && cl_buf_append_char(&b, '}') == 0 && b.len < outlen) {
        memcpy(out, b.data, b.len);
        out[b.len] = '\0';
    }
    cl_buf_release(&b);
}

/* Decides whether to answer with a tool call, and which: the request has
 * tools, tool_choice is not "none", the last message is not a tool result,
 * and the caller asked (X-Mock-Tool-Call: 1, tool_choice "required" or a
 * named function, or "tool" in the last user message). */
static void plan_tools(cl_req *r, json_t *root, json_t *messages, mock_plan *p)
{
    json_t *tools = json_object_get(root, "tools");
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return;
    json_t *choice = json_object_get(root, "tool_choice");
    const char *choice_s = json_string_value(choice);
    if (choice_s && strcmp(choice_s, "none") == 0)
        return;
    json_t *last = json_array_get(messages, json_array_size(messages) - 1);
    const char *last_role = json_string_value(json_object_get(last, "role"));
    if (last_role && strcmp(last_role, "tool") == 0)
        return;
    char hdr[8];
    int want = 0;
    if (mock_header(r, "x-mock-tool-call", hdr, sizeof hdr) == 0) {
        if (strcmp(hdr, "0") == 0)
            return;
        want = strcmp(hdr, "1") == 0;
    }
    const char *named = json_string_value(json_object_get(json_object_get(choice, "function"), "name"));
    if (named || (choice_s && strcmp(choice_s, "required") == 0))
        want = 1;
    if (!want) {
        /* the last user message, wherever it is */
        for (size_t i = json_array_size(messages); i-- > 0;) {
            json_t *m = json_array_get(messages, i);
            const char *role = json_string_value(json_object_get(m, "role"));
            if (role && strcmp(role, "user") == 0) {
                content_bytes(json_object_get(m, "content"), &want);
                break;
            }
        }
    }
    if (!want)
        return;
    json_t *fn = NULL;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *f = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!name)
            continue;
        if (!fn)
            fn = f; /* the first tool, unless tool_choice names another */
        if (named && strcmp(name, named) == 0) {
            fn = f;
            break;
        }
    }
    if (!fn)
        return;
    const char *name = json_string_value(json_object_get(fn, "name"));
    if (strlen(name) >= sizeof p->tool_name)
        return;
    p->tool = 1;
    snprintf(p->tool_name, sizeof p->tool_name, "%s", name);
    tool_args(fn, p->tool_args, sizeof p->tool_args);
}

int mock_plan_build(mock_app *a, cl_req *r, json_t *root, mock_plan *p)
{
    const cl_config *cfg = a->w->cfg;
    memset(p, 0, sizeof *p);
    p->fault_after = -1;
    if (!json_is_object(root)) {
        mock_send_error(a, r, 400, "invalid_request_error", "invalid_request",
                        "the request body must be a JSON object", NULL);
        return -1;
    }
    json_t *model = json_object_get(root, "model");
    if (!json_is_string(model) || json_string_length(model) == 0) {
        mock_send_error(a, r, 400, "invalid_request_error", "invalid_request",
                        "'model' : property 'model' is missing or not a string", NULL);
        return -1;
    }
    json_t *messages = json_object_get(root, "messages");
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        mock_send_error(a, r, 400, "invalid_request_error", "invalid_request",
                        "'messages' : must be a non-empty array", NULL);
        return -1;
    }
    snprintf(p->model, sizeof p->model, "%s", json_string_value(model));

    /* Fault: the header wins over the model name. */
    size_t flen;
    const char *fv = cl_req_header(r, "x-mock-fault", &flen);
    if (fv) {
        if (mock_fault_parse(fv, flen, &p->fault, &p->fault_status) != 0) {
            mock_send_error(a, r, 400, "invalid_request_error", "invalid_request",
                            "X-Mock-Fault: unknown fault (429, 500, any 4xx/5xx, cut, stall, "
                            "malformed, groq_error, error_chunk, slow_first, corrupt)", NULL);
            return -1;
        }
    } else if (strncmp(p->model, "mock-", 5) == 0) {
        if (mock_fault_parse(p->model + 5, strlen(p->model + 5), &p->fault, &p->fault_status) != 0)
            p->fault = MOCK_FAULT_NONE; /* "mock-anything-else" is an ordinary model */
    }
    uint64_t v;
    int rc;
    if (p->fault != MOCK_FAULT_NONE) {
        rc = header_uint(r, "x-mock-fault-count", UINT32_MAX, &v);
        if (rc < 0)
            goto bad_header;
        if (rc == 0) {
            char key[160];
            size_t klen;
            const char *k = cl_req_header(r, "x-mock-fault-key", &klen);
            if (!k) {
                /* default key: the fault's canonical name */
                if (p->fault == MOCK_FAULT_STATUS)
                    klen = (size_t)snprintf(key, sizeof key, "%d", p->fault_status);
                else
                    klen = (size_t)snprintf(key, sizeof key, "fault-%d", (int)p->fault);
                k = key;
            }
            if (mock_fault_seen(a, k, klen) > v)
                p->fault = MOCK_FAULT_NONE;
        }
    }
    if (p->fault != MOCK_FAULT_NONE)
        a->stats.faults++;
    if (p->fault == MOCK_FAULT_STATUS) {
        mock_send_status_fault(a, r, p->fault_status);
        return -1;
    }

    /* Token count: X-Mock-Tokens, else mock_tokens capped by max_tokens. */
    rc = header_uint(r, "x-mock-tokens", MOCK_MAX_TOKENS, &v);
    if (rc < 0)
        goto bad_header;
    if (rc == 0) {
        p->ntokens = (int)v;
    } else {
        p->ntokens = cfg->mock_tokens;
        json_t *mt = json_object_get(root, "max_completion_tokens");
        if (!json_is_integer(mt))
            mt = json_object_get(root, "max_tokens");
        if (json_is_integer(mt) && json_integer_value(mt) >= 0 &&
            json_integer_value(mt) < p->ntokens) {
            p->ntokens = (int)json_integer_value(mt);
            p->finish_length = 1;
        }
    }
    p->first_ms = cfg->mock_first_token_ms;
    p->interval_ms = cfg->mock_token_interval_ms;
    rc = header_uint(r, "x-mock-first-token-ms", 3600000, &v);
    if (rc < 0)
        goto bad_header;
    if (rc == 0)
        p->first_ms = v;
    else if (p->fault == MOCK_FAULT_SLOW_FIRST)
        p->first_ms = SLOW_FIRST_DEFAULT_MS;
    rc = header_uint(r, "x-mock-interval-ms", 3600000, &v);
    if (rc < 0)
        goto bad_header;
    if (rc == 0)
        p->interval_ms = v;
    rc = header_uint(r, "x-mock-fault-after", MOCK_MAX_TOKENS, &v);
    if (rc < 0)
        goto bad_header;
    if (rc == 0)
        p->fault_after = (int)v;
    rc = header_uint(r, "x-mock-multiline-data", 1, &v);
    if (rc < 0)
        goto bad_header;
    p->multiline = rc == 0 && v == 1;

    p->stream = json_is_true(json_object_get(root, "stream"));
    p->include_usage =
        p->stream && json_is_true(json_object_get(json_object_get(root, "stream_options"),
                                                  "include_usage"));
    /* prompt_tokens = bytes of message text / 4 + 1: deterministic, and
     * about what a real tokenizer gives for English. */
    size_t bytes = 0;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        bytes += content_bytes(json_object_get(m, "content"), NULL);
    }
    p->prompt_tokens = (int)(bytes / 4 + 1);
    plan_tools(r, root, messages, p);
    return 0;

bad_header:
    mock_send_error(a, r, 400, "invalid_request_error", "invalid_request",
                    "an X-Mock-* header has a bad value (see chatloop-mock --help)", NULL);
    return -1;
}
