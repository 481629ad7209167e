/*
 * openai.c — the OpenAI-compatible pass-through: POST /v1/chat/completions
 * (and /openai/v1/...), GET /v1/models (and /openai/v1/models).
 *
 * OpenAI's formats exactly, no envelope: the request body goes upstream as
 * the client wrote it (a default model filled in, usage always asked for);
 * streamed chunks are relayed one by one as they arrive, verbatim; errors
 * are {"error":{"message","type","param","code"}}. A client that goes away
 * cancels the upstream transfer at once (on_abort).
 */
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/jsonw.h"
#include "chatloop/limits.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"
#include "chatloop/router.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

typedef struct relay {
    cl_req *req;
    char user_id[37];
    char api_key_id[37];
    char usage_key[48];         /* "openai:<uuid>": not the client's X-Request-Id, which repeats */
    cl_llm_call *call;
    int stream;
    int client_wants_usage;
    int started;                /* the SSE head went out */
    int begun;                  /* counted in turns_active */
    cl_outcome outcome;         /* how it ended, for the metrics */
    uint64_t started_ns, first_chunk_ns;
    json_t *body;               /* held while the limit is checked */
    cl_db_query *limit_check;   /* chatloop_take_turn, before the upstream call */
    int leased;                 /* holds a place under max_turns_per_user ... */
    char holder[16];            /* ... this one (turn_slots; its lease: usage_key) */
} relay;

/* ---- OpenAI-format errors ------------------------------------------------------ */

static void openai_error(cl_req *r, int status, const char *type, const char *message,
                         const char *param, const char *code)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"error\":{\"message\":");
    cl_jsonw_cstr(&b, message);
    cl_buf_append_str(&b, ",\"type\":");
    cl_jsonw_cstr(&b, type);
    cl_buf_append_str(&b, ",\"param\":");
    cl_jsonw_cstr(&b, param);
    cl_buf_append_str(&b, ",\"code\":");
    cl_jsonw_cstr(&b, code);
    cl_buf_append_str(&b, "}}");
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL;
    cl_res_send(r, status, "application/json", extra, b.data, b.len);
    cl_buf_release(&b);
}

static void invalid(cl_req *r, const char *message, const char *param)
{
    openai_error(r, 400, "invalid_request_error", message, param, NULL);
}

/* ---- request validation ------------------------------------------------------- */

/* Checks the fields we depend on; everything else is the upstream's to judge.
 * Returns 0, or answers 400 naming the field and returns -1. */
static int validate(cl_req *r, json_t *body)
{
    char msg[200];
    if (!json_is_object(body)) {
        invalid(r, "the request body must be a JSON object", NULL);
        return -1;
    }
    json_t *model = json_object_get(body, "model");
    if (model && !json_is_string(model)) {
        invalid(r, "'model' must be a string", "model");
        return -1;
    }
    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream)) {
        invalid(r, "'stream' must be a boolean", "stream");
        return -1;
    }
    json_t *messages = json_object_get(body, "messages");
    if (!messages) {
        invalid(r, "'messages' is required", "messages");
        return -1;
    }
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        invalid(r, "'messages' must be a non-empty array", "messages");
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        char param[48];
        snprintf(param, sizeof param, "messages[%zu]", i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role) {
            snprintf(msg, sizeof msg, "%s must be an object with a string 'role'", param);
            invalid(r, msg, param);
            return -1;
        }
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "tool") && strcmp(role, "developer")) {
            snprintf(msg, sizeof msg, "%s.role must be one of system, developer, user, assistant, tool", param);
            invalid(r, msg, param);
            return -1;
        }
        json_t *content = json_object_get(m, "content");
        if (content && !json_is_string(content) && !json_is_array(content) && !json_is_null(content)) {
            snprintf(msg, sizeof msg, "%s.content must be a string, an array of parts or null", param);
            invalid(r, msg, param);
            return -1;
        }
    }
    return 0;
}

/* ---- relaying ------------------------------------------------------------------- */

