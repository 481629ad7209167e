/*
 * session.c — one chatbench session: a TCP connection (from a chosen source
 * address), HTTP/1.1 requests with streamed answers (llhttp + the project's
 * SSE parser) or a WebSocket (wslay, client side), and a sequence of turns,
 * each timed and checked against the expected answer.
 *
 * Lifetime: a session owns a timer (closed only when the session finishes)
 * and at most one TCP handle at a time. A connection that breaks or is left
 * in an unknown state (timeout, protocol error) is closed; the next turn
 * opens a new one. Everything a connection allocates (wslay context, SSE
 * buffers, output) is released in conn_closed, the one place it ends.
 */
#include "bench.h"

#include "chatloop/buf.h"
#include "chatloop/jsonw.h"
#include "chatloop/sse.h"

#include <llhttp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define ERRBODY_MAX 4096
#define SSE_MAX_LINE (1 << 20)
#define RECONNECT_DELAY_NS 100000000ull /* after a failed connect */

enum conn_state { C_NONE, C_CONNECTING, C_HANDSHAKE, C_READY, C_CLOSING };

struct cb_session {
    cb_run *run;
    int index;
    int started, finished;
    uv_timer_t timer;           /* start delay, waits, turn and connect timeouts */
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    enum conn_state state;
    uint64_t t_connect;
    /* input */
    llhttp_t http;
    int status;                 /* of the response being read */
    int resp_done;              /* the current HTTP response has ended */
    cl_sse_parser sse;
    cl_buf errbody;             /* body of a non-200 answer */
    wslay_event_context_ptr ws;
    const char *rp;             /* unread bytes offered to wslay */
    size_t rn;
    /* output: one uv_write at a time; `out` gathers while `wbuf` is written */
    cl_buf out, wbuf;
    int write_busy;
    /* the turn */
    int want_turn;              /* connect, then send */
    int reserved;               /* holds a turn reserved with cb_run_next_turn */
    int had_turn;               /* --think applies from the second turn on */
    int in_ws_recv;             /* inside wslay_event_recv: do not send from here */
    int in_turn;
    int after_turn;             /* the turn has ended: go on when the input is settled */
    int close_after;            /* ... but close the connection first */
    uint64_t t_send, t_last;
    cb_check chk;
    int conv_turns;
    unsigned conv_seq;
    char sid[64];               /* session_id: names the conversation */
};

static void session_next(cb_session *s);
static void conn_close(cb_session *s);
static void send_turn(cb_session *s);
static void flush(cb_session *s);
static void settle(cb_session *s);

static const llhttp_settings_t *http_settings(void);

/* A reserved turn that will not be started goes back to the run. */
static void give_back(cb_session *s)
{
    if (s->reserved) {
        s->reserved = 0;
        cb_run_unreserve(s->run);
    }
}

/* ---- the session set ---------------------------------------------------------- */

cb_session *cb_sessions_new(cb_run *r, int n)
{
    cb_session *ss = calloc((size_t)n, sizeof *ss);
    if (!ss)
        return NULL;
    for (int i = 0; i < n; i++)
        ss[i].run = r;
    return ss;
}

void cb_sessions_free(cb_session *ss)
{
    free(ss);
}

cb_session *cb_session_at(cb_session *ss, int i)
{
    return &ss[i];
}

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static void timer_cancel(cb_session *s)
{
    uv_timer_stop(&s->timer);
}

static void timer_in(cb_session *s, uint64_t ns, uv_timer_cb cb)
{
    /* libuv timers count milliseconds; round up so a wait is never short */
    uv_timer_start(&s->timer, cb, (ns + 999999) / 1000000, 0);
}

static void session_finish(cb_session *s)
{
    if (s->finished)
        return;
    s->finished = 1;
    s->want_turn = 0;
    if (s->state != C_NONE)
        conn_close(s);
    uv_close((uv_handle_t *)&s->timer, NULL);
    cb_run_session_done(s->run);
}

/* ---- turns -------------------------------------------------------------------- */

static void turn_fail(cb_session *s, const char *code, const char *why, int close)
{
    if (!s->in_turn)
        return;
    cb_stats *st = cb_run_stats(s->run);
    s->in_turn = 0;
    st->turns_failed++;
    st->t_end_ns = now_ns();
    cb_stats_error(st, code, why);
    timer_cancel(s);
    s->after_turn = 1;
    if (close)
        s->close_after = 1;
}

