/**
 * worker.h — one worker process: one libuv loop, one listening socket
 * (SO_REUSEPORT, so the kernel spreads connections over workers), every
 * connection it accepted, and the once-per-iteration flush of their output.
 */
#ifndef CHATLOOP_WORKER_H
#define CHATLOOP_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "chatloop/buf.h"
#include "chatloop/config.h"
#include "chatloop/metrics.h"

typedef struct cl_conn cl_conn;
typedef struct cl_req cl_req;
typedef struct cl_router cl_router;
typedef struct cl_worker cl_worker;

/**
 * What a program (chatloop, chatloop-mock) plugs into a worker: its routes
 * and its per-worker services (curl multi, database pool, ...). Every hook
 * but build_routes may be NULL.
 */
typedef struct cl_worker_hooks {
    /** The program's route table for its protocol (opaque here), and how
     *  to free it at exit. */
    cl_router *(*build_routes)(const cl_config *cfg);
    void (*free_routes)(cl_router *r);
    /** A connection was accepted: give it its protocol (cl_http1_attach). */
    void (*on_accept)(cl_conn *c);
    /** After the loop exists, before accepting: set up w->app. 0 or -1. */
    int (*on_start)(cl_worker *w);
    /** SIGTERM/SIGINT: stop starting new work; running work may finish. */
    void (*on_drain)(cl_worker *w);
    /** The loop has stopped: close handles and free w->app (the loop is
     *  run once more afterwards to finish the closes). Also called after a
     *  failed or skipped on_start: it must accept a NULL or half-built app. */
    void (*on_stop)(cl_worker *w);
    /** Extra work the drain must wait for besides open connections
     *  (e.g. queued database writes): a count, 0 when done. */
    uint64_t (*pending_work)(cl_worker *w);
    /** A guarded route's request head is complete and a body follows
     *  (none of it read yet): check the request's credentials. 1 goes on;
     *  0 refuses: the hook has set r->refuse_status (and refuse_answer),
     *  the answer goes out and the connection closes with the body unread.
     *  Requests without a body are checked by guard_dispatch alone. */
    int (*guard_head)(cl_req *r, int guard);
    /** A guarded route's message is complete: run `fn` — now, or after an
     *  asynchronous check — or answer the request instead. */
    void (*guard_dispatch)(cl_req *r, int guard, void (*fn)(cl_req *r));
    /** GET /health: append the program's fields (`,"provider":{...}`) and
     *  return 0, or -1 when it is not ready (the answer is then 503). */
    int (*health)(cl_worker *w, cl_buf *out);
} cl_worker_hooks;

#define CL_READ_BUF_SIZE (64 * 1024)

typedef struct cl_worker {
    uv_loop_t *loop;
    const cl_config *cfg;
    int id;
    uv_tcp_t listener;
    uv_check_t flush_check;     /* flushes connection output and logs each iteration */
    uv_idle_t flush_idle;       /* active while output waits: keeps poll from blocking */
    int flush_pending;
    uv_signal_t sig_term, sig_int;
    uv_timer_t drain_timer;
    int draining;
    int listening;
    cl_conn *conns;             /* every open connection, for draining */
    cl_conn *dirty;             /* connections with output to flush */
    uint64_t nconns;
    uint64_t buffered;          /* bytes held for clients, all connections (max_buffered_bytes) */
    cl_router *router;          /* the program's routes (built by its hooks; read by http1.c) */
    struct cl_cors *cors;       /* cors_origins, compiled (read by http1.c and the ws upgrade) */
    const cl_worker_hooks *hooks;
    void *app;                  /* the program's per-worker state (hooks) */
    cl_metrics_slot *metrics;   /* this worker's slot in shared memory */
    char read_buf[CL_READ_BUF_SIZE]; /* shared by every connection: reads are consumed synchronously */
    int read_buf_busy;
    uint64_t started_ns;
    uint64_t request_seq;
    uint32_t request_id_prefix;
} cl_worker;

/**
 * Runs a worker until it has drained after SIGTERM/SIGINT. Binds its own
 * listening socket with SO_REUSEPORT. Returns the process exit code: 0 after
 * a clean drain, 2 when the listener cannot be set up (the supervisor treats
 * that as fatal, not as a crash to restart).
 */
int cl_worker_run(const cl_config *cfg, int id, cl_metrics_slot *metrics,
                  const cl_worker_hooks *hooks);

/** The worker whose loop is running in this process (one per process). */
cl_worker *cl_worker_current(void);

/**
 * Output was queued: make sure this loop iteration reaches the flush (the
 * check phase) without blocking in poll. Output queued from a timer or any
 * other non-I/O callback would otherwise wait for unrelated I/O.
 */
void cl_worker_wake_flush(cl_worker *w);

/** Called when draining work finishes: stops the loop once nothing is left. */
void cl_worker_maybe_stop(cl_worker *w);

/** Raises the open-files soft limit to the hard limit: every connection is a
 *  descriptor, and the usual 1024 would cap a worker far below what it can
 *  hold. Called once at startup. */
void cl_raise_fd_limit(void);

/** Opens a listening socket on cfg's address with SO_REUSEPORT set.
 *  Returns the fd, or -1 with err set. Used by workers and by the
 *  supervisor's startup check. `do_listen` 0 only binds. */
int cl_listen_socket(const cl_config *cfg, int do_listen, char *err, size_t errlen);

#endif
