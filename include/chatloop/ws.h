/**
 * ws.h — WebSocket connections (RFC 6455) on a cl_conn, framed by wslay's
 * event API.
 *
 * cl_ws_upgrade answers a GET carrying `Upgrade: websocket` with 101
 * (Sec-WebSocket-Accept = base64(SHA-1(key + GUID)), mbedTLS) and turns the
 * connection over to the WebSocket protocol; bytes that followed the
 * handshake in the same read are fed to it at once.
 *
 * Reading: bytes go through wslay_event_recv in a proceed() loop; complete
 * text messages reach on_text. Limits: max_ws_message_bytes (wslay's own
 * default is 2 GiB; a bigger message closes with 1009), text must be UTF-8
 * (else 1007), binary messages are refused (1003).
 *
 * Writing: text frames go straight into the connection's coalesced output
 * (one uv_write per loop iteration however many frames); wslay frames the
 * control frames it owns (pongs, close). Order is kept: a message sent
 * before cl_ws_close reaches the peer before the close frame.
 * cl_ws_pending tells a producer how much waits; above the high-water mark
 * it should pause (the chat layer pauses its upstream transfers) and resume
 * on on_drain; past max_output_bytes the peer is dropped with 1008.
 *
 * Liveness: a WebSocket ping every ws_ping_interval; a peer that answers
 * none of two, or says nothing for ws_idle_timeout, is closed.
 *
 * Memory: wslay's context (≈ 8.5 KiB of frame buffers) exists only while a
 * frame or fragmented message is being read or a close is under way: an
 * idle socket keeps the cl_conn and a 72-byte cl_ws, no buffers.
 *
 * Close codes we choose: 1000 "idle" after ws_idle_timeout without a data
 * message, 1001 on shutdown, 1003 for a binary message, 1007 for text that
 * is not UTF-8, 1008 for a peer that answered neither of two pings and for
 * a reader dropped past max_output_bytes (no frame can reach it then: the
 * code is what on_close reports), 1009 for a message over
 * max_ws_message_bytes, 1011 when we run out of memory. A peer that sends
 * no close reply within 5 s of ours is cut.
 *
 * Lifetime: the cl_ws belongs to its connection. on_close fires once, with
 * the close code, when the connection is going away (whoever closed it);
 * the cl_ws is freed right after it returns — drop every pointer to it.
 */
#ifndef CHATLOOP_WS_H
#define CHATLOOP_WS_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/http.h"

typedef struct cl_ws cl_ws;

typedef struct cl_ws_handler {
    /** The 101 is queued: the socket is open. */
    void (*on_open)(cl_ws *ws);
    /** One complete, valid UTF-8 text message (data valid during the call). */
    void (*on_text)(cl_ws *ws, const char *data, size_t len);
    /** Queued output fell below the high-water mark after being above it. */
    void (*on_drain)(cl_ws *ws);
    /** The connection is going away; `code` is the close code sent or
     *  received (1006 when the peer vanished without one). */
    void (*on_close)(cl_ws *ws, int code);
    /** The worker is draining (SIGTERM). The handler lets its running work
     *  finish and then calls cl_ws_close(ws, 1001, ...) itself (at once if
     *  it has none). NULL: the socket is closed with 1001 right away.
     *  Not called for a socket whose close is already under way. */
    void (*on_shutdown)(cl_ws *ws);
} cl_ws_handler;

/**
 * Validates the handshake (GET, HTTP/1.1, Upgrade: websocket, Connection:
 * upgrade, Sec-WebSocket-Version: 13, a 16-byte base64 Sec-WebSocket-Key)
 * and upgrades. Returns the cl_ws, or NULL after answering 400 (426 for a
 * wrong version) — the request is ended either way. `ud` is the handler's.
 */
cl_ws *cl_ws_upgrade(cl_req *r, const cl_ws_handler *h, void *ud);

void *cl_ws_userdata(const cl_ws *ws);
/** Queues a text message. 0, or -1 when closing / over the output cap. */
int cl_ws_send_text(cl_ws *ws, const char *data, size_t len);
/** Bytes queued for this peer and not yet handed to the kernel. */
size_t cl_ws_pending(const cl_ws *ws);
/** 1 when queued output is above the high-water mark (producers pause). */
int cl_ws_congested(const cl_ws *ws);
/** Starts the closing handshake with `code` (1000, 1001, 1008, ...). */
void cl_ws_close(cl_ws *ws, int code, const char *reason);
/** The connection (for the peer address in logs). */
cl_conn *cl_ws_conn(const cl_ws *ws);

/* For the proceed loop in http1.c: the connection changed protocol inside
 * dispatch; feed it the bytes that followed the handshake. */
int cl_ws_is_ws_proto(const cl_conn *c);

#endif
