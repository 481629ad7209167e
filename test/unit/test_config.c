/* test_config.c — the key table, the value parsers, file/env sources, dump. */
#include "chatloop/config.h"
#include "chatloop/conninfo.h"
#include "chatloop/origin.h"
#include "test.h"

#include <unistd.h>

static char err[CL_ERRBUF];

/* Sets key=value on a fresh default config; returns set's result and leaves
 * the config in *out for inspection (caller frees). */
static int set1(cl_config *out, const char *key, const char *value) {
    err[0] = 0;
    if (cl_config_init(out, err) != 0)
        return -2;
    return cl_config_set(out, key, value, "--test", err);
}

static char *write_temp(const char *text) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/chatloop-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n) {
        close(fd);
        return NULL;
    }
    close(fd);
    return path;
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (buf)
        buf[len] = 0;
    return buf;
}

static void test_defaults(void) {
    cl_config c;
    CHECK_EQ_INT(cl_config_init(&c, err), 0);
    CHECK_EQ_STR(c.listen, "127.0.0.1:8080");
    CHECK_EQ_STR(c.listen_host, "127.0.0.1");
    CHECK_EQ_INT(c.listen_port, 8080);
    /* production's default: one worker per online CPU */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_EQ_INT(c.workers, ncpu < 1 ? 1 : ncpu > 256 ? 256 : (int)ncpu);
    CHECK_EQ_INT(c.workers_auto, 1);
    CHECK_EQ_INT(c.backlog, 511);
    CHECK_EQ_INT(c.max_connections, 100000);
    CHECK_EQ_STR(c.tls_cert, "");
    CHECK_EQ_STR(c.database_url, "");
    CHECK_EQ_INT(c.db_pool_size, 4);
    CHECK_EQ_INT(c.provider, CL_PROVIDER_GROQ);
    CHECK_EQ_STR(c.base_url, "https://api.groq.com/openai/v1");
    CHECK_EQ_STR(c.api_key, "");
    CHECK_EQ_STR(c.model, "llama-3.3-70b-versatile");
    CHECK(c.temperature == 0.7);
    CHECK(c.top_p == 1.0);
    CHECK_EQ_INT(c.max_tokens, 1024);
    CHECK_EQ_STR(c.reasoning_effort, "");
    CHECK_EQ_INT(c.retries, 2);
    CHECK_EQ_INT(c.first_token_timeout_ms, 45000);
    CHECK_EQ_INT(c.turn_timeout_ms, 300000);
    CHECK_EQ_INT(c.keepalive_timeout_ms, 75000);
    CHECK_EQ_INT(c.max_header_bytes, 16384);
    CHECK_EQ_INT(c.max_request_line, 8192);
    CHECK_EQ_INT(c.max_body_bytes, 1048576);
    CHECK_EQ_INT(c.max_output_bytes, 4 * 1048576);
    CHECK_EQ_INT(c.max_message_chars, 4096);
    CHECK_EQ_INT(c.history_messages, 20);
    CHECK_EQ_INT(c.auth, CL_AUTH_REQUIRED);
    CHECK_EQ_INT(c.jwt_ttl_ms, 24ULL * 3600 * 1000);
    CHECK_EQ_INT(c.rate_limit_per_minute, 60);
    CHECK_EQ_INT(c.auth_rate_limit_per_minute, 30);
    CHECK_EQ_INT(c.max_turns_per_user, 8);
    CHECK_EQ_STR(c.cors_origins, "");
    CHECK_EQ_STR(c.tls_key, "");
    CHECK_EQ_INT(c.retrieval_timeout_ms, 10000);
    CHECK_EQ_INT(c.log_level, CL_LOG_INFO);
    CHECK_EQ_INT(c.log_format, CL_LOG_TEXT);
    CHECK_EQ_INT(c.access_log, 1);
    CHECK_EQ_INT(c.mock_tokens, 20);
    CHECK_EQ_INT(c.mock_token_interval_ms, 20);
    CHECK_EQ_INT(c.mock_first_token_ms, 50);
    cl_config_free(&c);
    CHECK(c.listen == NULL && c.listen_host == NULL && c.api_key == NULL);
    cl_config_free(&c); /* twice is harmless */
}

static void test_key_table(void) {
    size_t n = cl_config_key_count();
    CHECK(n >= 49);
    for (size_t i = 0; i < n; i++) {
        const char *name = cl_config_key_name(i);
        CHECK(name && *name && cl_config_key_default(i) && cl_config_key_doc(i) &&
              *cl_config_key_doc(i));
        CHECK(strstr(name, "_ms") == NULL);
        for (const char *p = name; *p; p++)
            CHECK((*p >= 'a' && *p <= 'z') || *p == '_');
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(name, cl_config_key_name(j)) != 0);
    }
    CHECK(cl_config_key_name(n) == NULL);
}

