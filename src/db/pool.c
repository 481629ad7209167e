/*
 * pool.c — the per-worker PostgreSQL pool on the loop (see db.h).
 *
 * Each connection is a state machine with one setter (pc_set_state), which
 * checks the transition against pc_next[] and runs the state's entry work:
 *
 *   DOWN ──backoff──> RESOLVING ──address──> CONNECTING ──ready──> IDLE <──> BUSY
 *     ^                   │ (host is a name)     │                  │        │
 *     │                   └──────────────────────┴──────────────────┴────────┘
 *     └──────────────────────── failed, lost, or out of time ─────────────────┘
 *
 * The connection's one timer is the backoff in DOWN and the deadline in
 * RESOLVING, CONNECTING and BUSY (STYLE 4: it lives in the connection and
 * stops in its one close path).
 *
 * A query runs on one connection at a time: PQsendQueryParams, PQflush
 * until it returns 0 (watching for writability while it returns 1), then
 * PQconsumeInput / PQisBusy / PQgetResult until the NULL result. Durable
 * writes queued back to back go out as one pipeline. The socket watch is a
 * uv_poll_t allocated per PGconn (libpq may change sockets while
 * connecting), closed asynchronously and freed in its close callback; a
 * getaddrinfo request is likewise detached when its connection gives up.
 *
 * Callbacks never run from inside cl_db_exec: failures found there wait on
 * the `deferred` list, flushed by a 0 ms timer.
 */
#include "chatloop/db.h"
#include "chatloop/log.h"
#include "chatloop/worker.h"
#include "db_internal.h"
#include "spool.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* Durable writes queued back to back (after an outage, or under load) go
 * out as one pipeline of up to this many statements. */
#define MAX_BATCH 32
/* How much longer than statement_timeout the client waits for an answer
 * before it gives the connection up: the server's own cancel comes first. */
#define CLIENT_GRACE_MS 1000
/* Queued queries are checked against their deadline this often. */
#define SWEEP_MS 100
#define MAX_CONNINFO 40
/* Statements prepared per connection (CL_DB_PREPARED): one bit each. */
#define MAX_PREPARED 64

typedef enum { PC_DOWN, PC_RESOLVING, PC_CONNECTING, PC_IDLE, PC_BUSY, PC__COUNT } pc_state;

static const char *const pc_state_name[PC__COUNT] = {"DOWN", "RESOLVING", "CONNECTING", "IDLE",
                                                     "BUSY"};

#define B(s) (1u << (s))
/* Legal transitions: pc_next[from] has bit `to` set. */
static const unsigned pc_next[PC__COUNT] = {
    [PC_DOWN] = B(PC_RESOLVING) | B(PC_CONNECTING) | B(PC_DOWN),
    [PC_RESOLVING] = B(PC_CONNECTING) | B(PC_DOWN),
    [PC_CONNECTING] = B(PC_IDLE) | B(PC_DOWN),
    [PC_IDLE] = B(PC_BUSY) | B(PC_DOWN),
    [PC_BUSY] = B(PC_IDLE) | B(PC_DOWN),
};
#undef B

typedef struct pollh {
    uv_poll_t h;
    struct pconn *pc;       /* NULL once detached (closing) */
} pollh;

typedef struct resolveh {
    uv_getaddrinfo_t req;
    struct pconn *pc;       /* NULL once detached: the callback only frees */
} resolveh;

typedef struct pconn {
    cl_db *db;
    int idx;
    PGconn *pg;
    pollh *poll;
    resolveh *resolve;
    int fd;
    uv_timer_t timer;       /* backoff in DOWN, deadline otherwise */
    pc_state state;
    char hostaddr[INET6_ADDRSTRLEN];
    /* The work on this connection: one query, or a pipelined batch of
     * durable writes (sent together, one round trip, results in order).
     * A batch is one implicit transaction (one sync at its end): nothing
     * in it is reported before that sync says whether it committed. */
    cl_db_query *batch[MAX_BATCH];
    PGresult *results[MAX_BATCH];   /* each query's last result, kept until settled */
    int nbatch;
    /* What was sent, in order: a query's index in batch, or -(i + 1) for
     * the Parse that prepares batch[i]'s statement first. */
    int seq[2 * MAX_BATCH];
    int nseq;
    int cur;                /* the entry of seq whose results are being read */
    uint64_t prepared;      /* statements this PGconn has prepared (db->stmts bits) */
    int pipeline;           /* in libpq pipeline mode */
    int flushing;           /* PQflush returned 1: wait for writability */
    uint64_t backoff_ms;
} pconn;