static void turn_ok(cb_session *s, const char *whole, size_t whole_len)
{
    if (!s->in_turn)
        return;
    const cb_expect *e = cb_run_expect(s->run);
    const char *bad = cb_check_verdict(&s->chk, e);
    if (!bad && whole)
        bad = cb_check_whole(e, whole, whole_len);
    if (bad) {
        char why[96];
        snprintf(why, sizeof why, "%zu of %zu bytes matched in %d tokens", s->chk.got, e->len,
                 s->chk.pieces);
        turn_fail(s, bad, why, 0);
        return;
    }
    cb_stats *st = cb_run_stats(s->run);
    uint64_t t = now_ns();
    s->in_turn = 0;
    st->turns_ok++;
    st->t_end_ns = t;
    cb_hist_add(&st->turn, t - s->t_send);
    timer_cancel(s);
    s->after_turn = 1;
}

static void turn_token(cb_session *s, const char *p, size_t n, uint64_t t)
{
    if (!s->in_turn)
        return;
    cb_stats *st = cb_run_stats(s->run);
    if (s->chk.pieces == 0)
        cb_hist_add(&st->ttft, t - s->t_send);
    else
        cb_hist_add(&st->gap, t - s->t_last);
    s->t_last = t;
    st->tokens++;
    cb_check_piece(&s->chk, cb_run_expect(s->run), p, n);
}

static void on_turn_timeout(uv_timer_t *t)
{
    cb_session *s = t->data;
    turn_fail(s, "TIMEOUT", "no complete answer within --timeout", 1);
    settle(s);
}

/* After a turn: close the connection if its state is unknown, then the next. */
static void settle(cb_session *s)
{
    if (!s->after_turn || s->finished)
        return;
    /* HTTP: the next request waits for the end of this response */
    if (cb_run_options(s->run)->mode != CB_MODE_WS && !s->resp_done && !s->close_after &&
        s->state == C_READY)
        return;
    s->after_turn = 0;
    if (s->close_after) {
        s->close_after = 0;
        if (s->state != C_NONE)
            conn_close(s);
    }
    session_next(s);
}

/* ---- output ------------------------------------------------------------------- */

static void on_write(uv_write_t *w, int status)
{
    cb_session *s = w->data;
    s->write_busy = 0;
    cl_buf_release(&s->wbuf);
    if (status < 0) {
        if (status != UV_ECANCELED && s->state != C_CLOSING) {
            turn_fail(s, "WRITE", uv_strerror(status), 1);
            settle(s);
        }
        return;
    }
    flush(s);
}

static void flush(cb_session *s)
{
    if (s->write_busy || s->out.len == 0 || s->state == C_CLOSING || s->state == C_NONE)
        return;
    cl_buf t = s->wbuf;
    s->wbuf = s->out;
    s->out = t;
    uv_buf_t b = uv_buf_init(s->wbuf.data, (unsigned)s->wbuf.len);
    s->wreq.data = s;
    int rc = uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &b, 1, on_write);
    if (rc < 0) {
        cl_buf_release(&s->wbuf);
        turn_fail(s, "WRITE", uv_strerror(rc), 1);
        settle(s);
        return;
    }
    s->write_busy = 1;
}

/* ---- connection --------------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    cb_session *s = h->data;
    s->state = C_NONE;
    if (s->want_turn && !s->finished)
        session_next(s);
}

/* The one place a connection's resources end. */
static void conn_close(cb_session *s)
{
    if (s->state == C_NONE || s->state == C_CLOSING)
        return;
    s->state = C_CLOSING;
    if (s->ws) {
        wslay_event_context_free(s->ws);
        s->ws = NULL;
    }
    cl_sse_free(&s->sse);
    cl_buf_release(&s->errbody);
    cl_buf_release(&s->out);
    s->rn = 0;
    s->tcp.data = s;
    uv_close((uv_handle_t *)&s->tcp, on_closed);
}

static void on_retry(uv_timer_t *t);

/* The connection broke or was refused. While it was being set up this is a
 * failed connection (counted under `code`, retried after a pause); inside a
 * turn the turn fails; between turns it is counted as lost and the next turn
 * reconnects. */
