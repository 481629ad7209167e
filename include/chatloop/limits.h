/*
 * limits.h — the rate limits of SPEC §8, kept in PostgreSQL so they hold
 * whichever worker or instance serves a user (migration 0002's functions):
 *   - rate_limit_per_minute: a token bucket per user on chat turns of every
 *     transport (GCRA: bursts of that many, refilled evenly);
 *   - max_turns_per_user: turns one user runs at once, as leases that lapse
 *     by themselves if an instance dies mid-turn;
 *   - auth_rate_limit_per_minute: register and login per client address.
 * A chat turn checks its limits inside the statement that loads its
 * history (no round trip of its own); the OpenAI-compatible relay, which
 * has no such statement, runs one before it calls the upstream.
 */
#ifndef CHATLOOP_LIMITS_H
#define CHATLOOP_LIMITS_H

#include "chatloop/config.h"
#include "chatloop/http.h"
#include "chatloop/metrics.h"

/** A turn's limit parameters as statement text parameters. */
typedef struct cl_turn_limit_params {
    char interval_us[24];       /* one turn's cost; "0": no rate limit */
    char burst_us[24];           /* the bucket */
    char max[24];                /* concurrent turns; "0": no cap */
    char lease_s[24];            /* a running turn's count lapses after this */
} cl_turn_limit_params;

/** 1 when a turn must check a limit (rate or concurrency). */
int cl_limits_turns_on(const cl_config *cfg);
void cl_limits_turn_params(const cl_config *cfg, cl_turn_limit_params *out);

/* The SQL of the check, for a statement with the user, the four
 * parameters above and the lease (the turn's id) at these positions: its
 * columns are allowed, which, retry_after_ms and holder (the place the
 * turn holds, NULL without max_turns_per_user). */
#define CL_SQL_TAKE_TURN(user, interval, burst, max, lease, lapse_s)                               \
    "chatloop_take_turn(" user "::uuid, " interval "::int, " burst "::int, " max "::int, " lease  \
    "::text, " lapse_s "::int)"

/* Gives a turn's place back: the user, the holder its check returned and
 * the lease. */
#define CL_SQL_END_TURN "SELECT chatloop_end_turn($1::uuid, $2::text, $3::text)"

/** "turn_rate" / "concurrent" (what the SQL says) as a kind. */
cl_limit_kind cl_limits_kind(const char *which);

/** The limit behind a refusal, for the answer's details. */
int cl_limits_value(const cl_config *cfg, cl_limit_kind k);

/** Seconds for Retry-After: the milliseconds rounded up, at least 1. */
int cl_limits_retry_s(long retry_after_ms);

/** A precise sentence for the refusal into buf. */
void cl_limits_message(const cl_config *cfg, cl_limit_kind k, int retry_s, char *buf, size_t len);

/** "turn_rate", "concurrent" or "auth_ip". */
const char *cl_limits_kind_name(cl_limit_kind k);

/** The 429 answers (the caller counts them: cl_metrics_rate_limited): the envelope
 *  with RATE_LIMITED and details {kind, limit, retry_after}, or OpenAI's
 *  {"error":{"type":"rate_limit_exceeded",...}}; both with Retry-After. */
void cl_limits_refuse(cl_req *r, cl_limit_kind k, long retry_after_ms);
void cl_limits_refuse_openai(cl_req *r, cl_limit_kind k, long retry_after_ms);

#endif
