/*
 * WebSocket connections without sockets (STYLE 17): a connection gets an
 * upgrade request and masked client frames through its protocol's on_data,
 * split at every position and byte by byte, and what it queued for the peer
 * (conn->out, the 101 head and server frames) is decoded and compared with
 * the answer to the same bytes in one piece, along with the messages the
 * handler saw and the close code it was told.
 */
#include "chatloop/conn.h"
#include "chatloop/http.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"
#include "chatloop/router.h"
#include "chatloop/worker.h"
#include "chatloop/ws.h"
#include "test.h"

#include "../../src/ws/ws_internal.h"

#include <malloc.h>
#include <stdint.h>
#include <unistd.h>

static uv_loop_t g_loop;
static cl_config g_cfg;
static cl_metrics_slot g_slot;
static cl_worker *g_w;

/* ---- the handler: records what it is told --------------------------------------- */

static struct {
    int opens, texts, closes, drains, shutdowns;
    int close_code;
    int echo;                   /* answer each text with itself */
    cl_buf log;                 /* "[text][text]..." */
    cl_ws *ws;
} ev;

static void h_open(cl_ws *ws)
{
    ev.opens++;
    ev.ws = ws;
    CHECK(cl_ws_userdata(ws) == &ev);
}

static void h_text(cl_ws *ws, const char *data, size_t len)
{
    ev.texts++;
    cl_buf_append_char(&ev.log, '[');
    cl_buf_append(&ev.log, data, len);
    cl_buf_append_char(&ev.log, ']');
    if (ev.echo)
        cl_ws_send_text(ws, data, len);
    if (ev.echo == 2)
        cl_ws_close(ws, 1000, "answered");
}

static void h_drain(cl_ws *ws)
{
    (void)ws;
    ev.drains++;
}

static void h_close(cl_ws *ws, int code)
{
    (void)ws;
    ev.closes++;
    ev.close_code = code;
    ev.ws = NULL;
}

static void h_shutdown(cl_ws *ws)
{
    (void)ws;
    ev.shutdowns++;
}

static const cl_ws_handler handler = {
    .on_open = h_open, .on_text = h_text, .on_drain = h_drain, .on_close = h_close,
};
static const cl_ws_handler handler_with_shutdown = {
    .on_open = h_open, .on_text = h_text, .on_drain = h_drain, .on_close = h_close,
    .on_shutdown = h_shutdown,
};
static const cl_ws_handler *g_handler = &handler;

static void route_ws(cl_req *r)
{
    cl_ws_upgrade(r, g_handler, &ev);
}

static void reset_events(void)
{
    cl_buf_release(&ev.log);
    memset(&ev, 0, sizeof ev);
    cl_buf_init(&ev.log, 0);
}

static void setup(void)
{
    char err[CL_ERRBUF];
    uv_loop_init(&g_loop);
    cl_config_init(&g_cfg, err);
    g_cfg.access_log = 0;
    g_cfg.max_ws_message_bytes = 1000;
    g_cfg.max_output_bytes = 64 * 1024;
    g_cfg.ws_ping_interval_ms = 30000;
    g_cfg.ws_idle_timeout_ms = 300000;
    cl_log_setup(CL_LOG_ERROR, CL_LOG_TEXT, "test");
    g_w = calloc(1, sizeof *g_w);
    g_w->loop = &g_loop;
    g_w->cfg = &g_cfg;
    g_w->metrics = &g_slot;
    g_w->router = cl_router_new();
    cl_router_add(g_w->router, "GET", "/ws", route_ws);
    cl_metrics_set_all(&g_slot, 1);
    g_handler = &handler;
    reset_events();
}