static void conn_broken(cb_session *s, const char *code, const char *why)
{
    cb_stats *st = cb_run_stats(s->run);
    int setup = s->state == C_CONNECTING || s->state == C_HANDSHAKE;
    if (s->in_turn) {
        turn_fail(s, "CLOSED", why, 1);
    } else if (setup) {
        st->conns_failed++;
        cb_stats_error(st, code, why);
    } else if (s->state == C_READY && !s->after_turn && !cb_run_stopping(s->run)) {
        st->conns_lost++;
    }
    conn_close(s);
    if (s->after_turn) {
        settle(s);
        return;
    }
    if (cb_run_options(s->run)->idle || cb_run_stopping(s->run)) {
        give_back(s);
        session_finish(s);
        return;
    }
    if (setup) {
        /* A failed attempt uses up the turn it was opened for, so a run
         * bounded by --turns ends even when the server never accepts. */
        s->reserved = 0;
        s->want_turn = 0;
        timer_in(s, RECONNECT_DELAY_NS, on_retry);
    }
}

static void conn_lost(cb_session *s, const char *why)
{
    conn_broken(s, "HANDSHAKE", why);
}

static void became_ready(cb_session *s)
{
    cb_stats *st = cb_run_stats(s->run);
    s->state = C_READY;
    st->conns_ok++;
    cb_hist_add(&st->connect, now_ns() - s->t_connect);
    timer_cancel(s);
    if (cb_run_options(s->run)->idle)
        return;
    if (s->want_turn)
        send_turn(s);
}

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *ud)
{
    cb_session *s = ud;
    if (s->rn == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < s->rn ? len : s->rn;
    memcpy(buf, s->rp, n);
    s->rp += n;
    s->rn -= n;
    return (ssize_t)n;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *ud)
{
    cb_session *s = ud;
    if (cl_buf_append(&s->out, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud)
{
    /* Masking only has to defeat proxies' caches, not an attacker: any
     * varying bytes will do for a load generator. */
    static uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
    return 0;
}

static void ws_message(cb_session *s, const char *p, size_t n);

static void ws_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *ud)
{
    cb_session *s = ud;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        ws_message(s, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        char why[64];
        snprintf(why, sizeof why, "the server closed the WebSocket (%u)", arg->status_code);
        if (s->in_turn)
            turn_fail(s, "CLOSED", why, 1);
        else
            s->close_after = 1;
    }
}

static int ws_begin(cb_session *s)
{
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = ws_recv_cb,
        .send_callback = ws_send_cb,
        .genmask_callback = ws_genmask_cb,
        .on_msg_recv_callback = ws_msg_cb,
    };
    if (wslay_event_context_client_init(&s->ws, &cbs, s) != 0)
        return -1;
    wslay_event_config_set_max_recv_msg_length(s->ws, 16u << 20);
    return 0;
}

/* Feeds bytes to the WebSocket and sends what it queued (pongs, close). */
static void ws_input(cb_session *s, const char *p, size_t n)
{
    s->rp = p;
    s->rn = n;
    s->in_ws_recv = 1;
    int rc = wslay_event_recv(s->ws);
    s->in_ws_recv = 0;
    if (rc != 0) {
        s->rn = 0;
        turn_fail(s, "PROTOCOL", "bad WebSocket framing from the server", 1);
        conn_lost(s, "bad WebSocket framing");
        return;
    }
    s->rn = 0;
    if (wslay_event_want_write(s->ws))
        wslay_event_send(s->ws);
    flush(s);
    if (!wslay_event_want_read(s->ws) && !s->in_turn && s->state == C_READY)
        s->close_after = 1;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    /* one buffer per process: every read is consumed before the next */
    static char rbuf[65536];
    b->base = rbuf;
    b->len = sizeof rbuf;
}

/* The session's bearer token: its line of --token-file, else --token. */
static const char *session_token(const cb_session *s, const cb_options *o)
{
    return o->ntoken_list ? o->token_list[s->index % o->ntoken_list] : o->token;
}

static void write_handshake(cb_session *s)
{
    const cb_options *o = cb_run_options(s->run);
    cl_buf *b = &s->out;
    cl_buf_printf(b, "GET %s", o->path);
    const char *token = session_token(s, o);
    if (token)
        cl_buf_printf(b, "%ctoken=%s", strchr(o->path, '?') ? '&' : '?', token);
    cl_buf_printf(b,
                  " HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
                  o->host, o->port);
    for (int i = 0; i < o->nheaders; i++)
        cl_buf_printf(b, "%s\r\n", o->headers[i]);
    cl_buf_append_str(b, "\r\n");
}

static void on_connect_timeout(uv_timer_t *t)
{
    cb_session *s = t->data;
    conn_broken(s, "CONNECT", "connect or handshake timed out");
}

static void on_retry(uv_timer_t *t)
{
    session_next(t->data);
}

static void on_connect(uv_connect_t *req, int status)
{
    cb_session *s = req->data;
    if (s->state != C_CONNECTING)
        return; /* closed meanwhile */
    if (status < 0) {
        conn_broken(s, "CONNECT", uv_strerror(status));
        return;
    }
    llhttp_init(&s->http, HTTP_RESPONSE, http_settings());
    s->http.data = s;
    cl_sse_init(&s->sse, SSE_MAX_LINE);
    uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, on_read);
    if (cb_run_options(s->run)->mode == CB_MODE_WS) {
        s->state = C_HANDSHAKE;
        write_handshake(s);
        flush(s);
    } else {
        became_ready(s);
    }
}

