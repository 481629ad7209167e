/*
 * config.c — the key table and the parsers behind include/chatloop/config.h.
 *
 * Every key is one row of `keys[]`. The default is a string fed through the
 * same setter as user input, so a default that the parser would refuse fails
 * cl_config_init at once instead of silently disagreeing with the docs, and
 * conf/chatloop.conf is checked against the same table by test_config.
 *
 * A key whose feature has not landed yet is in the table (so the docs, the
 * dump and the later issue that brings it agree on its name) but marked
 * NOT_YET: setting it to anything but its inactive default refuses to
 * start, because a key accepted and then ignored (plain HTTP served to an
 * operator who asked for TLS) is worse than no key. The issue that brings
 * the feature removes the mark.
 */
#include "chatloop/config.h"
#include "chatloop/conninfo.h"
#include "chatloop/origin.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef enum {
    T_STR,      /* char *; optional `choices` restricts the value */
    T_INT,      /* int within [lo, hi] */
    T_DOUBLE,   /* double within [lo, hi] */
    T_DUR,      /* uint64_t milliseconds */
    T_SIZE,     /* uint64_t bytes */
    T_ENUM,     /* C enum; the index into `choices` is the enum value */
    T_BOOL,     /* int 0/1 */
    T_LISTEN,   /* char *listen, plus listen_host and listen_port */
    T_WORKERS,  /* int workers, plus workers_auto */
} key_type;

typedef struct {
    const char *name;
    key_type type;
    size_t off;
    const char *def;
    double lo, hi;              /* inclusive; checked only when hi > lo */
    const char *const *choices; /* NULL-terminated */
    int secret;                 /* 1: the whole value; SECRET_URL: its password part */
    const char *doc;
    const char *not_yet;        /* non-NULL: not supported yet, and why (see the top) */
    /* T_STR only: checks the value's syntax; 0, or -1 with why filled */
    int (*check)(const char *value, char *why, size_t whylen);
} key_desc;

#define SECRET_URL 2

/*
 * offsetof plus a compile-time type check: comparing pointers to distinct
 * types is a diagnostic (an error under -Werror), so a row whose type tag
 * disagrees with its struct field cannot build. sizeof keeps it unevaluated.
 */
#define FIELD(f, T) (offsetof(cl_config, f) + 0 * sizeof(&((cl_config *)0)->f == (T *)0))

