/*
 * chat_routes.c — a turn over HTTP: POST /api/v1/conversations/{id}/messages
 * and the session-keyed POST /api/v1/chat, answered as one envelope or, with
 * `stream: true` or `Accept: text/event-stream`, as Server-Sent Events:
 *
 *   event: start  {conversation_id, message_id}
 *   event: token  {"token": "..."}           one per delta
 *   event: done   {response, model_used, message_id, usage, ...}
 *   event: error  {code, message}
 *   : ping                                    every 15 s while idle
 *
 * The exchange object owns the turn while it runs and a ping timer; it is
 * freed in the timer's close callback, after the request has ended.
 */
#include "chatloop/api.h"
#include "chatloop/limits.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/json_body.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/turn.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PING_MS 15000

typedef struct exchange {
    cl_req *req;                /* NULL once the request has ended */
    cl_turn *turn;              /* NULL once the turn has ended */
    int stream;
    int started;                /* SSE head sent */
    uint64_t last_write_ms;
    uv_timer_t ping;
    cl_buf frame;
} exchange;

static void on_ping_closed(uv_handle_t *h)
{
    exchange *x = h->data;
    cl_buf_release(&x->frame);
    free(x);
}

/* The request is over (answered or abandoned): stop the timer; the memory
 * goes when the close callback runs. */
static void exchange_end(exchange *x)
{
    x->req = NULL;
    uv_close((uv_handle_t *)&x->ping, on_ping_closed);
}

static int sse_event(exchange *x, const char *event, const char *data, size_t len)
{
    cl_buf *f = &x->frame;
    cl_buf_reset(f);
    cl_buf_append_str(f, "event: ");
    cl_buf_append_str(f, event);
    cl_buf_append_str(f, "\ndata: ");
    cl_buf_append(f, data, len);
    cl_buf_append_str(f, "\n\n");
    x->last_write_ms = uv_now(x->ping.loop);
    return cl_res_write(x->req, f->data, f->len);
}

static void on_ping(uv_timer_t *t)
{
    exchange *x = t->data;
    if (!x->req || !x->started)
        return;
    uint64_t now = uv_now(t->loop);
    if (now - x->last_write_ms >= PING_MS) {
        x->last_write_ms = now;
        cl_res_write(x->req, ": ping\n\n", 8);
    }
}

static void sink_start(void *ud, const char *conversation_id, const char *message_id)
{
    exchange *x = ud;
    /* generating: the provider's timeouts bound the turn from here (llm.h) */
    cl_req_clear_deadline(x->req);
    if (!x->stream)
        return;
    /* Cache-Control: no-store comes with every API answer (http1.c) */
    if (cl_res_start(x->req, 200, "text/event-stream", "X-Accel-Buffering: no\r\n") != 0)
        return; /* the client is gone; on_abort cancels the turn */
    x->started = 1;
    char data[160];
    int n = snprintf(data, sizeof data, "{\"conversation_id\":\"%s\",\"message_id\":\"%s\"}",
                     conversation_id, message_id);
    sse_event(x, "start", data, (size_t)n);
    uv_timer_start(&x->ping, on_ping, PING_MS, PING_MS);
}

static void sink_token(void *ud, const char *text, size_t len)
{
    exchange *x = ud;
    if (!x->stream || !x->started)
        return;
    cl_buf tok;
    cl_buf_init(&tok, 0);
    cl_buf_append_str(&tok, "{\"token\":");
    cl_jsonw_str(&tok, text, len);
    cl_buf_append_char(&tok, '}');
    sse_event(x, "token", tok.data, tok.len);
    cl_buf_release(&tok);
}

static void sink_done(void *ud, const char *data_json)
{
    exchange *x = ud;
    cl_req *r = x->req;
    x->turn = NULL;
    r->on_abort = NULL;
    if (x->stream) {
        if (x->started)
            sse_event(x, "done", data_json, strlen(data_json));
        cl_res_end(r);
    } else {
        cl_api_ok(r, 200, "ok", data_json);
    }
    exchange_end(x);
}

