/**
 * config.h — chatloop's configuration (SPEC §2).
 *
 * One table of keys (src/base/config.c) is the single source of truth: it
 * holds each key's type, default, bounds and one-line doc. Defaults are
 * applied by parsing the default strings through the same code path as user
 * values, so a default can never disagree with what the parser accepts.
 *
 * Precedence, lowest first: built-in defaults < conf file < environment
 * (CHATLOOP_<KEY>, plus GROQ_API_KEY and DATABASE_URL) < command-line flags.
 *
 * Durations are written "45s", "500ms", "2m" or a bare integer meaning
 * seconds, and are stored in milliseconds. Sizes are written "16KiB", "10MiB",
 * "1GiB", "512KB" (KB=1000) or a bare integer meaning bytes.
 *
 * Keys whose feature has not landed yet (tls_cert, tls_key, retrieval_timeout)
 * are known but refuse any value other
 * than their inactive default, naming the key: nothing is accepted and
 * ignored (cl_config_key_not_yet).
 *
 * Ownership: cl_config owns every string it holds; cl_config_free releases
 * them. Nothing here is thread-safe; it is built once at startup, before fork.
 */
#ifndef CHATLOOP_CONFIG_H
#define CHATLOOP_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CL_ERRBUF 512

typedef enum { CL_LOG_DEBUG, CL_LOG_INFO, CL_LOG_WARN, CL_LOG_ERROR } cl_log_level;
typedef enum { CL_LOG_TEXT, CL_LOG_JSON } cl_log_format;
typedef enum { CL_PROVIDER_GROQ, CL_PROVIDER_OPENAI, CL_PROVIDER_MOCK } cl_provider_kind;
typedef enum { CL_AUTH_REQUIRED, CL_AUTH_OFF } cl_auth_mode;

typedef struct cl_config {
    /* listener */
    char *listen;               /* "host:port" as given, e.g. "127.0.0.1:8080" */
    char *listen_host;          /* parsed host part ("127.0.0.1", "::1", "0.0.0.0") */
    int listen_port;            /* parsed port, 1..65535 */
    int workers;                /* >= 1; "auto" resolves to the number of online CPUs */
    int workers_auto;           /* 1 when given as "auto" */
    int backlog;                /* listen(2) backlog */
    int max_connections;        /* per worker; above it new connections are closed at once */
    char *tls_cert;             /* path or NULL/"" when TLS is off */
    char *tls_key;

    /* database */
    char *database_url;
    int db_pool_size;
    int db_write_queue;             /* durable writes held while the db is down */
    uint64_t db_query_timeout_ms;   /* every query's deadline (queue wait; statement_timeout) */
    int db_queue_max;               /* ordinary queries waiting for a connection */
    char *spool_dir;                /* on-disk queue of acknowledged writes; "" = off */

    /* provider */
    cl_provider_kind provider;
    char *base_url;
    char *api_key;              /* secret: never logged, redacted in dumps */
    char *model;
    char *fallback_models;      /* comma-separated, may be "" */
    double temperature;
    int max_tokens;
    double top_p;
    char *reasoning_effort;     /* "" = not sent; else low|medium|high|none|default */
    int retries;

    /* timeouts, milliseconds */
    uint64_t connect_timeout_ms;
    uint64_t first_token_timeout_ms;
    uint64_t idle_chunk_timeout_ms;
    uint64_t turn_timeout_ms;
    uint64_t retrieval_timeout_ms;
    uint64_t request_timeout_ms;    /* dispatched request without an answer started -> 504 */
    uint64_t header_timeout_ms;     /* whole request head must arrive within this */
    uint64_t body_timeout_ms;       /* gap allowed between body reads */
    uint64_t body_total_timeout_ms; /* whole body must arrive within this */
    uint64_t keepalive_timeout_ms;  /* idle time between requests on one connection */
    uint64_t drain_timeout_ms;      /* SIGTERM: in-flight work gets this long */
    uint64_t ws_ping_interval_ms;
    uint64_t ws_idle_timeout_ms;

    /* limits */
    uint64_t max_header_bytes;      /* whole request head; above it -> 431 */
    int max_headers;                /* header count; above it -> 431 */
    uint64_t max_request_line;      /* request-target length; above it -> 414 */
    uint64_t max_body_bytes;        /* above it -> 413 without reading the rest */
    uint64_t max_output_bytes;      /* per-connection queued output before the reader is dropped */
    uint64_t max_buffered_bytes;    /* per worker: every byte held for clients (cl_conn_hold) */
    uint64_t max_ws_message_bytes;
    int max_message_chars;
    int history_messages;
    int max_ws_sessions;            /* concurrent turns per WebSocket */

    /* auth and abuse */
    cl_auth_mode auth;
    char *jwt_secret;               /* secret */
    uint64_t jwt_ttl_ms;
    int kdf_iterations;             /* PBKDF2-SHA256 iterations for new hashes */
    int kdf_queue_max;              /* per worker: KDF jobs queued or running; past it 503 */
    int rate_limit_per_minute;       /* chat turns per user (0 off) */
    int auth_rate_limit_per_minute;  /* register/login per client address (0 off) */
    int max_turns_per_user;          /* concurrent turns per user (0 off) */
    char *cors_origins;             /* comma-separated allowlist, "" = none, "*" = any;
                                     * syntax checked by cl_origin_list_check when set */

    /* logging */
    cl_log_level log_level;
    cl_log_format log_format;
    int access_log;                 /* 1 = one line per request */
    int debug_routes;               /* 1 = serve /api/v1/debug/echo (tests) */
    char *docs_dir;                 /* Swagger UI's files for /docs (scripts/docs-assets.sh) */

    /* mock provider */
    int mock_tokens;
    uint64_t mock_token_interval_ms;
    uint64_t mock_first_token_ms;
} cl_config;

