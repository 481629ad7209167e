/*
 * bench.h — chatbench's internals, shared by the files of src/bench/.
 *
 *   hist.c     log-linear latency histograms and their percentiles
 *   check.c    the expected answer and the per-turn comparison against it
 *   stats.c    one run's counters and histograms; merging; table and JSON
 *   client.c   one session: its socket, HTTP/1.1 or WebSocket framing, turns
 *   login.c    --login: register and log in once, before the run
 *   main.c     flags, the run (duration, turn count, rate), --procs
 *
 * Everything runs on one libuv loop per process. With --procs N the parent
 * forks N children, each runs its share, and the parent merges their stats
 * (written back through a pipe as the raw cb_stats struct: same binary).
 */
#ifndef CHATLOOP_BENCH_H
#define CHATLOOP_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "chatloop/jscan.h"

/* ---- hist.c ------------------------------------------------------------------- */

/* Values below 2^CB_HIST_SUB_BITS are exact; above, each power of two is cut
 * into 2^(CB_HIST_SUB_BITS-1) buckets, so a reported value is within 1/128
 * of a recorded one. Unit-free; chatbench records nanoseconds. */
#define CB_HIST_SUB_BITS 8
#define CB_HIST_BUCKETS ((64 - CB_HIST_SUB_BITS + 1) * (1 << (CB_HIST_SUB_BITS - 1)) + \
                         (1 << (CB_HIST_SUB_BITS - 1)))

typedef struct cb_hist {
    uint64_t n, min, max;
    double sum;
    uint64_t counts[CB_HIST_BUCKETS];
} cb_hist;

void cb_hist_init(cb_hist *h);
void cb_hist_add(cb_hist *h, uint64_t v);
void cb_hist_merge(cb_hist *into, const cb_hist *from);
/** The p-th percentile (0 < p <= 100) by nearest rank: the smallest recorded
 *  value v such that at least ceil(p/100 * n) values are <= v, reported as
 *  the middle of v's bucket (exact below 256), never above max. 0 when empty. */
uint64_t cb_hist_percentile(const cb_hist *h, double p);
/* bucket index <-> value range, exposed for the unit tests */
int cb_hist_index(uint64_t v);
uint64_t cb_hist_bucket_low(int idx);
uint64_t cb_hist_bucket_high(int idx);

/* ---- check.c ------------------------------------------------------------------ */

/* The answer chatloop-mock gives to N tokens ("tok1 tok2 ... tokN", see
 * include/chatloop/mock_text.h) and one turn's comparison against it. */
typedef struct cb_expect {
    char *text;         /* owned */
    size_t len;
    int ntokens;
} cb_expect;

int cb_expect_init(cb_expect *e, int ntokens);
void cb_expect_free(cb_expect *e);

typedef struct cb_check {
    size_t got;         /* bytes received and matched so far */
    int pieces;         /* token events received */
    int wrong;          /* a byte differed, or more bytes came than expected */
} cb_check;

static inline void cb_check_reset(cb_check *c)
{
    c->got = 0;
    c->pieces = 0;
    c->wrong = 0;
}
/** Compares the next piece of the answer. */
void cb_check_piece(cb_check *c, const cb_expect *e, const char *p, size_t n);
/** The verdict at the end of a turn: NULL when the answer is exactly the
 *  expected one, else "CORRUPT" (different or longer) or "TRUNCATED". */
const char *cb_check_verdict(const cb_check *c, const cb_expect *e);
/** Same for a whole answer text (the `complete` or `done` message's copy). */
const char *cb_check_whole(const cb_expect *e, const char *p, size_t n);

/* ---- stats.c ------------------------------------------------------------------ */

#define CB_MAX_CODES 24
#define CB_CODE_MAX 40
#define CB_EXAMPLE_MAX 160

typedef struct cb_error {
    char code[CB_CODE_MAX];
    char example[CB_EXAMPLE_MAX];   /* the first message seen with this code */
    uint64_t n;
} cb_error;

typedef struct cb_stats {
    cb_hist connect;    /* connect start -> ready (TCP up; WS: `connected`) */
    cb_hist ttft;       /* request written -> first token */
    cb_hist gap;        /* token -> next token, as the client read them */
    cb_hist turn;       /* request written -> end of the answer */
    uint64_t turns_ok, turns_failed, tokens, bytes_in;
    uint64_t conns_ok, conns_failed, conns_lost; /* lost: closed by the peer outside a turn */
    uint64_t late_starts;       /* --rate slots started late (all sessions busy) */
    uint64_t t_start_ns, t_end_ns; /* uv_hrtime of the first start and the last end */
    int nerrors;
    cb_error errors[CB_MAX_CODES + 1];  /* the last slot collects "OTHER" */
} cb_stats;

