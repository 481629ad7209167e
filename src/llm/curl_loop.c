/*
 * curl_loop.c — see curl_loop.h. The shape follows curl's multi-uv example:
 * a poll handle per socket, one timer, info_read after each action.
 */
#include "chatloop/curl_loop.h"
#include "chatloop/log.h"

#include <stdlib.h>

typedef struct sock_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    cl_curl_loop *cl;
} sock_ctx;

typedef struct transfer {
    cl_curl_done_cb done;
    void *ud;
} transfer;

struct cl_curl_loop {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    int running;
    int closing;
};

static void check_done(cl_curl_loop *cl)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(cl->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        transfer *t = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
        curl_multi_remove_handle(cl->multi, easy);
        cl->running--;
        if (t) {
            cl_curl_done_cb done = t->done;
            void *ud = t->ud;
            free(t);
            curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
            done(easy, result, ud);
        }
    }
}

/* No re-entrancy guard is needed here: nothing calls back into curl from
 * curl's own callbacks (a 0 ms timeout becomes a timer, a cancel inside a
 * write callback is deferred to the transfer's end: call.c's in_curl_cb),
 * and `done` callbacks run from check_done, after the action returned. */
static void socket_action(cl_curl_loop *cl, curl_socket_t fd, int flags)
{
    int still;
    curl_multi_socket_action(cl->multi, fd, flags, &still);
    check_done(cl);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_ctx *s = h->data;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    socket_action(s->cl, s->fd, flags);
}

static void on_timer(uv_timer_t *t)
{
    socket_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: arm or stop our one timer. A 0 ms timeout is also
 * a timer, never a direct call: we are inside curl here. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    cl_curl_loop *cl = userp;
    (void)multi;
    if (cl->closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&cl->timer);
    else
        uv_timer_start(&cl->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static void free_sock(uv_handle_t *h)
{
    free(h->data);
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget one socket. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    cl_curl_loop *cl = userp;
    sock_ctx *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, free_sock);
            curl_multi_assign(cl->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        s->cl = cl;
        if (uv_poll_init_socket(cl->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        curl_multi_assign(cl->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

cl_curl_loop *cl_curl_loop_new(uv_loop_t *loop)
{
    cl_curl_loop *cl = calloc(1, sizeof *cl);
    if (!cl)
        return NULL;
    cl->loop = loop;
    cl->multi = curl_multi_init();
    if (!cl->multi) {
        free(cl);
        return NULL;
    }
    uv_timer_init(loop, &cl->timer);
    cl->timer.data = cl;
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETDATA, cl);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERDATA, cl);
    curl_multi_setopt(cl->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    /* Keep enough idle connections for a worker's concurrent streams to be
     * reused rather than reopened. */
    curl_multi_setopt(cl->multi, CURLMOPT_MAXCONNECTS, 1024L);
    return cl;
}

static void free_loop(uv_handle_t *h)
{
    free(h->data);
}

void cl_curl_loop_free(cl_curl_loop *cl)
{
    if (!cl)
        return;
    cl->closing = 1;
    /* Transfers still registered belong to their owners, who free their
     * easy handles; here only the multi handle and our handles go. The
     * multi cleanup closes cached connections through the socket callback,
     * which closes our poll handles. */
    curl_multi_cleanup(cl->multi);
    uv_close((uv_handle_t *)&cl->timer, free_loop);
}

int cl_curl_loop_add(cl_curl_loop *cl, CURL *easy, cl_curl_done_cb done, void *ud)
{
    transfer *t = malloc(sizeof *t);
    if (!t)
        return -1;
    t->done = done;
    t->ud = ud;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
    if (curl_multi_add_handle(cl->multi, easy) != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(t);
        return -1;
    }
    cl->running++;
    return 0;
}

void cl_curl_loop_remove(cl_curl_loop *cl, CURL *easy)
{
    transfer *t = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
    if (!t)
        return; /* already finished and reported */
    free(t);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    curl_multi_remove_handle(cl->multi, easy);
    cl->running--;
}

int cl_curl_loop_running(const cl_curl_loop *cl)
{
    return cl->running;
}

void cl_curl_loop_resume(cl_curl_loop *cl, CURL *easy)
{
    (void)cl;
    /* curl_easy_pause may deliver buffered data through the write callback
     * right here; callers are outside curl callbacks by contract. */
    curl_easy_pause(easy, CURLPAUSE_CONT);
}