static void test_free_zeroed(void) {
    cl_config c;
    memset(&c, 0, sizeof c);
    cl_config_free(&c);
    cl_config_free(NULL);
}

static void test_durations(void) {
    static const struct { const char *in; unsigned long long ms; } good[] = {
        { "45s", 45000 }, { "500ms", 500 }, { "2m", 120000 }, { "1h", 3600000 },
        { "10", 10000 }, { "0", 0 }, { "0ms", 0 }, { "5S", 5000 }, { " 7s ", 7000 },
        { "3 m", 180000 }, { "24h", 86400000 }, { "18446744073709551615ms", 18446744073709551615ULL },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, "turn_timeout", good[i].in), 0);
        CHECK(c.turn_timeout_ms == good[i].ms);
        cl_config_free(&c);
    }
    static const struct { const char *in, *why; } bad[] = {
        { "-1s", "must not be negative" }, { "abc", "expected a duration" },
        { "5x", "expected a duration" }, { "5s junk", "expected a duration" },
        { "", "expected a duration" }, { "s", "expected a duration" },
        { "1.5s", "expected a duration" }, { "5sec", "expected a duration" },
        { "99999999999999999999", "too large" }, { "18446744073709551615h", "too large" },
        { "18446744073709552s", "too large" }, { "0x10", "expected a duration" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, "turn_timeout", bad[i].in), -1);
        CHECK_CONTAINS(err, "--test: turn_timeout = \"");
        CHECK_CONTAINS(err, bad[i].in);
        CHECK_CONTAINS(err, bad[i].why);
        CHECK_EQ_INT(c.turn_timeout_ms, 300000); /* unchanged */
        cl_config_free(&c);
    }
}

static void test_sizes(void) {
    static const struct { const char *in; unsigned long long b; } good[] = {
        { "16KiB", 16384 }, { "1MiB", 1048576 }, { "512KB", 512000 }, { "2mb", 2000000 },
        { "1gib", 1073741824 }, { "4096", 4096 }, { "2000B", 2000 }, { "1GB", 1000000000 },
        { "3 kib", 3072 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, "max_body_bytes", good[i].in), 0);
        CHECK(c.max_body_bytes == good[i].b);
        cl_config_free(&c);
    }
    static const struct { const char *key, *in, *why; } bad[] = {
        { "max_body_bytes", "1TiB", "expected a size" },
        { "max_body_bytes", "KiB", "expected a size" },
        { "max_body_bytes", "-1", "must not be negative" },
        { "max_body_bytes", "1.5MiB", "expected a size" },
        { "max_body_bytes", "2GiB", "must be 1024..1073741824 bytes" },
        { "max_body_bytes", "99999999999999999999", "too large" },
        { "max_body_bytes", "99999999999GiB", "too large" },
        { "max_header_bytes", "512", "must be 1024..1048576 bytes" },
        { "max_header_bytes", "2MiB", "must be 1024..1048576 bytes" },
        { "max_output_bytes", "0", "must be 1..1073741824 bytes" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, bad[i].key, bad[i].in), -1);
        CHECK_CONTAINS(err, bad[i].key);
        CHECK_CONTAINS(err, bad[i].in);
        CHECK_CONTAINS(err, bad[i].why);
        cl_config_free(&c);
    }
    cl_config c;
    CHECK_EQ_INT(set1(&c, "max_header_bytes", "1KiB"), 0);
    CHECK_EQ_INT(c.max_header_bytes, 1024);
    CHECK_EQ_INT(cl_config_set(&c, "max_header_bytes", "1MiB", "x", err), 0);
    CHECK_EQ_INT(c.max_header_bytes, 1048576);
    cl_config_free(&c);
}