struct cl_db_query {
    cl_db *db;
    cl_db_query *next;
    cl_db_query *next_sync;     /* on db->unsynced: its spool record awaits the sync */
    cl_db_cb cb;
    void *ud;
    void (*spool_cb)(void *ud, int ok);
    void *spool_ud;
    int flags;
    int nparams;
    const char **params;        /* point into the same allocation */
    char *sql;
    int stmt;               /* CL_DB_PREPARED: its index in db->stmts, else -1 */
    uint64_t enqueued_ms;
    uint8_t cancelled;
    uint8_t spooled;            /* a record of it is in the spool (or about to be) */
    uint8_t on_sync_list;
    /* failure to report (deferred list) */
    uint8_t fail_unavailable, fail_timed_out;
    const char *fail_msg;
};

struct cl_db {
    uv_loop_t *loop;
    const cl_config *cfg;
    /* connection parameters: the URL's own, statement_timeout added */
    const char *kw[MAX_CONNINFO + 2];
    const char *val[MAX_CONNINFO + 2];
    int nkw;
    int hostaddr_slot;          /* index in kw/val where hostaddr goes, or -1 */
    char *resolve_host;         /* a host name to look up before each connect, or NULL */
    PQconninfoOption *opts;     /* owns the parsed values */
    char *options;              /* owns the "options" value */
    pconn *conns;
    int n;
    int up;                     /* connections IDLE or BUSY */
    int busy;
    int ever_failed;            /* a connect attempt failed with nothing up: fail fast */
    cl_db_query *head, *tail;
    int queued_ordinary;
    int queued_durable;
    int running_durable;
    cl_db_query *deferred;
    uv_timer_t defer_timer;
    uv_timer_t sweep_timer;     /* queue deadlines */
    uv_timer_t sync_timer;      /* the spool's once-per-iteration fdatasync */
    cl_spool *spool;            /* NULL when spool_dir is empty */
    cl_db_query *unsynced;      /* queries whose records wait for the next sync */
    uint64_t timeouts;
    uint64_t last_timeout_ms;
    uint64_t errors_unavailable;    /* failed results, by kind (cl_db_stats) */
    uint64_t errors_refused;
    const char *stmts[MAX_PREPARED];    /* CL_DB_PREPARED statements, by identity */
    int nstmts;
    int pending_closes;
    int closing;
};

static void pc_set_state(pconn *pc, pc_state to);
static void pc_broken(pconn *pc, const char *why, int timed_out);
static void dispatch(cl_db *db);
static void spool_query(cl_db_query *q);

static uint64_t now_ms(const cl_db *db)
{
    return uv_now(db->loop);
}

/* ---- queries and their completion ------------------------------------------ */

static void unlink_sync(cl_db_query *q)
{
    if (!q->on_sync_list)
        return;
    for (cl_db_query **p = &q->db->unsynced; *p; p = &(*p)->next_sync) {
        if (*p == q) {
            *p = q->next_sync;
            break;
        }
    }
    q->on_sync_list = 0;
    q->next_sync = NULL;
}

static void query_free(cl_db_query *q)
{
    unlink_sync(q);
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

static void note_timeout(cl_db *db)
{
    db->timeouts++;
    db->last_timeout_ms = now_ms(db);
    if (!db->last_timeout_ms)
        db->last_timeout_ms = 1;
}

static void finish(cl_db_query *q, PGresult *pg, int unavailable, int timed_out, const char *msg)
{
    cl_db *db = q->db;
    int durable = (q->flags & CL_DB_DURABLE) != 0;
    if (durable)
        db->running_durable--;
    if (q->spooled && db->spool)
        cl_spool_settled(db->spool, 1);
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
                if (strcmp(r.sqlstate, "57014") == 0) {
                    /* statement_timeout: the server gave up on it */
                    r.unavailable = r.timed_out = 1;
                    r.error = "the database did not answer within db_query_timeout";
                }
            }
        } else {
            r.unavailable = unavailable;
            r.timed_out = timed_out;
            r.error = msg ? msg : "database unavailable";
        }
        if (!r.ok) {
            if (r.unavailable)
                db->errors_unavailable++;
            else
                db->errors_refused++;
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
            finish(q, NULL, q->fail_unavailable, q->fail_timed_out, q->fail_msg);
        }
    }
}

