/*
 * ws.c — a WebSocket connection: wslay's event API driven on a cl_conn.
 *
 * The proceed loop (STYLE 7): a read hands its bytes to wslay_event_recv
 * through recv_cb until wslay has taken them all (recv_cb then reports
 * WOULDBLOCK), wslay_event_send moves the control frames that got queued
 * (pongs, close frames) into the connection's coalesced output, and when
 * wslay wants neither to read nor to write the
 * closing handshake is over and the connection closes after its output.
 *
 * The connection's output is the only send queue. send_cb never refuses
 * bytes (cl_conn_write appends; the worker flushes once per loop
 * iteration), so after every wslay_event_send wslay's own queue is empty
 * again; back-pressure is measured on the connection (cl_ws_pending).
 *
 * Memory (STYLE 10). A wslay context is ≈ 8.5 KiB (a 4 KiB input buffer,
 * a 4 KiB fragment buffer, queues). It exists only while it holds state
 * that matters:
 *   - a frame partly read: the frame scanner (below) has seen every byte
 *     wslay was given, so a scanner between frames means wslay's input
 *     buffer is empty and it waits for a frame header;
 *   - a fragmented message in progress (FIN=0 until the last continuation;
 *     the scanner knows that too);
 *   - anything queued or half sent;
 *   - any part of a closing handshake, or reading/writing switched off.
 * Otherwise it is freed after each pump and created again when bytes
 * arrive. Everything that must outlive it (close code, liveness, idle
 * clock) lives in struct cl_ws, so recreation is invisible. struct cl_ws
 * itself is what every idle socket pays: 72 bytes, an 80-byte malloc
 * chunk; keep it there (counters sized by what bounds them, flags in
 * bits, nothing that only matters inside a call).
 *
 * Data frames skip wslay's queue: a server frame is unmasked, 2–10 header
 * bytes and the payload, written straight into the output. That is safe at
 * any time because wslay never holds half a frame between calls (send_cb
 * always takes everything), and it keeps order: a message the handler
 * sends from on_text and a close it queues after it leave in that order
 * (wslay sends queued control frames, close included, ahead of queued data,
 * so "answer, then close" through its queue would lose the answer). It is
 * also cheaper: no context is created to send, nothing is allocated per
 * token, and each payload is copied once (wslay copies every queued message
 * before framing it). wslay still frames what it owns: pongs, close frames
 * and their replies, pings while a context exists.
 *
 * Frame headers are read a step ahead of wslay (scan_frames): wslay looks
 * at a header only once payload bytes follow it, so a frame announcing
 * 2^40 bytes, an unmasked frame or a reserved opcode would otherwise wait
 * for payload before the close, and errors its frame layer finds
 * (a fragmented ping) close without a code. Each read is cut before the
 * first bad header, wslay gets what precedes it, and the connection fails
 * with 1002, 1003 or 1009 and a reason at once (RFC 6455 §7.1.7).
 *
 * Lifecycle (STYLE 6): one state field, set only by set_state, which
 * checks the transition against ws_next[] (cl_ws__legal), logs it and
 * arms what the new state needs:
 *
 *   OPEN ──shutdown──> DRAINING ──cl_ws_close──> CLOSING ──sent──> CLOSE_WAIT
 *     └─────────────cl_ws_close / fail───────────────^
 *   any state ──the connection ends──> CLOSED (on_close has run)
 *
 * Closes that wslay starts itself (the reply to the peer's close, its own
 * protocol errors) stop its reading at once, so they end the connection
 * after the output without a state of ours in between; CLOSE_WAIT is only
 * ever a close of ours that still waits for the peer's reply. Whether the
 * connection is ending (cl_conn closing or closing after its output) is
 * the connection's own state, read through conn_ending().
 *
 * Liveness: the connection's single timer is a tick every
 * ws_ping_interval (STYLE 4; nothing is re-armed per frame, frames only
 * set flags and timestamps). A tick that finds nothing received since the
 * previous ping counts a miss; two misses in a row close with 1008 (RFC
 * 6455 §7.4.1: policy violation — the peer breaks our keep-alive policy).
 * A tick past ws_idle_timeout since the last data message closes with 1000
 * "idle"; the idle limit is therefore enforced to within one tick. Once a
 * close is sent the timer becomes the close-wait deadline.
 *
 * Lifetime (STYLE 1, 2): the cl_ws is freed in the connection's on_free.
 * on_close fires once: as soon as the connection is known to be ending,
 * but only from our own callbacks (data, timer, eof, drained, shutdown) —
 * never inside a call the handler made into us (cl_ws_send_text,
 * cl_ws_close), which instead leave it to the next callback or on_free.
 */