static void test_numbers(void) {
    cl_config c;
    CHECK_EQ_INT(set1(&c, "max_tokens", "0"), -1);
    CHECK_EQ_STR(err, "--test: max_tokens = \"0\": expected an integer 1..131072");
    CHECK_EQ_INT(cl_config_set(&c, "max_tokens", "131072", "x", err), 0);
    CHECK_EQ_INT(c.max_tokens, 131072);
    CHECK_EQ_INT(cl_config_set(&c, "max_tokens", "12abc", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "max_tokens", "99999999999999999999999", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "history_messages", "0", "x", err), 0);
    CHECK_EQ_INT(c.history_messages, 0);
    CHECK_EQ_INT(cl_config_set(&c, "db_pool_size", "65", "x", err), -1);
    CHECK_CONTAINS(err, "1..64");
    CHECK_EQ_INT(cl_config_set(&c, "rate_limit_per_minute", "0", "x", err), 0);
    CHECK_EQ_INT(c.rate_limit_per_minute, 0);
    CHECK_EQ_INT(cl_config_set(&c, "max_turns_per_user", "-1", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "auth_rate_limit_per_minute", "1000001", "x", err), -1);

    CHECK_EQ_INT(cl_config_set(&c, "temperature", "1.5", "x", err), 0);
    CHECK(c.temperature == 1.5);
    CHECK_EQ_INT(cl_config_set(&c, "temperature", "0", "x", err), 0);
    CHECK(c.temperature == 0);
    CHECK_EQ_INT(cl_config_set(&c, "temperature", "2.5", "x", err), -1);
    CHECK_EQ_STR(err, "x: temperature = \"2.5\": expected a number 0..2");
    static const char *const bad[] = { "nan", "inf", "-0.1", "0x1p0", "1e999", "", "1.0.0", "1,5" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ_INT(cl_config_set(&c, "temperature", bad[i], "x", err), -1);
    CHECK(c.temperature == 0);
    CHECK_EQ_INT(cl_config_set(&c, "top_p", "1.01", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "top_p", "0.95", "x", err), 0);
    CHECK(c.top_p == 0.95);
    cl_config_free(&c);
}

static void test_enums_and_bools(void) {
    cl_config c;
    CHECK_EQ_INT(set1(&c, "provider", "OpenAI"), 0);
    CHECK_EQ_INT(c.provider, CL_PROVIDER_OPENAI);
    CHECK_EQ_INT(cl_config_set(&c, "provider", "mock", "x", err), 0);
    CHECK_EQ_INT(c.provider, CL_PROVIDER_MOCK);
    CHECK_EQ_INT(cl_config_set(&c, "provider", "azure", "x", err), -1);
    CHECK_EQ_STR(err, "x: provider = \"azure\": expected one of groq|openai|mock");
    CHECK_EQ_INT(c.provider, CL_PROVIDER_MOCK);
    CHECK_EQ_INT(cl_config_set(&c, "auth", "off", "x", err), 0);
    CHECK_EQ_INT(c.auth, CL_AUTH_OFF);
    CHECK_EQ_INT(cl_config_set(&c, "log_level", "debug", "x", err), 0);
    CHECK_EQ_INT(c.log_level, CL_LOG_DEBUG);
    CHECK_EQ_INT(cl_config_set(&c, "log_level", "error", "x", err), 0);
    CHECK_EQ_INT(c.log_level, CL_LOG_ERROR);
    CHECK_EQ_INT(cl_config_set(&c, "log_level", "trace", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "log_format", "json", "x", err), 0);
    CHECK_EQ_INT(c.log_format, CL_LOG_JSON);

    CHECK_EQ_INT(cl_config_set(&c, "reasoning_effort", "HIGH", "x", err), 0);
    CHECK_EQ_STR(c.reasoning_effort, "high");
    CHECK_EQ_INT(cl_config_set(&c, "reasoning_effort", "", "x", err), 0);
    CHECK_EQ_STR(c.reasoning_effort, "");
    CHECK_EQ_INT(cl_config_set(&c, "reasoning_effort", "extreme", "x", err), -1);
    CHECK_CONTAINS(err, "low|medium|high|none|default");

    static const char *const on[] = { "on", "true", "1", "yes", "YES", "On" };
    static const char *const off[] = { "off", "false", "0", "no", "NO" };
    for (size_t i = 0; i < sizeof on / sizeof on[0]; i++) {
        c.access_log = 0;
        CHECK_EQ_INT(cl_config_set(&c, "access_log", on[i], "x", err), 0);
        CHECK_EQ_INT(c.access_log, 1);
    }
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        c.access_log = 1;
        CHECK_EQ_INT(cl_config_set(&c, "access_log", off[i], "x", err), 0);
        CHECK_EQ_INT(c.access_log, 0);
    }
    CHECK_EQ_INT(cl_config_set(&c, "access_log", "maybe", "x", err), -1);
    CHECK_CONTAINS(err, "access_log = \"maybe\"");
    cl_config_free(&c);
}

static void test_listen(void) {
    static const struct { const char *in, *host; int port; } good[] = {
        { "127.0.0.1:8080", "127.0.0.1", 8080 }, { "[::1]:8080", "::1", 8080 },
        { ":9000", "0.0.0.0", 9000 }, { "8081", "0.0.0.0", 8081 },
        { "localhost:1", "localhost", 1 }, { "[::]:65535", "::", 65535 },
        { "0.0.0.0:80", "0.0.0.0", 80 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, "listen", good[i].in), 0);
        CHECK_EQ_STR(c.listen, good[i].in);
        CHECK_EQ_STR(c.listen_host, good[i].host);
        CHECK_EQ_INT(c.listen_port, good[i].port);
        cl_config_free(&c);
    }
    static const char *const bad[] = {
        "", "::1:8080", "host:", "host:0", "host:65536", "[::1]8080", "[zz]:80",
        "[::1:80", "a b:80", "host:80x", "0", "-1", "[::1]:",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cl_config c;
        CHECK_EQ_INT(set1(&c, "listen", bad[i]), -1);
        CHECK_CONTAINS(err, "listen = \"");
        CHECK_EQ_STR(c.listen, "127.0.0.1:8080");
        CHECK_EQ_STR(c.listen_host, "127.0.0.1");
        CHECK_EQ_INT(c.listen_port, 8080);
        cl_config_free(&c);
    }
    cl_config c;
    CHECK_EQ_INT(set1(&c, "listen", "::1:8080"), -1);
    CHECK_CONTAINS(err, "brackets");
    cl_config_free(&c);
}

