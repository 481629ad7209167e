/**
 * db.h — PostgreSQL through libpq's asynchronous API on the worker's loop.
 *
 * A per-worker pool of db_pool_size connections. Each connection is driven
 * by a uv_poll_t on PQsocket: connect with PQconnectStartParams /
 * PQconnectPoll, send with PQsendQueryParams, flush until PQflush returns 0
 * (waiting for writability in between), read with PQconsumeInput / PQisBusy
 * / PQgetResult. No synchronous libpq call runs after startup (migrations
 * and the spool replay run before the workers fork). The database host name
 * is resolved with uv_getaddrinfo before every connect, so a managed
 * PostgreSQL that fails over to a new address is followed.
 *
 * Deadlines. Every query has one (db_query_timeout):
 *   - waiting in the queue: an ordinary query still queued after
 *     db_query_timeout fails with `timed_out`;
 *   - running: each pooled connection sets statement_timeout, so the server
 *     cancels a statement that runs longer (SQLSTATE 57014, reported as
 *     `timed_out`); and a client-side timer abandons a connection that does
 *     not answer at all within db_query_timeout + 1 s (per statement of a
 *     batch), or does not finish connecting within db_query_timeout;
 *   - the queue is bounded: past db_queue_max ordinary queries waiting, a
 *     new one fails at once (`unavailable`, "queue full").
 * Callers answer all of these with 503 DB_UNAVAILABLE (cl_db_error_reply).
 *
 * Outages. A broken connection is reopened with backoff (100 ms doubling to
 * 5 s). While no connection is up the database is "unavailable": ordinary
 * queries fail at once with `unavailable` set, but durable queries
 * (CL_DB_DURABLE) wait in a bounded queue (db_write_queue) and are sent —
 * again, if a connection died under them, or after a transient failure such
 * as a lock timeout — once the database is back. Durable queries must
 * therefore be idempotent (client-made UUIDs with ON CONFLICT DO NOTHING,
 * unique idempotency keys): a write that reached the server just before the
 * connection broke may be sent twice, and must be stored once.
 *
 * The spool. A durable write is also appended to the worker's spool file in
 * spool_dir (fdatasync'ed once per loop iteration) when it is queued while
 * the database is down, when the database goes down under it, when the
 * worker stops with it unsettled, or when its owner asks (cl_db_spool: a
 * turn whose answer the database has not confirmed quickly). A process that
 * dies with writes spooled loses none: the next worker of its slot adopts
 * the file, and the supervisor replays every file at startup.
 *
 * Every query is one SQL statement with $n parameters passed as text; all
 * SQL is parameterized. Atomic multi-row writes use one statement with
 * CTEs rather than a transaction across callbacks.
 *
 * Ownership: the pool owns results; a callback's cl_db_res (and its
 * PGresult) is valid only during the call. cl_db_cancel drops a query's
 * callbacks (the query itself may still run, and durable ones still will).
 */
#ifndef CHATLOOP_DB_H
#define CHATLOOP_DB_H

#include <libpq-fe.h>
#include <stdint.h>
#include <uv.h>

#include "chatloop/config.h"

typedef struct cl_db cl_db;
typedef struct cl_db_query cl_db_query;

typedef struct cl_db_res {
    PGresult *pg;           /* the last result of the statement; NULL on failure */
    int ok;                 /* PGRES_COMMAND_OK or PGRES_TUPLES_OK */
    int unavailable;        /* no connection could run it (down, queue full, out of time):
                             * answer DB_UNAVAILABLE */
    int timed_out;          /* with unavailable: it passed db_query_timeout */
    const char *error;      /* message when !ok (never contains parameters) */
    char sqlstate[6];       /* "23505" unique violation etc.; "" when none */
} cl_db_res;

typedef void (*cl_db_cb)(void *ud, const cl_db_res *res);

/* CL_DB_DURABLE: see "Outages" above. CL_DB_PREPARED: `sql` is a string
 * with static storage (a `static const char[]`); the pool prepares it once
 * per connection, recognised by its address, and then only sends the
 * parameters — PostgreSQL parses and plans it once, not on every call. */
enum { CL_DB_DURABLE = 1, CL_DB_PREPARED = 2 };

