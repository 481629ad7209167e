/*
 * ws_chat.c — the WebSocket chat protocol of SPEC §4 on GET /ws/chat.
 *
 * One chat object per socket holds its running queries: each is a turn
 * (the same cl_turn as SSE uses) keyed by the client's session_id, which
 * names a conversation. Several run at once, up to max_ws_sessions.
 *
 * Client → server: query, cancel, ping, auth. Server → client: connected,
 * status, stream_start, token, tool_call, stream_end, complete, error,
 * pong, authenticated.
 *
 * Tokens: the upgrade route is guarded (CL_GUARD_TOKEN_WS: the token and
 * its user are checked before the 101). A socket lives no longer than its
 * token: every socket's expiry sits in one per-worker heap under one timer;
 * at expiry the client hears error UNAUTHORIZED and the socket closes with
 * 1008, unless an {"type":"auth","token":...} for the same user moved it. A cancelled query ends with
 *   {"type":"stream_end","session_id":...,"timestamp":...,"reason":"cancelled"}
 * and its partial answer is stored with status cancelled.
 *
 * Back-pressure: when the socket's queued output passes its high-water
 * mark, every running turn pauses its upstream; they resume on drain. A
 * reader that falls past max_output_bytes is dropped (1008) by the layer
 * below, and its turns are cancelled like any client that left.
 */
#include "chatloop/api.h"
#include "chatloop/apikey.h"
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/jsonw.h"
#include "chatloop/limits.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/timeheap.h"
#include "chatloop/turn.h"
#include "chatloop/version.h"
#include "chatloop/ws.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct chat chat;

/* Queries a socket may send while its API key is being looked up. */
#define HELD_QUERIES 16

typedef struct session {
    chat *ch;
    struct session *next;
    cl_turn *turn;
    char id[129];               /* the client's session_id */
    char conversation_id[37];
    uint64_t t0_ns, first_token_ns;
    int started;
} session;

struct chat {
    cl_ws *ws;
    char user_id[37];
    char api_key_id[37];        /* authenticated by this API key, or "" */
    char key_hash[65];          /* ... whose hash each query checks (key_gate) */
    cl_db_query *key_check;     /* that check's lookup, in flight */
    json_t *held[HELD_QUERIES]; /* queries waiting for it */
    int nheld;
    int key_revoked;
    int64_t token_exp;          /* unix seconds; 0: never (auth = off) */
    cl_theap_node expiry;       /* in g_expiries while token_exp is set */
    session *sessions;          /* running queries */
    int nsessions;
    int paused;                 /* upstreams held for a slow reader */
    int draining;               /* the worker is shutting down */
};

/* Every message is built here and copied into the socket's output at once,
 * so one buffer serves every connection of the worker (one loop per
 * process): an idle socket keeps no message buffer of its own. A buffer
 * grown by a long answer is given back after use. */
static cl_buf g_msg = {.max = SIZE_MAX};
#define MSG_KEEP_BYTES 16384

/* ---- sending ------------------------------------------------------------------ */

static void send_buf(chat *ch)
{
    cl_ws_send_text(ch->ws, g_msg.data, g_msg.len);
    if (g_msg.cap > MSG_KEEP_BYTES)
        cl_buf_release(&g_msg);
    if (!ch->paused && cl_ws_congested(ch->ws)) {
        ch->paused = 1;
        for (session *s = ch->sessions; s; s = s->next)
            cl_turn_pause(s->turn, 1);
    }
}

static cl_buf *begin(chat *ch, const char *type, const session *s)
{
    cl_buf *b = &g_msg;
    cl_buf_reset(b);
    cl_buf_printf(b, "{\"type\":\"%s\"", type);
    if (s) {
        cl_buf_append_str(b, ",\"session_id\":");
        cl_jsonw_cstr(b, s->id);
    }
    return b;
}

static void send_error(chat *ch, const char *session_id, cl_err_code code, const char *message)
{
    cl_buf *b = &g_msg;
    cl_buf_reset(b);
    cl_buf_append_str(b, "{\"type\":\"error\"");
    if (session_id) {
        cl_buf_append_str(b, ",\"session_id\":");
        cl_jsonw_cstr(b, session_id);
    }
    cl_buf_printf(b, ",\"error\":{\"code\":\"%s\",\"message\":", cl_err_name(code));
    cl_jsonw_cstr(b, message);
    cl_buf_append_str(b, "}}");
    send_buf(ch);
}