static void fail_later(cl_db_query *q, int timed_out, const char *msg)
{
    cl_db *db = q->db;
    q->fail_unavailable = 1;
    q->fail_timed_out = (uint8_t)timed_out;
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
    else
        db->queued_ordinary++;
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

/* Removes q from the queue (prev is its predecessor, or NULL for the head). */
static void unqueue(cl_db *db, cl_db_query *prev, cl_db_query *q)
{
    if (prev)
        prev->next = q->next;
    else
        db->head = q->next;
    if (db->tail == q)
        db->tail = prev;
    q->next = NULL;
    if (q->flags & CL_DB_DURABLE)
        db->queued_durable--;
    else
        db->queued_ordinary--;
}

static cl_db_query *dequeue(cl_db *db)
{
    cl_db_query *q = db->head;
    if (q)
        unqueue(db, NULL, q);
    return q;
}

/* With nothing up after a failure, ordinary queries fail fast; durable ones
 * stay queued for the reconnect, and go to the spool. */
static void outage_begins(cl_db *db)
{
    cl_db_query *prev = NULL, *q = db->head;
    while (q) {
        cl_db_query *next = q->next;
        if (q->flags & CL_DB_DURABLE) {
            spool_query(q);
            prev = q;
        } else {
            unqueue(db, prev, q);
            fail_later(q, 0, "database unavailable");
        }
        q = next;
    }
}

/* Ordinary queries that waited past db_query_timeout fail; the queue is
 * bounded (db_queue_max), so the walk is too. */
static void on_sweep(uv_timer_t *t)
{
    cl_db *db = t->data;
    uint64_t now = now_ms(db), limit = db->cfg->db_query_timeout_ms;
    cl_db_query *prev = NULL, *q = db->head;
    while (q) {
        cl_db_query *next = q->next;
        if (!(q->flags & CL_DB_DURABLE) && (q->cancelled || now - q->enqueued_ms >= limit)) {
            unqueue(db, prev, q);
            if (q->cancelled) {
                query_free(q);
            } else {
                note_timeout(db);
                fail_later(q, 1, "the database did not answer within db_query_timeout "
                                 "(every connection was busy)");
            }
        } else {
            prev = q;
        }
        q = next;
    }
    if (db->queued_ordinary == 0)
        uv_timer_stop(&db->sweep_timer);
}

/* ---- the spool ------------------------------------------------------------------ */

static void on_sync_timer(uv_timer_t *t)
{
    cl_db *db = t->data;
    int ok = 1;
    if (db->spool && cl_spool_unsynced(db->spool) && cl_spool_sync(db->spool) != 0) {
        ok = 0;
        CL_ERROR("spool: cannot write to spool_dir; the acknowledgements waiting for it fail");
    }
    while (db->unsynced) {
        cl_db_query *q = db->unsynced;
        db->unsynced = q->next_sync;
        q->next_sync = NULL;
        q->on_sync_list = 0;
        if (!ok)
            q->spooled = 0;
        void (*cb)(void *, int) = q->spool_cb;
        q->spool_cb = NULL;
        if (cb && !q->cancelled)
            cb(q->spool_ud, q->spooled);
    }
}

/* Appends q's record; the sync (and the callbacks waiting for it) runs
 * once per loop iteration for every record gathered. */
static void spool_query(cl_db_query *q)
{
    cl_db *db = q->db;
    if (!db->spool || q->spooled || !(q->flags & CL_DB_DURABLE))
        return;
    if (cl_spool_append(db->spool, q->sql, q->nparams, q->params) != 0) {
        CL_ERROR("spool: cannot record a write (out of memory)");
        return;
    }
    q->spooled = 1;
    q->on_sync_list = 1;
    q->next_sync = db->unsynced;
    db->unsynced = q;
    if (!db->closing)
        uv_timer_start(&db->sync_timer, on_sync_timer, 0, 0);
}

void cl_db_spool(cl_db_query *q, void (*cb)(void *ud, int ok), void *ud)
{
    cl_db *db = q->db;
    q->spool_cb = cb;
    q->spool_ud = ud;
    spool_query(q);
    /* Already on disk, or it cannot be (no spool, not durable, no memory):
     * either way the answer comes from the timer, never inside this call. */
    if (!q->on_sync_list) {
        q->on_sync_list = 1;
        q->next_sync = db->unsynced;
        db->unsynced = q;
    }
    if (!db->closing)
        uv_timer_start(&db->sync_timer, on_sync_timer, 0, 0);
}

static int adopt_record(void *ud, const char *sql, int nparams, const char *const *params);
static cl_db_query *query_new(cl_db *db, const char *sql, int nparams, const char *const *params,
                              int flags, cl_db_cb cb, void *ud);

/* ---- socket watching ------------------------------------------------------------ */

static void on_poll(uv_poll_t *h, int status, int events);

static void free_pollh(uv_handle_t *h)
{
    free(h->data);
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

/* ---- deadlines -------------------------------------------------------------------- */

static void on_pc_timer(uv_timer_t *t)
{
    pconn *pc = t->data;
    switch (pc->state) {
    case PC_DOWN:
        pc_set_state(pc, pc->db->resolve_host ? PC_RESOLVING : PC_CONNECTING);
        return;
    case PC_RESOLVING:
        pc_broken(pc, "resolving the database host took longer than db_query_timeout", 0);
        return;
    case PC_CONNECTING:
        pc_broken(pc, "connecting took longer than db_query_timeout", 0);
        return;
    case PC_BUSY:
        note_timeout(pc->db);
        pc_broken(pc, "the database did not answer within db_query_timeout", 1);
        return;
    default:
        return;
    }
}

/* ---- running a query ---------------------------------------------------------------- */

static void stmt_name(int idx, char out[16])
{
    snprintf(out, 16, "cl%d", idx);
}

/* Sends pc->batch: a single query plainly, several in pipeline mode with
 * one sync at the end. A prepared statement this connection has not
 * prepared yet goes as Parse + Execute in one pipeline: no extra round
 * trip, and the statement is parsed and analysed once per connection
 * instead of once per query (for the turn's CTE statements that was half
 * of PostgreSQL's CPU per turn). */
static void pc_send(pconn *pc)
{
    pc_set_state(pc, PC_BUSY);
    pc->cur = 0;
    pc->nseq = 0;
    uint64_t parsing = 0; /* one Parse per statement, even if the batch runs it twice */
    for (int i = 0; i < pc->nbatch; i++) {
        cl_db_query *q = pc->batch[i];
        if (q->flags & CL_DB_DURABLE)
            pc->db->running_durable++;
        if (q->stmt >= 0 && !((pc->prepared | parsing) & (1ull << q->stmt))) {
            parsing |= 1ull << q->stmt;
            pc->seq[pc->nseq++] = -(i + 1);
        }
        pc->seq[pc->nseq++] = i;
    }
    pc->pipeline = pc->nseq > 1;
    if (pc->pipeline && !PQenterPipelineMode(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg), 0);
        return;
    }
    for (int k = 0; k < pc->nseq; k++) {
        int e = pc->seq[k];
        cl_db_query *q = pc->batch[e >= 0 ? e : -e - 1];
        char name[16];
        if (q->stmt >= 0)
            stmt_name(q->stmt, name);
        int ok = e < 0    ? PQsendPrepare(pc->pg, name, q->sql, q->nparams, NULL)
                 : q->stmt >= 0 ? PQsendQueryPrepared(pc->pg, name, q->nparams, q->params, NULL,
                                                      NULL, 0)
                                : PQsendQueryParams(pc->pg, q->sql, q->nparams, NULL, q->params,
                                                    NULL, NULL, 0);
        if (!ok) {
            pc_broken(pc, PQerrorMessage(pc->pg), 0);
            return;
        }
    }
    if (pc->pipeline && !PQpipelineSync(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg), 0);
        return;
    }
    int f = PQflush(pc->pg);
    if (f < 0) {
        pc_broken(pc, PQerrorMessage(pc->pg), 0);
        return;
    }
    pc->flushing = f == 1;
    if (pc_watch(pc, UV_READABLE | (pc->flushing ? UV_WRITABLE : 0)) != 0)
        pc_broken(pc, "cannot watch the database socket", 0);
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

/* Failures a durable write survives by being sent again: the statement
 * ran out of time (a lock held too long), lost a serialization race or a
 * deadlock, or the server is shutting down. */
int cl_db__transient_sqlstate(const char *ss)
{
    if (!ss)
        return 0;
    return strcmp(ss, "57014") == 0 || strcmp(ss, "40001") == 0 || strcmp(ss, "40P01") == 0 ||
           strcmp(ss, "55P03") == 0 || strncmp(ss, "57P", 3) == 0 || strncmp(ss, "08", 2) == 0;
}

static int transient_failure(const PGresult *r)
{
    return r && cl_db__transient_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE));
}

