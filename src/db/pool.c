/*
 * pool.c — the per-worker PostgreSQL pool on the loop (see db.h).
 *
 * Each connection is a small state machine:
 *
 *   DOWN ──timer──> CONNECTING ──PQconnectPoll OK──> IDLE <──> BUSY
 *     ^                 │ failed                        │ connection lost
 *     └──── backoff ────┴───────────────────────────────┘
 *
 * A query runs on one connection at a time: PQsendQueryParams, PQflush
 * until it returns 0 (watching for writability while it returns 1), then
 * PQconsumeInput / PQisBusy / PQgetResult until the NULL result. The socket
 * watch is a uv_poll_t allocated per PGconn (libpq may change sockets while
 * connecting), closed asynchronously and freed in its close callback.
 *
 * Callbacks never run from inside cl_db_exec: failures found there wait on
 * the `deferred` list, flushed by a 0 ms timer.
 */
#include "chatloop/db.h"
#include "chatloop/log.h"
#include "chatloop/worker.h"

#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
/* Durable writes queued back to back (after an outage, or under load) go
 * out as one pipeline of up to this many statements. */
#define MAX_BATCH 32
#define BACKOFF_MAX_MS 5000

typedef enum { PC_DOWN, PC_CONNECTING, PC_IDLE, PC_BUSY } pc_state;

typedef struct pollh {
    uv_poll_t h;
    struct pconn *pc;       /* NULL once detached (closing) */
} pollh;

typedef struct pconn {
    cl_db *db;
    int idx;
    PGconn *pg;
    pollh *poll;
    int fd;
    uv_timer_t timer;       /* reconnect backoff */
    pc_state state;
    /* The work on this connection: one query, or a pipelined batch of
     * durable writes (sent together, one round trip, results in order).
     * A batch is one implicit transaction (one sync at its end): nothing
     * in it is reported before that sync says whether it committed. */
    cl_db_query *batch[MAX_BATCH];
    PGresult *results[MAX_BATCH];   /* each query's last result, kept until settled */
    int nbatch;
    int cur;                /* the query whose results are being read */
    int pipeline;           /* in libpq pipeline mode */
    int flushing;           /* PQflush returned 1: wait for writability */
    uint64_t backoff_ms;
} pconn;

struct cl_db_query {
    cl_db *db;
    cl_db_query *next;
    cl_db_cb cb;
    void *ud;
    int flags;
    int cancelled;
    int nparams;
    const char **params;    /* point into the same allocation */
    char *sql;
    /* failure to report (deferred list) */
    int fail_unavailable;
    const char *fail_msg;
};

struct cl_db {
    uv_loop_t *loop;
    const cl_config *cfg;
    char *conninfo;
    pconn *conns;
    int n;
    int up;                 /* connections IDLE or BUSY */
    int ever_failed;        /* a connect attempt failed with nothing up: fail fast */
    cl_db_query *head, *tail;
    int queued_durable;
    int running_durable;
    cl_db_query *deferred;
    uv_timer_t defer_timer;
    int pending_closes;
    int closing;
};

static void pc_start_connect(pconn *pc);
static void pc_broken(pconn *pc, const char *why);
static void dispatch(cl_db *db);

/* ---- queries and their completion ------------------------------------------ */

static void query_free(cl_db_query *q)
{
    free(q);
}

/* A durable write has settled. A draining worker waits for these (its
 * pending_work counts them) but re-checks only when a connection closes:
 * after the last one, let it stop now rather than at drain_timeout.
 * (cl_worker_maybe_stop does nothing unless the worker is draining.) */
static void durable_settled(cl_db *db)
{
    if (db->queued_durable + db->running_durable > 0)
        return;
    cl_worker *w = cl_worker_current();
    if (w)
        cl_worker_maybe_stop(w);
}

static void finish(cl_db_query *q, PGresult *pg, int unavailable, const char *msg)
{
    cl_db *db = q->db;
    int durable = (q->flags & CL_DB_DURABLE) != 0;
    if (durable)
        db->running_durable--;
    if (!q->cancelled && q->cb) {
        cl_db_res r;
        memset(&r, 0, sizeof r);
        r.pg = pg;
        if (pg) {
            ExecStatusType st = PQresultStatus(pg);
            r.ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
            if (!r.ok) {
                r.error = PQresultErrorMessage(pg);
                const char *ss = PQresultErrorField(pg, PG_DIAG_SQLSTATE);
                if (ss)
                    snprintf(r.sqlstate, sizeof r.sqlstate, "%s", ss);
            }
        } else {
            r.unavailable = unavailable;
            r.error = msg ? msg : "database unavailable";
        }
        q->cb(q->ud, &r);
    }
    query_free(q);
    if (durable)
        durable_settled(db);
}

