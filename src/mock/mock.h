/*
 * mock.h — chatloop-mock's internals, shared by the files of src/mock/.
 *
 *   main.c     flags, limits, runs one worker on the project's HTTP core
 *   app.c      worker hooks, per-worker state, stats, the fault table
 *   record.c   the ring of recorded requests and the /_mock/ endpoints
 *   plan.c     reads an OpenAI request (jansson) into a mock_plan
 *   wire.c     writes chunks, completions and error bodies (jsonw + cl_buf)
 *   gen.c      one answer in flight: its timer, pacing, faults, lifetime
 *   routes.c   the HTTP handlers and the route table
 *
 * Everything runs on the worker's one loop thread.
 */
#ifndef CHATLOOP_MOCK_INTERNAL_H
#define CHATLOOP_MOCK_INTERNAL_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "chatloop/buf.h"
#include "chatloop/http.h"
#include "chatloop/router.h"
#include "chatloop/worker.h"

#define MOCK_MODEL_MAX 128
#define MOCK_TOOL_NAME_MAX 128
#define MOCK_TOOL_ARGS_MAX 256
#define MOCK_TOOL_PIECES 3

/* Faults a request can ask for (X-Mock-Fault or a "mock-<fault>" model). */
typedef enum {
    MOCK_FAULT_NONE,
    MOCK_FAULT_STATUS,      /* answer with an HTTP error status (429, 500, ...) */
    MOCK_FAULT_CUT,         /* close the connection mid-stream, no [DONE] */
    MOCK_FAULT_STALL,       /* stop sending mid-stream, keep the connection */
    MOCK_FAULT_MALFORMED,   /* a `data: {not json` chunk, then the end */
    MOCK_FAULT_GROQ_ERROR,  /* an x_groq.error chunk, then the end */
    MOCK_FAULT_ERROR_CHUNK, /* an OpenAI-style {"error":{..}} chunk, then the end */
    MOCK_FAULT_SLOW_FIRST,  /* the first token comes late (default 2 s) */
    MOCK_FAULT_CORRUPT,     /* one token's text is wrong; otherwise a normal answer */
} mock_fault_kind;

/* Everything an answer needs, decided when the request arrives. */
typedef struct mock_plan {
    char model[MOCK_MODEL_MAX];
    int ntokens;                /* content tokens (text answers) */
    int stream;
    int include_usage;          /* stream_options.include_usage */
    int prompt_tokens;
    int finish_length;          /* ntokens was cut by max_tokens: "length" */
    uint64_t first_ms, interval_ms;
    mock_fault_kind fault;
    int fault_status;           /* MOCK_FAULT_STATUS */
    int fault_after;            /* pieces sent before the fault (-1: default) */
    int tool;                   /* answer with a tool call instead of text */
    char tool_name[MOCK_TOOL_NAME_MAX];
    char tool_args[MOCK_TOOL_ARGS_MAX];
    int multiline;              /* X-Mock-Multiline-Data: each chunk's JSON on several data: lines */
} mock_plan;

typedef struct mock_stats {
    uint64_t requests;              /* API requests (not /_mock/, /health) */
    uint64_t streams_started, streams_completed, streams_aborted, streams_cut;
    uint64_t completions_started, completions_completed, completions_aborted;
    uint64_t faults;                /* requests that got a fault */
} mock_stats;

typedef struct mock_record mock_record;
typedef struct mock_gen mock_gen;
typedef struct mock_fault_entry mock_fault_entry;

/* Options that are not chatloop config keys (set by main before the run). */
typedef struct mock_options {
    int record_max;                 /* requests kept for GET /_mock/requests; 0 = off */
} mock_options;

typedef struct mock_app {
    cl_worker *w;
    mock_options opt;
    mock_stats stats;
    mock_gen *gens;                 /* every answer in flight */
    uint64_t open_streams;          /* streams among them */
    uint64_t open_completions;      /* non-streamed answers among them */
    uint64_t seq;                   /* chatcmpl-mock-<seq> */
    cl_buf scratch;                 /* chunk and body assembly, reused */
    /* recording ring (record.c) */
    mock_record *ring;
    int ring_head, ring_len;
    size_t ring_bytes;
    uint64_t record_seq;
    /* fault counters (app.c) */
    mock_fault_entry *faults;
    int nfaults, faults_cap;
} mock_app;

/* app.c */
void mock_set_options(const mock_options *o);
extern const cl_worker_hooks mock_hooks;
static inline mock_app *mock_app_of(cl_req *r) { return r->conn->w->app; }
/** Counts one more request under `key`; returns how many were seen with it. */
uint64_t mock_fault_seen(mock_app *a, const char *key, size_t len);
void mock_faults_clear(mock_app *a);
/** Writes the /_mock/stats object. */
int mock_stats_json(mock_app *a, cl_buf *b);

/* record.c */
void mock_record_request(mock_app *a, cl_req *r, int body_is_json);
void mock_record_free(mock_app *a);
void mock_h_requests_get(cl_req *r);
void mock_h_requests_delete(cl_req *r);

/* plan.c: 0, or -1 after answering the request with an error itself. */
int mock_plan_build(mock_app *a, cl_req *r, json_t *root, mock_plan *p);
/** Parses an X-Mock-Fault value or a model suffix. 0, or -1 if unknown. */
int mock_fault_parse(const char *s, size_t len, mock_fault_kind *kind, int *status);
/** Header value as a NUL-terminated copy; -1 if absent or too long. */
int mock_header(cl_req *r, const char *name, char *out, size_t outlen);

/* wire.c */
/** Sends an OpenAI error body with `status` (plus extra header lines). */
void mock_send_error(mock_app *a, cl_req *r, int status, const char *type, const char *code,
                     const char *message, const char *extra_headers);
/** The default error type/code/message for a fault status. */
void mock_send_status_fault(mock_app *a, cl_req *r, int status);
/* The pieces of one answer, each appended to b. `g` gives ids and plan. */
int mock_wire_role_chunk(cl_buf *b, const mock_gen *g);
int mock_wire_piece_chunk(cl_buf *b, const mock_gen *g, int piece);
int mock_wire_final_chunks(cl_buf *b, const mock_gen *g, double completion_s);
int mock_wire_groq_error_chunk(cl_buf *b, const mock_gen *g);
int mock_wire_error_chunk(cl_buf *b);
int mock_wire_completion(cl_buf *b, const mock_gen *g, double completion_s);

/* gen.c */
/** The content piece whose text the `corrupt` fault alters, or -1. */
int mock_corrupt_piece(const mock_gen *g);
struct mock_gen {
    uv_timer_t timer;               /* paces the answer; closed in gen_finish */
    mock_app *app;                  /* NULL once finished */
    cl_req *req;                    /* NULL once finished (detached) */
    mock_gen *prev, *next;          /* app->gens */
    mock_plan plan;
    uint64_t id;
    long long created;              /* unix seconds */
    uint64_t first_due;             /* loop time (ms) of piece 1 */
    int pieces;                     /* content pieces in the whole answer */
    int sent;                       /* pieces written so far */
    int arg_off[MOCK_TOOL_PIECES + 1]; /* tool arguments split points */
    int nargs;                      /* argument fragments */
};
/** Starts answering r according to p (takes a copy of p). */
void mock_gen_start(mock_app *a, cl_req *r, const mock_plan *p);
/** Worker drain or stop: detach every answer; `close_conns` also closes
 *  their connections. */
void mock_gen_stop_all(mock_app *a, int close_conns);

/* routes.c */
cl_router *mock_routes_build(const cl_config *cfg);

#endif