/* Reports what the connection ran, now that it is settled: one query, or
 * a batch whose sync has come back. A batch is one transaction, so a
 * statement that failed took the others with it — the ones before it are
 * rolled back, the ones after were skipped — and only the failed one is
 * reported; the others go back to the front of the queue, in order (they
 * are durable, hence idempotent). A durable write that failed for a
 * transient reason goes back too. The connection is idle again first, so
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
    pc->nbatch = pc->cur = 0;
    pc_set_state(pc, PC_IDLE);
    int failed = -1;
    for (int i = 0; i < n && failed < 0; i++)
        if (!result_ok(rs[i]))
            failed = i;
    if (failed >= 0 && n > 1 && PQresultStatus(rs[failed]) == PGRES_PIPELINE_ABORTED)
        failed = -2;    /* no statement reported the error: send them all again */
    int retry_failed = failed >= 0 && (qs[failed]->flags & CL_DB_DURABLE) &&
                       transient_failure(rs[failed]);
    if (failed >= 0) {
        const char *ss = PQresultErrorField(rs[failed], PG_DIAG_SQLSTATE);
        if (ss && strcmp(ss, "57014") == 0)
            note_timeout(db); /* statement_timeout: the server gave up on it */
    }
    if (failed == -1) {
        for (int i = 0; i < n; i++) {
            finish(qs[i], rs[i], 0, 0, NULL);
            PQclear(rs[i]);
        }
    } else {
        for (int i = n - 1; i >= 0; i--) {  /* back to front: order kept */
            if (i == failed && !retry_failed)
                continue;
            if (qs[i]->flags & CL_DB_DURABLE)
                db->running_durable--;
            enqueue(db, qs[i], 1);
            PQclear(rs[i]);
        }
        if (failed >= 0 && !retry_failed) {
            finish(qs[failed], rs[failed], 0, 0, NULL);
            PQclear(rs[failed]);
        }
    }
    dispatch(db);
}