static void teardown(void)
{
    uv_run(&g_loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(g_w->nconns, 0);
    cl_router_free(g_w->router);
    cl_http1_cleanup();
    free(g_w);
    CHECK_EQ_INT(uv_loop_close(&g_loop), 0); /* no handle leaked */
    cl_config_free(&g_cfg);
    cl_buf_release(&ev.log);
}

/* ---- the client side: a test-only frame encoder --------------------------------- */

static const char *HANDSHAKE = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               "Sec-WebSocket-Version: 13\r\n\r\n";

enum { OP_CONT = 0, OP_TEXT = 1, OP_BIN = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

/* A client frame: masked, as RFC 6455 §5.3 requires, with the shortest
 * length form (or `mask` 0 for an unmasked one, which the server refuses). */
static void frame_ex(cl_buf *b, int fin, int op, const void *payload, size_t n, int mask)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t h[14];
    size_t hl = 0;
    h[hl++] = (uint8_t)((fin ? 0x80 : 0) | op);
    uint8_t m = mask ? 0x80 : 0;
    if (n < 126) {
        h[hl++] = (uint8_t)(m | n);
    } else if (n < 65536) {
        h[hl++] = m | 126;
        h[hl++] = (uint8_t)(n >> 8);
        h[hl++] = (uint8_t)n;
    } else {
        h[hl++] = m | 127;
        for (int i = 0; i < 8; i++)
            h[hl++] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    if (mask) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    cl_buf_append(b, h, hl);
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i++) {
        uint8_t x = mask ? (uint8_t)(p[i] ^ key[i % 4]) : p[i];
        cl_buf_append(b, &x, 1);
    }
}

static void frame(cl_buf *b, int fin, int op, const char *s)
{
    frame_ex(b, fin, op, s, strlen(s), 1);
}

static void close_frame(cl_buf *b, int code, const char *reason)
{
    char p[128];
    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    size_t rl = strlen(reason);
    memcpy(p + 2, reason, rl);
    frame_ex(b, 1, OP_CLOSE, p, rl + 2, 1);
}

/* ---- the server side: decodes what the connection queued ------------------------- */

/* "101 text(hi) pong() close(1000,bye)": the status and then each frame.
 * Server frames must be unmasked and complete. */
static char *describe(const char *out, size_t len)
{
    cl_buf d;
    cl_buf_init(&d, 0);
    size_t at = 0;
    const char *end = out ? memmem(out, len, "\r\n\r\n", 4) : NULL;
    if (len >= 12 && memcmp(out, "HTTP/1.1 ", 9) == 0 && end) {
        cl_buf_append(&d, out + 9, 3);
        at = (size_t)(end - out) + 4;
    }
    const uint8_t *u = (const uint8_t *)out;
    while (at < len) {
        if (len - at < 2) {
            cl_buf_append_str(&d, " TRUNC");
            break;
        }
        int fin = u[at] >> 7, op = u[at] & 15, masked = u[at + 1] >> 7;
        uint64_t n = u[at + 1] & 127;
        size_t hl = 2;
        if (n == 126) {
            n = (uint64_t)u[at + 2] << 8 | u[at + 3];
            hl = 4;
        } else if (n == 127) {
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | u[at + 2 + i];
            hl = 10;
        }
        if (masked || len - at < hl + n) {
            cl_buf_append_str(&d, masked ? " MASKED" : " TRUNC");
            break;
        }
        const char *p = out + at + hl;
        static const char *names[16] = {"cont", "text", "binary", "?", "?", "?", "?", "?",
                                        "close", "ping", "pong"};
        cl_buf_printf(&d, " %s%s(", fin ? "" : "nofin-", names[op] ? names[op] : "?");
        if (op == OP_CLOSE && n >= 2)
            cl_buf_printf(&d, "%d,%.*s", (uint8_t)p[0] << 8 | (uint8_t)p[1], (int)n - 2, p + 2);
        else if (n <= 40)
            cl_buf_append(&d, p, n);
        else
            cl_buf_printf(&d, "#%llu", (unsigned long long)n);
        cl_buf_append_char(&d, ')');
        at += hl + n;
    }
    char *s = strdup(cl_buf_cstr(&d) ? cl_buf_cstr(&d) : "");
    cl_buf_release(&d);
    return s;
}

typedef struct result {
    char *desc;
    char *log;
    int closing;                /* the connection is ending */
    int close_code;
    int closes;
    int texts;
} result;

static void result_free(result *r)
{
    free(r->desc);
    free(r->log);
}

/* Feeds `bytes` to a fresh connection in pieces cut at `cuts` (ascending,
 * ncuts of them), then closes it; what came out and what the handler saw. */
static result feed(const char *bytes, size_t len, const size_t *cuts, size_t ncuts)
{
    int echo = ev.echo;
    reset_events();
    ev.echo = echo;
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts && !c->closing; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        if (end > at)
            c->proto->on_data(c, bytes + at, end - at);
        at = end;
    }
    result r;
    r.desc = describe(c->out.data, c->out.len);
    r.closing = c->closing || c->close_after_write;
    cl_conn_close(c);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    r.log = strdup(cl_buf_cstr(&ev.log) ? cl_buf_cstr(&ev.log) : "");
    r.close_code = ev.close_code;
    r.closes = ev.closes;
    r.texts = ev.texts;
    return r;
}

static result feed_whole(const char *bytes, size_t len)
{
    return feed(bytes, len, NULL, 0);
}

static int same(const result *a, const result *b)
{
    return strcmp(a->desc, b->desc) == 0 && strcmp(a->log, b->log) == 0 &&
           a->closing == b->closing && a->close_code == b->close_code && a->closes == b->closes;
}

static void show(const char *what, const result *r)
{
    fprintf(stderr, "  %s: out=\"%s\" log=\"%s\" closing=%d code=%d closes=%d\n", what, r->desc,
            r->log, r->closing, r->close_code, r->closes);
}

/* The outcome must not depend on how the bytes were split: every single
 * cut, every pair of cuts around the handshake's end, and byte by byte. */