/** Fills every field with its default. Returns 0, or -1 with err set. */
int cl_config_init(cl_config *cfg, char err[CL_ERRBUF]);

/** Releases the strings cfg owns. Accepts a zeroed or half-initialised cfg. */
void cl_config_free(cl_config *cfg);

/**
 * Sets one key from its textual value. `source` names where it came from
 * ("chatloop.conf:12", "CHATLOOP_WORKERS", "--workers") and is quoted in err.
 * An unknown key or a bad value returns -1 with err holding the source, the
 * key, the value (redacted for secrets) and the reason.
 */
int cl_config_set(cl_config *cfg, const char *key, const char *value,
                  const char *source, char err[CL_ERRBUF]);

/**
 * Reads a conf file: `key = value` lines, `#` comments, blank lines, values
 * optionally in double quotes. Returns 0, or -1 with err naming file:line.
 * A missing file is an error only when `required` is non-zero.
 */
int cl_config_load_file(cl_config *cfg, const char *path, int required,
                        char err[CL_ERRBUF]);

/**
 * Applies the environment: CHATLOOP_<KEY> for every key (KEY upper-cased),
 * then GROQ_API_KEY -> api_key and DATABASE_URL -> database_url unless the
 * matching CHATLOOP_ variable was set. `envp` is a NULL-terminated array like
 * environ (tests pass their own).
 */
int cl_config_apply_env(cl_config *cfg, char *const *envp, char err[CL_ERRBUF]);

/** Checks cross-key rules (tls_cert without tls_key, ...). */
int cl_config_validate(const cl_config *cfg, char err[CL_ERRBUF]);

/**
 * Writes every key as `key = value`, one per line, in table order; secrets
 * are written as "<redacted>" when set. Returns a malloc'd string.
 */
char *cl_config_dump(const cl_config *cfg);

/**
 * Reads one `--key value` or `--key=value` flag at argv[*i] (advancing *i
 * past a separate value) into key and *value. -1 with err for anything
 * that is not a flag or lacks its value. Shared by chatloop and
 * chatloop-mock so both read flags the same way.
 */
int cl_config_flag(int argc, char **argv, int *i, char *key, size_t keylen, const char **value,
                   char err[CL_ERRBUF]);

/** Number of keys in the table, and the name / default / doc of key i. */
size_t cl_config_key_count(void);
const char *cl_config_key_name(size_t i);
const char *cl_config_key_default(size_t i);
const char *cl_config_key_doc(size_t i);
/** Why key i is not supported yet ("TLS arrives in a later release"), or
 *  NULL when it is. Such a key refuses any value but its default. */
const char *cl_config_key_not_yet(size_t i);

#endif