static void on_defer_timer(uv_timer_t *t)
{
    cl_db *db = t->data;
    while (db->deferred) {
        cl_db_query *list = db->deferred;
        db->deferred = NULL;
        /* reverse into submission order */
        cl_db_query *rev = NULL;
        while (list) {
            cl_db_query *n = list->next;
            list->next = rev;
            rev = list;
            list = n;
        }
        while (rev) {
            cl_db_query *q = rev;
            rev = q->next;
            finish(q, NULL, q->fail_unavailable, q->fail_msg);
        }
    }
}

static void fail_later(cl_db_query *q, int unavailable, const char *msg)
{
    cl_db *db = q->db;
    q->fail_unavailable = unavailable;
    q->fail_msg = msg;
    q->next = db->deferred;
    db->deferred = q;
    if (!db->closing)
        uv_timer_start(&db->defer_timer, on_defer_timer, 0, 0);
}

static void enqueue(cl_db *db, cl_db_query *q, int at_head)
{
    if (q->flags & CL_DB_DURABLE)
        db->queued_durable++;
    if (at_head) {
        q->next = db->head;
        db->head = q;
        if (!db->tail)
            db->tail = q;
    } else {
        q->next = NULL;
        if (db->tail)
            db->tail->next = q;
        else
            db->head = q;
        db->tail = q;
    }
}

static cl_db_query *dequeue(cl_db *db)
{
    cl_db_query *q = db->head;
    if (!q)
        return NULL;
    db->head = q->next;
    if (!db->head)
        db->tail = NULL;
    q->next = NULL;
    if (q->flags & CL_DB_DURABLE)
        db->queued_durable--;
    return q;
}

/* With nothing up after a failure, ordinary queries fail fast; durable ones
 * stay queued for the reconnect. */
static void fail_queued_ordinary(cl_db *db)
{
    cl_db_query *keep_head = NULL, *keep_tail = NULL, *q;
    while ((q = dequeue(db)) != NULL) {
        if (q->flags & CL_DB_DURABLE) {
            q->next = NULL;
            if (keep_tail)
                keep_tail->next = q;
            else
                keep_head = q;
            keep_tail = q;
            db->queued_durable++;
        } else {
            fail_later(q, 1, "database unavailable");
        }
    }
    db->head = keep_head;
    db->tail = keep_tail;
}

/* ---- socket watching ------------------------------------------------------------ */

static void on_poll(uv_poll_t *h, int status, int events);

static void free_pollh(uv_handle_t *h)
{
    free(h);
}

static void pc_unwatch(pconn *pc)
{
    if (!pc->poll)
        return;
    uv_poll_stop(&pc->poll->h);
    pc->poll->pc = NULL;
    uv_close((uv_handle_t *)&pc->poll->h, free_pollh);
    pc->poll = NULL;
    pc->fd = -1;
}

static int pc_watch(pconn *pc, int events)
{
    int fd = PQsocket(pc->pg);
    if (fd < 0)
        return -1;
    if (pc->poll && pc->fd != fd)
        pc_unwatch(pc);
    if (!pc->poll) {
        pollh *ph = calloc(1, sizeof *ph);
        if (!ph)
            return -1;
        if (uv_poll_init_socket(pc->db->loop, &ph->h, fd) != 0) {
            free(ph);
            return -1;
        }
        ph->pc = pc;
        ph->h.data = ph;
        pc->poll = ph;
        pc->fd = fd;
    }
    return uv_poll_start(&pc->poll->h, events, on_poll);
}

/* ---- running a query ---------------------------------------------------------------- */

static void pc_idle(pconn *pc)
{
    pc->state = PC_IDLE;
    pc->nbatch = pc->cur = 0;
    pc->flushing = 0;
    /* watch for the server closing on us while idle */
    if (pc_watch(pc, UV_READABLE) != 0)
        pc_broken(pc, "cannot watch the database socket");
}

/* Sends pc->batch: a single query plainly, several in pipeline mode with
 * one sync at the end. */