#include "ws_internal.h"

#include "chatloop/api.h"
#include "chatloop/log.h"
#include "chatloop/utf8.h"
#include "chatloop/version.h"
#include "chatloop/worker.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

/* Above this much queued output producers should pause (unless a quarter
 * of max_output_bytes is smaller): enough to keep a fast link busy for a
 * few loop iterations, small enough that 1,000 paused sockets stay cheap. */
#define HIGH_WATER_MAX (256 * 1024)
/* How long a peer has to answer our close frame before the TCP connection
 * is cut (RFC 6455 §7.1.1 leaves the wait to the server). */
#define CLOSE_WAIT_MS 5000
/* wslay_event_queue_close's limit on the reason (125 minus the code). */
#define CLOSE_REASON_MAX 123

/* The mask key is counted, not kept: judging needs only the first two
 * bytes and the extended length. */
#define SCAN_HDR_KEPT 10

/* The bytes one pump hands to wslay, on ws_on_data's stack: an idle socket
 * holds no pointer into a read buffer. */
typedef struct ws_feed {
    const char *p;
    size_t len;
} ws_feed;

/*
 * One per socket, so every byte counts (see the top). Payload counters are
 * 32 bits: judge_length bounds a data frame and a message by
 * max_ws_message_bytes (at most 1 GiB, config.c), judge_start a control
 * frame by 125.
 */
struct cl_ws {
    cl_conn *conn;
    const cl_ws_handler *h;
    void *ud;
    wslay_event_context_ptr ctx;    /* NULL while quiescent (see top) */
    ws_feed *rx;                    /* bytes being fed to wslay (only inside pump) */
    uint64_t last_msg_ms;           /* last data message from the peer (idle clock) */
    /* The client's frame headers as they arrive, independent of wslay's
     * buffers (so it survives the context being freed between frames). */
    uint32_t scan_left;             /* payload bytes of the current frame still to come */
    uint32_t scan_msg_len;          /* payload of the open data message so far */
    uint16_t close_code;            /* first close code sent or received; 0: none yet */
    uint8_t depth;                  /* 1 while wslay or the handler's on_close is on the stack */
    uint8_t scan_hdr[SCAN_HDR_KEPT]; /* the header being read, up to its mask key */
    unsigned scan_hlen : 4;         /* header bytes read so far, mask key included (≤ 14) */
    unsigned scan_in_msg : 1;       /* a data message with FIN=0 is open */
    unsigned state : 3;             /* a cl_ws_state; only set_state writes it */
    unsigned misses : 2;            /* pings in a row answered by nothing (2 closes) */
    unsigned congested : 1;         /* went above the high-water mark; on_drain owed */
    unsigned rx_since_ping : 1;     /* any byte from the peer since the last ping */
    unsigned ping_outstanding : 1;
    unsigned held_input : 1;        /* conn->in holds bytes for us (late upgrade) */
};
_Static_assert(CL_WS__STATE_COUNT <= 8, "cl_ws.state is 3 bits");

static const cl_conn_proto ws_proto;

static uint64_t now_ms(const cl_ws *ws)
{
    return uv_now(ws->conn->w->loop);
}

static size_t high_water(const cl_conn *c)
{
    size_t hw = (size_t)(c->w->cfg->max_output_bytes / 4);
    if (hw > HIGH_WATER_MAX)
        hw = HIGH_WATER_MAX;
    return hw ? hw : 1;
}

/* The connection is going away: closed, or closing once its output is
 * out. Nothing new starts then. */
static int conn_ending(const cl_conn *c)
{
    return c->closing || c->close_after_write;
}

/* ---- the state machine (see the top) -------------------------------------------- */

static const char *const ws_state_names[CL_WS__STATE_COUNT] = {
    [CL_WS_OPEN] = "OPEN",
    [CL_WS_DRAINING] = "DRAINING",
    [CL_WS_CLOSING] = "CLOSING",
    [CL_WS_CLOSE_WAIT] = "CLOSE_WAIT",
    [CL_WS_CLOSED] = "CLOSED",
};

#define TO(s) (1u << (s))
static const unsigned ws_next[CL_WS__STATE_COUNT] = {
    [CL_WS_OPEN] = TO(CL_WS_DRAINING) | TO(CL_WS_CLOSING) | TO(CL_WS_CLOSED),
    [CL_WS_DRAINING] = TO(CL_WS_CLOSING) | TO(CL_WS_CLOSED),
    [CL_WS_CLOSING] = TO(CL_WS_CLOSE_WAIT) | TO(CL_WS_CLOSED),
    [CL_WS_CLOSE_WAIT] = TO(CL_WS_CLOSED),
    [CL_WS_CLOSED] = 0,
};
#undef TO