static void check_every_split(const char *bytes, size_t len, const result *whole)
{
    for (size_t cut = 1; cut < len; cut++) {
        result got = feed(bytes, len, &cut, 1);
        if (!same(&got, whole)) {
            fprintf(stderr, "  split at %zu of %zu differs\n", cut, len);
            show("whole", whole);
            show("split", &got);
            CHECK(0);
            result_free(&got);
            return;
        }
        result_free(&got);
    }
    size_t *cuts = malloc(len * sizeof *cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    result bw = feed(bytes, len, cuts, len - 1);
    if (!same(&bw, whole)) {
        show("whole", whole);
        show("bytewise", &bw);
        CHECK(0);
    }
    result_free(&bw);
    free(cuts);
}

/* A connection upgraded by HANDSHAKE, its 101 taken out of the output. */
static cl_conn *open_ws(void)
{
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    c->proto->on_data(c, HANDSHAKE, strlen(HANDSHAKE));
    CHECK(cl_ws_is_ws_proto(c));
    CHECK(c->out.len > 12 && memcmp(c->out.data, "HTTP/1.1 101 ", 13) == 0);
    cl_conn_drop_output(c);
    return c;
}

static char *out_desc(cl_conn *c)
{
    return describe(c->out.data, c->out.len);
}

static void close_conn(cl_conn *c)
{
    cl_conn_close(c);
    uv_run(&g_loop, UV_RUN_NOWAIT);
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_accept_key(void)
{
    setup();
    char acc[CL_WS_ACCEPT_LEN + 1];
    /* RFC 6455 §1.3's example */
    CHECK_EQ_INT(cl_ws__accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc), 0);
    CHECK_EQ_STR(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    c->proto->on_data(c, HANDSHAKE, strlen(HANDSHAKE));
    char *out = strndup(c->out.data, c->out.len);
    CHECK(strncmp(out, "HTTP/1.1 101 Switching Protocols\r\n", 34) == 0);
    CHECK_CONTAINS(out, "\r\nUpgrade: websocket\r\n");
    CHECK_CONTAINS(out, "\r\nConnection: Upgrade\r\n");
    CHECK_CONTAINS(out, "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
    CHECK(strstr(out, "\r\n\r\n") == out + strlen(out) - 4);
    CHECK_EQ_INT(ev.opens, 1);
    CHECK(ev.ws != NULL && cl_ws_conn(ev.ws) == c);
    CHECK(!c->closing && !c->close_after_write);
    free(out);
    close_conn(c);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1006); /* gone without a close frame */
    teardown();
}

static char *answer_to(const char *req)
{
    reset_events();
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    c->proto->on_data(c, req, strlen(req));
    char *out = strndup(c->out.data ? c->out.data : "", c->out.len);
    CHECK(!cl_ws_is_ws_proto(c));
    CHECK(c->closing || c->close_after_write);
    close_conn(c);
    CHECK_EQ_INT(ev.opens, 0);
    CHECK_EQ_INT(ev.closes, 0);
    return out;
}

static void test_handshake_errors(void)
{
    setup();
    struct {
        const char *req, *status, *needle;
    } cases[] = {
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         "HTTP/1.1 400 ", "Sec-WebSocket-Version"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
         "HTTP/1.1 426 ", "\r\nSec-WebSocket-Version: 13\r\n"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Sec-WebSocket-Key is missing"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Sec-WebSocket-Key must be 16 bytes"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Sec-WebSocket-Key must be 16 bytes"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Upgrade must be"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Upgrade must be"},
        {"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: close\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "Connection must include"},
        {"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "HTTP/1.1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = answer_to(cases[i].req);
        if (strncmp(out, cases[i].status, strlen(cases[i].status)) != 0) {
            fprintf(stderr, "  case %zu: %.60s\n", i, out);
            CHECK(0);
        }
        CHECK_CONTAINS(out, cases[i].needle);
        CHECK_CONTAINS(out, "INVALID_REQUEST");
        free(out);
    }
    /* Firefox's "Connection: keep-alive, Upgrade", any case, extra spaces */
    reset_events();
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    const char *ff = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                     "Sec-WebSocket-Key:  dGhlIHNhbXBsZSBub25jZQ== \r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n";
    c->proto->on_data(c, ff, strlen(ff));
    CHECK(cl_ws_is_ws_proto(c));
    CHECK_EQ_INT(ev.opens, 1);
    close_conn(c);
    teardown();
}

/* Whole and fragmented text, a ping between fragments, a character split
 * across fragments, then the client's close. */
static void test_messages_every_split(void)
{
    setup();
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, HANDSHAKE);
    frame(&b, 1, OP_TEXT, "hello");
    frame(&b, 0, OP_TEXT, "hel");
    frame(&b, 1, OP_PING, "hi");
    frame(&b, 0, OP_CONT, "lo w\xc3");
    frame(&b, 1, OP_CONT, "\xb6rld");
    frame(&b, 1, OP_TEXT, "");
    frame(&b, 1, OP_PONG, "unsolicited");
    result whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.desc, "101 pong(hi)");
    CHECK_EQ_STR(whole.log, "[hello][hello w\xc3\xb6rld][]");
    CHECK_EQ_INT(whole.texts, 3);
    CHECK(!whole.closing);
    CHECK_EQ_INT(whole.close_code, 1006); /* then the test drops it */
    CHECK_EQ_INT(whole.closes, 1);
    check_every_split(b.data, b.len, &whole);
    result_free(&whole);
    /* ... and ended by the client's close. (A ping read in the same batch
     * as a close goes unanswered: once a close is queued wslay sends no
     * other control frame, which RFC 6455 allows; so no ping here.) */
    close_frame(&b, 1000, "bye");
    whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.log, "[hello][hello w\xc3\xb6rld][]");
    CHECK(whole.closing);
    CHECK_EQ_INT(whole.close_code, 1000);
    CHECK_EQ_INT(whole.closes, 1);
    result_free(&whole);
    cl_buf_reset(&b);
    cl_buf_append_str(&b, HANDSHAKE);
    frame(&b, 0, OP_TEXT, "last ");
    frame(&b, 1, OP_CONT, "words");
    close_frame(&b, 1000, "bye");
    whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.desc, "101 close(1000,bye)");
    CHECK_EQ_STR(whole.log, "[last words]");
    CHECK(whole.closing);
    CHECK_EQ_INT(whole.close_code, 1000);
    check_every_split(b.data, b.len, &whole);
    result_free(&whole);
    cl_buf_release(&b);
    teardown();
}

/* The transition table, pair by pair: what set_state lets through. */
static void test_state_table(void)
{
    enum { O = CL_WS_OPEN, D = CL_WS_DRAINING, C = CL_WS_CLOSING, W = CL_WS_CLOSE_WAIT,
           X = CL_WS_CLOSED, N = CL_WS__STATE_COUNT };
    static const char legal[N][N] = {
        /*        O  D  C  W  X */
        [O] = {  0, 1, 1, 0, 1 },
        [D] = {  0, 0, 1, 0, 1 },
        [C] = {  0, 0, 0, 1, 1 },
        [W] = {  0, 0, 0, 0, 1 },
        [X] = {  0, 0, 0, 0, 0 },
    };
    for (int from = 0; from < N; from++)
        for (int to = 0; to < N; to++)
            if (cl_ws__legal((cl_ws_state)from, (cl_ws_state)to) != legal[from][to]) {
                fprintf(stderr, "  %s -> %s\n", cl_ws__state_name((cl_ws_state)from),
                        cl_ws__state_name((cl_ws_state)to));
                CHECK(0);
            }
    /* every state but CLOSED leads to CLOSED: a connection may end anywhere */
    for (int from = 0; from < X; from++)
        CHECK(cl_ws__legal((cl_ws_state)from, CL_WS_CLOSED));
    CHECK_EQ_INT(cl_ws__legal(CL_WS_OPEN, CL_WS__STATE_COUNT), 0);
    CHECK_EQ_INT(cl_ws__legal((cl_ws_state)-1, CL_WS_CLOSED), 0);
    CHECK_EQ_STR(cl_ws__state_name(CL_WS_CLOSE_WAIT), "CLOSE_WAIT");
    CHECK_EQ_STR(cl_ws__state_name(CL_WS__STATE_COUNT), "?");
}