/* RATE_LIMITED with the seconds to wait, as the envelope's details say them. */
static void send_refusal(chat *ch, const char *session_id, cl_limit_kind kind, long retry_ms,
                         const char *message)
{
    cl_buf *b = &g_msg;
    cl_buf_reset(b);
    cl_buf_append_str(b, "{\"type\":\"error\",\"session_id\":");
    cl_jsonw_cstr(b, session_id);
    cl_buf_printf(b, ",\"retry_after\":%d,\"error\":{\"code\":\"%s\",\"message\":",
                  cl_limits_retry_s(retry_ms), cl_err_name(CL_ERR_RATE_LIMITED));
    cl_jsonw_cstr(b, message);
    cl_buf_printf(b, ",\"details\":{\"kind\":\"%s\",\"limit\":%d,\"retry_after\":%d}}}",
                  cl_limits_kind_name(kind), cl_limits_value(cl_app_current()->w->cfg, kind),
                  cl_limits_retry_s(retry_ms));
    send_buf(ch);
}

static void send_status(chat *ch, const session *s, const char *status, const char *message)
{
    cl_buf *b = begin(ch, "status", s);
    cl_buf_printf(b, ",\"status\":\"%s\",\"message\":", status);
    cl_jsonw_cstr(b, message);
    cl_buf_append_char(b, '}');
    send_buf(ch);
}

static void send_stream_end(chat *ch, const session *s, const char *reason)
{
    char ts[40];
    cl_iso_now(ts);
    cl_buf *b = begin(ch, "stream_end", s);
    cl_buf_printf(b, ",\"timestamp\":\"%s\"", ts);
    if (reason)
        cl_buf_printf(b, ",\"reason\":\"%s\"", reason);
    cl_buf_append_char(b, '}');
    send_buf(ch);
}

/* ---- sessions ------------------------------------------------------------------- */