static void conn_open(cb_session *s)
{
    cb_run *r = s->run;
    const cb_options *o = cb_run_options(r);
    cb_stats *st = cb_run_stats(r);
    s->t_connect = now_ns();
    s->resp_done = 1;
    int rc = uv_tcp_init_ex(cb_run_loop(r), &s->tcp, AF_INET);
    if (rc < 0)
        goto fail_early;
    s->tcp.data = s;
    s->state = C_CONNECTING;
    if (o->nsources > 0) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0) {
            /* Port chosen at connect(), per destination: one source address
             * then gives a port range per server address, not one in all. */
            int one = 1;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        }
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = o->sources[s->index % o->nsources];
        rc = uv_tcp_bind(&s->tcp, (const struct sockaddr *)&src, 0);
        if (rc < 0)
            goto fail;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    struct sockaddr_in dst;
    uv_ip4_addr(o->host, o->port, &dst);
    s->creq.data = s;
    rc = uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&dst, on_connect);
    if (rc < 0)
        goto fail;
    s->timer.data = s;
    timer_in(s, o->timeout_ns, on_connect_timeout);
    return;
fail:
    conn_broken(s, "CONNECT", uv_strerror(rc));
    return;
fail_early:
    st->conns_failed++;
    cb_stats_error(st, "CONNECT", uv_strerror(rc));
    give_back(s);
    session_finish(s);
}

/* ---- requests ----------------------------------------------------------------- */

static void json_field_str(cl_buf *b, const char *name, const char *v)
{
    cl_buf_printf(b, ",\"%s\":", name);
    cl_jsonw_cstr(b, v);
}