static void sink_error(void *ud, cl_err_code code, const char *message)
{
    exchange *x = ud;
    cl_req *r = x->req;
    cl_limit_kind kind;
    long retry_ms;
    int refused = cl_turn_refusal(x->turn, &kind, &retry_ms);
    x->turn = NULL;
    r->on_abort = NULL;
    if (refused && !x->started) {
        /* refused before anything was sent: a plain 429, streamed or not */
        cl_limits_refuse(r, kind, retry_ms);
    } else if (x->stream && x->started) {
        cl_buf e;
        cl_buf_init(&e, 0);
        cl_buf_printf(&e, "{\"code\":\"%s\",\"message\":", cl_err_name(code));
        cl_jsonw_cstr(&e, message);
        cl_buf_append_char(&e, '}');
        sse_event(x, "error", e.data, e.len);
        cl_buf_release(&e);
        cl_res_end(r);
    } else {
        cl_api_error(r, code, message, NULL,
                     code == CL_ERR_DB_UNAVAILABLE ? "Retry-After: 1\r\n" : NULL);
    }
    exchange_end(x);
}

static const cl_turn_sink http_sink = {
    .on_start = sink_start,
    .on_token = sink_token,
    .on_done = sink_done,
    .on_error = sink_error,
};

static void exchange_abort(cl_req *r)
{
    exchange *x = r->handler_data;
    /* the client left mid-turn: stop the upstream, keep the partial answer */
    cl_turn_cancel(x->turn);
    x->turn = NULL;
    exchange_end(x);
}

static int wants_sse(cl_req *r)
{
    size_t len;
    const char *a = cl_req_header(r, "accept", &len);
    return a && len >= 17 && memmem(a, len, "text/event-stream", 17) != NULL;
}

/* Common to both routes: auth, database, body; then the turn. */
static void run_turn(cl_req *r, const char *conversation_id, int session_keyed)
{
    if (!cl_db_require(r))
        return;
    if (conversation_id && !cl_uuid_valid(conversation_id)) {
        cl_api_error(r, CL_ERR_NOT_FOUND, "conversation not found", NULL, NULL);
        return;
    }
    json_t *body = cl_api_json_body(r, 0);
    if (!body)
        return;
    cl_turn_input in;
    memset(&in, 0, sizeof in);
    int stream = 0;
    const char *field = NULL;
    char why[200];
    if (cl_turn_parse_input(body, r->conn->w->cfg, &in, &stream, &field, why, sizeof why) != 0) {
        char details[96];
        snprintf(details, sizeof details, "{\"field\":\"%s\"}", field);
        cl_api_error(r, CL_ERR_INVALID_REQUEST, why, details, NULL);
        json_decref(body);
        return;
    }
    if (in.agent_id && !cl_uuid_valid(in.agent_id)) {
        /* it names no agent of the caller's, like a missing one */
        cl_api_error(r, CL_ERR_NOT_FOUND, "agent not found", NULL, NULL);
        json_decref(body);
        return;
    }
    if (session_keyed) {
        json_t *sid = json_object_get(body, "session_id");
        const char *s = json_string_value(sid);
        if (!s || !*s || strlen(s) > 128) {
            cl_api_error(r, CL_ERR_INVALID_REQUEST,
                         "'session_id' is required: a string of 1 to 128 characters",
                         "{\"field\":\"session_id\"}", NULL);
            json_decref(body);
            return;
        }
        in.session_key = s;
    }
    in.conversation_id = conversation_id;
    in.user_id = r->user_id;
    in.api_key_id = r->api_key_id;
    exchange *x = calloc(1, sizeof *x);
    if (!x) {
        json_decref(body);
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    x->req = r;
    x->stream = stream || wants_sse(r);
    cl_buf_init(&x->frame, 0);
    uv_timer_init(r->conn->w->loop, &x->ping);
    x->ping.data = x;
    r->handler_data = x;
    r->on_abort = exchange_abort;
    in.transport = x->stream ? CL_TRANSPORT_SSE : CL_TRANSPORT_REST;
    x->turn = cl_turn_start(cl_app_current(), &in, &http_sink, x);
    json_decref(body);
    if (!x->turn) {
        r->on_abort = NULL;
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "cannot start the turn", NULL, NULL);
        exchange_end(x);
    }
}

static void post_message(cl_req *r)
{
    char id[40];
    if (cl_req_param(r, "id", id, sizeof id) != 0) {
        cl_api_error(r, CL_ERR_NOT_FOUND, "conversation not found", NULL, NULL);
        return;
    }
    run_turn(r, id, 0);
}

static void post_chat(cl_req *r)
{
    run_turn(r, NULL, 1);
}

int cl_chat_routes(cl_router *r)
{
    int rc = 0;
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/conversations/{id}/messages", post_message,
                                CL_GUARD_TOKEN);
    rc |= cl_router_add_guarded(r, "POST", "/api/v1/chat", post_chat, CL_GUARD_TOKEN);
    return rc;
}
