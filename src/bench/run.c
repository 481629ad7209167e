/*
 * run.c — one process's share of a chatbench run: the loop, the sessions,
 * when turns may start (turn count, duration, --rate slots) and the end.
 *
 * A run lasts the ramp-up plus --duration (or until --turns turns have been
 * started and answered). At the end no new turn starts; turns in flight run
 * to their end (bounded by --timeout) so nothing is cut and counted wrong.
 */
#include "bench.h"

#include <stdlib.h>
#include <string.h>

struct cb_run {
    uv_loop_t loop;
    const cb_options *o;
    cb_stats *st;
    cb_expect expect;
    cb_session *ss;
    int n, open;
    int stopping;
    uint64_t deadline_ns;       /* 0: none */
    uint64_t turns_limit;       /* 0: none */
    uint64_t reserved;          /* turns started or about to be */
    double rate;
    uint64_t next_slot_ns;
    uv_timer_t stop_timer;
    uv_signal_t sigint;
};

uv_loop_t *cb_run_loop(cb_run *r) { return &r->loop; }
const cb_options *cb_run_options(cb_run *r) { return r->o; }
cb_stats *cb_run_stats(cb_run *r) { return r->st; }
const cb_expect *cb_run_expect(cb_run *r) { return &r->expect; }
int cb_run_stopping(cb_run *r) { return r->stopping; }

uint64_t cb_run_next_turn(cb_run *r)
{
    if (r->stopping)
        return 0;
    if (r->turns_limit && r->reserved >= r->turns_limit)
        return 0;
    uint64_t now = uv_hrtime();
    if (r->deadline_ns && now >= r->deadline_ns)
        return 0;
    r->reserved++;
    if (r->rate <= 0)
        return now;
    /* Open-loop slots: turn k starts at t0 + k / rate whoever is free. A
     * slot already past by more than a millisecond started late: every
     * session was busy, which the report shows. */
    uint64_t slot = r->next_slot_ns ? r->next_slot_ns : now;
    r->next_slot_ns = slot + (uint64_t)(1e9 / r->rate);
    if (slot + 1000000 < now) {
        r->st->late_starts++;
        return now;
    }
    return slot > now ? slot : now;
}

void cb_run_unreserve(cb_run *r)
{
    if (r->reserved)
        r->reserved--;
}

static void close_run_handles(cb_run *r)
{
    if (!uv_is_closing((uv_handle_t *)&r->stop_timer))
        uv_close((uv_handle_t *)&r->stop_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&r->sigint))
        uv_close((uv_handle_t *)&r->sigint, NULL);
}

void cb_run_session_done(cb_run *r)
{
    if (--r->open == 0) {
        if (r->o->idle || !r->st->t_end_ns)
            r->st->t_end_ns = uv_hrtime();
        close_run_handles(r);
    }
}

static void stop(cb_run *r)
{
    if (r->stopping)
        return;
    r->stopping = 1;
    for (int i = 0; i < r->n; i++)
        cb_session_stop(cb_session_at(r->ss, i));
}

void cb_run_give_up(cb_run *r, const char *why)
{
    if (r->stopping)
        return;
    fprintf(stderr, "chatbench: %s; stopping the run\n", why);
    stop(r);
}

static void on_deadline(uv_timer_t *t)
{
    stop(t->data);
}

static void on_sigint(uv_signal_t *h, int sig)
{
    cb_run *r = h->data;
    if (r->stopping)
        exit(130); /* a second ^C: give up on the turns in flight */
    stop(r);
}

int cb_run_sessions(const cb_options *o, int first, int sessions, double rate, uint64_t turns,
                    cb_stats *st)
{
    cb_run *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->o = o;
    r->st = st;
    r->rate = rate;
    r->turns_limit = turns;
    if (uv_loop_init(&r->loop) != 0 || cb_expect_init(&r->expect, o->tokens) != 0) {
        free(r);
        return -1;
    }
    r->ss = cb_sessions_new(r, sessions);
    if (!r->ss) {
        cb_expect_free(&r->expect);
        uv_loop_close(&r->loop);
        free(r);
        return -1;
    }
    r->n = r->open = sessions;
    uv_timer_init(&r->loop, &r->stop_timer);
    r->stop_timer.data = r;
    uv_signal_init(&r->loop, &r->sigint);
    r->sigint.data = r;
    uv_signal_start(&r->sigint, on_sigint, SIGINT);
    uint64_t t0 = uv_hrtime();
    if (o->idle)
        st->t_start_ns = t0;
    if (o->duration_ns) {
        r->deadline_ns = t0 + o->ramp_ns + o->duration_ns;
        uv_timer_start(&r->stop_timer, on_deadline, (o->ramp_ns + o->duration_ns) / 1000000, 0);
    }
    if (sessions == 0)
        close_run_handles(r);
    for (int i = 0; i < sessions; i++) {
        uint64_t delay = sessions > 1 ? o->ramp_ns * (uint64_t)i / (uint64_t)sessions : 0;
        cb_session_start(cb_session_at(r->ss, i), first + i, delay);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    cb_sessions_free(r->ss);
    cb_expect_free(&r->expect);
    free(r);
    return 0;
}