static void pc_send(pconn *pc)
{
    pc->state = PC_BUSY;
    pc->cur = 0;
    for (int i = 0; i < pc->nbatch; i++)
        if (pc->batch[i]->flags & CL_DB_DURABLE)
            pc->db->running_durable++;
    pc->pipeline = pc->nbatch > 1;
    if (pc->pipeline && !PQenterPipelineMode(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg));
        return;
    }
    for (int i = 0; i < pc->nbatch; i++) {
        cl_db_query *q = pc->batch[i];
        if (!PQsendQueryParams(pc->pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0)) {
            pc_broken(pc, PQerrorMessage(pc->pg));
            return;
        }
    }
    if (pc->pipeline && !PQpipelineSync(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg));
        return;
    }
    int f = PQflush(pc->pg);
    if (f < 0) {
        pc_broken(pc, PQerrorMessage(pc->pg));
        return;
    }
    pc->flushing = f == 1;
    if (pc_watch(pc, UV_READABLE | (pc->flushing ? UV_WRITABLE : 0)) != 0)
        pc_broken(pc, "cannot watch the database socket");
}

static void clear_results(pconn *pc)
{
    for (int i = 0; i < MAX_BATCH; i++) {
        if (pc->results[i]) {
            PQclear(pc->results[i]);
            pc->results[i] = NULL;
        }
    }
}