static void session_remove(session *s)
{
    chat *ch = s->ch;
    for (session **p = &ch->sessions; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    ch->nsessions--;
    free(s);
    if (ch->draining && ch->nsessions == 0)
        cl_ws_close(ch->ws, 1001, "server shutting down");
}

static session *session_find(chat *ch, const char *id)
{
    for (session *s = ch->sessions; s; s = s->next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void turn_start(void *ud, const char *conversation_id, const char *message_id)
{
    session *s = ud;
    chat *ch = s->ch;
    (void)message_id;
    snprintf(s->conversation_id, sizeof s->conversation_id, "%s", conversation_id);
    s->started = 1;
    send_status(ch, s, "generating", "the model is answering");
    char ts[40];
    cl_iso_now(ts);
    cl_buf *b = begin(ch, "stream_start", s);
    cl_buf_printf(b, ",\"conversation_id\":\"%s\",\"timestamp\":\"%s\"}", conversation_id, ts);
    send_buf(ch);
    if (ch->paused)
        cl_turn_pause(s->turn, 1);
}

static void turn_token(void *ud, const char *text, size_t len)
{
    session *s = ud;
    chat *ch = s->ch;
    if (!s->first_token_ns)
        s->first_token_ns = uv_hrtime();
    cl_buf *b = begin(ch, "token", s);
    cl_buf_append_str(b, ",\"token\":");
    cl_jsonw_str(b, text, len);
    cl_buf_append_char(b, '}');
    send_buf(ch);
}

static void turn_done(void *ud, const char *data_json)
{
    session *s = ud;
    chat *ch = s->ch;
    s->turn = NULL;
    send_stream_end(ch, s, NULL);
    json_t *d = json_loads(data_json, 0, NULL);
    uint64_t now = uv_hrtime();
    double ttft = s->first_token_ns ? (double)(s->first_token_ns - s->t0_ns) / 1e6 : 0;
    double total = (double)(now - s->t0_ns) / 1e6;
    cl_buf *b = begin(ch, "complete", s);
    cl_buf_append_str(b, ",\"conversation_id\":");
    cl_jsonw_cstr(b, json_string_value(json_object_get(d, "conversation_id")));
    cl_buf_append_str(b, ",\"message_id\":");
    cl_jsonw_cstr(b, json_string_value(json_object_get(d, "message_id")));
    cl_buf_append_str(b, ",\"answer\":{\"text\":");
    cl_jsonw_cstr(b, json_string_value(json_object_get(d, "response")));
    cl_buf_append_str(b, ",\"model_used\":");
    cl_jsonw_cstr(b, json_string_value(json_object_get(d, "model_used")));
    cl_buf_append_str(b, "},\"usage\":");
    char *usage = json_dumps(json_object_get(d, "usage"), JSON_COMPACT);
    cl_buf_append_str(b, usage ? usage : "{}");
    free(usage);
    cl_buf_printf(b, ",\"metadata\":{\"documents_used\":%zu,\"history_messages\":%lld,\"ttft_ms\":",
                  json_array_size(json_object_get(d, "documents_retrieved")),
                  (long long)json_integer_value(json_object_get(d, "history_messages")));
    cl_jsonw_ms(b, ttft);
    cl_buf_append_str(b, ",\"total_ms\":");
    cl_jsonw_ms(b, total);
    cl_buf_append_str(b, "}}");
    json_decref(d);
    send_buf(ch);
    session_remove(s);
}

static void turn_error(void *ud, cl_err_code code, const char *message)
{
    session *s = ud;
    chat *ch = s->ch;
    cl_limit_kind kind;
    long retry_ms;
    int refused = cl_turn_refusal(s->turn, &kind, &retry_ms);
    s->turn = NULL;
    if (s->started)
        send_stream_end(ch, s, "error");
    if (refused)
        send_refusal(ch, s->id, kind, retry_ms, message);
    else
        send_error(ch, s->id, code, message);
    session_remove(s);
}

static const cl_turn_sink ws_sink = {
    .on_start = turn_start,
    .on_token = turn_token,
    .on_done = turn_done,
    .on_error = turn_error,
};

/* ---- token expiry ------------------------------------------------------------------ */

/* Every socket's token expiry in one heap under one timer per worker (one
 * loop per process): a timer per socket would cost an idle socket 150
 * bytes. The deadlines are unix seconds, the clock tokens are written in. */
static cl_theap g_expiries;
static uv_timer_t g_expiry_timer;
static int g_expiry_timer_ready;

static void on_expiry_timer(uv_timer_t *t);

static void expiry_arm(void)
{
    cl_theap_node *top = cl_theap_top(&g_expiries);
    if (!g_expiry_timer_ready)
        return;
    if (!top) {
        uv_timer_stop(&g_expiry_timer);
        return;
    }
    int64_t now = (int64_t)time(NULL);
    uint64_t ms = (int64_t)top->at > now ? (uint64_t)((int64_t)top->at - now) * 1000 : 0;
    uv_timer_start(&g_expiry_timer, on_expiry_timer, ms, 0);
}

static void expiry_set(chat *ch, int64_t exp)
{
    ch->token_exp = exp;
    if (exp <= 0) {
        cl_theap_remove(&g_expiries, &ch->expiry);
    } else {
        if (!g_expiry_timer_ready) {
            uv_timer_init(cl_app_current()->w->loop, &g_expiry_timer);
            g_expiry_timer_ready = 1;
        }
        if (cl_theap_set(&g_expiries, &ch->expiry, (uint64_t)exp) != 0)
            CL_ERROR("ws: out of memory tracking a token expiry; checked per message only");
    }
    expiry_arm();
}

/* The token is past its exp: the client hears why, and the socket closes
 * with 1008 (its running queries are cancelled like any client that left). */
static void token_expired(chat *ch)
{
    cl_theap_remove(&g_expiries, &ch->expiry);
    ch->token_exp = 0;
    send_error(ch, NULL, CL_ERR_UNAUTHORIZED,
               "the token has expired; send {\"type\":\"auth\",\"token\":...} with a fresh one "
               "before it does");
    cl_ws_close(ch->ws, 1008, "token expired");
}

static void on_expiry_timer(uv_timer_t *t)
{
    (void)t;
    int64_t now = (int64_t)time(NULL);
    cl_theap_node *top;
    while ((top = cl_theap_top(&g_expiries)) && (int64_t)top->at <= now) {
        chat *ch = (chat *)((char *)top - offsetof(chat, expiry));
        token_expired(ch);
    }
    expiry_arm();
}

static int token_valid_now(chat *ch)
{
    if (ch->token_exp && (int64_t)time(NULL) >= ch->token_exp) {
        token_expired(ch);
        return 0;
    }
    return 1;
}

/* ---- client messages ------------------------------------------------------------- */

/* {"type":"auth","token":"..."}: a fresh token for the same user keeps a
 * long-lived socket open past the first token's expiry. */
static void on_auth(chat *ch, json_t *msg)
{
    const char *tok = json_string_value(json_object_get(msg, "token"));
    if (!tok) {
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST, "'token' is required: a string");
        return;
    }
    const cl_config *cfg = cl_app_current()->w->cfg;
    char user_id[37], why[96];
    int64_t exp = 0;
    if (!cl_auth_token_user(cfg, tok, strlen(tok), user_id, &exp, why, sizeof why)) {
        send_error(ch, NULL, CL_ERR_UNAUTHORIZED, why);
        return;
    }
    if (strcmp(user_id, ch->user_id) != 0) {
        send_error(ch, NULL, CL_ERR_FORBIDDEN, "the token is for another user than this socket's");
        return;
    }
    expiry_set(ch, exp);
    cl_buf *b = begin(ch, "authenticated", NULL);
    cl_buf_append_str(b, ",\"user_id\":");
    cl_jsonw_cstr(b, ch->user_id);
    cl_buf_printf(b, ",\"expires_at\":%lld}", (long long)exp);
    send_buf(ch);
}


static void on_query(chat *ch, json_t *msg)
{
    const char *sid = json_string_value(json_object_get(msg, "session_id"));
    if (!sid || !*sid || strlen(sid) > 128) {
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST,
                   "'session_id' is required: a string of 1 to 128 characters");
        return;
    }
    json_t *q = json_object_get(msg, "question");
    if (!json_is_string(q)) {
        send_error(ch, sid, CL_ERR_INVALID_REQUEST, "'question' is required and must be a string");
        return;
    }
    if (ch->draining) {
        send_error(ch, sid, CL_ERR_SERVICE_UNAVAILABLE, "the server is shutting down");
        return;
    }
    if (session_find(ch, sid)) {
        send_error(ch, sid, CL_ERR_INVALID_REQUEST, "a query is already running for this session_id");
        return;
    }
    cl_app *app = cl_app_current();
    const cl_config *cfg = app->w->cfg;
    if (ch->nsessions >= cfg->max_ws_sessions) {
        char m[96];
        snprintf(m, sizeof m, "too many queries at once on this connection (max_ws_sessions %d)",
                 cfg->max_ws_sessions);
        send_error(ch, sid, CL_ERR_RATE_LIMITED, m);
        return;
    }
    if (!app->db || !cl_db_available(app->db)) {
        send_error(ch, sid, CL_ERR_DB_UNAVAILABLE, "the database is unavailable; try again shortly");
        return;
    }
    /* The turn reads the same fields as the REST body, with the question
     * as its message. */
    json_object_set(msg, "message", q);
    cl_turn_input in;
    memset(&in, 0, sizeof in);
    int stream;
    const char *field = NULL;
    char why[200];
    if (cl_turn_parse_input(msg, cfg, &in, &stream, &field, why, sizeof why) != 0) {
        if (field && strcmp(field, "message") == 0) {
            /* name the field as the client knows it */
            char fixed[220];
            const char *rest = strstr(why, "'message'");
            snprintf(fixed, sizeof fixed, "'question'%s", rest ? rest + 9 : "");
            send_error(ch, sid, CL_ERR_INVALID_REQUEST, fixed);
        } else {
            send_error(ch, sid, CL_ERR_INVALID_REQUEST, why);
        }
        return;
    }
    const char *conv = json_string_value(json_object_get(msg, "conversation_id"));
    if (conv && !cl_uuid_valid(conv)) {
        send_error(ch, sid, CL_ERR_NOT_FOUND, "conversation not found");
        return;
    }
    if (in.agent_id && !cl_uuid_valid(in.agent_id)) {
        send_error(ch, sid, CL_ERR_NOT_FOUND, "agent not found");
        return;
    }
    session *s = calloc(1, sizeof *s);
    if (!s) {
        send_error(ch, sid, CL_ERR_PROCESSING_ERROR, "out of memory");
        return;
    }
    s->ch = ch;
    snprintf(s->id, sizeof s->id, "%s", sid);
    s->t0_ns = uv_hrtime();
    in.user_id = ch->user_id;
    in.api_key_id = ch->api_key_id;
    in.conversation_id = conv;
    in.session_key = conv ? NULL : sid;
    in.transport = CL_TRANSPORT_WS;
    s->next = ch->sessions;
    ch->sessions = s;
    ch->nsessions++;
    send_status(ch, s, "loading_history", "loading the conversation");
    s->turn = cl_turn_start(app, &in, &ws_sink, s);
    if (!s->turn) {
        send_error(ch, sid, CL_ERR_PROCESSING_ERROR, "cannot start the query");
        session_remove(s);
    }
}

/* ---- a socket opened with an API key ---------------------------------------------- */

/* Each query checks the key is still valid — this worker's cache, else one
 * lookup — so revoking a key stops a socket opened with it as it stops
 * requests: within CL_API_KEY_TRUST_MS. Queries that arrive during the
 * lookup wait for it, in order. */
static void key_refused(chat *ch, json_t *msg)
{
    const char *sid = json_string_value(json_object_get(msg, "session_id"));
    send_error(ch, sid, CL_ERR_UNAUTHORIZED, "the API key of this socket was revoked");
    if (!ch->key_revoked) {
        ch->key_revoked = 1;
        cl_ws_close(ch->ws, 1008, "API key revoked");
    }
}

static void key_checked(void *ud, const cl_db_res *res)
{
    chat *ch = ud;
    ch->key_check = NULL;
    char uid[37], kid[37];
    cl_app *app = cl_app_current();
    cl_key_state st = cl_api_key_settle(ch->key_hash, res, uv_now(app->w->loop), uid, kid);
    int n = ch->nheld;
    ch->nheld = 0;
    for (int i = 0; i < n; i++) {
        json_t *m = ch->held[i];
        if (st == CL_KEY_VALID && !ch->key_revoked)
            on_query(ch, m);
        else if (st == CL_KEY_INVALID || ch->key_revoked)
            key_refused(ch, m);
        else
            send_error(ch, json_string_value(json_object_get(m, "session_id")),
                       CL_ERR_DB_UNAVAILABLE, "the database is unavailable; try again shortly");
        json_decref(m);
    }
}

static void key_gate(chat *ch, json_t *msg)
{
    if (ch->key_revoked) {
        key_refused(ch, msg);
        return;
    }
    if (ch->key_check) {
        if (ch->nheld == HELD_QUERIES) {
            send_error(ch, json_string_value(json_object_get(msg, "session_id")),
                       CL_ERR_RATE_LIMITED, "too many queries waiting for the key check");
            return;
        }
        ch->held[ch->nheld++] = json_incref(msg);
        return;
    }
    cl_app *app = cl_app_current();
    char uid[37], kid[37];
    int up = app->db && cl_db_available(app->db);
    switch (cl_api_key_cached(ch->key_hash, uv_now(app->w->loop), up, uid, kid)) {
    case CL_KEY_VALID:
        on_query(ch, msg);
        return;
    case CL_KEY_INVALID:
        key_refused(ch, msg);
        return;
    case CL_KEY_ASK:
        break;
    }
    if (app->db)
        ch->key_check = cl_api_key_lookup(app->db, ch->key_hash, key_checked, ch);
    if (!ch->key_check) {
        send_error(ch, json_string_value(json_object_get(msg, "session_id")),
                   CL_ERR_PROCESSING_ERROR, "cannot check the API key");
        return;
    }
    ch->held[ch->nheld++] = json_incref(msg);
}

static void on_cancel(chat *ch, json_t *msg)
{
    const char *sid = json_string_value(json_object_get(msg, "session_id"));
    if (!sid) {
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST, "'session_id' is required");
        return;
    }
    session *s = session_find(ch, sid);
    if (!s) {
        send_error(ch, sid, CL_ERR_NOT_FOUND, "no query is running for this session_id");
        return;
    }
    /* the upstream goes now; what streamed is stored as cancelled */
    cl_turn_cancel(s->turn);
    s->turn = NULL;
    send_stream_end(ch, s, "cancelled");
    session_remove(s);
}