#define K_STR(n, d, doc) { #n, T_STR, FIELD(n, char *), d, 0, 0, NULL, 0, doc, NULL, NULL }
#define K_SECRET(n, doc) { #n, T_STR, FIELD(n, char *), "", 0, 0, NULL, 1, doc, NULL, NULL }
#define K_CHOICE(n, d, ch, doc) { #n, T_STR, FIELD(n, char *), d, 0, 0, ch, 0, doc, NULL, NULL }
#define K_INT(n, d, lo, hi, doc) { #n, T_INT, FIELD(n, int), d, lo, hi, NULL, 0, doc, NULL, NULL }
#define K_DBL(n, d, lo, hi, doc) { #n, T_DOUBLE, FIELD(n, double), d, lo, hi, NULL, 0, doc, NULL, NULL }
/* Durations are named without the unit; the field carries it. */
#define K_DUR(n, d, doc) { #n, T_DUR, FIELD(n##_ms, uint64_t), d, 0, 0, NULL, 0, doc, NULL, NULL }
#define K_SIZE(n, d, lo, hi, doc) { #n, T_SIZE, FIELD(n, uint64_t), d, lo, hi, NULL, 0, doc, NULL, NULL }
#define K_ENUM(n, ET, d, ch, doc) { #n, T_ENUM, FIELD(n, ET), d, 0, 0, ch, 0, doc, NULL, NULL }
#define K_BOOL(n, d, doc) { #n, T_BOOL, FIELD(n, int), d, 0, 0, NULL, 0, doc, NULL, NULL }
/* A string whose syntax `chk` checks when it is set. */
#define K_STR_CHECKED(n, d, chk, doc) { #n, T_STR, FIELD(n, char *), d, 0, 0, NULL, 0, doc, NULL, chk }
/* The same rows for keys not supported yet, with the reason. */
#define K_STR_NOT_YET(n, d, doc, why) { #n, T_STR, FIELD(n, char *), d, 0, 0, NULL, 0, doc, why, NULL }
#define K_INT_NOT_YET(n, d, lo, hi, doc, why) \
    { #n, T_INT, FIELD(n, int), d, lo, hi, NULL, 0, doc, why, NULL }
#define K_DUR_NOT_YET(n, d, doc, why) { #n, T_DUR, FIELD(n##_ms, uint64_t), d, 0, 0, NULL, 0, doc, why, NULL }

#define KIB 1024.0
#define MIB (1024.0 * 1024.0)
#define GIB (1024.0 * 1024.0 * 1024.0)

/* Enum choices are listed in the order of the C enum they index. */
static const char *const provider_choices[] = { "groq", "openai", "mock", NULL };
static const char *const auth_choices[] = { "required", "off", NULL };
static const char *const level_choices[] = { "debug", "info", "warn", "error", NULL };
static const char *const format_choices[] = { "text", "json", NULL };
static const char *const effort_choices[] = { "", "low", "medium", "high", "none", "default", NULL };

static const key_desc keys[] = {
    /* listener */
    { "listen", T_LISTEN, FIELD(listen, char *), "127.0.0.1:8080", 0, 0, NULL, 0,
      "address to listen on: host:port, [ipv6]:port, :port or a bare port (all interfaces)", NULL,
      NULL },
    { "workers", T_WORKERS, FIELD(workers, int), "auto", 1, 256, NULL, 0,
      "worker processes: 1..256, or auto for one per online CPU", NULL, NULL },
    K_INT(backlog, "511", 1, 65535, "listen(2) backlog"),
    K_INT(max_connections, "100000", 1, 10000000,
          "open connections per worker; above it new connections are closed at once"),
    K_STR_NOT_YET(tls_cert, "", "TLS certificate chain (PEM); empty serves plain HTTP",
                  "TLS arrives in a later release"),
    K_STR_NOT_YET(tls_key, "", "TLS private key (PEM); set together with tls_cert",
                  "TLS arrives in a later release"),

    /* database */
    { "database_url", T_STR, FIELD(database_url, char *), "", 0, 0, NULL, SECRET_URL,
      "PostgreSQL connection URL (also read from DATABASE_URL)", NULL, NULL },
    K_INT(db_pool_size, "4", 1, 64, "database connections per worker"),
    K_INT(db_write_queue, "10000", 1, 10000000,
          "writes held per worker while the database is down; past it a turn fails"),
    K_DUR(db_query_timeout, "5s",
          "deadline of every query: waiting for a connection, and running (statement_timeout)"),
    K_INT(db_queue_max, "1024", 1, 1000000,
          "queries waiting for a connection per worker; past it requests fail at once with 503"),
    K_STR(spool_dir, "var/spool",
          "where writes acknowledged while the database is down are kept until stored; empty is off"),

    /* provider */
    K_ENUM(provider, cl_provider_kind, "groq", provider_choices,
           "LLM provider: groq, openai or mock (mock is used when api_key is empty)"),
    K_STR(base_url, "https://api.groq.com/openai/v1", "OpenAI-compatible API base URL"),
    K_SECRET(api_key, "provider API key (also read from GROQ_API_KEY); never logged"),
    K_STR(model, "llama-3.3-70b-versatile", "model to ask first"),
    K_STR(fallback_models, "", "comma-separated models tried in order when the first fails"),
    K_DBL(temperature, "0.7", 0, 2, "sampling temperature, 0..2"),
    K_INT(max_tokens, "1024", 1, 131072, "most tokens generated per answer"),
    K_DBL(top_p, "1.0", 0, 1, "nucleus sampling, 0..1"),
    K_CHOICE(reasoning_effort, "", effort_choices,
             "low, medium, high, none or default; empty means not sent"),
    K_INT(retries, "2", 0, 10, "upstream retries before the first token"),

    /* timeouts */
    K_DUR(connect_timeout, "10s", "upstream TCP and TLS connect"),
    K_DUR(first_token_timeout, "45s", "wait for the first upstream token"),
    K_DUR(idle_chunk_timeout, "30s", "longest gap between upstream chunks"),
    K_DUR(turn_timeout, "300s", "whole chat turn, tools included"),
    K_DUR_NOT_YET(retrieval_timeout, "10s", "retrieval step of a turn",
                  "retrieval arrives in a later release"),
    K_DUR(request_timeout, "30s",
          "a request whose answer has not started within this gets 504 (streams: see the upstream timeouts)"),
    K_DUR(header_timeout, "10s", "whole request head must arrive within this"),
    K_DUR(body_timeout, "30s", "longest gap between request body reads"),
    K_DUR(body_total_timeout, "60s", "a whole request body must arrive within this"),
    K_DUR(keepalive_timeout, "75s", "idle time allowed between requests on one connection"),
    K_DUR(drain_timeout, "10s", "on SIGTERM, how long in-flight work may finish"),
    K_DUR(ws_ping_interval, "30s", "WebSocket ping interval"),
    K_DUR(ws_idle_timeout, "300s", "close a WebSocket silent for this long"),

    /* limits */
    K_SIZE(max_header_bytes, "16KiB", KIB, MIB, "request head size; above it 431"),
    K_INT(max_headers, "100", 1, 1000, "header count; above it 431"),
    K_SIZE(max_request_line, "8KiB", 1, MIB, "request-target length; above it 414"),
    K_SIZE(max_body_bytes, "1MiB", KIB, GIB, "request body size; above it 413"),
    K_SIZE(max_output_bytes, "4MiB", 1, GIB,
           "queued output per connection before a slow reader is dropped"),
    K_SIZE(max_buffered_bytes, "256MiB", MIB, 64 * GIB,
           "bytes a worker holds for all its clients (bodies, WebSocket messages, output); past it the greediest is dropped"),
    K_SIZE(max_ws_message_bytes, "1MiB", 1, GIB, "WebSocket message size; above it close 1009"),
    K_INT(max_message_chars, "4096", 1, 1000000, "characters in one chat message"),
    K_INT(history_messages, "20", 0, 1000, "previous messages sent upstream with each turn"),
    K_INT(max_ws_sessions, "8", 1, 1000, "concurrent turns per WebSocket"),

    /* auth and abuse */
    K_ENUM(auth, cl_auth_mode, "required", auth_choices, "required or off"),
    K_SECRET(jwt_secret, "HMAC key for session tokens; never logged"),
    K_DUR(jwt_ttl, "24h", "session token lifetime"),
    K_INT(kdf_iterations, "600000", 1000, 100000000,
          "PBKDF2-SHA256 iterations for new password hashes"),
    K_INT(kdf_queue_max, "32", 1, 100000,
          "password hashings (register, login) queued or running per worker; past it 503 at once"),
    K_INT(rate_limit_per_minute, "60", 0, 1000000,
          "chat turns per minute per user, every transport and instance (a token bucket of this "
          "size refilled evenly); 0 is off"),
    K_INT(auth_rate_limit_per_minute, "30", 0, 1000000,
          "register and login attempts per minute per client address; 0 is off"),
    K_INT(max_turns_per_user, "8", 0, 100000,
          "chat turns one user may run at once, every transport and instance; 0 is off"),
    K_STR_CHECKED(cors_origins, "", cl_origin_list_check,
                  "browser origins allowed (CORS, /ws/chat): comma-separated scheme://host[:port]; "
                  "empty is none, * alone is any"),

    /* logging */
    K_ENUM(log_level, cl_log_level, "info", level_choices, "debug, info, warn or error"),
    K_ENUM(log_format, cl_log_format, "text", format_choices, "text or json"),
    K_BOOL(access_log, "on", "one log line per request: on or off"),
    K_BOOL(debug_routes, "off", "serve POST /api/v1/debug/echo (for tests; keep off in production)"),
    K_STR(docs_dir, "var/docs",
          "Swagger UI's files for /docs, read at startup (make docs fetches them); missing, /docs says how to get them"),

    /* mock provider */
    K_INT(mock_tokens, "20", 1, 100000, "tokens in each mock answer"),
    K_DUR(mock_token_interval, "20ms", "gap between mock tokens"),
    K_DUR(mock_first_token, "50ms", "delay before the first mock token"),
};

#define NKEYS (sizeof keys / sizeof keys[0])

/* Sets by pointer arithmetic on the table; one place so the casts stay here. */
static void *field(cl_config *cfg, const key_desc *k) { return (char *)cfg + k->off; }
static const void *cfield(const cl_config *cfg, const key_desc *k) {
    return (const char *)cfg + k->off;
}

static int seterr(char err[CL_ERRBUF], const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, CL_ERRBUF, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* `"value"` with quotes and control bytes escaped, shortened so the key and
 * the reason still fit in CL_ERRBUF; secrets never reach the message. */
static void quote_value(char *out, size_t n, const char *v, int secret) {
    char masked[512];
    if (secret == SECRET_URL) {
        cl_redact_url(v, masked, sizeof masked);
        v = masked;
    } else if (secret) {
        snprintf(out, n, "<redacted>");
        return;
    }
    size_t o = 0, i = 0;
    out[o++] = '"';
    for (; v[i] && o + 8 < n && i < 120; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (v[i] && o + 5 < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = 0;
}

static int bad_value(char err[CL_ERRBUF], const char *source, const key_desc *k,
                     const char *value, const char *fmt, ...) {
    if (!err)
        return -1;
    char q[160], why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    quote_value(q, sizeof q, value, k->secret);
    snprintf(err, CL_ERRBUF, "%s: %s = %s: %s", source ? source : "config", k->name, q, why);
    return -1;
}

/* Key names compare case-insensitively with '-' equal to '_', so
 * `--max-body-bytes`, `CHATLOOP_MAX_BODY_BYTES` and `max_body_bytes` meet. */
static int key_eq(const char *a, const char *b) {
    for (;; a++, b++) {
        int ca = tolower((unsigned char)*a), cb = tolower((unsigned char)*b);
        if (ca == '-')
            ca = '_';
        if (cb == '-')
            cb = '_';
        if (ca != cb)
            return 0;
        if (!ca)
            return 1;
    }
}

static const key_desc *find_key(const char *name) {
    for (size_t i = 0; i < NKEYS; i++)
        if (key_eq(keys[i].name, name))
            return &keys[i];
    return NULL;
}

static int choice_index(const char *const *choices, const char *v) {
    for (int i = 0; choices[i]; i++)
        if (strcasecmp(choices[i], v) == 0)
            return i;
    return -1;
}

/* Bounds-checked, since a cfg filled by hand may hold any int. */
static const char *choice_name(const char *const *choices, int e) {
    for (int i = 0; choices[i]; i++)
        if (i == e)
            return choices[i];
    return "?";
}

static void choice_list(char *out, size_t n, const char *const *choices) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; choices[i] && o < n; i++)
        o += (size_t)snprintf(out + o, n - o, "%s%s", i ? "|" : "", *choices[i] ? choices[i] : "\"\"");
}

static int replace_str(char **slot, const char *v) {
    char *copy = strdup(v);
    if (!copy)
        return -1;
    free(*slot);
    *slot = copy;
    return 0;
}

/* ---- scalar parsers: 0 ok, -1 syntax, -2 out of range / overflow ---- */

typedef struct {
    const char *suffix;
    uint64_t mult;
} unit;

static const unit dur_units[] = {
    { "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { NULL, 0 },
};
static const unit size_units[] = {
    { "", 1 }, { "b", 1 }, { "kb", 1000 }, { "mb", 1000000 }, { "gb", 1000000000 },
    { "kib", 1024 }, { "mib", 1048576 }, { "gib", 1073741824 }, { NULL, 0 },
};

/* Digits, optional blanks, then a unit. No sign, no fraction, no exponent:
 * "1.5s" is refused rather than silently truncated. */
static int parse_scaled(const char *s, const unit *units, uint64_t *out) {
    uint64_t v = 0;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return *p == '-' ? -3 : -1;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -2;
        v = v * 10 + d;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    for (const unit *u = units; u->suffix; u++) {
        if (strcasecmp(p, u->suffix) == 0) {
            if (v && u->mult > UINT64_MAX / v)
                return -2;
            *out = v * u->mult;
            return 0;
        }
    }
    return -1;
}

static int parse_int(const char *s, long long *out) {
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || isspace((unsigned char)*s))
        return -1;
    if (errno == ERANGE)
        return -2;
    *out = v;
    return 0;
}

/* strtod also takes "inf", "nan" and hex floats; none belongs in a config. */
static int parse_double(const char *s, double *out) {
    if (!*s || strspn(s, "0123456789.+-eE") != strlen(s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || end == s)
        return -1;
    if (errno == ERANGE || !isfinite(v))
        return -2;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    static const char *const yes[] = { "on", "true", "1", "yes", NULL };
    static const char *const no[] = { "off", "false", "0", "no", NULL };
    if (choice_index(yes, s) >= 0)
        return *out = 1, 0;
    if (choice_index(no, s) >= 0)
        return *out = 0, 0;
    return -1;
}

static int parse_port(const char *s, int *port) {
    long long v;
    if (!*s || strspn(s, "0123456789") != strlen(s) || parse_int(s, &v) != 0 || v < 1 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

/* Fills *host (malloc'd) and *port, or returns a reason. */
static const char *parse_listen(const char *s, char **host, int *port) {
    const char *colon = strrchr(s, ':');
    char h[256];
    if (!colon) {
        if (parse_port(s, port) != 0)
            return "expected host:port, [ipv6]:port, :port or a port 1..65535";
        snprintf(h, sizeof h, "0.0.0.0");
    } else if (s[0] == '[') {
        const char *close = strchr(s, ']');
        unsigned char addr[16];
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof h)
            return "expected [ipv6]:port";
        memcpy(h, s + 1, (size_t)(close - s - 1));
        h[close - s - 1] = 0;
        if (inet_pton(AF_INET6, h, addr) != 1)
            return "not an IPv6 address inside [...]";
        if (parse_port(close + 2, port) != 0)
            return "port must be 1..65535";
    } else {
        if (memchr(s, ':', (size_t)(colon - s)))
            return "an IPv6 address needs brackets, as in [::1]:8080";
        if (parse_port(colon + 1, port) != 0)
            return "port must be 1..65535";
        size_t hl = (size_t)(colon - s);
        if (hl >= sizeof h)
            return "host name too long";
        if (hl == 0) {
            snprintf(h, sizeof h, "0.0.0.0");
        } else {
            memcpy(h, s, hl);
            h[hl] = 0;
            if (strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != hl)
                return "host may hold only letters, digits, '.', '-' and '_'";
        }
    }
    *host = strdup(h);
    return *host ? NULL : "out of memory";
}

static int workers_auto_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

static const char *skip_blank(const char *s) {
    while (isspace((unsigned char)*s))
        s++;
    return s;
}

/* ---- the one setter ---- */

/* Parses `value` for key k and stores it in cfg: the one parser, for the
 * defaults and for every source. */
static int store_value(cl_config *cfg, const key_desc *k, const char *value, const char *source,
                       char err[CL_ERRBUF]) {
    void *p = field(cfg, k);
    char list[128];
    /* Everything but free-form strings is trimmed here too: environment
     * variables and flags do not pass through the file reader's trimming. */
    char trimmed[300];
    const char *t = value;
    if (k->type != T_STR || k->choices) {
        t = skip_blank(value);
        size_t n = strlen(t);
        while (n && isspace((unsigned char)t[n - 1]))
            n--;
        if (n >= sizeof trimmed)
            return bad_value(err, source, k, value, "value too long");
        memcpy(trimmed, t, n);
        trimmed[n] = 0;
        t = trimmed;
    }

    switch (k->type) {
    case T_STR: {
        /* A control byte in a key or URL is a header-injection hazard later. */
        for (const unsigned char *c = (const unsigned char *)value; *c; c++)
            if (*c < 0x20 || *c == 0x7f)
                return bad_value(err, source, k, value, "control characters are not allowed");
        const char *store = value;
        if (k->choices) {
            int i = choice_index(k->choices, t);
            if (i < 0) {
                choice_list(list, sizeof list, k->choices);
                return bad_value(err, source, k, value, "expected one of %s", list);
            }
            store = k->choices[i];
        }
        char why[CL_ERRBUF / 2];
        if (k->check && k->check(value, why, sizeof why) != 0)
            return bad_value(err, source, k, value, "%s", why);
        if (replace_str(p, store) != 0)
            return bad_value(err, source, k, value, "out of memory");
        return 0;
    }
    case T_INT: {
        long long v;
        if (parse_int(t, &v) != 0 || v < k->lo || v > k->hi)
            return bad_value(err, source, k, value, "expected an integer %.0f..%.0f", k->lo, k->hi);
        *(int *)p = (int)v;
        return 0;
    }
    case T_DOUBLE: {
        double v;
        if (parse_double(t, &v) != 0 || !(v >= k->lo && v <= k->hi))
            return bad_value(err, source, k, value, "expected a number %g..%g", k->lo, k->hi);
        *(double *)p = v;
        return 0;
    }
    case T_DUR:
    case T_SIZE: {
        int dur = k->type == T_DUR;
        uint64_t v;
        int rc = parse_scaled(t, dur ? dur_units : size_units, &v);
        if (rc == -3)
            return bad_value(err, source, k, value, "must not be negative");
        if (rc == -2)
            return bad_value(err, source, k, value, "too large");
        if (rc != 0)
            return bad_value(err, source, k, value,
                             dur ? "expected a duration like 500ms, 45s, 2m or 1h "
                                   "(a bare number is seconds)"
                                 : "expected a size like 4096, 16KiB, 10MiB, 1GiB or 512KB "
                                   "(a bare number is bytes)");
        if (k->hi > k->lo && (v < k->lo || v > k->hi))
            return bad_value(err, source, k, value, "must be %.0f..%.0f bytes", k->lo, k->hi);
        *(uint64_t *)p = v;
        return 0;
    }
    case T_ENUM: {
        int i = choice_index(k->choices, t);
        if (i < 0) {
            choice_list(list, sizeof list, k->choices);
            return bad_value(err, source, k, value, "expected one of %s", list);
        }
        /* gcc and clang give these enums the size of int; FIELD checked the type. */
        memcpy(p, &i, sizeof i);
        return 0;
    }
    case T_BOOL:
        if (parse_bool(t, p) != 0)
            return bad_value(err, source, k, value, "expected on/off, true/false, yes/no or 1/0");
        return 0;
    case T_LISTEN: {
        char *host = NULL;
        int port = 0;
        const char *why = parse_listen(t, &host, &port);
        if (why)
            return bad_value(err, source, k, value, "%s", why);
        if (replace_str(&cfg->listen, t) != 0) {
            free(host);
            return bad_value(err, source, k, value, "out of memory");
        }
        free(cfg->listen_host);
        cfg->listen_host = host;
        cfg->listen_port = port;
        return 0;
    }
    case T_WORKERS: {
        long long v;
        if (strcasecmp(t, "auto") == 0) {
            cfg->workers = workers_auto_count();
            cfg->workers_auto = 1;
            return 0;
        }
        if (parse_int(t, &v) != 0 || v < k->lo || v > k->hi)
            return bad_value(err, source, k, value, "expected \"auto\" or an integer %.0f..%.0f",
                             k->lo, k->hi);
        cfg->workers = (int)v;
        cfg->workers_auto = 0;
        return 0;
    }
    }
    return seterr(err, "%s: %s: unhandled key type", source, k->name);
}

/* Frees the string key k may hold in cfg (a scratch copy of one key). */
static void free_key(cl_config *cfg, const key_desc *k) {
    if (k->type == T_STR || k->type == T_LISTEN) {
        char **s = field(cfg, k);
        free(*s);
        *s = NULL;
    }
}

/* Whether key k holds the same value in a and b. Only the types that
 * not-supported-yet keys use need to compare; others count as different. */
static int same_value(const cl_config *a, const cl_config *b, const key_desc *k) {
    const void *pa = cfield(a, k), *pb = cfield(b, k);
    switch (k->type) {
    case T_STR: {
        const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
        return strcmp(sa ? sa : "", sb ? sb : "") == 0;
    }
    case T_INT:
    case T_BOOL:
        return *(const int *)pa == *(const int *)pb;
    case T_DUR:
    case T_SIZE:
        return *(const uint64_t *)pa == *(const uint64_t *)pb;
    default:
        return 0;
    }
}

/* A key not supported yet may be set only to its inactive default (written
 * in any form: "10s" or "10000ms"); anything else refuses to start. The
 * value is parsed first, so a malformed one gets the usual message. */
static int check_not_yet(const key_desc *k, const char *value, const char *source,
                         char err[CL_ERRBUF]) {
    cl_config want, got;
    memset(&want, 0, sizeof want);
    memset(&got, 0, sizeof got);
    int rc = store_value(&got, k, value, source, err);
    if (rc == 0 && store_value(&want, k, k->def, "default", err) != 0)
        rc = -1;
    if (rc == 0 && !same_value(&got, &want, k))
        rc = seterr(err, "%s: %s is not supported yet (%s); remove it to start",
                    source ? source : "config", k->name, k->not_yet);
    free_key(&got, k);
    free_key(&want, k);
    return rc;
}

static int set_key(cl_config *cfg, const key_desc *k, const char *value, const char *source,
                   char err[CL_ERRBUF]) {
    if (k->not_yet && check_not_yet(k, value, source, err) != 0)
        return -1;
    return store_value(cfg, k, value, source, err);
}

int cl_config_init(cl_config *cfg, char err[CL_ERRBUF]) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NKEYS; i++) {
        if (store_value(cfg, &keys[i], keys[i].def, "default", err) != 0) {
            cl_config_free(cfg);
            return -1;
        }
    }
    return 0;
}

void cl_config_free(cl_config *cfg) {
    if (!cfg)
        return;
    for (size_t i = 0; i < NKEYS; i++)
        free_key(cfg, &keys[i]);
    free(cfg->listen_host);
    cfg->listen_host = NULL;
}

int cl_config_set(cl_config *cfg, const char *key, const char *value, const char *source,
                  char err[CL_ERRBUF]) {
    const key_desc *k = find_key(key);
    if (!k) {
        char q[160];
        quote_value(q, sizeof q, key, 0);
        return seterr(err, "%s: unknown key %s", source ? source : "config", q);
    }
    return set_key(cfg, k, value ? value : "", source, err);
}

/* ---- conf file ---- */

/* Splits one line in place. Returns 1 for a key/value, 0 for nothing to do,
 * -1 with *why set for a malformed line. */
static int split_line(char *line, char **key, char **value, const char **why) {
    char *s = line;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq)
        return *why = "expected \"key = value\"", -1;
    char *ke = eq;
    while (ke > s && isspace((unsigned char)ke[-1]))
        ke--;
    if (ke == s)
        return *why = "missing key before '='", -1;
    *ke = 0;
    *key = s;

    char *v = eq + 1;
    while (isspace((unsigned char)*v))
        v++;
    if (*v == '"') {
        char *r = v + 1, *w = v;
        for (; *r && *r != '"'; r++) {
            if (*r == '\\') {
                r++;
                if (!*r)
                    break;
                if (*r != '"' && *r != '\\')
                    return *why = "only \\\" and \\\\ escapes are allowed in quotes", -1;
            }
            *w++ = *r;
        }
        if (*r != '"')
            return *why = "unterminated quoted value", -1;
        *w = 0;
        r = (char *)skip_blank(r + 1);
        if (*r && *r != '#')
            return *why = "unexpected text after the closing quote", -1;
        *value = v;
        return 1;
    }
    /* Unquoted: a '#' starts a comment only after blank space, so values such
     * as URLs with fragments ("a#b") survive. */
    for (char *c = v; *c; c++) {
        if (*c == '#' && (c == v || isspace((unsigned char)c[-1]))) {
            *c = 0;
            break;
        }
    }
    size_t n = strlen(v);
    while (n && isspace((unsigned char)v[n - 1]))
        v[--n] = 0;
    *value = v;
    return 1;
}

int cl_config_load_file(cl_config *cfg, const char *path, int required, char err[CL_ERRBUF]) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT && !required)
            return 0;
        return seterr(err, "%s: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    unsigned lineno = 0;
    while (getline(&line, &cap, f) >= 0) {
        char *key, *value, source[300];
        const char *why = NULL;
        lineno++;
        snprintf(source, sizeof source, "%s:%u", path, lineno);
        int r = split_line(line, &key, &value, &why);
        if (r < 0) {
            rc = seterr(err, "%s: %s", source, why);
            break;
        }
        if (r > 0 && cl_config_set(cfg, key, value, source, err) != 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f))
        rc = seterr(err, "%s: read error", path);
    free(line);
    fclose(f);
    return rc;
}