int cl_ws__legal(cl_ws_state from, cl_ws_state to)
{
    return (unsigned)from < CL_WS__STATE_COUNT && (unsigned)to < CL_WS__STATE_COUNT &&
           (ws_next[from] >> to & 1u);
}

const char *cl_ws__state_name(cl_ws_state s)
{
    return (unsigned)s < CL_WS__STATE_COUNT ? ws_state_names[s] : "?";
}

static void arm_timer(cl_ws *ws);

/* The one writer of ws->state. Entry work is ours only: the handler is
 * never called from here (notify_close calls on_close after it), since a
 * handler may call back into us and a setter that re-enters itself leaves
 * its caller unsure of the state. A new cl_ws is OPEN by calloc. */
static void set_state(cl_ws *ws, cl_ws_state to)
{
    cl_ws_state from = (cl_ws_state)ws->state;
    assert(cl_ws__legal(from, to));
    CL_DEBUG("ws %s: %s -> %s", ws->conn->peer, cl_ws__state_name(from), cl_ws__state_name(to));
    ws->state = to;
    if (to == CL_WS_CLOSE_WAIT)
        arm_timer(ws); /* the timer becomes the deadline for the peer's reply */
}

/* ---- output ------------------------------------------------------------------ */

/* cl_conn_write refuses when the connection is closing or when the bytes
 * would pass max_output_bytes; in the second case it has just dropped the
 * slow reader, which our close code says. */
static int conn_write(cl_ws *ws, const void *data, size_t len)
{
    cl_conn *c = ws->conn;
    int was_open = !c->closing;
    if (cl_conn_write(c, data, len) == 0)
        return 0;
    if (was_open && c->closing && !ws->close_code)
        ws->close_code = 1008;
    return -1;
}

/* A server frame (unmasked, FIN set) straight into the output, byte for
 * byte what wslay_frame_send writes (see the top on why). */
static int write_frame(cl_ws *ws, uint8_t opcode, const void *data, size_t len)
{
    /* Outside a pump wslay holds nothing unsent (send_cb takes everything),
     * so this frame cannot land inside one of wslay's. */
    assert(ws->depth || !ws->ctx || !wslay_event_want_write(ws->ctx));
    uint8_t h[10];
    size_t hl;
    h[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        h[1] = (uint8_t)len;
        hl = 2;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        uint64_t v = len;
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(v >> (56 - 8 * i));
        hl = 10;
    }
    if (conn_write(ws, h, hl) != 0)
        return -1;
    return len ? conn_write(ws, data, len) : 0;
}

static size_t ws_pending(const cl_ws *ws)
{
    return cl_conn_pending_bytes(ws->conn) +
           (ws->ctx ? wslay_event_get_queued_msg_length(ws->ctx) : 0);
}

static void drop_slow_reader(cl_ws *ws)
{
    cl_conn *c = ws->conn;
    CL_WARN("ws %s: queued output would pass max_output_bytes; dropping slow reader", c->peer);
    cl_metric_add(&c->w->metrics->slow_readers_dropped, 1);
    if (!ws->close_code)
        ws->close_code = 1008;
    cl_conn_close(c);
}