static void test_workers(void) {
    cl_config c;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int expect = n < 1 ? 1 : n > 256 ? 256 : (int)n;
    CHECK_EQ_INT(set1(&c, "workers", "auto"), 0);
    CHECK_EQ_INT(c.workers_auto, 1);
    CHECK_EQ_INT(c.workers, expect);
    CHECK_EQ_INT(cl_config_set(&c, "workers", "4", "x", err), 0);
    CHECK_EQ_INT(c.workers_auto, 0);
    CHECK_EQ_INT(c.workers, 4);
    CHECK_EQ_INT(cl_config_set(&c, "workers", "AUTO", "x", err), 0);
    CHECK_EQ_INT(c.workers_auto, 1);
    CHECK_EQ_INT(cl_config_set(&c, "workers", "abc", "chatloop.conf:12", err), -1);
    CHECK_EQ_STR(err, "chatloop.conf:12: workers = \"abc\": expected \"auto\" or an integer 1..256");
    CHECK_EQ_INT(cl_config_set(&c, "workers", "0", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "workers", "257", "x", err), -1);
    CHECK_EQ_INT(cl_config_set(&c, "workers", "256", "x", err), 0);
    CHECK_EQ_INT(c.workers, 256);
    cl_config_free(&c);
}

static void test_key_spelling_and_unknown(void) {
    cl_config c;
    CHECK_EQ_INT(set1(&c, "max-body-bytes", "2KiB"), 0);
    CHECK_EQ_INT(c.max_body_bytes, 2048);
    CHECK_EQ_INT(cl_config_set(&c, "MAX_BODY_BYTES", "3KiB", "x", err), 0);
    CHECK_EQ_INT(c.max_body_bytes, 3072);
    CHECK_EQ_INT(cl_config_set(&c, "Max-Body_Bytes", "4KiB", "x", err), 0);
    CHECK_EQ_INT(c.max_body_bytes, 4096);
    CHECK_EQ_INT(cl_config_set(&c, "frobnicate", "1", "--frobnicate", err), -1);
    CHECK_EQ_STR(err, "--frobnicate: unknown key \"frobnicate\"");
    CHECK_EQ_INT(cl_config_set(&c, "turn_timeout_ms", "1", "x", err), -1);
    CHECK_CONTAINS(err, "unknown key \"turn_timeout_ms\"");
    CHECK_EQ_INT(cl_config_set(&c, "", "1", "x", err), -1);
    cl_config_free(&c);
}

static void test_file(void) {
    const char *text =
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "workers = 3\n"
        "  model   =   my-model   \n"
        "base_url = http://x/y#frag # trailing comment\n"
        "jwt_secret = \"https://a.example, https://b#c\"  # quoted keeps '#'\n"
        "fallback_models = \"say \\\"hi\\\" \\\\ ok\"\n"
        "tls_cert =\n"
        "header_timeout = 2m\r\n"
        "max-body-bytes = 64KiB\n"
        "database_url = \"  padded  \"\n"
        "api_key = # nothing\n"
        "history_messages=5\n";
    char *path = write_temp(text);
    CHECK(path != NULL);
    cl_config c;
    cl_config_init(&c, err);
    CHECK_EQ_INT(cl_config_load_file(&c, path, 1, err), 0);
    CHECK_EQ_INT(c.workers, 3);
    CHECK_EQ_STR(c.model, "my-model");
    CHECK_EQ_STR(c.base_url, "http://x/y#frag");
    CHECK_EQ_STR(c.jwt_secret, "https://a.example, https://b#c");
    CHECK_EQ_STR(c.fallback_models, "say \"hi\" \\ ok");
    CHECK_EQ_STR(c.tls_cert, "");
    CHECK_EQ_INT(c.header_timeout_ms, 120000);
    CHECK_EQ_INT(c.max_body_bytes, 65536);
    CHECK_EQ_STR(c.database_url, "  padded  ");
    CHECK_EQ_STR(c.api_key, "");
    CHECK_EQ_INT(c.history_messages, 5);
    cl_config_free(&c);
    unlink(path);
}

