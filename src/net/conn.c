/*
 * conn.c — accept, read, coalesced write and close of one TCP connection.
 *
 * Lifetime: the conn embeds two handles (tcp, timer). cl_conn_close closes
 * both and counts the pending close callbacks; the conn is freed in the last
 * one, after the protocol's on_free. Anything that can complete later than a
 * close (a write callback, a timer) sees `closing` and does nothing.
 */
#include "chatloop/conn.h"
#include "chatloop/log.h"
#include "chatloop/worker.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* An in-flight write: the request and the bytes it sends, which were the
 * conn's `out` buffer until the write began (ownership moves, no copy). */
struct cl_wbuf {
    uv_write_t req;
    cl_conn *conn;
    char *data;
    size_t len;
};

/* Lingering close: how long and how much of the peer's unread request we
 * swallow after our final answer so its TCP stack does not see a reset
 * before reading that answer. */
#define LINGER_MS 2000

static void on_close_handle(uv_handle_t *h);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void start_write(cl_conn *c);

static void unlink_conn(cl_conn *c)
{
    cl_worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void on_close_handle(uv_handle_t *h)
{
    cl_conn *c = h->data;
    if (--c->pending_closes > 0)
        return;
    if (c->proto && c->proto->on_free)
        c->proto->on_free(c);
    cl_worker *w = c->w;
    cl_conn_unhold(c, c->out.len);
    assert(c->held == 0); /* every holder gave its bytes back by now */
    cl_buf_release(&c->out);
    cl_buf_release(&c->in);
    /* An in-flight write still owns its buffer; its callback (run with
     * UV_ECANCELED before the tcp close callback) already freed it. */
    free(c);
    w->nconns--;
    cl_metric_sub(&w->metrics->connections_open, 1);
    cl_worker_maybe_stop(w);
}

void cl_conn_drop_output(cl_conn *c)
{
    cl_conn_unhold(c, c->out.len);
    cl_buf_reset(&c->out);
}

void cl_conn_close(cl_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    unlink_conn(c);
    /* a dirty conn stays on the flush list; the flusher skips closing ones */
    c->pending_closes = 2;
    uv_close((uv_handle_t *)&c->timer, on_close_handle);
    uv_close((uv_handle_t *)&c->tcp, on_close_handle);
}

static void on_timer(uv_timer_t *t)
{
    cl_conn *c = t->data;
    if (c->closing)
        return;
    if (c->lingering) {
        cl_conn_close(c);
        return;
    }
    if (c->proto->on_timeout)
        c->proto->on_timeout(c);
    else
        cl_conn_close(c);
}

void cl_conn_set_timeout(cl_conn *c, uint64_t ms)
{
    if (c->closing)
        return;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

void cl_conn_set_proto(cl_conn *c, const cl_conn_proto *proto, void *data)
{
    c->proto = proto;
    c->proto_data = data;
}

/* Reads land in the worker's one shared buffer: an idle connection owns no
 * read memory, and every read is consumed before the next alloc. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    cl_conn *c = h->data;
    cl_worker *w = c->w;
    if (w->read_buf_busy) {
        /* Not expected (reads are consumed synchronously); refuse rather
         * than share: libuv reports UV_ENOBUFS and we close. */
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    w->read_buf_busy = 1;
    buf->base = w->read_buf;
    buf->len = sizeof w->read_buf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cl_conn *c = s->data;
    cl_worker *w = c->w;
    if (buf->base == w->read_buf)
        w->read_buf_busy = 0;
    if (c->closing)
        return;
    if (nread > 0) {
        if (c->lingering)
            return; /* discard: we already answered and are closing */
        c->proto->on_data(c, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    /* EOF or error */
    c->eof = 1;
    cl_conn_read_stop(c);
    if (c->lingering || nread != UV_EOF || !c->proto->on_eof)
        cl_conn_close(c);
    else
        c->proto->on_eof(c);
}

void cl_conn_read_start(cl_conn *c)
{
    if (c->closing || c->reading || c->eof)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
    else
        cl_conn_close(c);
}

void cl_conn_read_stop(cl_conn *c)
{
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void mark_dirty(cl_conn *c)
{
    if (c->dirty)
        return;
    c->dirty = 1;
    c->next_dirty = c->w->dirty;
    c->w->dirty = c;
    cl_worker_wake_flush(c->w);
}

/* The connection holding the most bytes, or NULL. O(connections): it runs
 * only when the budget is exceeded, which drops that connection. */
static cl_conn *greediest(cl_worker *w)
{
    cl_conn *g = NULL;
    for (cl_conn *c = w->conns; c; c = c->next)
        if (!c->closing && (!g || c->held > g->held))
            g = c;
    return g;
}

int cl_conn_hold(cl_conn *c, size_t n)
{
    cl_worker *w = c->w;
    uint64_t max = w->cfg->max_buffered_bytes;
    while (w->buffered + n > max) {
        cl_conn *g = greediest(w);
        if (!g || g == c || g->held <= c->held + n) {
            CL_WARN("conn %s: the worker holds %llu bytes for its clients (max_buffered_bytes); "
                    "refusing %zu more for the greediest peer",
                    c->peer, (unsigned long long)w->buffered, n);
            cl_metric_add(&w->metrics->budget_drops, 1);
            return -1;
        }
        CL_WARN("conn %s: dropped, holding %u bytes while the worker is over max_buffered_bytes",
                g->peer, g->held);
        cl_metric_add(&w->metrics->budget_drops, 1);
        cl_conn_close(g); /* its holders give the bytes back as it closes */
        if (g->held) {
            /* They do so only in its close callbacks: count them as free
             * now, since nothing more is added to a closing connection. */
            w->buffered -= g->held;
            cl_metric_sub(&w->metrics->buffered_bytes, g->held);
            g->held = 0;
            g->held_in = 0;
            g->held_released = 1;
        }
    }
    c->held += (uint32_t)n;
    w->buffered += n;
    cl_metric_add(&w->metrics->buffered_bytes, n);
    return 0;
}

void cl_conn_unhold(cl_conn *c, size_t n)
{
    if (c->held_released || n == 0)
        return;
    assert(n <= c->held);
    if (n > c->held)
        n = c->held;
    c->held -= (uint32_t)n;
    c->w->buffered -= n;
    cl_metric_sub(&c->w->metrics->buffered_bytes, n);
}

size_t cl_conn_pending_bytes(const cl_conn *c)
{
    return c->out.len + (c->inflight ? c->inflight->len : 0);
}

int cl_conn_write(cl_conn *c, const void *data, size_t len)
{
    if (c->closing || c->lingering)
        return -1;
    if (cl_conn_pending_bytes(c) + len > c->w->cfg->max_output_bytes) {
        CL_WARN("conn %s: queued output passed max_output_bytes; dropping slow reader", c->peer);
        cl_metric_add(&c->w->metrics->slow_readers_dropped, 1);
        cl_conn_close(c);
        return -1;
    }
    if (cl_conn_hold(c, len) != 0) {
        cl_metric_add(&c->w->metrics->slow_readers_dropped, 1);
        cl_conn_close(c);
        return -1;
    }
    /* Most answers fit in 1 KiB: reserving it up front saves the doubling
     * reallocs of a buffer that starts small. */
    if (c->out.cap == 0 && cl_buf_reserve(&c->out, len > 1024 ? len : 1024) != 0)
        goto nomem;
    if (cl_buf_append(&c->out, data, len) != 0) {
        cl_conn_unhold(c, len);
        goto nomem;
    }
    mark_dirty(c);
    return 0;
nomem:
    CL_ERROR("conn %s: out of memory queueing output", c->peer);
    cl_conn_close(c);
    return -1;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    cl_conn *c = req->data;
    free(req);
    (void)status;
    /* the tcp close (if any) already ran cancels; `closing` guards reuse */
    if (c->closing)
        return;
    if (c->eof)
        cl_conn_close(c);
}

/* The final answer is out: half-close, then swallow what the peer still sends
 * for a short while (it may be the rest of a body we refused with 413). */
static void begin_lingering_close(cl_conn *c)
{
    c->lingering = 1;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        cl_conn_close(c);
        return;
    }
    req->data = c;
    if (c->eof) {
        /* peer is gone already: nothing to drain; close once shutdown lands */
        return;
    }
    cl_conn_read_start(c);
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

void cl_conn_close_after_write(cl_conn *c)
{
    if (c->closing || c->close_after_write)
        return;
    c->close_after_write = 1;
    if (cl_conn_pending_bytes(c) == 0)
        begin_lingering_close(c);
}

static void drained(cl_conn *c)
{
    if (c->out.cap > 64 * 1024 || c->out.len == 0) {
        /* Idle connections hold no write memory. */
        cl_buf_release(&c->out);
    }
    if (c->close_after_write) {
        begin_lingering_close(c);
        return;
    }
    if (c->proto->on_drained)
        c->proto->on_drained(c);
}

static void on_write(uv_write_t *req, int status)
{
    cl_wbuf *wb = (cl_wbuf *)req;
    cl_conn *c = wb->conn;
    cl_conn_unhold(c, wb->len);
    free(wb->data);
    free(wb);
    c->inflight = NULL;
    if (c->closing)
        return;
    if (status < 0) {
        CL_DEBUG("conn %s: write failed: %s", c->peer, uv_strerror(status));
        cl_conn_close(c);
        return;
    }
    if (c->out.len) {
        start_write(c);
        return;
    }
    drained(c);
}

/* Hands everything queued to the kernel: uv_try_write first (the common case
 * empties the queue with one syscall and no request), and for a remainder one
 * uv_write that takes ownership of the buffer. */
static void start_write(cl_conn *c)
{
    if (c->inflight || c->out.len == 0)
        return;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned int)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n > 0)
        cl_conn_unhold(c, (size_t)n);
    if (n == (int)c->out.len) {
        c->out.len = 0;
        drained(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        CL_DEBUG("conn %s: write failed: %s", c->peer, uv_strerror(n));
        cl_conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    cl_wbuf *wb = malloc(sizeof *wb);
    if (!wb) {
        cl_conn_close(c);
        return;
    }
    wb->conn = c;
    if (done) {
        cl_buf_consume(&c->out, done);
    }
    wb->data = c->out.data;
    wb->len = c->out.len;
    c->out.data = NULL;
    c->out.len = c->out.cap = 0;
    c->inflight = wb;
    b = uv_buf_init(wb->data, (unsigned int)wb->len);
    if (uv_write(&wb->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        cl_conn_unhold(c, wb->len);
        free(wb->data);
        free(wb);
        c->inflight = NULL;
        cl_conn_close(c);
    }
}

void cl_conn_flush_dirty(cl_worker *w)
{
    /* Writing may queue more output on other connections (never on the one
     * being flushed: on_drained runs protocol code that can write to its own
     * conn, which re-marks it dirty for the next pass). Take the list first. */
    while (w->dirty) {
        cl_conn *list = w->dirty;
        w->dirty = NULL;
        while (list) {
            cl_conn *c = list;
            list = c->next_dirty;
            c->next_dirty = NULL;
            c->dirty = 0;
            if (c->pending_closes == 0 && !c->closing)
                start_write(c);
        }
    }
}

cl_conn *cl_conn_new(cl_worker *w)
{
    cl_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->w = w;
    cl_buf_init(&c->out, 0);
    cl_buf_init(&c->in, 0);
    uv_tcp_init(w->loop, &c->tcp);
    uv_timer_init(w->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    w->nconns++;
    cl_metric_add(&w->metrics->connections_open, 1);
    cl_metric_add(&w->metrics->connections_total, 1);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    return c;
}

void cl_conn_accept(cl_worker *w, uv_stream_t *server)
{
    cl_conn *c = cl_conn_new(w);
    if (!c) {
        /* Without 600 bytes to spare the worker cannot serve anyone; the
         * supervisor restarts it with a clean heap. */
        CL_ERROR("accept: out of memory");
        cl_log_flush();
        abort();
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        cl_conn_close(c);
        return;
    }
    if (w->nconns > (uint64_t)w->cfg->max_connections || w->draining) {
        cl_metric_add(&w->metrics->connections_rejected, 1);
        cl_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
        snprintf(c->peer, sizeof c->peer, "%.46s:%d", ip, port);
    }
    w->hooks->on_accept(c);
    cl_conn_read_start(c);
}