static void on_text(cl_ws *ws, const char *data, size_t len)
{
    chat *ch = cl_ws_userdata(ws);
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, 0, &jerr);
    if (!msg || !json_is_object(msg)) {
        char m[256];
        if (msg)
            snprintf(m, sizeof m, "a message must be a JSON object");
        else
            snprintf(m, sizeof m, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                     jerr.text);
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST, m);
        json_decref(msg);
        return;
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!token_valid_now(ch)) {
        /* closed: nothing more is run for this socket */
    } else if (!type)
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST,
                   "'type' is required: query, cancel, ping or auth");
    else if (strcmp(type, "auth") == 0)
        on_auth(ch, msg);
    else if (strcmp(type, "query") == 0 && ch->api_key_id[0])
        key_gate(ch, msg);
    else if (strcmp(type, "query") == 0)
        on_query(ch, msg);
    else if (strcmp(type, "cancel") == 0)
        on_cancel(ch, msg);
    else if (strcmp(type, "ping") == 0) {
        cl_buf *b = begin(ch, "pong", NULL);
        cl_buf_append_char(b, '}');
        send_buf(ch);
    } else {
        char m[160];
        snprintf(m, sizeof m, "unknown type \"%.64s\": expected query, cancel, ping or auth", type);
        send_error(ch, NULL, CL_ERR_INVALID_REQUEST, m);
    }
    json_decref(msg);
}

