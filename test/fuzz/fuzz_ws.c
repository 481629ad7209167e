/*
 * libFuzzer target for the WebSocket message path: a connection is upgraded
 * by a valid handshake, then arbitrary bytes, cut into reads at positions
 * the input chooses, go through its on_data exactly as socket reads would
 * (see test/unit/test_ws.c). The second byte of the input switches on
 * things a real socket meets between reads: the handler answering each
 * message, timer ticks (pings, close-wait), the output draining, a worker
 * shutdown, the peer's EOF, a small message limit.
 *
 * Beyond sanitizer reports and leaks, it checks what the layer promises:
 * on_text sees only valid UTF-8, on_close fires exactly once, and every
 * byte the server queued after the 101 is a well-formed unmasked frame.
 */
#include "chatloop/conn.h"
#include "chatloop/http.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/utf8.h"
#include "chatloop/worker.h"
#include "chatloop/ws.h"

#include "../../src/ws/ws_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t g_loop;
static cl_config g_cfg;
static cl_metrics_slot g_slot;
static cl_worker g_w;

enum {
    F_ECHO = 1,         /* answer each text message with itself */
    F_TICK = 2,         /* a timer tick after every fourth read */
    F_SHUTDOWN = 4,     /* the worker starts draining halfway */
    F_SMALL = 8,        /* max_ws_message_bytes 64 */
    F_DRAIN = 16,       /* the output reaches the kernel after each read */
    F_EOF = 32,         /* the peer half-closes at the end */
    F_CLOSE = 64,       /* the handler closes after its third message */
};

static struct {
    int flags;
    int texts, closes;
    cl_ws *ws;
} st;

static void h_text(cl_ws *ws, const char *data, size_t len)
{
    if (!cl_utf8_valid(data, len))
        abort();
    if (st.closes)
        abort(); /* after on_close the handler hears nothing */
    st.texts++;
    if (st.flags & F_ECHO)
        cl_ws_send_text(ws, data, len);
    if ((st.flags & F_CLOSE) && st.texts == 3)
        cl_ws_close(ws, 1000, "enough");
}

static void h_close(cl_ws *ws, int code)
{
    (void)ws;
    if (code < 1000 || code > 4999)
        abort();
    st.closes++;
    st.ws = NULL;
}

static void h_open(cl_ws *ws)
{
    st.ws = ws;
}

static const cl_ws_handler handler = {
    .on_open = h_open, .on_text = h_text, .on_close = h_close,
};

static void route_ws(cl_req *r)
{
    cl_ws_upgrade(r, &handler, &st);
}

static void init_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char err[CL_ERRBUF];
    uv_loop_init(&g_loop);
    cl_config_init(&g_cfg, err);
    g_cfg.access_log = 0;
    g_cfg.max_output_bytes = 64 * 1024;
    cl_log_setup(CL_LOG_ERROR, CL_LOG_TEXT, "fuzz");
    g_w.loop = &g_loop;
    g_w.cfg = &g_cfg;
    g_w.metrics = &g_slot;
    g_w.router = cl_router_new();
    cl_router_add(g_w.router, "GET", "/ws", route_ws);
    cl_metrics_set_all(&g_slot, 1);
}

/* Every byte after the 101 head must be a complete, unmasked frame with a
 * known opcode and the shortest length form (what a browser accepts). */
static void check_output(const cl_conn *c)
{
    const uint8_t *u = (const uint8_t *)c->out.data;
    size_t len = c->out.len, at = 0;
    if (!len)
        return;
    const char *end = memmem(c->out.data, len, "\r\n\r\n", 4);
    if (len >= 13 && memcmp(u, "HTTP/1.1 101 ", 13) == 0 && end)
        at = (size_t)(end - c->out.data) + 4;
    while (at < len) {
        if (len - at < 2)
            abort();
        int op = u[at] & 15;
        if (!(u[at] & 0x80) || (u[at] & 0x70) || (u[at + 1] & 0x80))
            abort(); /* every server frame is final, plain and unmasked */
        if (op != 1 && op != 8 && op != 9 && op != 10)
            abort();
        uint64_t n = u[at + 1] & 127;
        size_t hl = 2;
        if (n == 126) {
            if (len - at < 4)
                abort();
            n = (uint64_t)u[at + 2] << 8 | u[at + 3];
            if (n < 126)
                abort();
            hl = 4;
        } else if (n == 127) {
            if (len - at < 10)
                abort();
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | u[at + 2 + i];
            if (n < 65536)
                abort();
            hl = 10;
        }
        if (op >= 8 && n > 125)
            abort();
        if (len - at - hl < n)
            abort();
        at += hl + n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char hs[] = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n";
    init_once();
    if (size < 2)
        return 0;
    /* The first byte picks the read size, the second the events. */
    size_t step = (size_t)data[0] % 64 + 1;
    memset(&st, 0, sizeof st);
    st.flags = data[1];
    data += 2;
    size -= 2;
    g_cfg.max_ws_message_bytes = (st.flags & F_SMALL) ? 64 : 4096;
    cl_conn *c = cl_conn_new(&g_w);
    cl_http1_attach(c);
    c->proto->on_data(c, hs, sizeof hs - 1);
    if (!cl_ws_is_ws_proto(c) || !st.ws)
        abort();
    int reads = 0;
    for (size_t at = 0; at < size && !c->closing; at += step) {
        size_t n = size - at < step ? size - at : step;
        if (c->close_after_write)
            break; /* conn.c discards reads while lingering */
        c->proto->on_data(c, (const char *)data + at, n);
        reads++;
        if (c->closing)
            break; /* dropped (output cap): the queued bytes die with it */
        check_output(c);
        if (c->close_after_write)
            continue;
        if ((st.flags & F_TICK) && reads % 4 == 0)
            c->proto->on_timeout(c);
        if ((st.flags & F_SHUTDOWN) && at >= size / 2 && at < size / 2 + step)
            c->proto->on_shutdown(c);
        if ((st.flags & F_DRAIN) && !c->closing && !c->close_after_write) {
            cl_conn_drop_output(c); /* as conn.c does once written */
            cl_buf_release(&c->out);
            c->proto->on_drained(c);
        }
    }
    if (!c->closing)
        check_output(c);
    if ((st.flags & F_EOF) && !c->closing && !c->close_after_write)
        c->proto->on_eof(c);
    cl_conn_close(c);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    if (st.closes != 1)
        abort();
    return 0;
}
