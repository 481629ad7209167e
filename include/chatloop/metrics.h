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

/* Upper bounds, in milliseconds, of the request-latency histogram buckets. */
#define CL_LATENCY_BUCKETS 14
extern const double cl_latency_bucket_ms[CL_LATENCY_BUCKETS];

typedef _Atomic uint64_t cl_counter;

typedef struct cl_metrics_slot {
    /* gauges */
    cl_counter connections_open;
    cl_counter buffered_bytes;           /* held for clients (max_buffered_bytes) */
    /* counters */
    cl_counter connections_total;
    cl_counter connections_rejected;     /* over max_connections */
    cl_counter requests_by_class[6];     /* index status/100: 1xx..5xx; [0] unused */
    cl_counter request_latency_bucket[CL_LATENCY_BUCKETS]; /* non-cumulative */
    cl_counter request_latency_count;
    cl_counter request_latency_sum_us;
    cl_counter http_parse_errors;
    cl_counter header_timeouts;
    cl_counter slow_readers_dropped;
    cl_counter budget_drops;             /* refused or dropped for max_buffered_bytes */
    cl_counter worker_restarts;          /* written by the supervisor */
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
/** Appends the Prometheus text exposition of all slots to b. */
int cl_metrics_render(cl_buf *b);

#endif