/* ---- wslay callbacks ---------------------------------------------------------- */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user_data)
{
    cl_ws *ws = user_data;
    ws_feed *f = ws->rx;
    (void)flags;
    assert(ws->depth && f); /* wslay reads only inside pump */
    if (f->len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < f->len ? len : f->len;
    memcpy(buf, f->p, n);
    f->p += n;
    f->len -= n;
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user_data)
{
    cl_ws *ws = user_data;
    (void)flags;
    if (conn_write(ws, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

/* Fails the connection (RFC 6455 §7.1.7): a close frame with `code`, and
 * nothing more is read; the close is not waited for. */
static void fail(cl_ws *ws, int code, const char *reason)
{
    wslay_event_shutdown_read(ws->ctx);
    if (wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason,
                                strlen(reason)) == 0) {
        set_state(ws, CL_WS_CLOSING);
        if (!ws->close_code)
            ws->close_code = (uint16_t)code;
    }
}

/* ---- frame headers, read ahead of wslay (see the top) -------------------------- */

/* Judges the first two bytes of a client frame header (RFC 6455 §5.2,
 * §5.4, §5.5): 0, or a close code with *why. As early as wslay's own frame
 * layer looks, so that no split of the bytes lets wslay fail first. */
static int judge_start(const cl_ws *ws, const uint8_t *h, const char **why)
{
    int fin = h[0] >> 7, rsv = (h[0] >> 4) & 7, op = h[0] & 15, n7 = h[1] & 0x7f;
    if (rsv)
        return *why = "reserved bits set without an extension", 1002;
    if (!(h[1] & 0x80))
        return *why = "client frames must be masked", 1002;
    if (op >= 8) {
        if (op > 10)
            return *why = "reserved opcode", 1002;
        if (!fin || n7 > 125)
            return *why = "control frames must be whole and at most 125 bytes", 1002;
        return 0;
    }
    if (op > 2)
        return *why = "reserved opcode", 1002;
    if (op == 0 && !ws->scan_in_msg)
        return *why = "continuation frame without a message to continue", 1002;
    if (op != 0 && ws->scan_in_msg)
        return *why = "new message inside a fragmented one", 1002;
    /* a binary message is refused at its first header, never buffered */
    if (op == WSLAY_BINARY_FRAME)
        return *why = "binary messages are not accepted", 1003;
    return 0;
}

/* The payload length of a header whose length bytes are in. */
static uint64_t payload_len(const uint8_t *h)
{
    uint8_t n7 = h[1] & 0x7f;
    uint64_t n = n7;
    if (n7 == 126)
        n = (uint64_t)h[2] << 8 | h[3];
    for (int i = 0; n7 == 127 && i < 8; i++)
        n = (i ? n << 8 : 0) | h[2 + i];
    return n;
}

/* Judges the payload length once its bytes are in (before the mask key):
 * the shortest encoding, and the message size — at the header, not when
 * payload arrives. Updates the message state for a data frame. */
static int judge_length(cl_ws *ws, const uint8_t *h, const char **why)
{
    int fin = h[0] >> 7, op = h[0] & 15, n7 = h[1] & 0x7f;
    uint64_t n = payload_len(h);
    if ((n7 == 126 && n < 126) || (n7 == 127 && (n < 65536 || n >> 63)))
        return *why = "frame length not in its shortest form", 1002;
    if (op >= 8)
        return 0;
    uint64_t max = ws->conn->w->cfg->max_ws_message_bytes;
    uint64_t before = op == 0 ? ws->scan_msg_len : 0;
    if (n > max || before + n > max)
        return *why = "message is larger than max_ws_message_bytes", 1009;
    assert(max <= UINT32_MAX); /* config.c caps max_ws_message_bytes at 1 GiB */
    ws->scan_msg_len = fin ? 0 : (uint32_t)(before + n);
    ws->scan_in_msg = !fin;
    return 0;
}

/* Follows the frames in p[0..n): returns how many bytes wslay may have,
 * all of them unless a header is bad, then the bytes before that header
 * (code and why set; the header may have begun in an earlier read, which
 * wslay already holds but cannot have judged yet). */
static size_t scan_frames(cl_ws *ws, const uint8_t *p, size_t n, int *code, const char **why,
                          size_t *data_bytes)
{
    size_t i = 0;
    while (i < n) {
        if (ws->scan_left) {
            size_t take = ws->scan_left < n - i ? ws->scan_left : n - i;
            ws->scan_left -= (uint32_t)take;
            i += take;
            /* the current frame's header is still in scan_hdr */
            if ((ws->scan_hdr[0] & 15) < 8)
                *data_bytes += take; /* wslay keeps it until the message is whole */
            continue;
        }
        /* a header is at most 14 bytes: it ends (hlen back to 0) at its
         * mask key, so the 4-bit count never wraps */
        assert(ws->scan_hlen < 14);
        if (ws->scan_hlen < SCAN_HDR_KEPT)
            ws->scan_hdr[ws->scan_hlen] = p[i];
        i++;
        size_t h = ++ws->scan_hlen;
        if (h < 2)
            continue;
        const uint8_t *hdr = ws->scan_hdr;
        size_t ext = (hdr[1] & 0x7f) == 126 ? 2 : (hdr[1] & 0x7f) == 127 ? 8 : 0;
        *code = 0;
        if (h == 2)
            *code = judge_start(ws, hdr, why);
        if (!*code && h == 2 + ext)
            *code = judge_length(ws, hdr, why);
        if (*code) {
            ws->scan_hlen = 0;
            return i >= h ? i - h : 0;
        }
        if (h == 2 + ext + 4) { /* the mask key is in: the payload follows */
            uint64_t len = payload_len(hdr);
            assert(len <= UINT32_MAX); /* judged above: see struct cl_ws */
            ws->scan_hlen = 0;
            ws->scan_left = (uint32_t)len;
        }
    }
    return n;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user_data)
{
    cl_ws *ws = user_data;
    cl_conn *c = ws->conn;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        if (!ws->close_code)
            ws->close_code = arg->status_code ? arg->status_code : 1005;
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME)
        return; /* pings are answered by wslay; any byte already counted as liveness */
    /* the message is whole: wslay lets go of its payload after this call */
    size_t held = arg->msg_length < c->held_in ? arg->msg_length : c->held_in;
    cl_conn_unhold(c, held);
    c->held_in -= (uint32_t)held;
    if (!cl_utf8_valid(arg->msg, arg->msg_length)) {
        fail(ws, 1007, "text message is not valid UTF-8");
        return;
    }
    ws->last_msg_ms = now_ms(ws);
    /* After our close frame the handler gets nothing new to start. */
    if (ws->state >= CL_WS_CLOSING || conn_ending(c))
        return;
    if (ws->h->on_text)
        ws->h->on_text(ws, arg->msg ? (const char *)arg->msg : "", arg->msg_length);
    /* The handler's answer may have dropped the connection (output cap):
     * stop wslay from handing it the rest of this read. */
    if (c->closing)
        wslay_event_shutdown_read(ctx);
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = recv_cb,
    .send_callback = send_cb,
    .on_msg_recv_callback = on_msg,
};

/* ---- the context: created on demand, freed when quiescent ---------------------- */

static int ctx_ensure(cl_ws *ws)
{
    if (ws->ctx)
        return 0;
    if (wslay_event_context_server_init(&ws->ctx, &ws_callbacks, ws) != 0) {
        ws->ctx = NULL; /* wslay freed its half-built context */
        return -1;
    }
    /* STYLE 8: wslay's default would buffer a 2 GiB message. */
    wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->conn->w->cfg->max_ws_message_bytes);
    return 0;
}

/* While wslay reads and nothing of ours is closing, the scanner has seen
 * exactly the bytes wslay took (ws_on_data scans all it feeds, and wslay
 * takes all it is fed until it stops reading), so "the scanner is between
 * frames, outside a fragmented message" is "wslay's input holds nothing". */
static int ctx_quiescent(const cl_ws *ws)
{
    wslay_event_context_ptr ctx = ws->ctx;
    return ws->state < CL_WS_CLOSING && wslay_event_get_read_enabled(ctx) &&
           wslay_event_get_write_enabled(ctx) && ws->scan_hlen == 0 && ws->scan_left == 0 &&
           !ws->scan_in_msg && wslay_event_get_queued_msg_count(ctx) == 0 &&
           !wslay_event_want_write(ctx);
}

/* The connection's one timer means what the state says: the deadline for
 * the peer's close reply in CLOSE_WAIT, the liveness tick before. Once the
 * connection is ending its timer is conn.c's. */
static void arm_timer(cl_ws *ws)
{
    cl_conn *c = ws->conn;
    const cl_config *cfg = c->w->cfg;
    if (conn_ending(c))
        return;
    if (ws->state == CL_WS_CLOSE_WAIT) {
        cl_conn_set_timeout(c, CLOSE_WAIT_MS);
        return;
    }
    uint64_t ms = cfg->ws_ping_interval_ms ? cfg->ws_ping_interval_ms : cfg->ws_idle_timeout_ms;
    cl_conn_set_timeout(c, ms);
}

/* After wslay ran: learn the close code wslay chose itself (1002, 1009),
 * close the connection once the closing handshake is over, start the
 * close-wait deadline once our close is out, or drop an idle context. */
static void after_pump(cl_ws *ws)
{
    cl_conn *c = ws->conn;
    wslay_event_context_ptr ctx = ws->ctx;
    if (!ws->close_code && wslay_event_get_close_sent(ctx))
        ws->close_code = wslay_event_get_status_code_sent(ctx);
    if (conn_ending(c))
        return;
    if (!wslay_event_want_read(ctx) && !wslay_event_want_write(ctx)) {
        CL_DEBUG("ws %s: closing (%d)", c->peer, ws->close_code);
        cl_conn_close_after_write(c);
        return;
    }
    if (wslay_event_get_close_sent(ctx)) {
        /* still reading after a close went out: ours (see the top) */
        if (ws->state != CL_WS_CLOSE_WAIT)
            set_state(ws, CL_WS_CLOSE_WAIT);
        return;
    }
    if (ctx_quiescent(ws)) {
        wslay_event_context_free(ctx);
        ws->ctx = NULL;
    }
}

/* wslay frames what it queued into the connection's output. */
static void send_queued(cl_ws *ws)
{
    cl_conn *c = ws->conn;
    if (c->closing)
        return;
    if (wslay_event_send(ws->ctx) != 0) {
        if (!c->closing)
            cl_conn_close(c);
        return;
    }
    /* send_cb always takes everything (see the top) */
    assert(!wslay_event_want_write(ws->ctx));
}

/* Feeds `f` to wslay and sends what that queued. Reads and ticks come
 * from the loop, never from inside wslay or a handler callback, so pumps
 * do not nest and depth is 0 or 1. */
static void pump(cl_ws *ws, ws_feed *f)
{
    wslay_event_context_ptr ctx = ws->ctx;
    assert(ws->depth == 0);
    ws->depth++;
    ws->rx = f;
    if (f->len && wslay_event_want_read(ctx)) {
        int r = wslay_event_recv(ctx);
        if (r != 0 && !ws->close_code)
            /* a framing error (wslay queued an empty close) or no memory */
            ws->close_code = r == WSLAY_ERR_NOMEM ? 1011 : 1002;
    }
    /* Whatever wslay did not take, it will never read: it stopped reading. */
    ws->rx = NULL;
    send_queued(ws);
    ws->depth--;
    after_pump(ws);
}

/* Sends what we queued in wslay (a close, a ping) outside a read. Inside
 * a pump (the handler closing from on_text) the pump on the stack sends
 * it, after the recv that is still running. */
static void pump_out(cl_ws *ws)
{
    if (ws->depth)
        return;
    ws->depth++;
    send_queued(ws);
    ws->depth--;
    after_pump(ws);
}

static void notify_close(cl_ws *ws)
{
    if (ws->state == CL_WS_CLOSED)
        return;
    /* never inside a call the handler made into us (see the top) */
    assert(ws->depth == 0);
    set_state(ws, CL_WS_CLOSED);
    int code = ws->close_code ? ws->close_code : 1006;
    CL_DEBUG("ws %s: closed with %d", ws->conn->peer, code);
    if (ws->h->on_close) {
        ws->depth++;
        ws->h->on_close(ws, code);
        ws->depth--;
    }
}

/* End of each of our callbacks: tell the handler as soon as the
 * connection is known to be ending. */
static void settle(cl_ws *ws)
{
    if (ws->depth == 0 && conn_ending(ws->conn))
        notify_close(ws);
}

static void out_of_memory(cl_ws *ws)
{
    CL_ERROR("ws %s: out of memory", ws->conn->peer);
    if (!ws->close_code)
        ws->close_code = 1011;
    cl_conn_close(ws->conn);
}

/* ---- connection protocol ------------------------------------------------------ */

/* A bad header found by scan_frames: fail the connection now, whatever
 * wslay made of the bytes before it. */
static void fail_at_header(cl_ws *ws, int code, const char *why)
{
    cl_conn *c = ws->conn;
    if (conn_ending(c) || ws->state >= CL_WS_CLOSING)
        return;
    if (ctx_ensure(ws) != 0) {
        out_of_memory(ws);
        return;
    }
    CL_DEBUG("ws %s: failing with %d: %s", c->peer, code, why);
    fail(ws, code, why);
    pump_out(ws);
}

static void ws_on_data(cl_conn *c, const char *data, size_t len)
{
    cl_ws *ws = c->proto_data;
    if (ws->state == CL_WS_CLOSED || conn_ending(c))
        return;
    ws->rx_since_ping = 1;
    if (ctx_ensure(ws) != 0) {
        out_of_memory(ws);
        settle(ws);
        return;
    }
    int code = 0;
    const char *why = NULL;
    /* Once wslay stopped reading (a close came, or it failed the peer)
     * the rest is ignored, so there is nothing to judge. */
    size_t ok = len, data_bytes = 0;
    if (ws->state < CL_WS_CLOSING && wslay_event_get_read_enabled(ws->ctx))
        ok = scan_frames(ws, (const uint8_t *)data, len, &code, &why, &data_bytes);
    /* Message payload wslay will hold until the message is whole counts
     * against the worker's budget (max_buffered_bytes) until on_msg. */
    if (data_bytes) {
        if (cl_conn_hold(c, data_bytes) != 0) {
            if (!ws->close_code)
                ws->close_code = 1013;
            cl_conn_close(c);
            settle(ws);
            return;
        }
        c->held_in += (uint32_t)data_bytes;
    }
    ws_feed f = {data, ok};
    pump(ws, &f);
    if (code)
        fail_at_header(ws, code, why);
    settle(ws);
}

static void send_ping(cl_ws *ws)
{
    if (ws->ctx) {
        struct wslay_event_msg m = {WSLAY_PING, NULL, 0};
        if (wslay_event_queue_msg(ws->ctx, &m) == 0)
            pump_out(ws);
        return;
    }
    write_frame(ws, WSLAY_PING, NULL, 0);
}

/* A late upgrade (the handler answered after the request's read): bytes
 * the HTTP layer held meanwhile are ours, fed from the timer so that no
 * handler callback runs inside the cl_ws_upgrade call. */
static void feed_held_input(cl_ws *ws)
{
    cl_conn *c = ws->conn;
    ws->held_input = 0;
    cl_buf held = c->in;
    cl_buf_init(&c->in, 0);
    if (held.len)
        ws_on_data(c, held.data, held.len);
    cl_buf_release(&held);
    arm_timer(ws); /* in CLOSE_WAIT this tick was also its deadline: a new one */
}

static void ws_on_timeout(cl_conn *c)
{
    cl_ws *ws = c->proto_data;
    const cl_config *cfg = c->w->cfg;
    if (ws->state == CL_WS_CLOSED || c->close_after_write) {
        /* our answer or close is stuck behind a peer that does not read */
        cl_conn_close(c);
        settle(ws);
        return;
    }
    if (ws->held_input) {
        feed_held_input(ws);
        return;
    }
    if (ws->state == CL_WS_CLOSE_WAIT) {
        CL_DEBUG("ws %s: no close reply within %dms", c->peer, CLOSE_WAIT_MS);
        cl_conn_close(c);
        settle(ws);
        return;
    }
    /* misses is 2 bits: the second miss closes below, before a third */
    if (ws->ping_outstanding && !ws->rx_since_ping)
        ws->misses++;
    else
        ws->misses = 0;
    const char *why = NULL;
    int code = 0;
    if (ws->misses >= 2) {
        code = 1008;
        why = "no answer to ping";
    } else if (cfg->ws_idle_timeout_ms && now_ms(ws) - ws->last_msg_ms >= cfg->ws_idle_timeout_ms) {
        code = 1000;
        why = "idle";
    }
    if (why) {
        CL_DEBUG("ws %s: closing: %s", c->peer, why);
        cl_ws_close(ws, code, why);
        /* a close already under way (wslay's own) has its own end; any
         * other state without one must not outlive the tick */
        if (!conn_ending(c) && ws->state != CL_WS_CLOSE_WAIT)
            cl_conn_close(c);
        settle(ws);
        return;
    }
    if (cfg->ws_ping_interval_ms) {
        send_ping(ws);
        ws->ping_outstanding = 1;
        ws->rx_since_ping = 0;
    }
    arm_timer(ws);
    settle(ws);
}

static void ws_on_eof(cl_conn *c)
{
    cl_ws *ws = c->proto_data;
    /* The peer sends nothing more; what we queued (a close reply) may
     * still reach it. Without a close frame on_close reports 1006. */
    cl_conn_close_after_write(c);
    settle(ws);
}

static void ws_on_drained(cl_conn *c)
{
    cl_ws *ws = c->proto_data;
    /* conn.c reports only "everything reached the kernel", which is below
     * half the high-water mark by definition. */
    if (ws->congested && ws->state != CL_WS_CLOSED && ws_pending(ws) <= high_water(c) / 2) {
        ws->congested = 0;
        if (ws->h->on_drain)
            ws->h->on_drain(ws);
    }
    settle(ws);
}

static void ws_on_shutdown(cl_conn *c)
{
    cl_ws *ws = c->proto_data;
    /* A close already under way is where on_shutdown would lead. */
    if (ws->state != CL_WS_OPEN || conn_ending(c))
        return;
    set_state(ws, CL_WS_DRAINING);
    if (ws->h->on_shutdown)
        ws->h->on_shutdown(ws);
    else
        cl_ws_close(ws, 1001, "server shutting down");
    settle(ws);
}

static void ws_on_free(cl_conn *c)
{
    cl_ws *ws = c->proto_data;
    cl_conn_unhold(c, c->held_in);
    c->held_in = 0;
    if (!ws)
        return;
    notify_close(ws);
    wslay_event_context_free(ws->ctx);
    c->proto_data = NULL;
    free(ws);
}

static const cl_conn_proto ws_proto = {
    .name = "websocket",
    .on_data = ws_on_data,
    .on_eof = ws_on_eof,
    .on_drained = ws_on_drained,
    .on_timeout = ws_on_timeout,
    .on_shutdown = ws_on_shutdown,
    .on_free = ws_on_free,
};

/* ---- API ---------------------------------------------------------------------- */

cl_ws *cl_ws_upgrade(cl_req *r, const cl_ws_handler *h, void *ud)
{
    cl_conn *c = r->conn;
    char accept[CL_WS_ACCEPT_LEN + 1];
    if (cl_ws__check_handshake(r, accept) != 0)
        return NULL;
    if (c->w->draining) {
        cl_api_error(r, CL_ERR_SERVICE_UNAVAILABLE, "server is shutting down", NULL, NULL);
        return NULL;
    }
    cl_ws *ws = calloc(1, sizeof *ws);
    if (!ws) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return NULL;
    }
    char head[192];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "Server: chatloop/" CL_VERSION "\r\n"
                     "\r\n",
                     accept);
    if (c->closing || cl_conn_write(c, head, (size_t)n) != 0) {
        /* the peer is gone: the request ends like any abandoned answer */
        free(ws);
        cl_res_end(r);
        return NULL;
    }
    /* Frees r and clears c->proto_data: it must precede set_proto. */
    cl_http1_end_upgraded(r, 101, (size_t)n);
    ws->conn = c;
    ws->h = h;
    ws->ud = ud;
    ws->last_msg_ms = now_ms(ws);
    cl_conn_set_proto(c, &ws_proto, ws);
    c->proto_paused = 0;
    if (!c->proto_busy && c->in.len) {
        ws->held_input = 1;
        cl_conn_set_timeout(c, 1);
    } else {
        arm_timer(ws);
    }
    /* Inside the HTTP proceed loop reading is on; after a late answer the
     * HTTP layer may have stopped it to hold bytes. */
    if (!c->reading && uv_is_readable((uv_stream_t *)&c->tcp))
        cl_conn_read_start(c);
    if (h->on_open)
        h->on_open(ws);
    return ws;
}

