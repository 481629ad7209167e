/**
 * conn.h — one accepted TCP connection on a worker's loop.
 *
 * A cl_conn owns its socket handle and its one timer; it is freed only in the
 * last uv_close callback (STYLE 1), so cl_conn_close may be called from any
 * callback, any number of times: it schedules, it never frees under a caller.
 *
 * The connection knows nothing of the protocol spoken on it: the worker's
 * hooks choose it for each accepted connection (on_accept, as h2o's accept
 * callback does: chatloop and chatloop-mock attach HTTP/1.1), and a
 * protocol may hand over to another (cl_conn_set_proto: WebSocket after an
 * upgrade). A protocol is a vtable. TLS, when configured,
 * will sit between the socket and the protocol in this file: protocols only
 * see plaintext bytes in on_data and only write through cl_conn_write.
 *
 * Memory: an idle connection holds no read or write buffer. Reads land in the
 * worker's shared read buffer and are consumed synchronously by on_data;
 * output is gathered in `out` and flushed once per loop iteration by the
 * worker's check handle, with at most one uv_write in flight (STYLE 9).
 */
#ifndef CHATLOOP_CONN_H
#define CHATLOOP_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "chatloop/buf.h"

typedef struct cl_worker cl_worker;
typedef struct cl_conn cl_conn;
typedef struct cl_wbuf cl_wbuf;

typedef struct cl_conn_proto {
    const char *name;
    /** Plaintext bytes from the peer; valid only during the call. */
    void (*on_data)(cl_conn *c, const char *data, size_t len);
    /** The peer closed its sending side (or reset). Default: close. */
    void (*on_eof)(cl_conn *c);
    /** Everything queued with cl_conn_write has reached the kernel. */
    void (*on_drained)(cl_conn *c);
    /** The connection's timer (cl_conn_set_timeout) fired. */
    void (*on_timeout)(cl_conn *c);
    /** The worker is draining (SIGTERM): finish or close. */
    void (*on_shutdown)(cl_conn *c);
    /** Last call: release protocol state. The conn is freed right after. */
    void (*on_free)(cl_conn *c);
} cl_conn_proto;

struct cl_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    cl_worker *w;
    const cl_conn_proto *proto;
    void *proto_data;           /* the protocol's state (its request, its WebSocket) */
    cl_buf in;                  /* input held while the protocol is paused; empty otherwise */
    cl_buf out;                 /* queued output not yet handed to the kernel */
    cl_wbuf *inflight;          /* the one uv_write in flight, or NULL */
    uint32_t held;              /* bytes held for this peer (body, message, output): the budget */
    uint32_t held_in;           /* of which the protocol's partial input (a WebSocket message) */
    cl_conn *prev, *next;       /* the worker's connection list */
    cl_conn *next_dirty;        /* the worker's flush list */
    uint8_t pending_closes;
    uint8_t closing : 1;
    uint8_t dirty : 1;
    uint8_t reading : 1;
    uint8_t close_after_write : 1;
    uint8_t lingering : 1;
    uint8_t eof : 1;
    uint8_t proto_busy : 1;     /* the protocol is inside its parse loop */
    uint8_t proto_paused : 1;   /* the protocol stopped reading (pipelining back-pressure) */
    uint8_t held_released : 1;  /* dropped for the budget: its bytes already count as free */
    char peer[56];              /* "ip:port" for logs */
};

/** Allocates a connection with initialised (unconnected) handles, linked
 *  into the worker's list. The caller attaches a socket and a protocol.
 *  Unit tests use it to drive protocols without sockets. */
cl_conn *cl_conn_new(cl_worker *w);
/** Called by the worker's listener for each accepted socket: the worker
 *  hooks' on_accept gives it its protocol. */
void cl_conn_accept(cl_worker *w, uv_stream_t *server);

/**
 * The worker's budget for bytes held on behalf of clients (max_buffered_bytes):
 * request bodies, partial WebSocket messages and queued output all count,
 * each against the connection that made us hold them (c->held).
 * cl_conn_hold reserves n more bytes for c; when that would pass the
 * budget, the greediest connection (the one holding the most) is dropped
 * to make room — c itself when it is the greediest, and then -1 is
 * returned. cl_conn_unhold gives bytes back. A closing connection's
 * bytes are given back by whoever releases them (conn.c for output).
 */
int cl_conn_hold(cl_conn *c, size_t n);
void cl_conn_unhold(cl_conn *c, size_t n);

/** Queues bytes for the peer. Returns 0, or -1 when the connection is closing
 *  or its queued output would pass max_output_bytes or the worker's budget
 *  (it is then closed: a reader that slow is dropped, not buffered without
 *  bound). */
int cl_conn_write(cl_conn *c, const void *data, size_t len);
/** Bytes queued or in flight: producers pause above their high-water mark. */
size_t cl_conn_pending_bytes(const cl_conn *c);
/** After the queued output is written, half-close and close (lingering:
 *  unread request bytes are drained briefly so the peer sees our answer,
 *  not a reset). */
void cl_conn_close_after_write(cl_conn *c);
/** Drops the output queued and not yet in flight, giving its bytes back to
 *  the budget (unit tests read the output from `out` and discard it). */
void cl_conn_drop_output(cl_conn *c);
/** Closes now; queued output is dropped. Safe to call repeatedly. */
void cl_conn_close(cl_conn *c);

void cl_conn_read_start(cl_conn *c);
void cl_conn_read_stop(cl_conn *c);
/** (Re)arms the connection's single timer; 0 stops it. */
void cl_conn_set_timeout(cl_conn *c, uint64_t ms);
void cl_conn_set_proto(cl_conn *c, const cl_conn_proto *proto, void *data);

/** Worker internals: write every dirty connection's queued output. */
void cl_conn_flush_dirty(cl_worker *w);

#endif