static void pc_read(pconn *pc)
{
    if (!PQconsumeInput(pc->pg)) {
        pc_broken(pc, PQerrorMessage(pc->pg), 0);
        return;
    }
    if (pc->state != PC_BUSY) {
        /* idle: notices or the server going away */
        if (PQstatus(pc->pg) == CONNECTION_BAD)
            pc_broken(pc, "the database closed the connection", 0);
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
            if (pc->cur < pc->nseq)
                pc->cur++;      /* the next results belong to the next command */
            continue;           /* nothing more until the sync result */
        }
        if (pc->cur >= pc->nseq) {
            PQclear(res);       /* not expected: no command is waiting for it */
            continue;
        }
        int e = pc->seq[pc->cur];
        if (e < 0) {
            /* a Parse: prepared for good (statements outlive transactions),
             * or its error becomes the query's (its Execute then fails too) */
            int qi = -e - 1;
            if (PQresultStatus(res) == PGRES_COMMAND_OK) {
                pc->prepared |= 1ull << pc->batch[qi]->stmt;
                PQclear(res);
            } else if (!pc->results[qi]) {
                pc->results[qi] = res;
            } else {
                PQclear(res);
            }
            continue;
        }
        if (pc->results[e] && !result_ok(pc->results[e]) &&
            PQresultStatus(res) == PGRES_PIPELINE_ABORTED) {
            PQclear(res);       /* keep the Parse's error: it says why */
            continue;
        }
        if (pc->results[e])
            PQclear(pc->results[e]);
        pc->results[e] = res;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pollh *ph = h->data;
    pconn *pc = ph->pc;
    if (!pc)
        return;
    if (status < 0) {
        pc_broken(pc, uv_strerror(status), 0);
        return;
    }
    if (pc->state == PC_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(pc->pg);
        switch (st) {
        case PGRES_POLLING_READING:
            if (pc_watch(pc, UV_READABLE) != 0)
                pc_broken(pc, "cannot watch the database socket", 0);
            return;
        case PGRES_POLLING_WRITING:
            if (pc_watch(pc, UV_WRITABLE) != 0)
                pc_broken(pc, "cannot watch the database socket", 0);
            return;
        case PGRES_POLLING_OK:
            if (PQsetnonblocking(pc->pg, 1) != 0) {
                pc_broken(pc, "cannot make the connection non-blocking", 0);
                return;
            }
            pc->backoff_ms = 0;
            if (pc->db->ever_failed)
                CL_INFO("database connection %d is back", pc->idx);
            pc_set_state(pc, PC_IDLE);
            dispatch(pc->db);
            return;
        default:
            pc_broken(pc, PQerrorMessage(pc->pg), 0);
            return;
        }
    }
    if ((events & UV_WRITABLE) && pc->flushing) {
        int f = PQflush(pc->pg);
        if (f < 0) {
            pc_broken(pc, PQerrorMessage(pc->pg), 0);
            return;
        }
        pc->flushing = f == 1;
        if (!pc->flushing && pc_watch(pc, UV_READABLE) != 0) {
            pc_broken(pc, "cannot watch the database socket", 0);
            return;
        }
    }
    if (events & UV_READABLE)
        pc_read(pc);
}

/* ---- connection lifecycle ------------------------------------------------------------ */

