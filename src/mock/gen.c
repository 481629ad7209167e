/*
 * gen.c — one answer in flight (a "generation"): its pacing timer, the
 * faults it plays, and its lifetime against the connection's.
 *
 * Lifetime: a mock_gen is attached to its cl_req (req->handler_data and
 * req->on_abort) from start until gen_finish, which is the one exit path:
 * it updates the counters, detaches from the request (so the HTTP layer
 * never calls back into a finished answer), and closes the embedded timer;
 * the memory is freed in the close callback (STYLE 1), which touches
 * nothing but the gen itself, so it may run after the app is gone.
 * gen_finish runs when the answer ends, when the client goes away
 * (on_abort, after which the req is freed), and at drain/stop.
 *
 * Pacing: piece k (1-based) is due at first_due + (k-1) * interval, counted
 * from the start rather than from the previous timer, so timer lag does not
 * accumulate over a long stream. Every piece that is due is written in one
 * step (with interval 0 that is the whole answer at once), bounded per step
 * and by the connection's queued output so a fast producer cannot outrun a
 * slow reader.
 */
#include "mock.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Bytes written in one step before yielding to the loop, and queued output
 * above which a step waits for the reader. */
#define STEP_BYTES (64 * 1024)
#define HIGH_WATER (256 * 1024)
/* Scratch buffers larger than this are released after use. */
#define SCRATCH_KEEP (256 * 1024)

typedef enum { END_COMPLETED, END_ABORTED, END_CUT } gen_end;

static void on_timer(uv_timer_t *t);

static void gen_free_cb(uv_handle_t *h) { free(h->data); }

static void gen_finish(mock_gen *g, gen_end how)
{
    mock_app *a = g->app;
    if (!a)
        return; /* already finished */
    if (g->prev)
        g->prev->next = g->next;
    else
        a->gens = g->next;
    if (g->next)
        g->next->prev = g->prev;
    g->prev = g->next = NULL;
    mock_stats *s = &a->stats;
    if (g->plan.stream) {
        a->open_streams--;
        if (how == END_COMPLETED)
            s->streams_completed++;
        else if (how == END_CUT)
            s->streams_cut++;
        else
            s->streams_aborted++;
    } else {
        a->open_completions--;
        if (how == END_COMPLETED)
            s->completions_completed++;
        else
            s->completions_aborted++;
    }
    if (g->req) {
        g->req->on_abort = NULL;
        g->req->handler_data = NULL;
    }
    g->req = NULL;
    g->app = NULL;
    uv_close((uv_handle_t *)&g->timer, gen_free_cb);
}

/* The client went away; the req is freed when this returns. */
static void gen_on_abort(cl_req *r)
{
    mock_gen *g = r->handler_data;
    if (g)
        gen_finish(g, END_ABORTED);
}

static void arm(mock_gen *g, uint64_t ms) { uv_timer_start(&g->timer, on_timer, ms, 0); }

static double elapsed_s(const mock_gen *g)
{
    uint64_t now = uv_now(g->timer.loop);
    return now > g->first_due ? (double)(now - g->first_due) / 1000.0 : 0.0;
}

/* Hands what the step gathered to the connection. -1: the connection is
 * going away (on_abort follows); stop producing. */
static int put(mock_gen *g, cl_buf *b)
{
    int rc = b->len ? cl_res_write(g->req, b->data, b->len) : 0;
    cl_buf_reset(b);
    return rc;
}

/* Pieces sent before the fault fires, or -1 for no mid-answer fault. */
static int fault_point(const mock_gen *g)
{
    int def;
    switch (g->plan.fault) {
    case MOCK_FAULT_CUT:
        def = g->pieces / 2;
        break;
    case MOCK_FAULT_STALL:
    case MOCK_FAULT_MALFORMED:
    case MOCK_FAULT_GROQ_ERROR:
    case MOCK_FAULT_ERROR_CHUNK:
        def = g->pieces < 3 ? g->pieces : 3; /* "a few tokens" */
        break;
    default:
        return -1;
    }
    int at = g->plan.fault_after >= 0 ? g->plan.fault_after : def;
    return at < g->pieces ? at : g->pieces;
}

int mock_corrupt_piece(const mock_gen *g)
{
    if (g->plan.fault != MOCK_FAULT_CORRUPT || g->plan.tool || g->pieces == 0)
        return -1;
    int at = g->plan.fault_after >= 0 ? g->plan.fault_after : g->pieces / 2;
    return at < g->pieces ? at : g->pieces - 1;
}

/* Ends the response after the final bytes in b. */
static void end_stream(mock_gen *g, cl_buf *b)
{
    cl_req *r = g->req;
    if (put(g, b) != 0)
        return;
    gen_finish(g, END_COMPLETED);
    cl_res_end(r);
}

static void stream_fault(mock_gen *g, cl_buf *b)
{
    switch (g->plan.fault) {
    case MOCK_FAULT_CUT: {
        /* What was written still reaches the client, then a FIN in the
         * middle of the chunked body: no terminating chunk, no [DONE]. */
        cl_conn *c = g->req->conn;
        if (put(g, b) != 0)
            return;
        gen_finish(g, END_CUT);
        cl_conn_close_after_write(c);
        return;
    }
    case MOCK_FAULT_STALL:
        put(g, b); /* and nothing more: the timer is not re-armed */
        return;
    case MOCK_FAULT_MALFORMED:
        cl_buf_append_str(b, "data: {not json\n\n");
        end_stream(g, b);
        return;
    case MOCK_FAULT_GROQ_ERROR:
        mock_wire_groq_error_chunk(b, g);
        end_stream(g, b);
        return;
    case MOCK_FAULT_ERROR_CHUNK:
        mock_wire_error_chunk(b);
        end_stream(g, b);
        return;
    default:
        return;
    }
}

