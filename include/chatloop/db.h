/**
 * db.h — PostgreSQL through libpq's asynchronous API on the worker's loop.
 *
 * A per-worker pool of db_pool_size connections. Each connection is driven
 * by a uv_poll_t on PQsocket: connect with PQconnectStart/PQconnectPoll,
 * send with PQsendQueryParams, flush until PQflush returns 0 (waiting for
 * writability in between), read with PQconsumeInput/PQisBusy/PQgetResult.
 * No synchronous libpq call runs after startup (migrations run before the
 * workers fork, see cl_db_migrate).
 *
 * Queries queue when every connection is busy. A broken connection is
 * reopened with backoff (100 ms doubling to 5 s). While no connection is up
 * the database is "unavailable": ordinary queries fail at once with
 * `unavailable` set (the caller answers DB_UNAVAILABLE), but queries sent
 * with CL_DB_DURABLE wait in a bounded queue (db_write_queue) and are sent
 * — again, if a connection died under them — once the database is back.
 * Durable queries must therefore be idempotent (client-made UUIDs with
 * ON CONFLICT DO NOTHING, unique idempotency keys): a write that reached
 * the server just before the connection broke may be sent twice, and must
 * be stored once.
 *
 * Every query is one SQL statement with $n parameters passed as text; all
 * SQL is parameterized. Atomic multi-row writes use one statement with
 * CTEs rather than a transaction across callbacks.
 *
 * Ownership: the pool owns results; a callback's cl_db_res (and its
 * PGresult) is valid only during the call. cl_db_cancel drops a query's
 * callback (the query itself may still run, and durable ones still will).
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
    int unavailable;        /* no connection could run it: answer DB_UNAVAILABLE */
    const char *error;      /* message when !ok (never contains parameters) */
    char sqlstate[6];       /* "23505" unique violation etc.; "" when none */
} cl_db_res;

typedef void (*cl_db_cb)(void *ud, const cl_db_res *res);

enum { CL_DB_DURABLE = 1 };

cl_db *cl_db_new(uv_loop_t *loop, const cl_config *cfg);
/** Closes connections; queued queries are dropped (no callbacks). */
void cl_db_free(cl_db *db);

/**
 * Runs `sql` with `nparams` text parameters (NULL entries are SQL NULL).
 * The parameters are copied. `cb` may be NULL. Returns a handle for
 * cl_db_cancel, or NULL when the query was refused (out of memory, or the
 * durable queue is full); no callback fires then.
 * The callback never runs before cl_db_exec has returned.
 */
cl_db_query *cl_db_exec(cl_db *db, const char *sql, int nparams, const char *const *params,
                        int flags, cl_db_cb cb, void *ud);
void cl_db_cancel(cl_db_query *q);

/** At least one connection is up (for /health and fail-fast). */
int cl_db_available(const cl_db *db);
/** Durable writes waiting or running (graceful shutdown waits for these). */
uint64_t cl_db_pending_durable(const cl_db *db);

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

#endif