void *cl_ws_userdata(const cl_ws *ws)
{
    return ws->ud;
}

cl_conn *cl_ws_conn(const cl_ws *ws)
{
    return ws->conn;
}

int cl_ws_send_text(cl_ws *ws, const char *data, size_t len)
{
    cl_conn *c = ws->conn;
    if (ws->state >= CL_WS_CLOSING || conn_ending(c))
        return -1;
    /* wslay stopped reading (a close came in, or it failed the peer): its
     * close frame is queued and nothing may follow it. */
    if (ws->ctx && (!wslay_event_get_read_enabled(ws->ctx) ||
                    !wslay_event_get_write_enabled(ws->ctx)))
        return -1;
    /* 10: the largest frame header */
    if (ws_pending(ws) + len + 10 > c->w->cfg->max_output_bytes) {
        drop_slow_reader(ws);
        return -1;
    }
    if (write_frame(ws, WSLAY_TEXT_FRAME, data, len) != 0)
        return -1;
    if (ws_pending(ws) > high_water(c))
        ws->congested = 1;
    return 0;
}

size_t cl_ws_pending(const cl_ws *ws)
{
    return ws_pending(ws);
}

int cl_ws_congested(const cl_ws *ws)
{
    return ws_pending(ws) > high_water(ws->conn);
}

void cl_ws_close(cl_ws *ws, int code, const char *reason)
{
    cl_conn *c = ws->conn;
    if (ws->state >= CL_WS_CLOSING || conn_ending(c))
        return;
    if (ctx_ensure(ws) != 0) {
        out_of_memory(ws);
        return;
    }
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > CLOSE_REASON_MAX)
        rl = CLOSE_REASON_MAX;
    if (wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rl) != 0)
        return; /* wslay queued its own close already */
    set_state(ws, CL_WS_CLOSING);
    if (!ws->close_code)
        ws->close_code = (uint16_t)code;
    pump_out(ws);
}

int cl_ws_is_ws_proto(const cl_conn *c)
{
    return c->proto == &ws_proto;
}

/* ---- test hooks ---------------------------------------------------------------- */

cl_ws_state cl_ws__state(const cl_ws *ws)
{
    return (cl_ws_state)ws->state;
}

int cl_ws__has_ctx(const cl_ws *ws)
{
    return ws->ctx != NULL;
}

cl_ws *cl_ws__of_conn(const cl_conn *c)
{
    return cl_ws_is_ws_proto(c) ? c->proto_data : NULL;
}