static void stream_step(mock_gen *g)
{
    cl_buf *b = &g->app->scratch;
    cl_buf_reset(b);
    if (cl_conn_pending_bytes(g->req->conn) > HIGH_WATER) {
        arm(g, 1); /* the reader is behind: look again shortly */
        return;
    }
    uint64_t now = uv_now(g->timer.loop);
    int fp = fault_point(g);
    for (;;) {
        if (g->sent == fp) {
            stream_fault(g, b);
            return;
        }
        if (g->sent == g->pieces) {
            mock_wire_final_chunks(b, g, elapsed_s(g));
            end_stream(g, b);
            return;
        }
        uint64_t due = g->first_due + (uint64_t)g->sent * g->plan.interval_ms;
        if (due > now) {
            if (put(g, b) == 0)
                arm(g, due - now);
            return;
        }
        if (b->len >= STEP_BYTES) {
            if (put(g, b) == 0)
                arm(g, 0); /* next loop iteration, after this output is flushed */
            return;
        }
        mock_wire_piece_chunk(b, g, g->sent);
        g->sent++;
    }
}

/* A non-streamed answer arrives whole when the last token would have. */
static void completion_step(mock_gen *g)
{
    uint64_t now = uv_now(g->timer.loop);
    uint64_t due = g->first_due;
    if (g->pieces > 1)
        due += (uint64_t)(g->pieces - 1) * g->plan.interval_ms;
    if (due > now) {
        arm(g, due - now);
        return;
    }
    mock_app *a = g->app;
    cl_req *r = g->req;
    switch (g->plan.fault) {
    case MOCK_FAULT_CUT: {
        cl_conn *c = r->conn;
        gen_finish(g, END_CUT);
        cl_conn_close(c); /* no answer at all */
        return;
    }
    case MOCK_FAULT_MALFORMED:
        gen_finish(g, END_COMPLETED);
        cl_res_send(r, 200, "application/json", NULL, "{not json", 9);
        return;
    case MOCK_FAULT_GROQ_ERROR:
    case MOCK_FAULT_ERROR_CHUNK:
        gen_finish(g, END_COMPLETED);
        mock_send_error(a, r, 500, "internal_server_error", "internal_server_error",
                        "mock upstream failure", NULL);
        return;
    default:
        break;
    }
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    if (mock_wire_completion(b, g, elapsed_s(g)) != 0) {
        gen_finish(g, END_COMPLETED);
        mock_send_error(a, r, 500, "internal_server_error", "out_of_memory",
                        "cannot build the answer", NULL);
        return;
    }
    gen_finish(g, END_COMPLETED);
    cl_res_send(r, 200, "application/json", NULL, b->data, b->len);
    /* a huge answer should not pin its buffer for the process lifetime */
    if (a->scratch.cap > SCRATCH_KEEP)
        cl_buf_release(&a->scratch);
}

static void on_timer(uv_timer_t *t)
{
    mock_gen *g = t->data;
    if (!g->app)
        return;
    if (g->plan.stream)
        stream_step(g);
    else
        completion_step(g);
}

/* Splits the tool arguments into up to MOCK_TOOL_PIECES fragments, never
 * inside a UTF-8 sequence (each fragment is escaped on its own). */
static void split_args(mock_gen *g)
{
    const char *s = g->plan.tool_args;
    int len = (int)strlen(s);
    int n = len < MOCK_TOOL_PIECES ? len : MOCK_TOOL_PIECES;
    g->arg_off[0] = 0;
    int k = 0;
    for (int i = 1; i <= n; i++) {
        int off = i == n ? len : len * i / n;
        while (off < len && ((unsigned char)s[off] & 0xc0) == 0x80)
            off++;
        if (off > g->arg_off[k])
            g->arg_off[++k] = off;
    }
    g->nargs = k;
}

void mock_gen_start(mock_app *a, cl_req *r, const mock_plan *p)
{
    mock_gen *g = calloc(1, sizeof *g);
    if (!g) {
        mock_send_error(a, r, 500, "internal_server_error", "out_of_memory", "out of memory",
                        NULL);
        return;
    }
    g->plan = *p;
    g->app = a;
    g->req = r;
    g->id = ++a->seq;
    g->created = (long long)time(NULL);
    uv_timer_init(a->w->loop, &g->timer);
    g->timer.data = g;
    g->next = a->gens;
    if (a->gens)
        a->gens->prev = g;
    a->gens = g;
    if (p->tool) {
        split_args(g);
        g->pieces = 1 + g->nargs;
    } else {
        g->pieces = p->ntokens;
    }
    g->first_due = uv_now(a->w->loop) + p->first_ms;
    r->handler_data = g;
    r->on_abort = gen_on_abort;
    if (!p->stream) {
        a->stats.completions_started++;
        a->open_completions++;
        if (p->fault != MOCK_FAULT_STALL) /* a stalled answer never comes */
            completion_step(g);
        return;
    }
    a->stats.streams_started++;
    a->open_streams++;
    if (cl_res_start(r, 200, "text/event-stream",
                     "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") != 0)
        return; /* the connection is closing: on_abort follows */
    cl_buf *b = &a->scratch;
    cl_buf_reset(b);
    mock_wire_role_chunk(b, g);
    if (put(g, b) != 0)
        return;
    stream_step(g);
}

void mock_gen_stop_all(mock_app *a, int close_conns)
{
    while (a->gens) {
        mock_gen *g = a->gens;
        cl_conn *c = g->req ? g->req->conn : NULL;
        gen_finish(g, END_ABORTED);
        if (close_conns && c)
            cl_conn_close(c);
    }
}