static void file_error(const char *text, const char *want_line, const char *want) {
    char *path = write_temp(text);
    CHECK(path != NULL);
    cl_config c;
    cl_config_init(&c, err);
    CHECK_EQ_INT(cl_config_load_file(&c, path, 1, err), -1);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s:%s: ", path, want_line);
    CHECK(strncmp(err, prefix, strlen(prefix)) == 0);
    CHECK_CONTAINS(err, want);
    cl_config_free(&c);
    unlink(path);
}

static void test_file_errors(void) {
    file_error("# ok\nworkers = 2\nbogus_key = 1\n", "3", "unknown key \"bogus_key\"");
    file_error("\n\n\n\nworkers = abc\n", "5",
               "workers = \"abc\": expected \"auto\" or an integer 1..256");
    file_error("workers 4\n", "1", "expected \"key = value\"");
    file_error("= 4\n", "1", "missing key");
    file_error("model = \"open\n", "1", "unterminated");
    file_error("model = \"a\" b\n", "1", "after the closing quote");
    file_error("model = \"a\\nb\"\n", "1", "escapes");
    file_error("x\nmax_body_bytes = 1TiB\n", "1", "expected");

    cl_config c;
    cl_config_init(&c, err);
    CHECK_EQ_INT(cl_config_load_file(&c, "/nonexistent/chatloop.conf", 0, err), 0);
    CHECK_EQ_INT(cl_config_load_file(&c, "/nonexistent/chatloop.conf", 1, err), -1);
    CHECK_CONTAINS(err, "/nonexistent/chatloop.conf");
    CHECK_CONTAINS(err, "No such file");
    cl_config_free(&c);
}

static void test_env(void) {
    cl_config c;
    cl_config_init(&c, err);
    char *env1[] = {
        "PATH=/bin", "GROQ_API_KEY=gsk_groq", "DATABASE_URL=postgres://db/a",
        "CHATLOOP_WORKERS=2", "CHATLOOP_MAX_BODY_BYTES=8KiB", "CHATLOOP_MOCK_TOKEN_INTERVAL=5ms",
        "CHATLOOP_LISTEN=[::1]:9999", "CHATLOOP_WORKERS=7", NULL,
    };
    CHECK_EQ_INT(cl_config_apply_env(&c, env1, err), 0);
    CHECK_EQ_STR(c.api_key, "gsk_groq");
    CHECK_EQ_STR(c.database_url, "postgres://db/a");
    CHECK_EQ_INT(c.workers, 2); /* first occurrence wins, as with getenv */
    CHECK_EQ_INT(c.max_body_bytes, 8192);
    CHECK_EQ_INT(c.mock_token_interval_ms, 5);
    CHECK_EQ_STR(c.listen_host, "::1");
    CHECK_EQ_INT(c.listen_port, 9999);
    cl_config_free(&c);

    /* CHATLOOP_ wins over the conventional names whatever the order. */
    cl_config_init(&c, err);
    char *env2[] = {
        "GROQ_API_KEY=gsk_groq", "CHATLOOP_API_KEY=mine", "CHATLOOP_DATABASE_URL=postgres://own",
        "DATABASE_URL=postgres://conv", NULL,
    };
    CHECK_EQ_INT(cl_config_apply_env(&c, env2, err), 0);
    CHECK_EQ_STR(c.api_key, "mine");
    CHECK_EQ_STR(c.database_url, "postgres://own");
    cl_config_free(&c);

    /* An empty CHATLOOP_API_KEY still counts as set. */
    cl_config_init(&c, err);
    char *env3[] = { "CHATLOOP_API_KEY=", "GROQ_API_KEY=gsk_groq", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env3, err), 0);
    CHECK_EQ_STR(c.api_key, "");
    cl_config_free(&c);

    cl_config_init(&c, err);
    char *env4[] = { "CHATLOOP_WORKERS=2", "CHATLOOP_FOO=bar", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env4, err), -1);
    CHECK_EQ_STR(err, "CHATLOOP_FOO: unknown key \"foo\"");
    char *env5[] = { "CHATLOOP_MAX_TOKENS=lots", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env5, err), -1);
    CHECK_EQ_STR(err, "CHATLOOP_MAX_TOKENS: max_tokens = \"lots\": expected an integer 1..131072");
    char *env6[] = { "CHATLOOP_max_tokens=5", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env6, err), -1);
    CHECK_CONTAINS(err, "CHATLOOP_MAX_TOKENS");
    char *env7[] = { "CHATLOOP_HEADER_TIMEOUT=-5", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env7, err), -1);
    CHECK_CONTAINS(err, "CHATLOOP_HEADER_TIMEOUT: header_timeout = \"-5\": must not be negative");
    CHECK_EQ_INT(cl_config_apply_env(&c, NULL, err), 0);
    char *env8[] = { "HOME=/root", "CHATLOOPX=1", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env8, err), 0);
    cl_config_free(&c);
}