/* ---- environment ---- */

#define ENV_PREFIX "CHATLOOP_"

/* Value of NAME in envp, first match wins as with getenv. */
static const char *env_get(char *const *envp, const char *name) {
    size_t n = strlen(name);
    for (; envp && *envp; envp++)
        if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
            return *envp + n + 1;
    return NULL;
}

/* CHATLOOP_ plus the key upper-cased. */
static void env_name(char *out, size_t n, const char *key) {
    size_t j = (size_t)snprintf(out, n, "%s", ENV_PREFIX);
    for (; *key && j + 1 < n; key++)
        out[j++] = (char)toupper((unsigned char)*key);
    out[j] = 0;
}

int cl_config_apply_env(cl_config *cfg, char *const *envp, char err[CL_ERRBUF]) {
    char name[128], want[128];
    size_t plen = strlen(ENV_PREFIX);

    /* A misspelt CHATLOOP_ variable is an error, not a silently ignored knob. */
    for (char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, ENV_PREFIX, plen) != 0)
            continue;
        size_t n = (size_t)(eq - *e);
        if (n >= sizeof name)
            n = sizeof name - 1;
        memcpy(name, *e, n);
        name[n] = 0;
        const key_desc *k = find_key(name + plen);
        if (!k) {
            for (char *c = name + plen; *c; c++)
                *c = (char)tolower((unsigned char)*c);
            return seterr(err, "%.*s: unknown key \"%s\"", (int)n, *e, name + plen);
        }
        env_name(want, sizeof want, k->name);
        if (strcmp(want, name) != 0)
            return seterr(err, "%s: environment names are upper case with '_': use %s", name, want);
    }

    for (size_t i = 0; i < NKEYS; i++) {
        env_name(name, sizeof name, keys[i].name);
        const char *v = env_get(envp, name);
        if (v && set_key(cfg, &keys[i], v, name, err) != 0)
            return -1;
    }

    static const struct { const char *env, *key, *own; } conventional[] = {
        { "GROQ_API_KEY", "api_key", ENV_PREFIX "API_KEY" },
        { "DATABASE_URL", "database_url", ENV_PREFIX "DATABASE_URL" },
    };
    for (size_t i = 0; i < sizeof conventional / sizeof conventional[0]; i++) {
        const char *v = env_get(envp, conventional[i].env);
        if (v && !env_get(envp, conventional[i].own) &&
            cl_config_set(cfg, conventional[i].key, v, conventional[i].env, err) != 0)
            return -1;
    }
    return 0;
}