static void send_turn(cb_session *s)
{
    const cb_options *o = cb_run_options(s->run);
    cb_stats *st = cb_run_stats(s->run);
    if (s->conv_turns >= o->conversation_turns) {
        s->conv_turns = 0;
        s->conv_seq++;
    }
    s->conv_turns++;
    cl_buf body;
    cl_buf_init(&body, 0);
    if (o->mode == CB_MODE_OPENAI) {
        cl_buf_append_str(&body, "{\"model\":");
        cl_jsonw_cstr(&body, o->model);
        cl_buf_printf(&body, ",\"stream\":true,\"max_tokens\":%d,\"messages\":[{\"role\":\"user\","
                             "\"content\":",
                      o->tokens);
        cl_jsonw_cstr(&body, o->question);
        cl_buf_append_str(&body, "}]}");
    } else if (o->mode == CB_MODE_SSE) {
        /* the session_id names the conversation, as on the WebSocket */
        snprintf(s->sid, sizeof s->sid, "cb-%d-%d-%u", (int)getpid(), s->index, s->conv_seq);
        cl_buf_append_str(&body, "{\"message\":");
        cl_jsonw_cstr(&body, o->question);
        cl_buf_printf(&body, ",\"stream\":true,\"max_tokens\":%d", o->tokens);
        json_field_str(&body, "session_id", s->sid);
        if (o->model)
            json_field_str(&body, "model", o->model);
        cl_buf_append_char(&body, '}');
    } else {
        snprintf(s->sid, sizeof s->sid, "cb-%d-%d-%u", (int)getpid(), s->index, s->conv_seq);
        cl_buf_append_str(&body, "{\"type\":\"query\"");
        json_field_str(&body, "session_id", s->sid);
        json_field_str(&body, "question", o->question);
        cl_buf_printf(&body, ",\"max_tokens\":%d", o->tokens);
        if (o->model)
            json_field_str(&body, "model", o->model);
        cl_buf_append_char(&body, '}');
    }
    if (o->mode == CB_MODE_WS) {
        struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)body.data, body.len};
        wslay_event_queue_msg(s->ws, &m);
        if (!s->in_ws_recv)
            wslay_event_send(s->ws); /* else ws_input sends it */
    } else {
        cl_buf *b = &s->out;
        cl_buf_printf(b,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Accept: text/event-stream\r\nContent-Length: %zu\r\n",
                      o->path, o->host, o->port, body.len);
        const char *token = session_token(s, o);
        if (token)
            cl_buf_printf(b, "Authorization: Bearer %s\r\n", token);
        for (int i = 0; i < o->nheaders; i++)
            cl_buf_printf(b, "%s\r\n", o->headers[i]);
        cl_buf_append_str(b, "\r\n");
        cl_buf_append(b, body.data, body.len);
        s->resp_done = 0;
        s->status = 0;
        cl_buf_reset(&s->errbody);
    }
    cl_buf_release(&body);
    s->want_turn = 0;
    s->reserved = 0;
    s->had_turn = 1;
    s->in_turn = 1;
    s->after_turn = 0;
    cb_check_reset(&s->chk);
    s->t_send = now_ns();
    if (!st->t_start_ns)
        st->t_start_ns = s->t_send;
    timer_in(s, o->timeout_ns, on_turn_timeout);
    flush(s);
}

static void on_wait_done(uv_timer_t *t)
{
    cb_session *s = t->data;
    if (cb_run_stopping(s->run)) {
        give_back(s);
        session_finish(s);
        return;
    }
    s->want_turn = 1;
    if (s->state == C_READY) {
        send_turn(s);
    } else if (s->state == C_NONE) {
        conn_open(s);
    } else if (s->state == C_CLOSING) {
        give_back(s); /* on_closed calls session_next, which reserves again */
    }
}

static void session_next(cb_session *s)
{
    if (s->finished)
        return;
    const cb_options *o = cb_run_options(s->run);
    if (o->idle) {
        if (cb_run_stopping(s->run))
            session_finish(s);
        else if (s->state == C_NONE)
            conn_open(s);
        return;
    }
    if (s->state == C_CLOSING) {
        s->want_turn = 1; /* on_closed comes back here */
        return;
    }
    uint64_t at = cb_run_next_turn(s->run);
    if (!at) {
        session_finish(s);
        return;
    }
    s->reserved = 1;
    uint64_t now = now_ns();
    if (o->think_ns && s->had_turn && at < now + o->think_ns)
        at = now + o->think_ns;
    s->timer.data = s;
    if (at > now + 500000)
        timer_in(s, at - now, on_wait_done);
    else
        on_wait_done(&s->timer);
}

/* ---- input: HTTP responses ---------------------------------------------------- */

static void error_from_json(const char *p, size_t n, char *code, size_t codelen, char *msg,
                            size_t msglen)
{
    /* {"error":{"code","message"}} (OpenAI, chatloop's envelope) or
     * {"code","message"} (a chatloop SSE error event) */
    static const char *const top[] = {"error", "code", "message"};
    static const char *const inner[] = {"code", "message"};
    cl_json_span v[3], w[2];
    code[0] = msg[0] = '\0';
    if (cl_json_members(p, n, top, v, 3) != 0)
        return;
    cl_json_span c = v[1], m = v[2];
    if (v[0].p && v[0].p[0] == '{' && cl_json_members(v[0].p, v[0].n, inner, w, 2) == 0) {
        c = w[0];
        if (w[1].p)
            m = w[1]; /* chatloop's envelope keeps its message outside */
    }
    long k = c.p ? cl_json_string(c, code, codelen - 1) : -1;
    code[k > 0 ? k : 0] = '\0';
    k = m.p ? cl_json_string(m, msg, msglen - 1) : -1;
    msg[k > 0 ? k : 0] = '\0';
}