static void test_secrets(void) {
    cl_config c;
    cl_config_init(&c, err);
    char *dump = cl_config_dump(&c);
    CHECK_CONTAINS(dump, "\napi_key = \"\"\n");
    CHECK_CONTAINS(dump, "\njwt_secret = \"\"\n");
    free(dump);

    CHECK_EQ_INT(cl_config_set(&c, "api_key", "gsk_SECRET123", "x", err), 0);
    CHECK_EQ_INT(cl_config_set(&c, "jwt_secret", "hunter2hunter2", "x", err), 0);
    dump = cl_config_dump(&c);
    CHECK_CONTAINS(dump, "\napi_key = <redacted>\n");
    CHECK_CONTAINS(dump, "\njwt_secret = <redacted>\n");
    CHECK(strstr(dump, "SECRET123") == NULL && strstr(dump, "hunter2") == NULL);
    free(dump);

    CHECK_EQ_INT(cl_config_set(&c, "api_key", "gsk_LEAK\r\nX-Evil: 1", "CHATLOOP_API_KEY", err), -1);
    CHECK_EQ_STR(err, "CHATLOOP_API_KEY: api_key = <redacted>: control characters are not allowed");
    CHECK_EQ_STR(c.api_key, "gsk_SECRET123");
    /* Non-secret values are quoted with control bytes escaped. */
    CHECK_EQ_INT(cl_config_set(&c, "model", "a\nb\"", "x", err), -1);
    CHECK_CONTAINS(err, "model = \"a\\x0ab\\\"\"");
    cl_config_free(&c);
}

static void test_dump_roundtrip(void) {
    cl_config c, d;
    cl_config_init(&c, err);
    static const char *const kv[][2] = {
        { "listen", "[::1]:9090" }, { "workers", "auto" }, { "provider", "openai" },
        { "model", "m # with hash" }, { "fallback_models", " lead\"q\\ " },
        { "temperature", "0.123456789" }, { "top_p", "0.1" }, { "reasoning_effort", "low" },
        { "turn_timeout", "1500ms" }, { "connect_timeout", "90s" }, { "jwt_ttl", "7d" },
        { "jwt_ttl", "168h" }, { "drain_timeout", "0" }, { "max_body_bytes", "1000KB" },
        { "max_output_bytes", "12345" }, { "auth", "off" }, { "log_format", "json" },
        { "access_log", "no" }, { "kdf_iterations", "2000" },
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
        int rc = cl_config_set(&c, kv[i][0], kv[i][1], "x", err);
        CHECK_EQ_INT(rc, strcmp(kv[i][1], "7d") == 0 ? -1 : 0);
    }
    char *dump = cl_config_dump(&c);
    CHECK_CONTAINS(dump, "listen = [::1]:9090\n");
    CHECK_CONTAINS(dump, "workers = auto\n");
    CHECK_CONTAINS(dump, "turn_timeout = 1500ms\n");
    CHECK_CONTAINS(dump, "connect_timeout = 90s\n");
    CHECK_CONTAINS(dump, "jwt_ttl = 168h\n");
    CHECK_CONTAINS(dump, "header_timeout = 10s\n");
    CHECK_CONTAINS(dump, "max_header_bytes = 16384\n");
    CHECK_CONTAINS(dump, "temperature = 0.123456789\n");
    CHECK_CONTAINS(dump, "access_log = off\n");
    CHECK_CONTAINS(dump, "model = \"m # with hash\"\n");
    CHECK(strncmp(dump, "listen = ", 9) == 0);

    /* Every key appears once, in table order. */
    const char *p = dump;
    for (size_t i = 0; i < cl_config_key_count(); i++) {
        size_t n = strlen(cl_config_key_name(i));
        CHECK(strncmp(p, cl_config_key_name(i), n) == 0 && strncmp(p + n, " = ", 3) == 0);
        p = strchr(p, '\n');
        if (!p)
            break;
        p++;
    }
    CHECK(p && *p == 0);

    char *path = write_temp(dump);
    cl_config_init(&d, err);
    CHECK_EQ_INT(cl_config_load_file(&d, path, 1, err), 0);
    char *dump2 = cl_config_dump(&d);
    CHECK_EQ_STR(dump2, dump);
    CHECK_EQ_STR(d.fallback_models, " lead\"q\\ ");
    CHECK(d.temperature == c.temperature);
    free(dump);
    free(dump2);
    unlink(path);
    cl_config_free(&c);
    cl_config_free(&d);
}

/* The setter refuses tls_cert and tls_key until TLS lands (test_not_yet),
 * so the cross-key checks kept for that release are fed by hand. */
static void set_by_hand(char **slot, const char *v) {
    free(*slot);
    *slot = strdup(v);
}