/* ---- validation ---- */

/* tls_cert and tls_key cannot be set while TLS is not supported (see
 * NOT_YET): these checks are for the release that brings it. */
int cl_config_validate(const cl_config *cfg, char err[CL_ERRBUF]) {
    int has_cert = cfg->tls_cert && *cfg->tls_cert;
    int has_key = cfg->tls_key && *cfg->tls_key;
    if (has_cert != has_key)
        return seterr(err, "tls_cert and tls_key must be set together (%s is empty)",
                      has_cert ? "tls_key" : "tls_cert");
    if (has_cert && access(cfg->tls_cert, R_OK) != 0)
        return seterr(err, "tls_cert = \"%s\": %s", cfg->tls_cert, strerror(errno));
    if (has_key && access(cfg->tls_key, R_OK) != 0)
        return seterr(err, "tls_key = \"%s\": %s", cfg->tls_key, strerror(errno));
    return 0;
}

/* ---- dump ---- */

/* The largest unit that divides exactly, so "300s" prints as "5m" and every
 * printed value parses back to the same number of milliseconds. */
static void format_duration(char *out, size_t n, uint64_t ms) {
    if (ms && ms % 3600000 == 0)
        snprintf(out, n, "%lluh", (unsigned long long)(ms / 3600000));
    else if (ms && ms % 60000 == 0)
        snprintf(out, n, "%llum", (unsigned long long)(ms / 60000));
    else if (ms % 1000 == 0)
        snprintf(out, n, "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(out, n, "%llums", (unsigned long long)ms);
}

/* Shortest form that reads back to the same double. */
static void format_double(char *out, size_t n, double v) {
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* Strings are quoted when the file reader would otherwise change them. */
static void dump_string(FILE *f, const char *s) {
    size_t n = strlen(s);
    int quote = n == 0 || isspace((unsigned char)s[0]) || isspace((unsigned char)s[n - 1]) ||
                s[0] == '"' || strchr(s, '#');
    if (!quote) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

char *cl_config_dump(const cl_config *cfg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return NULL;
    for (size_t i = 0; i < NKEYS; i++) {
        const key_desc *k = &keys[i];
        const void *p = cfield(cfg, k);
        char tmp[64];
        int e;
        fprintf(f, "%s = ", k->name);
        switch (k->type) {
        case T_STR:
        case T_LISTEN: {
            const char *s = *(char *const *)p ? *(char *const *)p : "";
            if (k->secret == SECRET_URL && *s) {
                char masked[1024];
                cl_redact_url(s, masked, sizeof masked);
                dump_string(f, masked);
            } else if (k->secret && *s)
                fputs("<redacted>", f);
            else
                dump_string(f, s);
            break;
        }
        case T_INT:
            fprintf(f, "%d", *(const int *)p);
            break;
        case T_DOUBLE:
            format_double(tmp, sizeof tmp, *(const double *)p);
            fputs(tmp, f);
            break;
        case T_DUR:
            format_duration(tmp, sizeof tmp, *(const uint64_t *)p);
            fputs(tmp, f);
            break;
        case T_SIZE:
            fprintf(f, "%llu", (unsigned long long)*(const uint64_t *)p);
            break;
        case T_ENUM:
            memcpy(&e, p, sizeof e);
            fputs(choice_name(k->choices, e), f);
            break;
        case T_BOOL:
            fputs(*(const int *)p ? "on" : "off", f);
            break;
        case T_WORKERS:
            if (cfg->workers_auto)
                fputs("auto", f);
            else
                fprintf(f, "%d", cfg->workers);
            break;
        }
        /* a comment, so the dump still reads back as a conf file */
        if (k->not_yet)
            fprintf(f, "  # not supported yet: %s", k->not_yet);
        fputc('\n', f);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- table access ---- */

size_t cl_config_key_count(void) { return NKEYS; }
const char *cl_config_key_name(size_t i) { return i < NKEYS ? keys[i].name : NULL; }
const char *cl_config_key_default(size_t i) { return i < NKEYS ? keys[i].def : NULL; }
const char *cl_config_key_doc(size_t i) { return i < NKEYS ? keys[i].doc : NULL; }
const char *cl_config_key_not_yet(size_t i) { return i < NKEYS ? keys[i].not_yet : NULL; }

int cl_config_flag(int argc, char **argv, int *i, char *key, size_t keylen, const char **value,
                   char err[CL_ERRBUF]) {
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
        snprintf(err, CL_ERRBUF, "unexpected argument \"%s\" (see --help)", a);
        return -1;
    }
    const char *eq = strchr(a + 2, '=');
    if (eq) {
        snprintf(key, keylen, "%.*s", (int)(eq - a - 2), a + 2);
        *value = eq + 1;
        return 0;
    }
    snprintf(key, keylen, "%s", a + 2);
    if (*i + 1 >= argc) {
        snprintf(err, CL_ERRBUF, "--%s needs a value", key);
        return -1;
    }
    *value = argv[++*i];
    return 0;
}