/** The worker's pool; `worker_id` names its spool file. NULL with err set
 *  (e.g. the spool file cannot be opened). */
cl_db *cl_db_new(uv_loop_t *loop, const cl_config *cfg, int worker_id, char *err, size_t errlen);
/** Closes connections. Unsettled durable writes are spooled first (when a
 *  spool exists), so a worker stopped mid-outage loses none; other queued
 *  queries are dropped (no callbacks). */
void cl_db_free(cl_db *db);

/**
 * Runs `sql` with `nparams` text parameters (NULL entries are SQL NULL).
 * The parameters are copied. `cb` may be NULL. Returns a handle for
 * cl_db_cancel / cl_db_spool, or NULL when the query was refused (out of
 * memory, or — for a durable write — db_write_queue is full); no callback
 * fires then. An ordinary query refused for a full queue or an outage
 * fails through its callback instead. The callback never runs before
 * cl_db_exec has returned.
 */
cl_db_query *cl_db_exec(cl_db *db, const char *sql, int nparams, const char *const *params,
                        int flags, cl_db_cb cb, void *ud);
void cl_db_cancel(cl_db_query *q);
/** The query goes on, its result to `cb(ud, ...)` instead (its owner is
 *  leaving but what the statement did must be seen to). */
void cl_db_redirect(cl_db_query *q, cl_db_cb cb, void *ud);

/**
 * For a durable write not yet confirmed: make it durable on disk now.
 * `cb(ud, 1)` fires (never inside this call) once its spool record is
 * fdatasync'ed, `cb(ud, 0)` when there is no spool or the disk refused; it
 * does not fire if the query's own callback (the database's answer) comes
 * first, or after cl_db_cancel.
 */
void cl_db_spool(cl_db_query *q, void (*cb)(void *ud, int ok), void *ud);

/** At least one connection is up (for /health and fail-fast). */
int cl_db_available(const cl_db *db);
/** Durable writes waiting or running (graceful shutdown waits for these). */
uint64_t cl_db_pending_durable(const cl_db *db);

typedef struct cl_db_stats {
    int size;                   /* db_pool_size */
    int up;                     /* connections open */
    int busy;                   /* connections running a query */
    int queued;                 /* ordinary queries waiting for a connection */
    uint64_t pending_writes;    /* durable writes queued or running */
    int spooled;                /* spool records not yet stored */
    uint64_t oldest_wait_ms;    /* the longest a queued query has waited */
    uint64_t timeouts;          /* queries that passed db_query_timeout, ever */
    uint64_t errors_unavailable; /* results that failed for want of the database, ever */
    uint64_t errors_refused;    /* results the database refused (an SQL error), ever */
    int timing_out;             /* one did within the last 2 × db_query_timeout */
} cl_db_stats;

void cl_db_get_stats(const cl_db *db, cl_db_stats *out);

/* Reading results (row, column): NULL for SQL NULL. */
static inline int cl_db_rows(const cl_db_res *r) { return r->pg ? PQntuples(r->pg) : 0; }
static inline const char *cl_db_get(const cl_db_res *r, int row, int col)
{
    return PQgetisnull(r->pg, row, col) ? NULL : PQgetvalue(r->pg, row, col);
}

/**
 * Applies the embedded migrations (src/db/migrations.c) that are not yet in
 * schema_migrations, all in one transaction under an advisory lock, so
 * several starting instances do not race. Synchronous: call it at startup,
 * before workers exist. Returns 0, or -1 with err set.
 */
int cl_db_migrate(const char *database_url, char *err, size_t errlen);

/**
 * At startup, in the supervisor: creates spool_dir, locks it for this
 * instance (waiting up to lock_wait_ms for a previous instance's draining
 * workers; the lock fd is returned and stays open for the process's life)
 * and stores every record the previous run left in it (synchronous libpq,
 * each statement bounded by query_timeout_ms). A record the database
 * refuses is logged and its file kept as "*.rejected-<time>"; a write that
 * times out or loses its connection stops the replay (the file stays for
 * the next start). Returns 0, or -1 with err set.
 */
int cl_db_spool_prepare(const char *dir, const char *database_url, uint64_t lock_wait_ms,
                        uint64_t query_timeout_ms, int *lock_fd, char *err, size_t errlen);

#endif