static void start_connect(pconn *pc)
{
    cl_db *db = pc->db;
    if (db->hostaddr_slot >= 0) {
        db->val[db->hostaddr_slot] = pc->hostaddr;
        db->kw[db->hostaddr_slot] = "hostaddr";
        db->kw[db->hostaddr_slot + 1] = NULL;
    }
    pc->prepared = 0; /* a new session has prepared nothing */
    pc->pg = PQconnectStartParams(db->kw, db->val, 0);
    if (db->hostaddr_slot >= 0)
        db->kw[db->hostaddr_slot] = NULL;
    if (!pc->pg || PQstatus(pc->pg) == CONNECTION_BAD) {
        pc_broken(pc, pc->pg ? PQerrorMessage(pc->pg) : "out of memory", 0);
        return;
    }
    /* Per libpq's docs, start as if PQconnectPoll had asked for writing. */
    if (pc_watch(pc, UV_WRITABLE) != 0)
        pc_broken(pc, "cannot watch the database socket", 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    resolveh *rh = req->data;
    pconn *pc = rh->pc;
    free(rh);
    if (!pc) {
        uv_freeaddrinfo(res);
        return;
    }
    pc->resolve = NULL;
    char ip[INET6_ADDRSTRLEN] = "";
    for (struct addrinfo *a = status == 0 ? res : NULL; a && !ip[0]; a = a->ai_next) {
        if (a->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, ip, sizeof ip);
        else if (a->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, ip, sizeof ip);
    }
    uv_freeaddrinfo(res);
    if (!ip[0]) {
        char why[200];
        snprintf(why, sizeof why, "cannot resolve the database host %s: %s", pc->db->resolve_host,
                 status ? uv_strerror(status) : "no address");
        pc_broken(pc, why, 0);
        return;
    }
    memcpy(pc->hostaddr, ip, sizeof ip);
    pc_set_state(pc, PC_CONNECTING);
}

static void start_resolve(pconn *pc)
{
    resolveh *rh = calloc(1, sizeof *rh);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    if (!rh) {
        pc_broken(pc, "out of memory", 0);
        return;
    }
    rh->pc = pc;
    rh->req.data = rh;
    if (uv_getaddrinfo(pc->db->loop, &rh->req, on_resolved, pc->db->resolve_host, NULL, &hints) !=
        0) {
        free(rh);
        pc_broken(pc, "cannot start resolving the database host", 0);
        return;
    }
    pc->resolve = rh;
}

static void pc_detach_resolve(pconn *pc)
{
    if (!pc->resolve)
        return;
    pc->resolve->pc = NULL; /* its callback frees it */
    uv_cancel((uv_req_t *)&pc->resolve->req);
    pc->resolve = NULL;
}

/* The setter: checks the transition, logs it, runs the entry work. */
static void pc_set_state(pconn *pc, pc_state to)
{
    cl_db *db = pc->db;
    pc_state from = pc->state;
    assert(pc_next[from] & (1u << to));
    if (!(pc_next[from] & (1u << to))) {
        CL_ERROR("database connection %d: illegal transition %s -> %s", pc->idx,
                 pc_state_name[from], pc_state_name[to]);
        return;
    }
    CL_DEBUG("database connection %d: %s -> %s", pc->idx, pc_state_name[from], pc_state_name[to]);
    int was_up = from == PC_IDLE || from == PC_BUSY;
    int is_up = to == PC_IDLE || to == PC_BUSY;
    db->up += is_up - was_up;
    db->busy += (to == PC_BUSY) - (from == PC_BUSY);
    pc->state = to;
    uint64_t limit = db->cfg->db_query_timeout_ms;
    switch (to) {
    case PC_DOWN:
        if (db->closing)
            return;
        pc->backoff_ms = pc->backoff_ms ? pc->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (pc->backoff_ms > BACKOFF_MAX_MS)
            pc->backoff_ms = BACKOFF_MAX_MS;
        uv_timer_start(&pc->timer, on_pc_timer, pc->backoff_ms, 0);
        return;
    case PC_RESOLVING:
        uv_timer_start(&pc->timer, on_pc_timer, limit, 0);
        start_resolve(pc);
        return;
    case PC_CONNECTING:
        uv_timer_start(&pc->timer, on_pc_timer, limit, 0);
        start_connect(pc);
        return;
    case PC_IDLE:
        uv_timer_stop(&pc->timer);
        pc->flushing = 0;
        /* watch for the server closing on us while idle */
        if (pc_watch(pc, UV_READABLE) != 0)
            pc_broken(pc, "cannot watch the database socket", 0);
        return;
    case PC_BUSY:
        /* each statement of a batch may take its own statement_timeout */
        uv_timer_start(&pc->timer, on_pc_timer,
                       limit * (uint64_t)(pc->nbatch ? pc->nbatch : 1) + CLIENT_GRACE_MS, 0);
        return;
    default:
        return;
    }
}

static void pc_broken(pconn *pc, const char *why, int timed_out)
{
    cl_db *db = pc->db;
    int was_up = pc->state == PC_IDLE || pc->state == PC_BUSY;
    int busy = pc->state == PC_BUSY;
    clear_results(pc);
    char msg[200];
    snprintf(msg, sizeof msg, "%s", why && *why ? why : "connection failed");
    msg[strcspn(msg, "\n")] = '\0';
    if (was_up)
        CL_WARN("database connection %d lost: %s", pc->idx, msg);
    else if (!db->ever_failed || pc->backoff_ms >= BACKOFF_MAX_MS)
        CL_WARN("database connection %d failed: %s", pc->idx, msg);
    pc_unwatch(pc);
    pc_detach_resolve(pc);
    if (pc->pg) {
        PQfinish(pc->pg);
        pc->pg = NULL;
    }
    pc->pipeline = 0;
    pc->flushing = 0;
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
            fail_later(q, timed_out, timed_out ? "the database did not answer within db_query_timeout"
                                               : "the database connection was lost");
        }
    }
    pc->nbatch = pc->cur = 0;
    pc_set_state(pc, PC_DOWN);
    if (db->up == 0) {
        db->ever_failed = 1;
        outage_begins(db);
    }
    /* other connections may be idle and able to take the requeued work */
    dispatch(db);
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
    if (db->queued_ordinary > 0 && !db->closing && !uv_is_active((uv_handle_t *)&db->sweep_timer))
        uv_timer_start(&db->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
}

/* ---- connection parameters -------------------------------------------------------- */