/* ---- socket events ----------------------------------------------------------------- */

static void on_open(cl_ws *ws)
{
    chat *ch = cl_ws_userdata(ws);
    ch->ws = ws;
    cl_buf *b = begin(ch, "connected", NULL);
    cl_buf_append_str(b, ",\"user_id\":");
    cl_jsonw_cstr(b, ch->user_id);
    cl_buf_append_str(b, ",\"server\":\"chatloop/" CL_VERSION "\"}");
    send_buf(ch);
    if (ch->token_exp)
        expiry_set(ch, ch->token_exp);
}

static void on_drain(cl_ws *ws)
{
    chat *ch = cl_ws_userdata(ws);
    if (!ch->paused)
        return;
    ch->paused = 0;
    for (session *s = ch->sessions; s; s = s->next)
        cl_turn_pause(s->turn, 0);
}

static void on_shutdown(cl_ws *ws)
{
    chat *ch = cl_ws_userdata(ws);
    ch->draining = 1;
    /* running answers finish first (bounded by drain_timeout) */
    if (ch->nsessions == 0)
        cl_ws_close(ws, 1001, "server shutting down");
}

static void on_close(cl_ws *ws, int code)
{
    chat *ch = cl_ws_userdata(ws);
    (void)code;
    cl_theap_remove(&g_expiries, &ch->expiry);
    expiry_arm();
    if (ch->key_check)
        cl_db_cancel(ch->key_check);
    for (int i = 0; i < ch->nheld; i++)
        json_decref(ch->held[i]);
    /* the client is gone: every running turn stops, its partial answer
     * stored as cancelled */
    while (ch->sessions) {
        session *s = ch->sessions;
        ch->sessions = s->next;
        cl_turn_cancel(s->turn);
        free(s);
    }
    free(ch);
}

static const cl_ws_handler chat_handler = {
    .on_open = on_open,
    .on_text = on_text,
    .on_drain = on_drain,
    .on_close = on_close,
    .on_shutdown = on_shutdown,
};

/* GET /ws/chat?token=JWT (or Authorization: Bearer): the guard has checked
 * the token and its user before the upgrade, so a bad one is a plain 401. */
static void ws_chat(cl_req *r)
{
    chat *ch = calloc(1, sizeof *ch);
    if (!ch) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return;
    }
    memcpy(ch->user_id, r->user_id, sizeof ch->user_id);
    memcpy(ch->api_key_id, r->api_key_id, sizeof ch->api_key_id);
    memcpy(ch->key_hash, r->key_hash, sizeof ch->key_hash);
    ch->token_exp = r->token_exp;
    if (!cl_ws_upgrade(r, &chat_handler, ch)) {
        /* the request was answered (400/426) */
        free(ch);
    }
}

int cl_ws_routes(cl_router *r)
{
    return cl_router_add_guarded(r, "GET", "/ws/chat", ws_chat, CL_GUARD_TOKEN_WS);
}