static void test_validate(void) {
    cl_config c;
    cl_config_init(&c, err);
    CHECK_EQ_INT(cl_config_validate(&c, err), 0);
    set_by_hand(&c.tls_cert, "/nonexistent/cert.pem");
    CHECK_EQ_INT(cl_config_validate(&c, err), -1);
    CHECK_CONTAINS(err, "tls_key");
    set_by_hand(&c.tls_key, "/nonexistent/key.pem");
    CHECK_EQ_INT(cl_config_validate(&c, err), -1);
    CHECK_CONTAINS(err, "/nonexistent/cert.pem");

    char cert[64], key[64];
    snprintf(cert, sizeof cert, "%s", write_temp("cert"));
    snprintf(key, sizeof key, "%s", write_temp("key"));
    set_by_hand(&c.tls_cert, cert);
    set_by_hand(&c.tls_key, key);
    CHECK_EQ_INT(cl_config_validate(&c, err), 0);
    set_by_hand(&c.tls_cert, "");
    CHECK_EQ_INT(cl_config_validate(&c, err), -1);
    CHECK_CONTAINS(err, "tls_cert");
    unlink(cert);
    unlink(key);
    cl_config_free(&c);
}

/* conf/chatloop.conf must list every key, its doc as the comment line just
 * above, and exactly the table's default; and it must load cleanly. */
static void test_conf_file_matches_table(void) {
    char *text = read_all("conf/chatloop.conf");
    CHECK(text != NULL);
    if (!text)
        return;
    for (size_t i = 0; i < cl_config_key_count(); i++) {
        const char *def = cl_config_key_default(i), *why = cl_config_key_not_yet(i);
        char want[512];
        if (why) /* commented out, with the reason, so make run still starts */
            snprintf(want, sizeof want,
                     "\n# %s\n# not supported yet (%s): setting it refuses startup\n# %s = %s\n",
                     cl_config_key_doc(i), why, cl_config_key_name(i), *def ? def : "\"\"");
        else
            snprintf(want, sizeof want, "\n# %s\n%s = %s\n", cl_config_key_doc(i),
                     cl_config_key_name(i), *def ? def : "\"\"");
        CHECK_CONTAINS(text, want);
        /* and no second, different setting of the same key */
        snprintf(want, sizeof want, "\n%s =", cl_config_key_name(i));
        const char *first = strstr(text, want);
        CHECK(why ? !first : first && !strstr(first + 1, want));
    }
    free(text);

    cl_config c, d;
    cl_config_init(&c, err);
    cl_config_init(&d, err);
    CHECK_EQ_INT(cl_config_load_file(&c, "conf/chatloop.conf", 1, err), 0);
    char *a = cl_config_dump(&c), *b = cl_config_dump(&d);
    CHECK_EQ_STR(a, b);
    free(a);
    free(b);
    cl_config_free(&c);
    cl_config_free(&d);
}

/* A key whose feature has not landed refuses any value but its default,
 * from every source, naming the source, the key and the reason. */
static void test_not_yet(void) {
    static const char *const refused[][2] = {
        { "tls_cert", "/etc/cert.pem" }, { "tls_key", "/etc/key.pem" },
        { "retrieval_timeout", "5s" },
    };
    static const char *const accepted[][2] = {
        { "tls_cert", "" }, { "tls_key", "" },
        { "retrieval_timeout", "10000ms" },
        { "retrieval_timeout", "10" },
    };
    cl_config c;
    cl_config_init(&c, err);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        CHECK_EQ_INT(cl_config_set(&c, refused[i][0], refused[i][1], "--x", err), -1);
        char want[128];
        snprintf(want, sizeof want, "--x: %s is not supported yet (", refused[i][0]);
        CHECK_CONTAINS(err, want);
        CHECK_CONTAINS(err, "); remove it to start");
    }
    CHECK_EQ_INT(cl_config_set(&c, "tls-cert", "/c.pem", "--tls-cert", err), -1);
    CHECK_EQ_STR(err, "--tls-cert: tls_cert is not supported yet (TLS arrives in a later "
                      "release); remove it to start");
    CHECK_EQ_STR(c.tls_cert, ""); /* nothing stored */
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++)
        CHECK_EQ_INT(cl_config_set(&c, accepted[i][0], accepted[i][1], "x", err), 0);
    /* a malformed value still gets the usual message */
    CHECK_EQ_INT(cl_config_set(&c, "retrieval_timeout", "lots", "x", err), -1);
    CHECK_CONTAINS(err, "lots");

    char *env[] = { "CHATLOOP_RETRIEVAL_TIMEOUT=5s", NULL };
    CHECK_EQ_INT(cl_config_apply_env(&c, env, err), -1);
    CHECK_CONTAINS(err, "CHATLOOP_RETRIEVAL_TIMEOUT: retrieval_timeout is not supported yet (");
    char *path = write_temp("workers = 1\ntls_key = /k.pem\n");
    CHECK_EQ_INT(cl_config_load_file(&c, path, 1, err), -1);
    CHECK_CONTAINS(err, ":2: tls_key is not supported yet (TLS");
    unlink(path);

    /* --check-config shows them as such, and the dump still reads back */
    char *dump = cl_config_dump(&c);
    CHECK_CONTAINS(dump, "\ntls_cert = \"\"  # not supported yet: TLS arrives in a later release\n");
    CHECK_CONTAINS(dump, "\nretrieval_timeout = 10s  # not supported yet: ");
    path = write_temp(dump);
    CHECK_EQ_INT(cl_config_load_file(&c, path, 1, err), 0);
    unlink(path);
    free(dump);
    size_t marked = 0;
    for (size_t i = 0; i < cl_config_key_count(); i++)
        marked += cl_config_key_not_yet(i) != NULL;
    CHECK_EQ_INT(marked, 3); /* tls_cert, tls_key, retrieval_timeout */
    cl_config_free(&c);
}