static void relay_free(relay *rl)
{
    cl_db_cancel(rl->limit_check);
    json_decref(rl->body);
    if (rl->leased) {
        /* an ordinary write: if it is lost, the lease lapses by itself */
        static const char sql[] = CL_SQL_END_TURN;
        const char *p[] = {rl->user_id, rl->holder, rl->usage_key};
        cl_app *app = cl_app_current();
        if (app && app->db)
            cl_db_exec(app->db, sql, 3, p, CL_DB_PREPARED, NULL, NULL);
    }
    if (rl->begun) {
        uint64_t now = uv_hrtime();
        cl_metrics_turn_end(CL_TRANSPORT_OPENAI, rl->outcome, (double)(now - rl->started_ns) / 1e6,
                            rl->first_chunk_ns ? (double)(rl->first_chunk_ns - rl->started_ns) / 1e6
                                               : -1);
    }
    free(rl);
}

/* The pass-through records usage like a turn does (source "openai"), as a
 * durable write keyed by the request id: stored once even if replayed. */
static void usage_stored(void *ud, const cl_db_res *res)
{
    (void)ud;
    if (!res->ok)
        CL_ERROR("storing pass-through usage failed: %s", res->error ? res->error : "?");
}

/* With a place under max_turns_per_user held, the same statement gives it
 * back (one write per request, not two); relay_free then has nothing to. */
static void record_usage(relay *rl, const char *model, const cl_llm_usage *u)
{
    cl_app *app = cl_app_current();
    if (!app || !app->db || !rl->user_id[0] || (!u->present && u->completion_tokens == 0))
        return;
    char p[24], c[24], t[24];
    snprintf(p, sizeof p, "%lld", (long long)u->prompt_tokens);
    snprintf(c, sizeof c, "%lld", (long long)u->completion_tokens);
    snprintf(t, sizeof t, "%lld", (long long)(u->prompt_tokens + u->completion_tokens));
    const char *params[] = {rl->user_id, rl->usage_key, model ? model : "", p, c, t,
                            u->present ? "false" : "true",
                            rl->api_key_id[0] ? rl->api_key_id : NULL, rl->holder};
#define SQL_INSERT_USAGE                                                                           \
    "INSERT INTO usage_events (user_id, idempotency_key, model, prompt_tokens,"                    \
    " completion_tokens, total_tokens, estimated, source, api_key_id)"                             \
    " VALUES ($1::uuid, $2, $3, $4::int, $5::int, $6::int, $7::boolean, 'openai', $8::uuid)"      \
    " ON CONFLICT (idempotency_key) DO NOTHING"
    static const char sql[] = SQL_INSERT_USAGE;
    static const char sql_release[] =
        "WITH rl AS (UPDATE turn_slots SET lease = NULL"
        " WHERE user_id = $1::uuid AND slot = $9::int AND lease = $2) " SQL_INSERT_USAGE;
#undef SQL_INSERT_USAGE
    int release = rl->leased;
    cl_db_exec(app->db, release ? sql_release : sql, release ? 9 : 8, params,
               CL_DB_DURABLE | CL_DB_PREPARED, usage_stored, NULL);
    rl->leased = 0;
}

static void relay_abort(cl_req *r)
{
    relay *rl = r->handler_data;
    if (!rl->call) {
        /* still checking the limit: nothing was asked upstream */
        relay_free(rl);
        return;
    }
    /* the client left: stop the upstream now (its socket closes this
     * iteration), after taking the usage of what streamed */
    cl_llm_usage u;
    cl_llm_call_usage(rl->call, &u);
    record_usage(rl, cl_llm_call_model(rl->call), &u);
    cl_llm_cancel(rl->call);
    rl->outcome = CL_OUTCOME_CANCELLED;
    relay_free(rl);
}

static int start_stream(relay *rl)
{
    if (rl->started)
        return 0;
    rl->started = 1;
    /* Cache-Control: no-store comes with every API answer (http1.c) */
    return cl_res_start(rl->req, 200, "text/event-stream", "X-Accel-Buffering: no\r\n");
}

/* An upstream event whose data spanned several `data:` lines arrives joined
 * with "\n" (SSE's rule); written back on one line, everything after its
 * first newline would be lines without a field name, which the client's
 * parser drops. So each line of the payload gets its own `data:`. */
