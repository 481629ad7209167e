/**
 * metrics.h — counters for GET /metrics, shared by all workers.
 *
 * The supervisor maps one slot per worker in MAP_SHARED memory before forking.
 * Each worker is the only writer of its slot (relaxed load + store: no locked
 * instructions on the hot path); whichever worker answers /metrics sums every
 * slot, so the numbers cover the whole server. A restarted worker keeps adding
 * to its slot's counters (Prometheus counters never go down); the supervisor
 * zeroes the slot's gauges before the restart.
 */
#ifndef CHATLOOP_METRICS_H
#define CHATLOOP_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "chatloop/buf.h"

/* Upper bounds, in milliseconds, of the request-latency and TTFT buckets. */
#define CL_LATENCY_BUCKETS 14
extern const double cl_latency_bucket_ms[CL_LATENCY_BUCKETS];
/* ... and of the turn-duration buckets (a turn may run for minutes). */
#define CL_DURATION_BUCKETS 12
extern const double cl_duration_bucket_ms[CL_DURATION_BUCKETS];

typedef _Atomic uint64_t cl_counter;

/* A histogram: non-cumulative bucket counts (the bucket bounds are the
 * metric's: cl_latency_bucket_ms or cl_duration_bucket_ms), the count and
 * the sum. Sized for the larger bucket set. */
typedef struct cl_hist {
    cl_counter bucket[CL_DURATION_BUCKETS > CL_LATENCY_BUCKETS ? CL_DURATION_BUCKETS
                                                               : CL_LATENCY_BUCKETS];
    cl_counter count;
    cl_counter sum_us;
} cl_hist;

/* How a turn reached us: the label set of the turn metrics. A relayed
 * OpenAI-compatible request counts as a turn of transport "openai". */
typedef enum {
    CL_TRANSPORT_REST,          /* a JSON answer */
    CL_TRANSPORT_SSE,
    CL_TRANSPORT_WS,
    CL_TRANSPORT_OPENAI,
    CL_TRANSPORT__COUNT
} cl_transport;

typedef enum {
    CL_OUTCOME_COMPLETED,       /* answered in full (and stored) */
    CL_OUTCOME_FAILED,          /* ended with an error the client was told */
    CL_OUTCOME_CANCELLED,       /* the client cancelled or went away */
    CL_OUTCOME__COUNT
} cl_outcome;

/* Why an upstream call failed for good (after its retries). */
typedef enum {
    CL_UPSTREAM_429,
    CL_UPSTREAM_4XX,            /* other 4xx: a bad key, a bad request */
    CL_UPSTREAM_5XX,
    CL_UPSTREAM_TIMEOUT,        /* connect, first token, idle or total */
    CL_UPSTREAM_TRANSPORT,      /* refused, reset, DNS, TLS */
    CL_UPSTREAM_STREAM,         /* cut short or malformed after a 2xx */
    CL_UPSTREAM__COUNT
} cl_upstream_error;

/* Why a request or turn was refused with 429 (chatloop_rate_limited_total). */
typedef enum {
    CL_LIMIT_TURN_RATE,         /* rate_limit_per_minute of a user */
    CL_LIMIT_CONCURRENT,        /* max_turns_per_user running at once */
    CL_LIMIT_AUTH_IP,           /* auth_rate_limit_per_minute of a client address */
    CL_LIMIT__COUNT
} cl_limit_kind;

typedef struct cl_metrics_slot {
    /* gauges */
    cl_counter connections_open;
    cl_counter buffered_bytes;           /* held for clients (max_buffered_bytes) */
    /* counters */
    cl_counter connections_total;
    cl_counter connections_rejected;     /* over max_connections */
    cl_counter requests_by_class[6];     /* index status/100: 1xx..5xx; [0] unused */
    cl_hist request_latency;             /* latency buckets */
    cl_counter http_parse_errors;
    cl_counter header_timeouts;
    cl_counter slow_readers_dropped;
    cl_counter budget_drops;             /* refused or dropped for max_buffered_bytes */
    cl_counter worker_restarts;          /* written by the supervisor */
    /* turns (chat turns and relayed completions) */
    cl_counter turns_active[CL_TRANSPORT__COUNT];                 /* gauge */
    cl_counter turns_total[CL_TRANSPORT__COUNT][CL_OUTCOME__COUNT];
    cl_counter tokens_relayed[CL_TRANSPORT__COUNT];               /* content deltas */
    cl_hist ttft[CL_TRANSPORT__COUNT];                            /* latency buckets */
    cl_hist turn_duration[CL_TRANSPORT__COUNT];                   /* duration buckets */
    cl_counter upstream_errors[CL_UPSTREAM__COUNT];
    cl_counter upstream_retries;
    /* the database pool, published by the worker once a second */
    cl_counter db_connections_up;        /* gauge */
    cl_counter db_connections_busy;      /* gauge */
    cl_counter db_queue_depth;           /* gauge: ordinary queries waiting */
    cl_counter db_pending_writes;        /* gauge: durable writes queued or running */
    cl_counter db_spooled;               /* gauge: spooled writes not yet stored */
    cl_counter db_pool_size;             /* gauge */
    cl_counter db_query_timeouts;
    cl_counter db_errors_unavailable;    /* lost connection, queue full, down */
    cl_counter db_errors_refused;        /* the database refused the statement */
    /* who may call */
    cl_counter api_key_auth_failures;    /* unknown or revoked keys presented */
    cl_counter rate_limited[CL_LIMIT__COUNT];
    char pad[64];
} cl_metrics_slot;

/** Single-writer increment: a plain load and store, never a locked add. */
static inline void cl_metric_add(cl_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
static inline void cl_metric_sub(cl_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

/** Maps `n` zeroed slots shared with future children. NULL on failure. */
cl_metrics_slot *cl_metrics_map(int n);
/** The slots every worker sums (set once by cl_metrics_map). */
void cl_metrics_set_all(cl_metrics_slot *slots, int n);
/** Zeroes a dead worker's gauges before it is restarted. */
void cl_metrics_reset_gauges(cl_metrics_slot *slot);
/** Records one finished request. */
void cl_metrics_request(cl_metrics_slot *slot, int status, double ms);
/** The calling worker's own slot, for the recorders below (set by the
 *  worker at start; NULL — and the recorders do nothing — elsewhere). */
void cl_metrics_set_mine(cl_metrics_slot *slot);
cl_metrics_slot *cl_metrics_mine(void);

/** A turn started / ended; `ttft_ms` < 0 when no token was relayed. */
void cl_metrics_turn_begin(cl_transport t);
void cl_metrics_turn_end(cl_transport t, cl_outcome o, double total_ms, double ttft_ms);
static inline void cl_metrics_tokens(cl_transport t, uint64_t n)
{
    cl_metrics_slot *s = cl_metrics_mine();
    if (s)
        cl_metric_add(&s->tokens_relayed[t], n);
}
void cl_metrics_upstream_error(cl_upstream_error e);
void cl_metrics_upstream_retry(void);
void cl_metrics_api_key_failure(void);
void cl_metrics_rate_limited(cl_limit_kind k);

/** Appends the Prometheus text exposition of all slots to b. */
int cl_metrics_render(cl_buf *b);

#endif
