/*
 * limits.c — parameters and answers of the rate limits (limits.h); the
 * checks themselves are SQL functions (migration 0002).
 */
#include "chatloop/limits.h"
#include "chatloop/api.h"
#include "chatloop/jsonw.h"
#include "chatloop/worker.h"

#include <stdio.h>
#include <string.h>

/* A lease outlives the longest turn by this much before it lapses. */
#define LEASE_MARGIN_S 30

int cl_limits_turns_on(const cl_config *cfg)
{
    return cfg->rate_limit_per_minute > 0 || cfg->max_turns_per_user > 0;
}

void cl_limits_turn_params(const cl_config *cfg, cl_turn_limit_params *out)
{
    long interval = cfg->rate_limit_per_minute > 0 ? 60000000L / cfg->rate_limit_per_minute : 0;
    /* the bucket holds exactly rate_limit_per_minute turns of `interval` */
    snprintf(out->interval_us, sizeof out->interval_us, "%ld", interval);
    snprintf(out->burst_us, sizeof out->burst_us, "%ld", interval * cfg->rate_limit_per_minute);
    snprintf(out->max, sizeof out->max, "%d", cfg->max_turns_per_user);
    snprintf(out->lease_s, sizeof out->lease_s, "%llu",
             (unsigned long long)(cfg->turn_timeout_ms / 1000 + LEASE_MARGIN_S));
}

cl_limit_kind cl_limits_kind(const char *which)
{
    return which && strcmp(which, "concurrent") == 0 ? CL_LIMIT_CONCURRENT : CL_LIMIT_TURN_RATE;
}

int cl_limits_value(const cl_config *cfg, cl_limit_kind k)
{
    switch (k) {
    case CL_LIMIT_CONCURRENT:
        return cfg->max_turns_per_user;
    case CL_LIMIT_AUTH_IP:
        return cfg->auth_rate_limit_per_minute;
    default:
        return cfg->rate_limit_per_minute;
    }
}

int cl_limits_retry_s(long ms)
{
    long s = (ms + 999) / 1000;
    return s < 1 ? 1 : (int)s;
}

void cl_limits_message(const cl_config *cfg, cl_limit_kind k, int retry_s, char *buf, size_t len)
{
    switch (k) {
    case CL_LIMIT_CONCURRENT:
        snprintf(buf, len,
                 "too many turns running at once: at most %d per user (max_turns_per_user); "
                 "retry when one ends",
                 cfg->max_turns_per_user);
        break;
    case CL_LIMIT_AUTH_IP:
        snprintf(buf, len,
                 "too many sign-in attempts from this address: at most %d per minute; retry in %d s",
                 cfg->auth_rate_limit_per_minute, retry_s);
        break;
    default:
        snprintf(buf, len, "rate limit reached: %d chat turns per minute; retry in %d s",
                 cfg->rate_limit_per_minute, retry_s);
        break;
    }
}

static const char *const kind_names[CL_LIMIT__COUNT] = {"turn_rate", "concurrent", "auth_ip"};

const char *cl_limits_kind_name(cl_limit_kind k)
{
    return kind_names[k];
}

void cl_limits_refuse(cl_req *r, cl_limit_kind k, long retry_after_ms)
{
    const cl_config *cfg = r->conn->w->cfg;
    int s = cl_limits_retry_s(retry_after_ms);
    char msg[200], details[120], hdr[40];
    cl_limits_message(cfg, k, s, msg, sizeof msg);
    snprintf(details, sizeof details, "{\"kind\":\"%s\",\"limit\":%d,\"retry_after\":%d}",
             kind_names[k], cl_limits_value(cfg, k), s);
    snprintf(hdr, sizeof hdr, "Retry-After: %d\r\n", s);
    cl_api_error(r, CL_ERR_RATE_LIMITED, msg, details, hdr);
}

void cl_limits_refuse_openai(cl_req *r, cl_limit_kind k, long retry_after_ms)
{
    const cl_config *cfg = r->conn->w->cfg;
    int s = cl_limits_retry_s(retry_after_ms);
    char msg[200], hdr[40];
    cl_limits_message(cfg, k, s, msg, sizeof msg);
    snprintf(hdr, sizeof hdr, "Retry-After: %d\r\n", s);
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"error\":{\"message\":");
    cl_jsonw_cstr(&b, msg);
    cl_buf_append_str(&b, ",\"type\":\"rate_limit_exceeded\",\"param\":null,"
                          "\"code\":\"rate_limit_exceeded\"}}");
    cl_res_send(r, 429, "application/json", hdr, b.data, b.len);
    cl_buf_release(&b);
}