static void test_close_handshake(void)
{
    setup();
    cl_conn *c = open_ws();
    cl_buf b;
    cl_buf_init(&b, 0);
    close_frame(&b, 1001, "tab closed");
    c->proto->on_data(c, b.data, b.len);
    char *d = out_desc(c);
    CHECK_EQ_STR(d, " close(1001,tab closed)");
    free(d);
    CHECK(c->close_after_write);
    /* told at once, not only when the socket is freed */
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1001);
    CHECK_EQ_INT(cl_ws_send_text(cl_ws__of_conn(c), "late", 4), -1);
    close_conn(c);
    CHECK_EQ_INT(ev.closes, 1);

    /* a close without a code: echoed empty, reported as 1005 */
    reset_events();
    c = open_ws();
    cl_buf_reset(&b);
    frame(&b, 1, OP_CLOSE, "");
    c->proto->on_data(c, b.data, b.len);
    d = out_desc(c);
    CHECK_EQ_STR(d, " close()");
    free(d);
    CHECK_EQ_INT(ev.close_code, 1005);
    close_conn(c);

    /* we close first: the close goes out, we wait for the reply, then end */
    reset_events();
    c = open_ws();
    cl_ws *ws = cl_ws__of_conn(c);
    CHECK_EQ_INT(cl_ws__state(ws), CL_WS_OPEN);
    cl_ws_close(ws, 1000, "done");
    d = out_desc(c);
    CHECK_EQ_STR(d, " close(1000,done)");
    free(d);
    CHECK(!c->close_after_write);
    CHECK_EQ_INT(cl_ws__state(ws), CL_WS_CLOSE_WAIT);
    CHECK_EQ_INT(cl_ws_send_text(ws, "x", 1), -1);
    cl_conn_drop_output(c);
    cl_buf_reset(&b);
    frame(&b, 1, OP_TEXT, "crossing");  /* sent before the client saw our close */
    close_frame(&b, 1000, "done");
    c->proto->on_data(c, b.data, b.len);
    CHECK(c->close_after_write);
    CHECK_EQ_INT(cl_ws__state(ws), CL_WS_CLOSED);
    CHECK_EQ_INT(c->out.len, 0);        /* no second close */
    CHECK_EQ_INT(ev.texts, 0);          /* nothing new starts after our close */
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1000);
    close_conn(c);

    /* ... and a peer that never replies is cut at the close-wait deadline */
    reset_events();
    c = open_ws();
    cl_ws_close(cl_ws__of_conn(c), 1000, "done");
    c->proto->on_timeout(c);
    CHECK(c->closing);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1000);
    close_conn(c);
    cl_buf_release(&b);
    teardown();
}

static void test_ping_pong(void)
{
    setup();
    cl_conn *c = open_ws();
    cl_buf b;
    cl_buf_init(&b, 0);
    frame(&b, 1, OP_PING, "12345");
    frame(&b, 1, OP_PING, "");
    c->proto->on_data(c, b.data, b.len);
    char *d = out_desc(c);
    CHECK_EQ_STR(d, " pong(12345) pong()");
    free(d);
    CHECK(!c->close_after_write && !c->closing);
    CHECK(!cl_ws__has_ctx(cl_ws__of_conn(c)));
    cl_buf_release(&b);
    close_conn(c);
    teardown();
}

static void expect_failure(const cl_buf *frames, const char *want_desc, int want_code)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, HANDSHAKE);
    cl_buf_append(&b, frames->data, frames->len);
    result whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.desc, want_desc);
    CHECK_EQ_INT(whole.close_code, want_code);
    CHECK_EQ_INT(whole.texts, 0);
    CHECK(whole.closing);
    CHECK_EQ_INT(whole.closes, 1);
    if (b.len < 2000)
        check_every_split(b.data, b.len, &whole);
    result_free(&whole);
    cl_buf_release(&b);
}

static void test_oversized(void)
{
    setup(); /* max_ws_message_bytes = 1000 */
    cl_buf f;
    cl_buf_init(&f, 0);
    char big[1001];
    memset(big, 'a', sizeof big);
    frame_ex(&f, 1, OP_TEXT, big, 1000, 1);     /* exactly the limit: fine */
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, HANDSHAKE);
    cl_buf_append(&b, f.data, f.len);
    result ok = feed_whole(b.data, b.len);
    CHECK_EQ_STR(ok.desc, "101");
    CHECK_EQ_INT(ok.texts, 1);
    result_free(&ok);
    cl_buf_release(&b);

    const char *too_big = "101 close(1009,message is larger than max_ws_message_bytes)";
    cl_buf_reset(&f);
    frame_ex(&f, 1, OP_TEXT, big, 1001, 1);
    expect_failure(&f, too_big, 1009);
    /* over the limit only in total: two fragments */
    cl_buf_reset(&f);
    frame_ex(&f, 0, OP_TEXT, big, 600, 1);
    frame_ex(&f, 1, OP_CONT, big, 401, 1);
    expect_failure(&f, too_big, 1009);
    /* ... refused at the continuation's header, before its payload */
    cl_buf_reset(&f);
    frame_ex(&f, 0, OP_TEXT, big, 600, 1);
    const uint8_t cont_head[] = {0x80, 0x80 | 126, 0x01, 0x91}; /* 401 bytes announced */
    cl_buf_append(&f, cont_head, sizeof cont_head);
    expect_failure(&f, too_big, 1009);
    /* A header announcing 2^40 bytes is refused as soon as its length is
     * in: no payload byte, not even the mask key, has to follow (wslay
     * alone would wait for payload). */
    cl_buf_reset(&f);
    const uint8_t huge[] = {0x81, 0xff, 0, 0, 1, 0, 0, 0, 0, 0};
    cl_buf_append(&f, huge, sizeof huge);
    expect_failure(&f, too_big, 1009);
    cl_buf_reset(&f);
    const uint8_t huge_x[] = {0x81, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4, 'x'};
    cl_buf_append(&f, huge_x, sizeof huge_x);
    expect_failure(&f, too_big, 1009);
    cl_buf_release(&f);
    teardown();
}

static void test_invalid_utf8(void)
{
    setup();
    const char *bad[] = {"\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xff", "\xe2\x82"};
    cl_buf f;
    cl_buf_init(&f, 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_buf_reset(&f);
        frame(&f, 1, OP_TEXT, bad[i]);
        expect_failure(&f, "101 close(1007,)", 1007);
    }
    /* a character cut between two fragments is fine; one never finished is not */
    cl_buf_reset(&f);
    frame(&f, 0, OP_TEXT, "x\xe2\x82");
    frame(&f, 1, OP_CONT, "");
    expect_failure(&f, "101 close(1007,)", 1007);
    cl_buf_release(&f);
    teardown();
}

