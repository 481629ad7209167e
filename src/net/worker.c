/*
 * worker.c — one worker process's loop: listener, signals, draining, and the
 * check handle that flushes output once per loop iteration.
 */
#include "chatloop/worker.h"
#include "chatloop/conn.h"
#include "chatloop/cors.h"
#include "chatloop/log.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

void cl_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int cl_listen_socket(const cl_config *cfg, int do_listen, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t slen;
    int family;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET6, cfg->listen_host, &a6->sin6_addr) == 1) {
        family = AF_INET6;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->listen_port);
        slen = sizeof *a6;
    } else if (inet_pton(AF_INET, cfg->listen_host, &a4->sin_addr) == 1) {
        family = AF_INET;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->listen_port);
        slen = sizeof *a4;
    } else {
        /* Resolving a name here would block; listen wants an address. */
        snprintf(err, errlen, "listen = %s: host must be an IPv4 or IPv6 address", cfg->listen);
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Every worker binds the same port; the kernel spreads new connections. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&ss, slen) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", cfg->listen, strerror(errno));
        close(fd);
        return -1;
    }
    if (do_listen && listen(fd, cfg->backlog) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", cfg->listen, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static cl_worker *g_current;

cl_worker *cl_worker_current(void) { return g_current; }

void cl_worker_maybe_stop(cl_worker *w)
{
    if (!w->draining || w->nconns > 0)
        return;
    if (w->hooks && w->hooks->pending_work && w->hooks->pending_work(w) > 0)
        return;
    uv_stop(w->loop);
}

static void on_connection(uv_stream_t *server, int status)
{
    cl_worker *w = server->data;
    if (status < 0) {
        CL_WARN("accept: %s", uv_strerror(status));
        return;
    }
    cl_conn_accept(w, server);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* its only job is to make the next poll non-blocking */
}

void cl_worker_wake_flush(cl_worker *w)
{
    /* A worker without a running loop (unit tests drive protocols by hand)
     * has no idle handle; its output is read straight from the conn. */
    if (w->flush_pending || !w->flush_idle.loop)
        return;
    w->flush_pending = 1;
    uv_idle_start(&w->flush_idle, on_idle);
}

static void on_log_waiting(void *ud)
{
    cl_worker_wake_flush(ud);
}

static void on_check(uv_check_t *h)
{
    cl_worker *w = h->data;
    cl_conn_flush_dirty(w);
    cl_log_flush();
    if (w->flush_pending) {
        w->flush_pending = 0;
        uv_idle_stop(&w->flush_idle);
    }
}

static void close_listener(cl_worker *w)
{
    if (!w->listening)
        return;
    w->listening = 0;
    uv_close((uv_handle_t *)&w->listener, NULL);
}

static void on_drain_timeout(uv_timer_t *t)
{
    cl_worker *w = t->data;
    CL_WARN("drain timeout: closing %llu connection(s) still open",
            (unsigned long long)w->nconns);
    for (cl_conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        cl_conn_close(c);
    }
    /* Whatever else was pending is abandoned: the drain is bounded. */
    uv_stop(w->loop);
}

static void begin_drain(cl_worker *w, const char *why)
{
    if (w->draining)
        return;
    w->draining = 1;
    CL_INFO("%s: draining %llu connection(s), up to %llums", why,
            (unsigned long long)w->nconns, (unsigned long long)w->cfg->drain_timeout_ms);
    close_listener(w);
    for (cl_conn *c = w->conns, *next; c; c = next) {
        next = c->next;
        if (c->proto->on_shutdown)
            c->proto->on_shutdown(c);
        else
            cl_conn_close(c);
    }
    if (w->hooks && w->hooks->on_drain)
        w->hooks->on_drain(w);
    cl_worker_maybe_stop(w);
    uv_timer_start(&w->drain_timer, on_drain_timeout, w->cfg->drain_timeout_ms, 0);
}

static void on_signal(uv_signal_t *s, int signum)
{
    cl_worker *w = s->data;
    begin_drain(w, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int cl_worker_run(const cl_config *cfg, int id, cl_metrics_slot *metrics,
                  const cl_worker_hooks *hooks)
{
    cl_worker *w = calloc(1, sizeof *w);
    if (!w)
        return 2;
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        free(w);
        return 2;
    }
    /* Every stream allocates and frees buffers of the same few sizes; let
     * the heap top keep up to 4 MiB rather than give it back with brk()
     * after each burst and fault it in again (one brk per relayed stream
     * showed in strace). */
    mallopt(M_TRIM_THRESHOLD, 4 * 1024 * 1024);
    mallopt(M_TOP_PAD, 512 * 1024);
    w->loop = &loop;
    w->cfg = cfg;
    w->id = id;
    w->metrics = metrics;
    cl_metrics_set_mine(metrics);
    w->hooks = hooks;
    g_current = w;
    w->started_ns = uv_hrtime();
    /* Request ids: a per-process random prefix and a counter, unique across
     * workers and restarts without coordination. */
    uint32_t seed = (uint32_t)(uv_hrtime() ^ ((uint64_t)getpid() << 16));
    seed ^= seed >> 13;
    seed *= 0x5bd1e995u;
    w->request_id_prefix = seed ^ (seed >> 15);
    int rc = 2;

    w->router = hooks->build_routes(cfg);
    if (!w->router) {
        CL_ERROR("cannot build the route table");
        goto out;
    }
    w->cors = cl_cors_new(cfg->cors_origins ? cfg->cors_origins : "");
    if (!w->cors) {
        CL_ERROR("cannot build the cors_origins policy");
        goto out;
    }
    if (hooks->on_start && hooks->on_start(w) != 0) {
        CL_ERROR("worker %d: cannot start its services", id);
        goto out;
    }
    char err[256];
    int fd = cl_listen_socket(cfg, 1, err, sizeof err);
    if (fd < 0) {
        CL_ERROR("%s", err);
        goto out;
    }
    uv_tcp_init(&loop, &w->listener);
    w->listener.data = w;
    if (uv_tcp_open(&w->listener, fd) != 0 ||
        uv_listen((uv_stream_t *)&w->listener, cfg->backlog, on_connection) != 0) {
        CL_ERROR("cannot listen on %s", cfg->listen);
        close(fd);
        goto out;
    }
    w->listening = 1;

    uv_check_init(&loop, &w->flush_check);
    w->flush_check.data = w;
    uv_check_start(&w->flush_check, on_check);
    uv_idle_init(&loop, &w->flush_idle);
    w->flush_idle.data = w;
    uv_timer_init(&loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_signal_init(&loop, &w->sig_term);
    uv_signal_init(&loop, &w->sig_int);
    w->sig_term.data = w->sig_int.data = w;
    uv_signal_start(&w->sig_term, on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_signal, SIGINT);
    cl_log_set_wake(on_log_waiting, w);
    cl_log_set_buffered(1);
    CL_INFO("worker %d listening on %s (pid %d)", id, cfg->listen, (int)getpid());

    uv_run(&loop, UV_RUN_DEFAULT);
    cl_log_set_wake(NULL, NULL); /* the loop is done: lines go out at once below */
    /* Drained (or stopped): flush what is left, then close every handle. */
    cl_conn_flush_dirty(w);
    CL_INFO("worker %d stopped", id);
    cl_log_set_buffered(0);
    rc = 0;
out:
    if (hooks->on_stop)
        hooks->on_stop(w);
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        CL_WARN("worker %d: handles left open at exit", id);
    if (w->router && hooks->free_routes)
        hooks->free_routes(w->router);
    cl_cors_free(w->cors);
    g_current = NULL;
    free(w);
    cl_log_flush();
    return rc;
}