void cb_stats_init(cb_stats *s);
void cb_stats_error(cb_stats *s, const char *code, const char *example);
void cb_stats_merge(cb_stats *into, const cb_stats *from);
uint64_t cb_stats_errors(const cb_stats *s);

/* What the report says about the run besides the numbers. */
typedef struct cb_report_info {
    const char *mode, *url;
    int sessions, tokens, idle, procs;
    double duration_s;          /* asked for (0 with --turns) */
    double rate;
} cb_report_info;

void cb_report_table(FILE *f, const cb_stats *s, const cb_report_info *ri);
void cb_report_json(FILE *f, const cb_stats *s, const cb_report_info *ri);

/* ---- client.c / main.c --------------------------------------------------------- */

typedef enum { CB_MODE_WS, CB_MODE_SSE, CB_MODE_OPENAI } cb_mode;

#define CB_MAX_SOURCES 256
#define CB_MAX_HEADERS 16

typedef struct cb_options {
    cb_mode mode;
    int mode_set;
    char host[256];             /* numeric IPv4 (loopback or not) */
    int port;
    char path[1024];            /* path and query */
    int sessions;
    uint64_t duration_ns;       /* 0: until --turns */
    uint64_t turns;             /* 0: until --duration */
    uint64_t ramp_ns;
    double rate;                /* turns/s over all sessions; 0 = as fast as answered */
    uint64_t think_ns;
    uint64_t timeout_ns;        /* per turn */
    int tokens;                 /* asked (max_tokens) and expected */
    int conversation_turns;     /* turns before a session starts a new conversation */
    const char *question;
    const char *model;
    const char *token;          /* bearer JWT */
    char **token_list;          /* --token-file: session i uses [i % ntoken_list] */
    int ntoken_list;
    const char *headers[CB_MAX_HEADERS];
    int nheaders;
    uint32_t sources[CB_MAX_SOURCES]; /* network order; 0 sources = kernel's choice */
    int nsources;
    int idle;                   /* ws: connect and hold, no turns */
    int json;
    int procs;
    int verbose;
} cb_options;

/* ---- run.c / session.c --------------------------------------------------------- */

typedef struct cb_run cb_run;
typedef struct cb_session cb_session;

/* login.c: registers EMAIL (409 is fine), logs in, returns the access token
 * (malloc'd) in *token. 0, or -1 after saying why on stderr. */
int cb_login(const cb_options *o, const char *email_password, char **token);

/* session.c: one session's connection and turns. */
cb_session *cb_sessions_new(cb_run *r, int n);
void cb_sessions_free(cb_session *ss);
cb_session *cb_session_at(cb_session *ss, int i);
/** Starts session s (global index `index`) after delay_ns. */
void cb_session_start(cb_session *s, int index, uint64_t delay_ns);
/** The run is ending: a session not inside a turn stops now. */
void cb_session_stop(cb_session *s);

/* run.c: what the sessions share. */
uv_loop_t *cb_run_loop(cb_run *r);
const cb_options *cb_run_options(cb_run *r);
cb_stats *cb_run_stats(cb_run *r);
const cb_expect *cb_run_expect(cb_run *r);
/** May a session start another turn? Reserves it and says when (uv_hrtime
 *  ns); 0 when the run is over (duration or turn count reached). */
uint64_t cb_run_next_turn(cb_run *r);
/** Gives back a reservation that was not used (the run ended first). */
void cb_run_unreserve(cb_run *r);
int cb_run_stopping(cb_run *r);
/** Something no retry can fix (e.g. 401 without a token): say why, end the run. */
void cb_run_give_up(cb_run *r, const char *why);
/** A session has finished for good. */
void cb_run_session_done(cb_run *r);

/** Runs `sessions` sessions (indices first..first+sessions) on a new loop
 *  until the run ends; fills *st. Returns 0, or -1 if it could not start. */
int cb_run_sessions(const cb_options *o, int first, int sessions, double rate, uint64_t turns,
                    cb_stats *st);

#endif