static void test_binary_refused(void)
{
    setup();
    cl_buf f;
    cl_buf_init(&f, 0);
    frame_ex(&f, 1, OP_BIN, "\x01\x02\x03", 3, 1);
    expect_failure(&f, "101 close(1003,binary messages are not accepted)", 1003);
    cl_buf_reset(&f);
    frame_ex(&f, 0, OP_BIN, "\x01\x02\x03", 3, 1);
    frame_ex(&f, 1, OP_CONT, "\x01\x02\x03", 3, 1);
    expect_failure(&f, "101 close(1003,binary messages are not accepted)", 1003);
    /* at its header: nothing of a binary payload is waited for */
    cl_buf_reset(&f);
    cl_buf_append(&f, "\x82\xff\x00\x00\x00\x01\x00\x00\x00\x00", 10);
    expect_failure(&f, "101 close(1003,binary messages are not accepted)", 1003);
    cl_buf_release(&f);
    teardown();
}

static void test_protocol_errors(void)
{
    setup();
    cl_buf f;
    cl_buf_init(&f, 0);
    /* Every protocol error closes with 1002 in the close frame, at the
     * header: the payload need not arrive. */
    /* unmasked client frame, with its payload and without */
    frame_ex(&f, 1, OP_TEXT, "hi", 2, 0);
    expect_failure(&f, "101 close(1002,client frames must be masked)", 1002);
    cl_buf_reset(&f);
    cl_buf_append(&f, "\x81\x05", 2);
    expect_failure(&f, "101 close(1002,client frames must be masked)", 1002);
    /* a continuation with nothing to continue */
    cl_buf_reset(&f);
    frame(&f, 1, OP_CONT, "x");
    expect_failure(&f, "101 close(1002,continuation frame without a message to continue)", 1002);
    /* a new message inside a fragmented one */
    cl_buf_reset(&f);
    frame(&f, 0, OP_TEXT, "a");
    frame(&f, 1, OP_TEXT, "b");
    expect_failure(&f, "101 close(1002,new message inside a fragmented one)", 1002);
    /* reserved opcodes, data and control, header only */
    cl_buf_reset(&f);
    frame(&f, 1, 3, "x");
    expect_failure(&f, "101 close(1002,reserved opcode)", 1002);
    cl_buf_reset(&f);
    cl_buf_append(&f, "\x8b\x85", 2);
    expect_failure(&f, "101 close(1002,reserved opcode)", 1002);
    /* RSV1 without an extension */
    cl_buf_reset(&f);
    frame(&f, 1, OP_TEXT, "x");
    f.data[0] |= 0x40;
    expect_failure(&f, "101 close(1002,reserved bits set without an extension)", 1002);
    /* a fragmented ping, or one over 125 bytes (wslay alone would send a
     * close without a code for these) */
    const char *bad_ctrl = "101 close(1002,control frames must be whole and at most 125 bytes)";
    cl_buf_reset(&f);
    frame(&f, 0, OP_PING, "x");
    expect_failure(&f, bad_ctrl, 1002);
    cl_buf_reset(&f);
    cl_buf_append(&f, "\x89\xfe\x00\x7e", 4);
    expect_failure(&f, bad_ctrl, 1002);
    /* a length not in its shortest form */
    cl_buf_reset(&f);
    cl_buf_append(&f, "\x81\xfe\x00\x05\x01\x02\x03\x04hello", 13);
    expect_failure(&f, "101 close(1002,frame length not in its shortest form)", 1002);
    /* good frames before the bad one are still delivered */
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, HANDSHAKE);
    frame(&b, 1, OP_TEXT, "first");
    cl_buf_append(&b, "\x81\x05", 2);
    result r = feed_whole(b.data, b.len);
    CHECK_EQ_STR(r.log, "[first]");
    CHECK_EQ_STR(r.desc, "101 close(1002,client frames must be masked)");
    check_every_split(b.data, b.len, &r);
    result_free(&r);
    cl_buf_release(&b);
    /* a close with a code nobody may send */
    cl_buf_reset(&f);
    close_frame(&f, 1005, "");
    expect_failure(&f, "101 close(1002,)", 1002);
    cl_buf_release(&f);
    teardown();
}

/* Decodes one server frame at out: opcode, payload offset and length. */
static int server_frame(const uint8_t *out, size_t len, int *op, size_t *hl, uint64_t *n)
{
    if (len < 2 || (out[1] & 0x80))
        return -1;
    *op = out[0];
    *n = out[1] & 127;
    *hl = 2;
    if (*n == 126) {
        *n = (uint64_t)out[2] << 8 | out[3];
        *hl = 4;
    } else if (*n == 127) {
        *n = 0;
        for (int i = 0; i < 8; i++)
            *n = *n << 8 | out[2 + i];
        *hl = 10;
    }
    return len == *hl + *n ? 0 : -1;
}