static void stream_error(cb_session *s, const char *p, size_t n)
{
    char code[CB_CODE_MAX], msg[CB_EXAMPLE_MAX];
    error_from_json(p, n, code, sizeof code, msg, sizeof msg);
    turn_fail(s, code[0] ? code : "STREAM_ERROR", msg[0] ? msg : "an error in the stream", 0);
}

/* OpenAI chunk: choices[0].delta.content, or {"error":...}. */
static int openai_event(cb_session *s, const char *data, size_t len, uint64_t t)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        turn_ok(s, NULL, 0);
        return 0;
    }
    static const char *const top[] = {"choices", "error", "x_groq"};
    static const char *const ch[] = {"delta"};
    static const char *const dl[] = {"content"};
    cl_json_span v[3], c, d;
    if (cl_json_members(data, len, top, v, 3) != 0) {
        turn_fail(s, "PROTOCOL", "a chunk that is not a JSON object", 0);
        return 0;
    }
    if (v[1].p && v[1].p[0] == '{') {
        stream_error(s, data, len);
        return 0;
    }
    if (v[2].p && v[2].p[0] == '{') {
        /* Groq reports a failure mid-stream as x_groq.error */
        static const char *const xg[] = {"error"};
        cl_json_span e;
        if (cl_json_members(v[2].p, v[2].n, xg, &e, 1) == 0 && e.p && e.p[0] == '{') {
            stream_error(s, v[2].p, v[2].n);
            return 0;
        }
    }
    cl_json_span first = cl_json_first(v[0]);
    if (!first.p)
        return 0; /* the usage-only chunk */
    if (cl_json_members(first.p, first.n, ch, &c, 1) != 0 || !c.p ||
        cl_json_members(c.p, c.n, dl, &d, 1) != 0) {
        turn_fail(s, "PROTOCOL", "a chunk without choices[0].delta", 0);
        return 0;
    }
    if (!d.p || d.p[0] != '"' || d.n == 2)
        return 0; /* role chunk, finish chunk */
    char tok[4096];
    long k = cl_json_string(d, tok, sizeof tok);
    if (k < 0) {
        turn_fail(s, "PROTOCOL", "a bad content string", 0);
        return 0;
    }
    turn_token(s, tok, (size_t)k, t);
    return 0;
}

/* chatloop's /api/v1/chat events: start, token, done, error. */
static int chat_event(cb_session *s, const char *event, const char *data, size_t len, uint64_t t)
{
    if (strcmp(event, "token") == 0) {
        static const char *const k[] = {"token"};
        cl_json_span v;
        char tok[4096];
        long n;
        if (cl_json_members(data, len, k, &v, 1) != 0 || (n = cl_json_string(v, tok, sizeof tok)) < 0) {
            turn_fail(s, "PROTOCOL", "a bad token event", 0);
            return 0;
        }
        turn_token(s, tok, (size_t)n, t);
    } else if (strcmp(event, "done") == 0) {
        static const char *const k[] = {"response"};
        cl_json_span v;
        size_t cap = cb_run_expect(s->run)->len + 64;
        char *text = malloc(cap);
        long n = -1;
        if (text && cl_json_members(data, len, k, &v, 1) == 0 && v.p)
            n = cl_json_string(v, text, cap);
        if (n == -2)
            turn_fail(s, "CORRUPT", "the done event's response is longer than expected", 0);
        else if (n < 0)
            turn_fail(s, "PROTOCOL", "a done event without a response string", 0);
        else
            turn_ok(s, text, (size_t)n);
        free(text);
    } else if (strcmp(event, "error") == 0) {
        stream_error(s, data, len);
    }
    return 0;
}

typedef struct {
    cb_session *s;
    uint64_t t;
} sse_ctx;

static int on_sse_event(void *ud, const char *event, const char *data, size_t len)
{
    sse_ctx *c = ud;
    if (cb_run_options(c->s->run)->mode == CB_MODE_OPENAI)
        return openai_event(c->s, data, len, c->t);
    return chat_event(c->s, event, data, len, c->t);
}