static int write_multiline_frame(relay *rl, const char *data, size_t len)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    int rc = 0;
    for (const char *p = data, *end = data + len; rc == 0;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        rc |= cl_buf_append_str(&b, "data: ");
        rc |= cl_buf_append(&b, p, n);
        rc |= cl_buf_append_char(&b, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    rc |= cl_buf_append_char(&b, '\n');
    if (rc == 0)
        rc = cl_res_write(rl->req, b.data, b.len);
    cl_buf_release(&b);
    return rc;
}

static int write_frame(relay *rl, const char *data, size_t len)
{
    if (memchr(data, '\n', len))
        return write_multiline_frame(rl, data, len);
    uv_buf_t parts[3] = {
        uv_buf_init("data: ", 6),
        uv_buf_init((char *)data, (unsigned int)len),
        uv_buf_init("\n\n", 2),
    };
    return cl_res_writev(rl->req, parts, 3);
}

/* The chunk with `"choices":[]` carries only usage: relayed only to clients
 * that asked for it (stream_options.include_usage), since clients that did
 * not ask may index choices[0] and fail on it. */
static void on_chunk(void *ud, const char *data, size_t len, unsigned flags)
{
    relay *rl = ud;
    int usage_only = (flags & CL_LLM_CHUNK_USAGE_ONLY) != 0;
    if (flags & CL_LLM_CHUNK_CONTENT) {
        if (!rl->first_chunk_ns)
            rl->first_chunk_ns = uv_hrtime();
        cl_metrics_tokens(CL_TRANSPORT_OPENAI, 1);
    }
    if (!rl->stream)
        return;
    if (usage_only && !rl->client_wants_usage)
        return;
    if (start_stream(rl) != 0 || write_frame(rl, data, len) != 0) {
        /* the connection is gone; on_abort cancels the call */
        return;
    }
}

/* The mock provider has no upstream body: build the chat.completion. */
static void completion_json(const cl_llm_result *res, cl_buf *b)
{
    cl_buf_append_str(b, "{\"id\":");
    cl_jsonw_cstr(b, res->id[0] ? res->id : "chatcmpl-chatloop");
    cl_buf_printf(b, ",\"object\":\"chat.completion\",\"created\":%lld,\"model\":", (long long)time(NULL));
    cl_jsonw_cstr(b, res->model);
    cl_buf_append_str(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    cl_jsonw_str(b, res->content.data ? res->content.data : "", res->content.len);
    if (res->ntool_calls) {
        cl_buf_append_str(b, ",\"tool_calls\":");
        cl_llm_tool_calls_json(res, b);
    }
    cl_buf_append_str(b, "},\"logprobs\":null,\"finish_reason\":");
    cl_jsonw_cstr(b, res->finish_reason[0] ? res->finish_reason : "stop");
    cl_buf_append_str(b, "}],\"usage\":");
    cl_llm_usage_json(&res->usage, b);
    cl_buf_append_str(b, "}");
}

static void on_done(void *ud, const cl_llm_result *res, const char *body, size_t len)
{
    relay *rl = ud;
    cl_req *r = rl->req;
    record_usage(rl, res->model[0] ? res->model : cl_llm_call_model(rl->call), &res->usage);
    if (rl->stream) {
        if (start_stream(rl) == 0)
            cl_res_write(r, "data: [DONE]\n\n", 14);
        cl_res_end(r);
    } else if (body) {
        cl_res_send(r, 200, "application/json", NULL, body, len);
    } else {
        cl_buf b;
        cl_buf_init(&b, 0);
        completion_json(res, &b);
        cl_res_send(r, 200, "application/json", NULL, b.data, b.len);
        cl_buf_release(&b);
    }
    rl->outcome = CL_OUTCOME_COMPLETED;
    relay_free(rl);
}

static const char *error_type(cl_err_code code)
{
    return code == CL_ERR_LLM_TIMEOUT ? "timeout_error" : "upstream_error";
}

static void on_error(void *ud, cl_err_code code, const char *message, int status,
                     const char *upstream_body, const cl_llm_result *partial)
{
    relay *rl = ud;
    cl_req *r = rl->req;
    rl->outcome = CL_OUTCOME_FAILED;
    if (partial)
        record_usage(rl, cl_llm_call_model(rl->call), &partial->usage);
    if (rl->started) {
        /* Mid-stream: the status line is gone; OpenAI clients raise an
         * error event as an APIError. */
        cl_buf b;
        cl_buf_init(&b, 0);
        cl_buf_append_str(&b, "{\"error\":{\"message\":");
        cl_jsonw_cstr(&b, message);
        cl_buf_append_str(&b, ",\"type\":");
        cl_jsonw_cstr(&b, error_type(code));
        cl_buf_append_str(&b, ",\"param\":null,\"code\":");
        cl_jsonw_cstr(&b, cl_err_name(code));
        cl_buf_append_str(&b, "}}");
        write_frame(rl, b.data, b.len);
        cl_buf_release(&b);
        cl_res_end(r);
        relay_free(rl);
        return;
    }
    /* Before any byte: the upstream's client errors about the request
     * (400, 404, 422, 429 after retries) go back as they were, so SDKs
     * raise the same exception class. A 401/403 is about chatloop's own
     * upstream key, not the caller's: that is a gateway error, as is
     * everything else. */
    if (status >= 400 && status < 500 && status != 401 && status != 403 && upstream_body &&
        upstream_body[0] == '{') {
        char extra[64] = "";
        double ra = status == 429 ? cl_llm_call_retry_after(rl->call) : 0;
        if (ra > 0)
            snprintf(extra, sizeof extra, "Retry-After: %lld\r\n", (long long)ceil(ra));
        cl_res_send(r, status, "application/json", extra[0] ? extra : NULL, upstream_body,
                    strlen(upstream_body));
    } else if (status == 401 || status == 403) {
        char msg[400];
        snprintf(msg, sizeof msg, "the upstream refused chatloop's credentials (%s)", message);
        openai_error(r, 502, error_type(code), msg, NULL, cl_err_name(code));
    } else {
        int st = code == CL_ERR_LLM_TIMEOUT ? 504 : code == CL_ERR_PROCESSING_ERROR ? 500 : 502;
        openai_error(r, st, error_type(code), message, NULL, cl_err_name(code));
    }
    relay_free(rl);
}

static const cl_llm_callbacks relay_callbacks = {
    .on_chunk = on_chunk,
    .on_done = on_done,
    .on_error = on_error,
};

static int check_limit(relay *rl);
static void start_relay(relay *rl, json_t *body);

static void chat_completions(cl_req *r)
{
    cl_app *app = cl_app_current();
    char why[300];
    json_t *body = cl_json_body_parse(r, 0, why, sizeof why);
    if (!body) {
        invalid(r, why, NULL);
        return;
    }
    if (validate(r, body) != 0) {
        json_decref(body);
        return;
    }
    relay *rl = calloc(1, sizeof *rl);
    if (!rl) {
        json_decref(body);
        openai_error(r, 500, "server_error", "out of memory", NULL, NULL);
        return;
    }
    rl->req = r;
    rl->started_ns = uv_hrtime(); /* TTFT includes the limit check */
    memcpy(rl->user_id, r->user_id, sizeof rl->user_id);
    memcpy(rl->api_key_id, r->api_key_id, sizeof rl->api_key_id);
    char uuid[37] = "";
    cl_uuid_v4(uuid);
    snprintf(rl->usage_key, sizeof rl->usage_key, "openai:%s", uuid);
    rl->stream = json_is_true(json_object_get(body, "stream"));
    rl->client_wants_usage =
        json_is_true(json_object_get(json_object_get(body, "stream_options"), "include_usage"));
    r->handler_data = rl;
    r->on_abort = relay_abort;
    if (cl_limits_turns_on(app->w->cfg) && app->db && rl->user_id[0]) {
        rl->body = body;
        if (check_limit(rl) == 0)
            return;
        rl->body = NULL;
    }
    start_relay(rl, body);
    json_decref(body);
}

/* The limits of a turn hold for completions too: one statement before the
 * upstream is asked (a chat turn checks in its history statement; the
 * relay has none). */
static const char SQL_TAKE_TURN[] =
    "SELECT allowed, which, retry_after_ms, holder FROM "
    CL_SQL_TAKE_TURN("$1", "$2", "$3", "$4", "$5", "$6");

static void limit_checked(void *ud, const cl_db_res *res)
{
    relay *rl = ud;
    rl->limit_check = NULL;
    json_t *body = rl->body;
    rl->body = NULL;
    const char *allowed = res->ok && cl_db_rows(res) == 1 ? cl_db_get(res, 0, 0) : NULL;
    if (allowed && strcmp(allowed, "f") == 0) {
        const char *ms = cl_db_get(res, 0, 2);
        cl_limit_kind k = cl_limits_kind(cl_db_get(res, 0, 1));
        cl_req *r = rl->req;
        r->on_abort = NULL;
        r->handler_data = NULL;
        relay_free(rl);
        json_decref(body);
        cl_metrics_rate_limited(k);
        cl_limits_refuse_openai(r, k, ms ? atol(ms) : 1000);
        return;
    }
    /* Without an answer (the database is down or slow) the completion goes
     * ahead: the relay needs no database otherwise, and its usage is
     * spooled; the limit resumes with the database. */
    if (!allowed)
        CL_WARN("rate limit not checked for a completion: %s",
                res->error ? res->error : "no answer");
    const char *holder = allowed ? cl_db_get(res, 0, 3) : NULL;
    if (holder) {
        rl->leased = 1;
        snprintf(rl->holder, sizeof rl->holder, "%s", holder);
    }
    start_relay(rl, body);
    json_decref(body);
}

static int check_limit(relay *rl)
{
    cl_app *app = cl_app_current();
    cl_turn_limit_params lp;
    cl_limits_turn_params(app->w->cfg, &lp);
    const char *p[] = {rl->user_id, lp.interval_us, lp.burst_us, lp.max, rl->usage_key, lp.lease_s};
    rl->limit_check = cl_db_exec(app->db, SQL_TAKE_TURN, 6, p, CL_DB_PREPARED, limit_checked, rl);
    return rl->limit_check ? 0 : -1;
}

static void start_relay(relay *rl, json_t *body)
{
    cl_app *app = cl_app_current();
    cl_req *r = rl->req;
    rl->call = cl_llm_start(app->llm, body, &relay_callbacks, rl);
    if (!rl->call) {
        r->on_abort = NULL;
        relay_free(rl);
        openai_error(r, 500, "server_error", "cannot start the completion", NULL, NULL);
        return;
    }
    rl->begun = 1;
    cl_metrics_turn_begin(CL_TRANSPORT_OPENAI);
    /* first token, idle and total timeouts bound it from here (llm.h) */
    cl_req_clear_deadline(r);
}

/* ---- models --------------------------------------------------------------------- */

typedef struct models_req {
    cl_llm_get *get;
} models_req;

static void models_cancel(void *state)
{
    models_req *m = state;
    cl_llm_get_cancel(m->get);
}

static void models_done(void *ud, int status, const char *body, size_t len)
{
    cl_req *r = cl_req_resume(ud);
    if (status == 200)
        cl_res_send(r, 200, "application/json", NULL, body, len);
    else if (status >= 400 && status < 500 && len && body[0] == '{')
        cl_res_send(r, status, "application/json", NULL, body, len);
    else
        openai_error(r, 502, "upstream_error", "the upstream did not answer /models", NULL,
                     "LLM_ERROR");
}

static void models(cl_req *r)
{
    models_req *m = cl_req_defer(r, sizeof *m, models_cancel);
    if (!m)
        return;
    m->get = cl_llm_models(cl_app_current()->llm, NULL, models_done, m);
    if (!m->get)
        openai_error(cl_req_resume(m), 500, "server_error", "cannot ask the upstream", NULL, NULL);
}

int cl_openai_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/v1/chat/completions", chat_completions, CL_GUARD_TOKEN_OPENAI);
    rc |= cl_router_add_guarded(r, "POST", "/openai/v1/chat/completions", chat_completions,
                                CL_GUARD_TOKEN_OPENAI);
    rc |= cl_router_add_guarded(r, "GET", "/v1/models", models, CL_GUARD_TOKEN_OPENAI);
    rc |= cl_router_add_guarded(r, "GET", "/openai/v1/models", models, CL_GUARD_TOKEN_OPENAI);
    return rc;
}