static int is_ip_literal(const char *h)
{
    struct in6_addr a;
    return inet_pton(AF_INET, h, &a) == 1 || inet_pton(AF_INET6, h, &a) == 1;
}

/* The URL's own parameters, with statement_timeout added to `options`, and
 * a slot for the hostaddr each connect fills in after resolving `host`
 * (unless it is an address already, a socket path, a list of hosts, or
 * the URL pins hostaddr itself). */
static int build_conninfo(cl_db *db, char *err, size_t errlen)
{
    char *perr = NULL;
    db->opts = PQconninfoParse(db->cfg->database_url, &perr);
    if (!db->opts) {
        snprintf(err, errlen, "database_url: %s", perr ? "malformed" : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    const char *host = NULL, *hostaddr = NULL, *options = NULL;
    for (PQconninfoOption *o = db->opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "options") == 0)
            options = o->val;
    }
    char opt[512];
    snprintf(opt, sizeof opt, "%s%s-c statement_timeout=%llu", options ? options : "",
             options && *options ? " " : "", (unsigned long long)db->cfg->db_query_timeout_ms);
    db->options = strdup(opt);
    if (!db->options) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* first, so that the URL's own application_name settings win */
    int n = 0;
    db->kw[n] = "fallback_application_name";
    db->val[n++] = "chatloop";
    for (PQconninfoOption *o = db->opts; o->keyword && n < MAX_CONNINFO - 2; o++) {
        if (!o->val || strcmp(o->keyword, "options") == 0)
            continue;
        db->kw[n] = o->keyword;
        db->val[n++] = o->val;
    }
    db->kw[n] = "options";
    db->val[n++] = db->options;
    db->hostaddr_slot = -1;
    if (host && *host && host[0] != '/' && !strchr(host, ',') && !(hostaddr && *hostaddr) &&
        !is_ip_literal(host)) {
        db->resolve_host = strdup(host);
        if (!db->resolve_host) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        db->hostaddr_slot = n;
    }
    db->kw[n] = NULL;
    db->val[n] = NULL;
    db->nkw = n;
    return 0;
}

/* ---- public API ---------------------------------------------------------------------- */

/* A record a previous process spooled: it was acknowledged, so it is
 * queued whatever db_write_queue says (the queue only refuses new writes). */
static int adopt_record(void *ud, const char *sql, int nparams, const char *const *params)
{
    cl_db *db = ud;
    cl_db_query *q = query_new(db, sql, nparams, params, CL_DB_DURABLE, NULL, NULL);
    if (!q)
        return 1;
    q->spooled = 1; /* already in the file: settling it counts it off */
    enqueue(db, q, 0);
    return 0;
}

cl_db *cl_db_new(uv_loop_t *loop, const cl_config *cfg, int worker_id, char *err, size_t errlen)
{
    cl_db *db = calloc(1, sizeof *db);
    if (!db) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    db->loop = loop;
    db->cfg = cfg;
    db->n = cfg->db_pool_size;
    db->conns = calloc((size_t)db->n, sizeof *db->conns);
    if (!db->conns || build_conninfo(db, err, errlen) != 0) {
        if (!db->conns)
            snprintf(err, errlen, "out of memory");
        PQconninfoFree(db->opts);
        free(db->options);
        free(db->resolve_host);
        free(db->conns);
        free(db);
        return NULL;
    }
    uv_timer_init(loop, &db->defer_timer);
    uv_timer_init(loop, &db->sweep_timer);
    uv_timer_init(loop, &db->sync_timer);
    db->defer_timer.data = db->sweep_timer.data = db->sync_timer.data = db;
    for (int i = 0; i < db->n; i++) {
        pconn *pc = &db->conns[i];
        pc->db = db;
        pc->idx = i;
        pc->fd = -1;
        pc->state = PC_DOWN;
        uv_timer_init(loop, &pc->timer);
        pc->timer.data = pc;
    }
    if (cfg->spool_dir && cfg->spool_dir[0]) {
        /* Records left by this slot's previous process are queued again
         * before anything new, in their order. */
        db->spool = cl_spool_open(cfg->spool_dir, worker_id, adopt_record, db, err, errlen);
        if (!db->spool) {
            cl_db_free(db);
            return NULL;
        }
        if (cl_spool_outstanding(db->spool))
            CL_INFO("spool: %d write(s) left by this worker's previous process are queued again",
                    cl_spool_outstanding(db->spool));
    }
    for (int i = 0; i < db->n; i++)
        pc_set_state(&db->conns[i], db->resolve_host ? PC_RESOLVING : PC_CONNECTING);
    return db;
}

/* The timers live inside db (and db->conns): free only after the last
 * close callback. Every handle's data leads back to db. */
static void on_db_handle_closed(uv_handle_t *h)
{
    cl_db *db = h->data;
    if (--db->pending_closes > 0)
        return;
    cl_spool_close(db->spool);
    PQconninfoFree(db->opts);
    free(db->options);
    free(db->resolve_host);
    free(db->conns);
    free(db);
}