static void test_send_text_forms(void)
{
    setup();
    g_cfg.max_output_bytes = 1024 * 1024;
    cl_conn *c = open_ws();
    cl_ws *ws = cl_ws__of_conn(c);
    size_t sizes[] = {0, 5, 125, 126, 200, 65535, 65536, 70000};
    char *payload = malloc(70000);
    for (size_t i = 0; i < 70000; i++)
        payload[i] = (char)('a' + i % 26);
    for (int via_wslay = 0; via_wslay < 2; via_wslay++) {
        cl_buf partial;
        cl_buf_init(&partial, 0);
        if (via_wslay) {
            /* half a client frame: the wslay context exists meanwhile;
             * the frames must come out the same */
            cl_buf f;
            cl_buf_init(&f, 0);
            frame(&f, 1, OP_TEXT, "pending");
            c->proto->on_data(c, f.data, 5);
            cl_buf_append(&partial, f.data + 5, f.len - 5);
            cl_buf_release(&f);
            CHECK(cl_ws__has_ctx(ws));
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            cl_conn_drop_output(c);
            CHECK_EQ_INT(cl_ws_send_text(ws, payload, sizes[i]), 0);
            int op = 0;
            size_t hl = 0;
            uint64_t n = 0;
            const uint8_t *u = (const uint8_t *)c->out.data;
            CHECK_EQ_INT(server_frame(u, c->out.len, &op, &hl, &n), 0);
            CHECK_EQ_INT(op, 0x81);
            CHECK_EQ_INT(n, sizes[i]);
            CHECK_EQ_INT(hl, sizes[i] < 126 ? 2 : sizes[i] < 65536 ? 4 : 10);
            CHECK(sizes[i] == 0 || memcmp(u + hl, payload, sizes[i]) == 0);
            CHECK_EQ_INT(cl_ws__has_ctx(ws), via_wslay);
        }
        if (via_wslay) {
            cl_conn_drop_output(c);
            c->proto->on_data(c, partial.data, partial.len);
            CHECK(!cl_ws__has_ctx(ws));
            CHECK_EQ_STR(cl_buf_cstr(&ev.log), "[pending]");
        }
        cl_buf_release(&partial);
    }
    free(payload);
    close_conn(c);
    teardown();
}

static void test_echo_from_on_text(void)
{
    setup();
    ev.echo = 1;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, HANDSHAKE);
    frame(&b, 1, OP_TEXT, "one");
    frame(&b, 1, OP_TEXT, "two");
    result whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.desc, "101 text(one) text(two)");
    CHECK(!whole.closing);
    check_every_split(b.data, b.len, &whole);
    result_free(&whole);
    /* answer, then close, from inside on_text (a ping read in the same
     * batch included): the answer goes out first, nothing after the close
     * is delivered, and the client's close reply ends it */
    ev.echo = 2;
    cl_buf_reset(&b);
    cl_buf_append_str(&b, HANDSHAKE);
    frame(&b, 1, OP_PING, "p");
    frame(&b, 1, OP_TEXT, "question");
    frame(&b, 1, OP_TEXT, "ignored");
    close_frame(&b, 1000, "");
    whole = feed_whole(b.data, b.len);
    CHECK_EQ_STR(whole.desc, "101 text(question) close(1000,answered)");
    CHECK_EQ_STR(whole.log, "[question]");
    CHECK(whole.closing);
    CHECK_EQ_INT(whole.close_code, 1000);
    result_free(&whole);
    cl_buf_release(&b);
    teardown();
}

static void test_ctx_released_when_quiescent(void)
{
    setup();
    cl_conn *c = open_ws();
    cl_ws *ws = cl_ws__of_conn(c);
    CHECK(!cl_ws__has_ctx(ws));
    int expect_texts = 0;
    cl_buf f;
    cl_buf_init(&f, 0);
    frame(&f, 1, OP_TEXT, "whole");
    c->proto->on_data(c, f.data, f.len);
    expect_texts++;
    CHECK(!cl_ws__has_ctx(ws));
    /* a frame (with a 2-byte extended length) cut at every position: the
     * context lives exactly while the frame is incomplete */
    char body[131];
    memset(body, 'b', sizeof body);
    cl_buf_reset(&f);
    frame_ex(&f, 1, OP_TEXT, body, sizeof body, 1);
    for (size_t cut = 1; cut < f.len; cut++) {
        c->proto->on_data(c, f.data, cut);
        CHECK(cl_ws__has_ctx(ws));
        c->proto->on_data(c, f.data + cut, f.len - cut);
        CHECK(!cl_ws__has_ctx(ws));
        expect_texts++;
    }
    /* a fragmented message keeps it until its last fragment, even across
     * an interleaved control frame */
    cl_buf_reset(&f);
    frame(&f, 0, OP_TEXT, "frag");
    c->proto->on_data(c, f.data, f.len);
    CHECK(cl_ws__has_ctx(ws));
    cl_buf_reset(&f);
    frame(&f, 1, OP_PING, "");
    c->proto->on_data(c, f.data, f.len);
    CHECK(cl_ws__has_ctx(ws));
    cl_buf_reset(&f);
    frame(&f, 1, OP_CONT, "ment");
    c->proto->on_data(c, f.data, f.len);
    expect_texts++;
    CHECK(!cl_ws__has_ctx(ws));
    CHECK_EQ_INT(ev.texts, expect_texts);
    /* two frames and half a third in one read */
    cl_buf_reset(&f);
    frame(&f, 1, OP_TEXT, "a");
    frame(&f, 1, OP_TEXT, "b");
    frame(&f, 1, OP_TEXT, "c");
    c->proto->on_data(c, f.data, f.len - 1);
    CHECK(cl_ws__has_ctx(ws));
    c->proto->on_data(c, f.data + f.len - 1, 1);
    CHECK(!cl_ws__has_ctx(ws));
    /* sending never creates one */
    CHECK_EQ_INT(cl_ws_send_text(ws, "hi", 2), 0);
    CHECK(!cl_ws__has_ctx(ws));
    cl_buf_release(&f);
    close_conn(c);
    teardown();
}

static void test_liveness_pings(void)
{
    setup();
    g_cfg.ws_ping_interval_ms = 1000;
    g_cfg.ws_idle_timeout_ms = 0;
    cl_conn *c = open_ws();
    char *d;
    /* a peer that answers: pings forever */
    cl_buf pong;
    cl_buf_init(&pong, 0);
    frame(&pong, 1, OP_PONG, "");
    for (int i = 0; i < 5; i++) {
        c->proto->on_timeout(c);
        d = out_desc(c);
        CHECK_EQ_STR(d, " ping()");
        free(d);
        cl_conn_drop_output(c);
        c->proto->on_data(c, pong.data, pong.len);
        CHECK(!cl_ws__has_ctx(cl_ws__of_conn(c)));
    }
    CHECK(!c->closing && !c->close_after_write);
    /* a tick while a frame is half read: wslay frames the ping */
    cl_buf half;
    cl_buf_init(&half, 0);
    frame(&half, 1, OP_TEXT, "slow");
    c->proto->on_data(c, half.data, 4);
    CHECK(cl_ws__has_ctx(cl_ws__of_conn(c)));
    c->proto->on_timeout(c);
    d = out_desc(c);
    CHECK_EQ_STR(d, " ping()");
    free(d);
    cl_conn_drop_output(c);
    c->proto->on_data(c, half.data + 4, half.len - 4);
    CHECK(!cl_ws__has_ctx(cl_ws__of_conn(c)));
    cl_buf_release(&half);
    /* then silence: two unanswered pings, and the third tick closes */
    c->proto->on_timeout(c);
    c->proto->on_timeout(c);
    d = out_desc(c);
    CHECK_EQ_STR(d, " ping() ping()");
    free(d);
    cl_conn_drop_output(c);
    c->proto->on_timeout(c);
    d = out_desc(c);
    CHECK_EQ_STR(d, " close(1008,no answer to ping)");
    free(d);
    CHECK(!c->closing);
    c->proto->on_timeout(c); /* the close-wait deadline */
    CHECK(c->closing);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1008);
    close_conn(c);
    cl_buf_release(&pong);
    teardown();
}