static uint64_t g_read_ns; /* when the bytes being parsed were read */

static int h_headers_complete(llhttp_t *p)
{
    cb_session *s = p->data;
    s->status = llhttp_get_status_code(p);
    if (s->status == 101)
        return 2; /* the WebSocket's bytes follow */
    return 0;
}

static int h_body(llhttp_t *p, const char *at, size_t len)
{
    cb_session *s = p->data;
    if (s->status != 200) {
        if (s->errbody.len + len <= ERRBODY_MAX)
            cl_buf_append(&s->errbody, at, len);
        return 0;
    }
    sse_ctx c = {s, g_read_ns};
    int rc = cl_sse_feed(&s->sse, at, len, on_sse_event, &c);
    if (rc < 0)
        turn_fail(s, "PROTOCOL", "an event stream line over 1 MiB", 1);
    return 0;
}

static int h_message_complete(llhttp_t *p)
{
    cb_session *s = p->data;
    if (s->status == 101)
        return 0; /* llhttp stops with HPE_PAUSED_UPGRADE */
    s->resp_done = 1;
    return HPE_PAUSED; /* handled between executes: it may start the next turn */
}

static const llhttp_settings_t *http_settings(void)
{
    static llhttp_settings_t st;
    static int ready;
    if (!ready) {
        llhttp_settings_init(&st);
        st.on_headers_complete = h_headers_complete;
        st.on_body = h_body;
        st.on_message_complete = h_message_complete;
        ready = 1;
    }
    return &st;
}

static void response_ended(cb_session *s)
{
    if (s->status != 200) {
        char code[CB_CODE_MAX], msg[CB_EXAMPLE_MAX], why[CB_EXAMPLE_MAX + 16];
        error_from_json(s->errbody.data ? s->errbody.data : "", s->errbody.len, code, sizeof code,
                        msg, sizeof msg);
        snprintf(why, sizeof why, "HTTP %d %s", s->status, msg);
        char c2[CB_CODE_MAX];
        if (code[0])
            snprintf(c2, sizeof c2, "HTTP_%d:%.24s", s->status, code);
        else
            snprintf(c2, sizeof c2, "HTTP_%d", s->status);
        turn_fail(s, c2, why, 0);
        cl_buf_release(&s->errbody);
        if (s->status == 401 && !cb_run_options(s->run)->token)
            cb_run_give_up(s->run, "the server wants a token (HTTP 401): pass --token JWT or "
                                   "--login EMAIL:PASSWORD");
    } else if (s->in_turn) {
        const char *end = cb_run_options(s->run)->mode == CB_MODE_OPENAI ? "data: [DONE]"
                                                                          : "event: done";
        char why[64];
        snprintf(why, sizeof why, "the response ended without %s", end);
        turn_fail(s, "TRUNCATED", why, 0);
    }
    if (!llhttp_should_keep_alive(&s->http))
        s->close_after = 1;
    cl_sse_free(&s->sse);
    cl_sse_init(&s->sse, SSE_MAX_LINE);
}

static void http_input(cb_session *s, const char *p, size_t n)
{
    while (n > 0 && s->state != C_CLOSING && s->state != C_NONE) {
        llhttp_errno_t err = llhttp_execute(&s->http, p, n);
        if (err == HPE_OK)
            return;
        const char *stop = llhttp_get_error_pos(&s->http);
        size_t used = stop && stop >= p && stop <= p + n ? (size_t)(stop - p) : n;
        if (err == HPE_PAUSED && s->state == C_HANDSHAKE) {
            char why[120];
            snprintf(why, sizeof why, "the upgrade was answered with HTTP %d%s", s->status,
                     s->status == 401 ? " (the server wants --token JWT or --login EMAIL:PASSWORD)"
                                      : "");
            conn_lost(s, why);
            if (s->status == 401 && !cb_run_options(s->run)->token)
                cb_run_give_up(s->run, "the server wants a token (HTTP 401): pass --token JWT or "
                                       "--login EMAIL:PASSWORD");
            return;
        }
        if (err == HPE_PAUSED) {
            llhttp_resume(&s->http);
            p += used;
            n -= used;
            response_ended(s);
            settle(s);
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE && s->state == C_HANDSHAKE && s->status == 101) {
            p += used;
            n -= used;
            if (ws_begin(s) != 0) {
                conn_lost(s, "out of memory");
                return;
            }
            /* ready once `connected` arrives */
            if (n)
                ws_input(s, p, n);
            return;
        }
        if (s->state == C_HANDSHAKE) {
            char why[96];
            snprintf(why, sizeof why, "the upgrade was answered with HTTP %d", s->status);
            conn_lost(s, why);
            return;
        }
        turn_fail(s, "PROTOCOL", llhttp_get_error_reason(&s->http), 1);
        conn_lost(s, llhttp_errno_name(err));
        return;
    }
}