static void spool_before_free(cl_db *db, cl_db_query *q)
{
    if ((q->flags & CL_DB_DURABLE) && !q->spooled)
        spool_query(q);
}

void cl_db_free(cl_db *db)
{
    if (!db)
        return;
    /* Unsettled durable writes: on disk before they leave memory. */
    if (db->spool) {
        for (int i = 0; i < db->n; i++)
            for (int k = 0; k < db->conns[i].nbatch; k++)
                if (db->conns[i].batch[k])
                    spool_before_free(db, db->conns[i].batch[k]);
        for (cl_db_query *q = db->head; q; q = q->next)
            spool_before_free(db, q);
        if (cl_spool_unsynced(db->spool) && cl_spool_sync(db->spool) != 0)
            CL_ERROR("spool: cannot write the unsettled writes to spool_dir");
    }
    uint64_t left = cl_db_pending_durable(db);
    if (left)
        CL_WARN("stopping with %llu database write(s) not stored yet%s", (unsigned long long)left,
                db->spool ? " (they are in the spool and will be stored by the next start)"
                          : " (no spool_dir: they are lost)");
    db->closing = 1;
    for (int i = 0; i < db->n; i++) {
        pconn *pc = &db->conns[i];
        for (int k = 0; k < pc->nbatch; k++)
            if (pc->batch[k])
                query_free(pc->batch[k]);
        pc->nbatch = pc->cur = 0;
        clear_results(pc);
        pc_unwatch(pc);
        pc_detach_resolve(pc);
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
    db->unsynced = NULL;
    db->pending_closes = db->n + 3;
    uv_close((uv_handle_t *)&db->defer_timer, on_db_handle_closed);
    uv_close((uv_handle_t *)&db->sweep_timer, on_db_handle_closed);
    uv_close((uv_handle_t *)&db->sync_timer, on_db_handle_closed);
    for (int i = 0; i < db->n; i++) {
        db->conns[i].timer.data = db; /* closing: its callback needs only db */
        uv_close((uv_handle_t *)&db->conns[i].timer, on_db_handle_closed);
    }
}

/* One allocation: the query, the parameter pointers, then the texts. */
static cl_db_query *query_new(cl_db *db, const char *sql, int nparams, const char *const *params,
                              int flags, cl_db_cb cb, void *ud)
{
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
    q->enqueued_ms = now_ms(db);
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
    q->stmt = -1;
    if (flags & CL_DB_PREPARED) {
        /* recognised by the address of the caller's static string */
        int i = 0;
        while (i < db->nstmts && db->stmts[i] != sql)
            i++;
        if (i == db->nstmts && db->nstmts < MAX_PREPARED)
            db->stmts[db->nstmts++] = sql;
        if (i < db->nstmts)
            q->stmt = i;
    }
    return q;
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
    cl_db_query *q = query_new(db, sql, nparams, params, flags, cb, ud);
    if (!q)
        return NULL;
    if (!durable && db->up == 0 && db->ever_failed) {
        fail_later(q, 0, "database unavailable");
        return q;
    }
    if (!durable && db->queued_ordinary >= db->cfg->db_queue_max) {
        fail_later(q, 0, "the database queue is full (db_queue_max)");
        return q;
    }
    enqueue(db, q, 0);
    if (durable && db->up == 0 && db->ever_failed)
        spool_query(q);
    dispatch(db);
    return q;
}

void cl_db_cancel(cl_db_query *q)
{
    if (q)
        q->cancelled = 1;
}

void cl_db_redirect(cl_db_query *q, cl_db_cb cb, void *ud)
{
    if (q && !q->cancelled) {
        q->cb = cb;
        q->ud = ud;
    }
}

int cl_db_available(const cl_db *db)
{
    return db && db->up > 0;
}

uint64_t cl_db_pending_durable(const cl_db *db)
{
    return db ? (uint64_t)(db->queued_durable + db->running_durable) : 0;
}

void cl_db_get_stats(const cl_db *db, cl_db_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!db)
        return;
    uint64_t now = now_ms(db);
    out->size = db->n;
    out->up = db->up;
    out->busy = db->busy;
    out->queued = db->queued_ordinary;
    out->pending_writes = cl_db_pending_durable(db);
    out->spooled = db->spool ? cl_spool_outstanding(db->spool) : 0;
    for (const cl_db_query *q = db->head; q; q = q->next)
        if (!(q->flags & CL_DB_DURABLE) && now - q->enqueued_ms > out->oldest_wait_ms)
            out->oldest_wait_ms = now - q->enqueued_ms;
    out->timeouts = db->timeouts;
    out->errors_unavailable = db->errors_unavailable;
    out->errors_refused = db->errors_refused;
    out->timing_out = db->last_timeout_ms &&
                      now - db->last_timeout_ms < 2 * db->cfg->db_query_timeout_ms;
}