static void test_idle_timeout(void)
{
    setup();
    g_cfg.ws_ping_interval_ms = 1000;
    g_cfg.ws_idle_timeout_ms = 40;
    cl_conn *c = open_ws();
    cl_buf f;
    cl_buf_init(&f, 0);
    frame(&f, 1, OP_TEXT, "still here");
    usleep(25 * 1000);
    uv_update_time(&g_loop);
    c->proto->on_data(c, f.data, f.len);
    usleep(25 * 1000);
    uv_update_time(&g_loop);
    c->proto->on_timeout(c); /* 25 ms after the message: a ping */
    char *d = out_desc(c);
    CHECK_EQ_STR(d, " ping()");
    free(d);
    cl_conn_drop_output(c);
    /* pongs keep a socket alive but do not make it busy */
    cl_buf_reset(&f);
    frame(&f, 1, OP_PONG, "");
    c->proto->on_data(c, f.data, f.len);
    usleep(25 * 1000);
    uv_update_time(&g_loop);
    c->proto->on_timeout(c);
    d = out_desc(c);
    CHECK_EQ_STR(d, " close(1000,idle)");
    free(d);
    cl_conn_drop_output(c);
    cl_buf_reset(&f);
    close_frame(&f, 1000, "idle");
    c->proto->on_data(c, f.data, f.len);
    CHECK(c->close_after_write);
    CHECK_EQ_INT(ev.close_code, 1000);
    CHECK_EQ_INT(ev.closes, 1);
    close_conn(c);
    cl_buf_release(&f);
    teardown();
}

static void test_shutdown(void)
{
    setup();
    /* no on_shutdown: closed with 1001 at once */
    cl_conn *c = open_ws();
    c->proto->on_shutdown(c);
    char *d = out_desc(c);
    CHECK_EQ_STR(d, " close(1001,server shutting down)");
    free(d);
    close_conn(c);
    CHECK_EQ_INT(ev.close_code, 1001);

    /* with on_shutdown: the handler decides when */
    reset_events();
    g_handler = &handler_with_shutdown;
    c = open_ws();
    cl_ws *ws = cl_ws__of_conn(c);
    c->proto->on_shutdown(c);
    c->proto->on_shutdown(c);
    CHECK_EQ_INT(ev.shutdowns, 1);
    CHECK_EQ_INT(cl_ws__state(ws), CL_WS_DRAINING);
    CHECK_EQ_INT(c->out.len, 0);
    CHECK_EQ_INT(cl_ws_send_text(ws, "last token", 10), 0);
    cl_ws_close(ws, 1001, "going away");
    d = out_desc(c);
    CHECK_EQ_STR(d, " text(last token) close(1001,going away)");
    free(d);
    cl_buf f;
    cl_buf_init(&f, 0);
    close_frame(&f, 1001, "");
    c->proto->on_data(c, f.data, f.len);
    CHECK(c->close_after_write);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1001);
    close_conn(c);
    cl_buf_release(&f);
    teardown();
}

static void test_back_pressure(void)
{
    setup(); /* max_output_bytes 64 KiB: high water 16 KiB */
    cl_conn *c = open_ws();
    cl_ws *ws = cl_ws__of_conn(c);
    char *p = calloc(1, 30000);
    CHECK(!cl_ws_congested(ws));
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 10000), 0);
    CHECK(!cl_ws_congested(ws));
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 10000), 0);
    CHECK(cl_ws_congested(ws));
    CHECK_EQ_INT(cl_ws_pending(ws), 2 * 10004);
    /* the output reaches the kernel: on_drain, once */
    cl_conn_drop_output(c);
    c->proto->on_drained(c);
    c->proto->on_drained(c);
    CHECK_EQ_INT(ev.drains, 1);
    CHECK(!cl_ws_congested(ws));
    /* a reader that never reads: dropped at max_output_bytes */
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 30000), 0);
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 30000), 0);
    uint64_t dropped = g_slot.slow_readers_dropped;
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 30000), -1);
    CHECK(c->closing);
    CHECK_EQ_INT(g_slot.slow_readers_dropped, dropped + 1);
    CHECK_EQ_INT(ev.closes, 0); /* not under the handler's own call... */
    CHECK_EQ_INT(cl_ws_send_text(ws, "x", 1), -1);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(ev.closes, 1); /* ...but once the connection is freed */
    CHECK_EQ_INT(ev.close_code, 1008);
    free(p);
    /* the cap reached by a frame wslay writes (a pong): dropped with 1008 */
    reset_events();
    c = open_ws();
    ws = cl_ws__of_conn(c);
    p = calloc(1, 64 * 1024);
    CHECK_EQ_INT(cl_ws_send_text(ws, p, 64 * 1024 - 10 - 50), 0);
    cl_buf f;
    cl_buf_init(&f, 0);
    frame_ex(&f, 1, OP_PING, p, 100, 1);
    c->proto->on_data(c, f.data, f.len);
    CHECK(c->closing);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1008);
    close_conn(c);
    cl_buf_release(&f);
    free(p);
    teardown();
}