/* ---- input: WebSocket messages ------------------------------------------------ */

static void ws_message(cb_session *s, const char *p, size_t n)
{
    static const char *const keys[] = {"type", "session_id", "token", "answer", "error"};
    cl_json_span v[5];
    if (cl_json_members(p, n, keys, v, 5) != 0) {
        turn_fail(s, "PROTOCOL", "a message that is not a JSON object", 1);
        return;
    }
    cl_json_span type = v[0];
    if (cl_json_is(type, "token")) {
        if (!cl_json_is(v[1], s->sid))
            return; /* a late token of an earlier, failed turn */
        char tok[4096];
        long k = cl_json_string(v[2], tok, sizeof tok);
        if (k < 0) {
            turn_fail(s, "PROTOCOL", "a bad token message", 1);
            return;
        }
        turn_token(s, tok, (size_t)k, g_read_ns);
    } else if (cl_json_is(type, "complete")) {
        if (!cl_json_is(v[1], s->sid))
            return;
        static const char *const ak[] = {"text"};
        cl_json_span t;
        size_t cap = cb_run_expect(s->run)->len + 64;
        char *text = malloc(cap);
        long k = -1;
        if (text && v[3].p && cl_json_members(v[3].p, v[3].n, ak, &t, 1) == 0 && t.p)
            k = cl_json_string(t, text, cap);
        if (k == -2)
            turn_fail(s, "CORRUPT", "complete.answer.text is longer than expected", 0);
        else if (k < 0)
            turn_fail(s, "PROTOCOL", "a complete message without answer.text", 0);
        else
            turn_ok(s, text, (size_t)k);
        free(text);
    } else if (cl_json_is(type, "error")) {
        if (v[1].p && !cl_json_is(v[1], s->sid))
            return;
        stream_error(s, p, n);
    } else if (cl_json_is(type, "connected")) {
        if (s->state == C_HANDSHAKE)
            became_ready(s);
    }
    /* status, stream_start, stream_end, tool_call, pong: nothing to check */
}

/* ---- reads -------------------------------------------------------------------- */

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    cb_session *s = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_lost(s, nread == UV_EOF ? "the server closed the connection" : uv_strerror((int)nread));
        return;
    }
    g_read_ns = now_ns();
    cb_run_stats(s->run)->bytes_in += (uint64_t)nread;
    if (s->ws)
        ws_input(s, b->base, (size_t)nread);
    else
        http_input(s, b->base, (size_t)nread);
    if (s->state == C_CLOSING || s->state == C_NONE)
        return;
    settle(s);
    if (s->close_after && !s->in_turn && !s->after_turn) {
        s->close_after = 0;
        conn_lost(s, "the server closed the WebSocket");
    }
}

/* ---- start and stop ----------------------------------------------------------- */

static void on_start(uv_timer_t *t)
{
    cb_session *s = t->data;
    if (cb_run_stopping(s->run)) {
        session_finish(s);
        return;
    }
    session_next(s);
}

void cb_session_start(cb_session *s, int index, uint64_t delay_ns)
{
    s->index = index;
    s->started = 1;
    cl_buf_init(&s->out, 0);
    cl_buf_init(&s->wbuf, 0);
    cl_buf_init(&s->errbody, ERRBODY_MAX);
    uv_timer_init(cb_run_loop(s->run), &s->timer);
    s->timer.data = s;
    s->conv_turns = cb_run_options(s->run)->conversation_turns; /* a new one first */
    timer_in(s, delay_ns, on_start);
}

void cb_session_stop(cb_session *s)
{
    if (!s->started || s->finished || s->in_turn || s->after_turn)
        return;
    give_back(s);
    session_finish(s);
}
