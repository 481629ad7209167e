/*
 * ws_internal.h — what ws.c and handshake.c share, and hooks for
 * test/unit/test_ws.c and test/fuzz/fuzz_ws.c. Not part of the contract.
 */
#ifndef CHATLOOP_WS_INTERNAL_H
#define CHATLOOP_WS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/ws.h"

/* base64 of a SHA-1 digest: 28 characters and a NUL. */
#define CL_WS_ACCEPT_LEN 28

/**
 * Sec-WebSocket-Accept for a client key (RFC 6455 §4.2.2: base64 of the
 * SHA-1 of the key followed by the protocol's GUID). 0, or -1 when mbedTLS
 * fails.
 */
int cl_ws__accept_key(const char *key, size_t len, char out[CL_WS_ACCEPT_LEN + 1]);

/**
 * Checks an upgrade request against RFC 6455 §4.2.1. On success fills
 * `accept` and returns 0; otherwise answers the request (400 naming the
 * header at fault, 426 with `Sec-WebSocket-Version: 13` for another
 * version, 403 for an Origin that cl_cors_ws_origin_ok refuses), which
 * ends it, and returns -1.
 */
int cl_ws__check_handshake(cl_req *r, char accept[CL_WS_ACCEPT_LEN + 1]);

/**
 * The lifecycle of a cl_ws (the diagram is at the top of ws.c). Ordered:
 * every state from CLOSING on refuses new messages both ways.
 */
typedef enum cl_ws_state {
    /** Messages flow both ways; the timer is the liveness tick. */
    CL_WS_OPEN,
    /** The worker drains and the handler has been told (on_shutdown); still
     *  open until the handler, its work done, closes. */
    CL_WS_DRAINING,
    /** We queued a close frame (cl_ws_close, or failing the peer): nothing
     *  more is sent, nothing new reaches on_text. Left as soon as the frame
     *  is out, at the end of the pump that queued it. */
    CL_WS_CLOSING,
    /** Our close frame is out and we still read, for the peer's reply; the
     *  timer is its deadline (5 s), after which the connection is cut. */
    CL_WS_CLOSE_WAIT,
    /** The connection is ending and on_close has run: the handler is gone.
     *  Nothing happens any more until the connection frees the cl_ws. */
    CL_WS_CLOSED,
    CL_WS__STATE_COUNT
} cl_ws_state;

/** 1 when ws.c's setter allows `from` -> `to`, else 0 (the table, for tests). */
int cl_ws__legal(cl_ws_state from, cl_ws_state to);

/** "OPEN", "CLOSE_WAIT", ... ("?" out of range), for logs and tests. */
const char *cl_ws__state_name(cl_ws_state s);

/** Test hook: the socket's state. */
cl_ws_state cl_ws__state(const cl_ws *ws);

/** Test hook: 1 while the cl_ws holds a wslay context. */
int cl_ws__has_ctx(const cl_ws *ws);

/** Test hook: the connection's cl_ws, or NULL if it does not speak WebSocket. */
cl_ws *cl_ws__of_conn(const cl_conn *c);

#endif