static int result_ok(const PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/* Reports what the connection ran, now that it is settled: one query, or
 * a batch whose sync has come back. A batch is one transaction, so a
 * statement that failed took the others with it — the ones before it are
 * rolled back, the ones after were skipped — and only the failed one is
 * reported; the others go back to the front of the queue, in order (they
 * are durable, hence idempotent). The connection is idle again first, so
 * callbacks may queue more work. */
static void pc_settle(pconn *pc)
{
    cl_db *db = pc->db;
    int n = pc->nbatch;
    cl_db_query *qs[MAX_BATCH];
    PGresult *rs[MAX_BATCH];
    memcpy(qs, pc->batch, sizeof qs);
    memcpy(rs, pc->results, sizeof rs);
    memset(pc->batch, 0, sizeof pc->batch);
    memset(pc->results, 0, sizeof pc->results);
    pc_idle(pc);
    int failed = -1;
    for (int i = 0; n > 1 && i < n && failed < 0; i++)
        if (!result_ok(rs[i]))
            failed = i;
    if (failed >= 0) {
        if (PQresultStatus(rs[failed]) == PGRES_PIPELINE_ABORTED)
            failed = -1;    /* no statement reported the error: send them all again */
        for (int i = n - 1; i >= 0; i--) {  /* back to front: order kept */
            if (i == failed)
                continue;
            if (qs[i]->flags & CL_DB_DURABLE)
                db->running_durable--;
            enqueue(db, qs[i], 1);
            PQclear(rs[i]);
        }
        if (failed >= 0) {
            finish(qs[failed], rs[failed], 0, NULL);
            PQclear(rs[failed]);
        }
    } else {
        for (int i = 0; i < n; i++) {
            finish(qs[i], rs[i], 0, NULL);
            PQclear(rs[i]);
        }
    }
    dispatch(db);
}

static void pc_read(pconn *pc)
{
    if (!PQconsumeInput(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg));
        return;
    }
    if (pc->state != PC_BUSY) {
        /* idle: notices or the server going away */
        if (PQstatus(pc->pg) == CONNECTION_BAD)
            pc_broken(pc, "the database closed the connection");
        return;
    }
    while (!PQisBusy(pc->pg)) {
        PGresult *res = PQgetResult(pc->pg);
        if (pc->pipeline && res && PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            /* the batch's transaction is over: committed, or rolled back */
            PQclear(res);
            PQexitPipelineMode(pc->pg);
            pc->pipeline = 0;
            pc_settle(pc);
            return;
        }
        if (!res) {
            if (!pc->pipeline) {
                pc_settle(pc);  /* after ReadyForQuery: settled */
                return;
            }
            if (pc->cur < pc->nbatch)
                pc->cur++;      /* the next results belong to the next query */
            continue;           /* nothing more until the sync result */
        }
        if (pc->cur >= pc->nbatch) {
            PQclear(res);       /* not expected: no query is waiting for it */
            continue;
        }
        if (pc->results[pc->cur])
            PQclear(pc->results[pc->cur]);
        pc->results[pc->cur] = res;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pollh *ph = h->data;
    pconn *pc = ph->pc;
    if (!pc)
        return;
    if (status < 0) {
        pc_broken(pc, uv_strerror(status));
        return;
    }
    if (pc->state == PC_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(pc->pg);
        switch (st) {
        case PGRES_POLLING_READING:
            if (pc_watch(pc, UV_READABLE) != 0)
                pc_broken(pc, "cannot watch the database socket");
            return;
        case PGRES_POLLING_WRITING:
            if (pc_watch(pc, UV_WRITABLE) != 0)
                pc_broken(pc, "cannot watch the database socket");
            return;
        case PGRES_POLLING_OK:
            if (PQsetnonblocking(pc->pg, 1) != 0) {
                pc_broken(pc, "cannot make the connection non-blocking");
                return;
            }
            pc->backoff_ms = 0;
            pc->db->up++;
            if (pc->db->ever_failed)
                CL_INFO("database connection %d is back", pc->idx);
            pc_idle(pc);
            dispatch(pc->db);
            return;
        default:
            pc_broken(pc, PQerrorMessage(pc->pg));
            return;
        }
    }
    if ((events & UV_WRITABLE) && pc->flushing) {
        int f = PQflush(pc->pg);
        if (f < 0) {
            pc_broken(pc, PQerrorMessage(pc->pg));
            return;
        }
        pc->flushing = f == 1;
        if (!pc->flushing && pc_watch(pc, UV_READABLE) != 0) {
            pc_broken(pc, "cannot watch the database socket");
            return;
        }
    }
    if (events & UV_READABLE)
        pc_read(pc);
}

/* ---- connection lifecycle ------------------------------------------------------------ */

static void on_reconnect_timer(uv_timer_t *t)
{
    pc_start_connect(t->data);
}

static void pc_broken(pconn *pc, const char *why)
{
    cl_db *db = pc->db;
    int was_up = pc->state == PC_IDLE || pc->state == PC_BUSY;
    int busy = pc->state == PC_BUSY;
    clear_results(pc);
    char msg[200];
    snprintf(msg, sizeof msg, "%s", why && *why ? why : "connection failed");
    msg[strcspn(msg, "\n")] = '\0';
    if (was_up) {
        db->up--;
        CL_WARN("database connection %d lost: %s", pc->idx, msg);
    } else if (!db->ever_failed || pc->backoff_ms >= BACKOFF_MAX_MS) {
        CL_WARN("database connection %d failed: %s", pc->idx, msg);
    }
    pc_unwatch(pc);
    if (pc->pg) {
        PQfinish(pc->pg);
        pc->pg = NULL;
    }
    pc->state = PC_DOWN;
    pc->pipeline = 0;
    /* what was on the connection (none of it reported yet: a batch is
     * settled at its sync): durable writes are sent again once a
     * connection is back (they are idempotent); the rest fail */
    for (int i = pc->nbatch - 1; busy && i >= 0; i--) { /* back to front: order kept */
        cl_db_query *q = pc->batch[i];
        pc->batch[i] = NULL;
        if (q->flags & CL_DB_DURABLE) {
            db->running_durable--;
            enqueue(db, q, 1);
        } else {
            fail_later(q, 1, "the database connection was lost");
        }
    }
    pc->nbatch = pc->cur = 0;
    if (db->up == 0) {
        db->ever_failed = 1;
        fail_queued_ordinary(db);
    }
    if (db->closing)
        return;
    pc->backoff_ms = pc->backoff_ms ? pc->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (pc->backoff_ms > BACKOFF_MAX_MS)
        pc->backoff_ms = BACKOFF_MAX_MS;
    uv_timer_start(&pc->timer, on_reconnect_timer, pc->backoff_ms, 0);
    /* other connections may be idle and able to take the requeued work */
    dispatch(db);
}

static void pc_start_connect(pconn *pc)
{
    pc->state = PC_CONNECTING;
    pc->pg = PQconnectStart(pc->db->conninfo);
    if (!pc->pg || PQstatus(pc->pg) == CONNECTION_BAD) {
        pc_broken(pc, pc->pg ? PQerrorMessage(pc->pg) : "out of memory");
        return;
    }
    /* Per libpq's docs, start as if PQconnectPoll had asked for writing. */
    if (pc_watch(pc, UV_WRITABLE) != 0)
        pc_broken(pc, "cannot watch the database socket");
}

static void dispatch(cl_db *db)
{
    for (int i = 0; i < db->n && db->head; i++) {
        pconn *pc = &db->conns[i];
        if (pc->state != PC_IDLE)
            continue;
        cl_db_query *q = dequeue(db);
        if (q->cancelled && !(q->flags & CL_DB_DURABLE)) {
            query_free(q);
            i--; /* this connection is still idle */
            continue;
        }
        pc->batch[0] = q;
        pc->nbatch = 1;
        /* durable writes waiting back to back share one round trip */
        while ((q->flags & CL_DB_DURABLE) && pc->nbatch < MAX_BATCH && db->head &&
               (db->head->flags & CL_DB_DURABLE))
            pc->batch[pc->nbatch++] = dequeue(db);
        pc_send(pc);
    }
}

/* ---- public API ---------------------------------------------------------------------- */

cl_db *cl_db_new(uv_loop_t *loop, const cl_config *cfg)
{
    cl_db *db = calloc(1, sizeof *db);
    if (!db)
        return NULL;
    db->loop = loop;
    db->cfg = cfg;
    db->n = cfg->db_pool_size;
    db->conninfo = strdup(cfg->database_url);
    db->conns = calloc((size_t)db->n, sizeof *db->conns);
    if (!db->conninfo || !db->conns) {
        free(db->conninfo);
        free(db->conns);
        free(db);
        return NULL;
    }
    uv_timer_init(loop, &db->defer_timer);
    db->defer_timer.data = db;
    for (int i = 0; i < db->n; i++) {
        pconn *pc = &db->conns[i];
        pc->db = db;
        pc->idx = i;
        pc->fd = -1;
        uv_timer_init(loop, &pc->timer);
        pc->timer.data = pc;
        pc_start_connect(pc);
    }
    return db;
}

/* The timers live inside db (and db->conns): free only after the last
 * close callback. Every handle's data leads back to db. */
static void on_db_handle_closed(uv_handle_t *h)
{
    cl_db *db = h->data;
    if (--db->pending_closes > 0)
        return;
    free(db->conns);
    free(db->conninfo);
    free(db);
}

void cl_db_free(cl_db *db)
{
    if (!db)
        return;
    db->closing = 1;
    for (int i = 0; i < db->n; i++) {
        pconn *pc = &db->conns[i];
        for (int k = 0; k < pc->nbatch; k++)
            if (pc->batch[k])
                query_free(pc->batch[k]);
        pc->nbatch = pc->cur = 0;
        clear_results(pc);
        pc_unwatch(pc);
        if (pc->pg)
            PQfinish(pc->pg);
        pc->pg = NULL;
    }
    cl_db_query *q;
    while ((q = dequeue(db)) != NULL)
        query_free(q);
    while (db->deferred) {
        q = db->deferred;
        db->deferred = q->next;
        query_free(q);
    }
    db->pending_closes = db->n + 1;
    uv_close((uv_handle_t *)&db->defer_timer, on_db_handle_closed);
    for (int i = 0; i < db->n; i++) {
        db->conns[i].timer.data = db; /* closing: its callback needs only db */
        uv_close((uv_handle_t *)&db->conns[i].timer, on_db_handle_closed);
    }
}

cl_db_query *cl_db_exec(cl_db *db, const char *sql, int nparams, const char *const *params,
                        int flags, cl_db_cb cb, void *ud)
{
    int durable = (flags & CL_DB_DURABLE) != 0;
    if (durable && db->queued_durable + db->running_durable >= db->cfg->db_write_queue) {
        CL_ERROR("database write queue is full (%d writes waiting): refusing a write",
                 db->queued_durable + db->running_durable);
        return NULL;
    }
    /* one allocation: the query, the parameter pointers, then the texts */
    size_t size = sizeof(cl_db_query) + (size_t)nparams * sizeof(char *) + strlen(sql) + 1;
    for (int i = 0; i < nparams; i++)
        if (params[i])
            size += strlen(params[i]) + 1;
    cl_db_query *q = calloc(1, size);
    if (!q)
        return NULL;
    q->db = db;
    q->cb = cb;
    q->ud = ud;
    q->flags = flags;
    q->nparams = nparams;
    q->params = (const char **)(q + 1);
    char *p = (char *)(q->params + nparams);
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) {
            q->params[i] = NULL;
            continue;
        }
        size_t l = strlen(params[i]) + 1;
        memcpy(p, params[i], l);
        q->params[i] = p;
        p += l;
    }
    q->sql = p;
    memcpy(p, sql, strlen(sql) + 1);
    if (db->up == 0 && db->ever_failed && !durable) {
        fail_later(q, 1, "database unavailable");
        return q;
    }
    enqueue(db, q, 0);
    dispatch(db);
    return q;
}

void cl_db_cancel(cl_db_query *q)
{
    if (q)
        q->cancelled = 1;
}

int cl_db_available(const cl_db *db)
{
    return db && db->up > 0;
}

uint64_t cl_db_pending_durable(const cl_db *db)
{
    return db ? (uint64_t)(db->queued_durable + db->running_durable) : 0;
}