/* cors_origins: the forms a browser can send are accepted and stored as
 * written; anything that could never match an Origin header is refused,
 * naming the entry and why. */
static void test_cors_origins(void) {
    static const char *const good[] = {
        "", "*", " * ", "https://app.example.com", "http://localhost:5173",
        "https://a.example, http://127.0.0.1:8080", "HTTPS://App.Example.COM:443",
        "http://[::1]:3000",
    };
    static const char *const bad[][2] = {
        { "app.example.com", "no scheme" },
        { "https://app.example.com/", "no path, not even a trailing slash" },
        { "https://a.example,,https://b.example", "entry 2 is empty" },
        { "https://a.example,", "entry 2 is empty" },
        { "*, https://a.example", "cannot be combined" },
        { "https://*.example.com", "wildcards are not supported" },
        { "ftp://a.example", "http or https" },
        { "https://a.example:0", "port must be a number 1..65535" },
        { "https://a.example:99999", "port must be a number 1..65535" },
        { "https://user@a.example", "no user info" },
        { "https://a.example?x=1", "no query" },
        { "https://", "no host" },
    };
    cl_config c;
    cl_config_init(&c, err);
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CHECK_EQ_INT(cl_config_set(&c, "cors_origins", good[i], "--cors-origins", err), 0);
        CHECK_EQ_STR(c.cors_origins, good[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(cl_config_set(&c, "cors_origins", bad[i][0], "--cors-origins", err), -1);
        CHECK_CONTAINS(err, "--cors-origins: cors_origins = \"");
        CHECK_CONTAINS(err, bad[i][1]);
    }

    char out[CL_ORIGIN_MAX + 1];
    const char *why;
    CHECK_EQ_INT(cl_origin_normalize("HTTPS://App.Example.COM:443", 27, out, &why), 23);
    CHECK_EQ_STR(out, "https://app.example.com");
    CHECK_EQ_INT(cl_origin_normalize("http://a:8080", 13, out, &why), 13);
    CHECK_EQ_STR(out, "http://a:8080");
    CHECK_EQ_INT(cl_origin_normalize("http://[::1]:80", 15, out, &why), 12);
    CHECK_EQ_STR(out, "http://[::1]");
    cl_config_free(&c);
}

static void test_database_url_redacted(void)
{
    char out[256];
    cl_redact_url("postgres://app:s3cret@db:5432/chat", out, sizeof out);
    CHECK_EQ_STR(out, "postgres://app:***@db:5432/chat");
    cl_redact_url("postgresql://app@db/chat", out, sizeof out);
    CHECK_EQ_STR(out, "postgresql://app@db/chat");
    cl_redact_url("host=db user=app password=s3cret dbname=chat", out, sizeof out);
    CHECK_EQ_STR(out, "host=db user=app password=*** dbname=chat");
    cl_config cfg;
    char errbuf[CL_ERRBUF];
    CHECK(cl_config_init(&cfg, errbuf) == 0);
    CHECK(cl_config_set(&cfg, "database_url", "postgres://u:hunter2@h/d", "test", errbuf) == 0);
    char *dump = cl_config_dump(&cfg);
    CHECK(dump && !strstr(dump, "hunter2"));
    CHECK_CONTAINS(dump, "postgres://u:***@h/d");
    free(dump);
    cl_config_free(&cfg);
}

CL_TEST_MAIN(test_database_url_redacted, test_defaults, test_key_table, test_free_zeroed, test_durations, test_sizes,
             test_numbers, test_enums_and_bools, test_listen, test_workers,
             test_key_spelling_and_unknown, test_file, test_file_errors, test_env, test_secrets,
             test_dump_roundtrip, test_validate, test_conf_file_matches_table, test_not_yet,
             test_cors_origins)