static void test_refused_while_draining(void)
{
    setup();
    g_w->draining = 1;
    char *out = answer_to(HANDSHAKE);
    CHECK(strncmp(out, "HTTP/1.1 503 ", 13) == 0);
    CHECK_CONTAINS(out, "shutting down");
    free(out);
    teardown();
}

static void test_peer_vanishes(void)
{
    setup();
    cl_conn *c = open_ws();
    c->proto->on_eof(c);
    CHECK(c->close_after_write);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1006);
    close_conn(c);
    CHECK_EQ_INT(ev.closes, 1);
    /* freed with a frame half read */
    reset_events();
    c = open_ws();
    cl_buf f;
    cl_buf_init(&f, 0);
    frame(&f, 1, OP_TEXT, "never finished");
    c->proto->on_data(c, f.data, 6);
    close_conn(c);
    CHECK_EQ_INT(ev.closes, 1);
    CHECK_EQ_INT(ev.close_code, 1006);
    cl_buf_release(&f);
    teardown();
}

/* A handler that answers the upgrade later (after a database lookup, say):
 * bytes that arrived meanwhile were held by the HTTP layer and are fed to
 * the WebSocket from the timer, not inside cl_ws_upgrade. */
static cl_req *g_later;

static void route_later(cl_req *r)
{
    g_later = r;
}

static void test_late_upgrade(void)
{
    setup();
    cl_router_add(g_w->router, "GET", "/later", route_later);
    cl_conn *c = cl_conn_new(g_w);
    cl_http1_attach(c);
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "GET /later");
    cl_buf_append_str(&b, HANDSHAKE + strlen("GET /ws"));
    c->proto->on_data(c, b.data, b.len);
    cl_buf_reset(&b);
    frame(&b, 1, OP_TEXT, "early");
    c->proto->on_data(c, b.data, b.len);
    CHECK(g_later != NULL);
    CHECK(cl_ws_upgrade(g_later, &handler, &ev) != NULL);
    CHECK_EQ_INT(ev.opens, 1);
    CHECK_EQ_INT(ev.texts, 0);
    c->proto->on_timeout(c);
    CHECK_EQ_STR(cl_buf_cstr(&ev.log), "[early]");
    char *d = out_desc(c);
    CHECK_EQ_STR(d, "101");
    free(d);
    cl_buf_release(&b);
    close_conn(c);
    CHECK_EQ_INT(ev.closes, 1);
    teardown();
}

/* An Upgrade request to a route that answers plain HTTP: the answer is the
 * last thing on the connection, and what the client sends after it (in the
 * same read or later) is not parsed as HTTP. */
static void route_plain(cl_req *r)
{
    cl_res_send(r, 200, "text/plain", NULL, "plain", 5);
}

static void test_upgrade_refused_by_plain_route(void)
{
    setup();
    cl_router_add(g_w->router, "GET", "/plain", route_plain);
    const char *req = "GET /plain HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    for (int same_read = 0; same_read < 2; same_read++) {
        cl_conn *c = cl_conn_new(g_w);
        cl_http1_attach(c);
        cl_buf b;
        cl_buf_init(&b, 0);
        cl_buf_append_str(&b, req);
        if (same_read)
            cl_buf_append_str(&b, "\x81\x85garbage");
        c->proto->on_data(c, b.data, b.len);
        if (!c->closing)
            c->proto->on_data(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", 18);
        CHECK(c->out.len > 17 && memcmp(c->out.data, "HTTP/1.1 200 OK\r\n", 17) == 0);
        CHECK(c->closing || c->close_after_write);
        CHECK(!cl_ws_is_ws_proto(c));
        cl_buf_release(&b);
        close_conn(c);
    }
    teardown();
}

/* Heap bytes an idle WebSocket costs beyond an idle HTTP connection, after
 * it has exchanged messages (mallinfo2: exact and independent of RSS
 * noise; sanitizer builds replace malloc and report nothing). */
static void test_idle_memory(void)
{
    setup();
    enum { N = 2000 };
    cl_conn **cs = calloc(N, sizeof *cs);
    cl_buf f;
    cl_buf_init(&f, 0);
    frame(&f, 1, OP_TEXT, "{\"type\":\"ping\"}");
    /* warm the request cache once so it is not counted per connection */
    cl_conn *warm = open_ws();
    close_conn(warm);
    reset_events();
    size_t m0 = mallinfo2().uordblks;
    for (int i = 0; i < N; i++) {
        cs[i] = cl_conn_new(g_w);
        cl_http1_attach(cs[i]);
    }
    size_t m1 = mallinfo2().uordblks;
    for (int i = 0; i < N; i++) {
        cl_conn *c = cs[i];
        c->proto->on_data(c, HANDSHAKE, strlen(HANDSHAKE));
        c->proto->on_data(c, f.data, f.len);
        cl_ws_send_text(cl_ws__of_conn(c), "{\"type\":\"pong\"}", 15);
        CHECK(!cl_ws__has_ctx(cl_ws__of_conn(c)));
        /* the output reached the kernel: conn.c releases the buffer */
        cl_conn_drop_output(c);
        cl_buf_release(&c->out);
    }
    size_t m2 = mallinfo2().uordblks;
    if (m1 > m0) {
        double http = (double)(m1 - m0) / N, ws = (double)(m2 - m1) / N;
        printf("     heap per idle HTTP connection: %.0f B; an idle WebSocket adds %.0f B\n", http,
               ws);
        CHECK(ws <= 1024);
    }
    for (int i = 0; i < N; i++)
        cl_conn_close(cs[i]);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(ev.closes, N);
    free(cs);
    cl_buf_release(&f);
    teardown();
}

CL_TEST_MAIN(test_accept_key, test_handshake_errors, test_state_table,
             test_messages_every_split, test_close_handshake, test_ping_pong, test_oversized,
             test_invalid_utf8, test_binary_refused, test_protocol_errors, test_send_text_forms,
             test_echo_from_on_text, test_ctx_released_when_quiescent, test_liveness_pings,
             test_idle_timeout, test_shutdown, test_back_pressure, test_refused_while_draining,
             test_peer_vanishes, test_late_upgrade, test_upgrade_refused_by_plain_route,
             test_idle_memory)
