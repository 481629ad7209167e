/*
 * chatbench — the load generator of chatloop (SPEC §9): N concurrent
 * WebSocket, SSE or OpenAI-compatible chat sessions against chatloop (or
 * straight against chatloop-mock), every answer checked, latency percentiles
 * and errors by code as a table or JSON. `chatbench --help` documents it.
 */
#include "bench.h"

#include "chatloop/version.h"
#include "chatloop/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
"usage: chatbench [options] URL\n"
"\n"
"chatbench " CL_VERSION " — drives N concurrent chat sessions against chatloop (or an\n"
"OpenAI-compatible server such as chatloop-mock), checks every answer and reports\n"
"turns/s, tokens/s, time to first token, gaps between tokens and turn times\n"
"(p50/p90/p99/max) and errors by code.\n"
"\n"
"URL   ws://HOST:PORT/ws/chat              WebSocket chat (SPEC §4)\n"
"      http://HOST:PORT/api/v1/chat        chatloop's SSE chat\n"
"      http://HOST:PORT/v1/chat/completions OpenAI-compatible streaming\n"
"      HOST is an IPv4 address or localhost; a bare http://HOST:PORT takes the\n"
"      path of --mode (/ws/chat, /api/v1/chat, /v1/chat/completions).\n"
"\n"
"options:\n"
"  -m, --mode ws|sse|openai  protocol (default: ws for ws:// URLs, openai when the\n"
"                            path ends in /chat/completions, else sse)\n"
"  -c, --sessions N          concurrent sessions, one connection each (default 10);\n"
"                            --connections is the same flag\n"
"  -d, --duration D          run for D after the ramp-up (10s, 500ms, 2m; a bare\n"
"                            number is seconds). Default 10s unless --turns is given\n"
"  -n, --turns N             stop after N turns in all (with -d: whichever is first);\n"
"                            a failed connection attempt uses up one\n"
"  -r, --ramp-up D           open the sessions evenly over D (default 0)\n"
"  -R, --rate R              start R turns per second over all sessions (open loop;\n"
"                            slots missed because every session was busy are counted\n"
"                            as late starts). Default 0: each session starts its next\n"
"                            turn as soon as the last one is answered\n"
"      --think D             pause D between a session's turns (default 0)\n"
"  -t, --tokens N            tokens asked for (max_tokens) and expected in each answer\n"
"                            (default 20). The upstream must be chatloop-mock with\n"
"                            --mock-tokens >= N: its answer to N tokens is\n"
"                            \"tok1 tok2 ... tokN\", and any other answer is an error\n"
"      --conversation-turns N  turns before a session starts a new conversation\n"
"                            (default 10; history grows within a conversation)\n"
"  -q, --question TEXT       the question sent (default \"hello\")\n"
"      --model NAME          model to ask for (openai default llama-3.3-70b-versatile;\n"
"                            ws/sse: the server's default unless given)\n"
"      --token JWT           bearer token (ws: sent as ?token=)\n"
"      --token-file FILE     one bearer token per line; session i uses line i mod n\n"
"                            (many users at once: what a per-user limit costs)\n"
"      --login EMAIL:PASSWORD  before the run, register that user (if new) and log in\n"
"                            over /api/v1/auth, then use its token: for servers with\n"
"                            auth = required, e.g. a default `make run`\n"
"  -H, --header 'K: V'       an extra request header (repeatable, up to 16); e.g.\n"
"                            X-Mock-Fault or X-Mock-Tokens when driving chatloop-mock\n"
"  -s, --source SPEC         local source address(es) to connect from: A, A-B (an IPv4\n"
"                            range) or a comma list; repeatable. Sessions take them in\n"
"                            turn, so more connections fit than one address's ports\n"
"      --idle                ws: open the sessions, wait for `connected`, hold them for\n"
"                            the duration without any turn (idle capacity)\n"
"      --timeout D           limit for a connection to become ready and for one turn\n"
"                            (default 60s); past it the turn fails with TIMEOUT\n"
"  -p, --procs N             split the sessions over N processes (default 1), e.g. to\n"
"                            use more cores or open more sockets than one process's\n"
"                            file limit; the report merges them\n"
"      --json                print the report as one JSON object instead of a table\n"
"  -v, --verbose             print progress to stderr\n"
"  -V, --version             print the version\n"
"  -h, --help                this text\n"
"\n"
"Errors (by code): CONNECT, HANDSHAKE (upgrade refused), CLOSED (connection lost\n"
"mid-turn), TIMEOUT, TRUNCATED (answer shorter than expected or no end marker),\n"
"CORRUPT (answer differs from the expected text), PROTOCOL (unparseable message),\n"
"HTTP_<status>, or the server's own code (LLM_ERROR, RATE_LIMITED, ...).\n"
"Exit status: 0 when every connection and turn succeeded, 1 when any failed, 2 on a\n"
"usage error.\n"
"\n"
"example: chatbench --mode ws -c 100 -d 10s ws://127.0.0.1:8080/ws/chat\n");
}

static int parse_duration(const char *s, uint64_t *ns)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0)
        return -1;
    double mult = 1e9;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1e9;
    else if (strcmp(end, "ms") == 0)
        mult = 1e6;
    else if (strcmp(end, "us") == 0)
        mult = 1e3;
    else if (strcmp(end, "m") == 0)
        mult = 60e9;
    else if (strcmp(end, "h") == 0)
        mult = 3600e9;
    else
        return -1;
    *ns = (uint64_t)(v * mult);
    return 0;
}

static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > max)
        return -1;
    *out = v;
    return 0;
}

static int add_sources(cb_options *o, const char *spec)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", spec);
    for (char *save = NULL, *tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(tok, '-');
        struct in_addr a, b;
        if (dash)
            *dash = '\0';
        if (inet_pton(AF_INET, tok, &a) != 1)
            return -1;
        b = a;
        if (dash && inet_pton(AF_INET, dash + 1, &b) != 1)
            return -1;
        uint32_t lo = ntohl(a.s_addr), hi = ntohl(b.s_addr);
        if (hi < lo)
            return -1;
        for (uint64_t v = lo; v <= hi; v++) {
            if (o->nsources >= CB_MAX_SOURCES)
                return -1;
            o->sources[o->nsources++] = htonl((uint32_t)v);
        }
    }
    return 0;
}

/* scheme://host[:port][/path] */
static int parse_url(cb_options *o, const char *url, int *is_ws)
{
    const char *p;
    int defport;
    if (strncmp(url, "ws://", 5) == 0) {
        *is_ws = 1;
        p = url + 5;
        defport = 80;
    } else if (strncmp(url, "http://", 7) == 0) {
        *is_ws = 0;
        p = url + 7;
        defport = 80;
    } else {
        return -1; /* wss:// and https://: chatbench speaks plain TCP */
    }
    const char *slash = strchr(p, '/');
    size_t hostlen = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[256];
    if (hostlen == 0 || hostlen >= sizeof hostport)
        return -1;
    memcpy(hostport, p, hostlen);
    hostport[hostlen] = '\0';
    char *colon = strrchr(hostport, ':');
    o->port = defport;
    if (colon) {
        *colon = '\0';
        uint64_t port;
        if (parse_uint(colon + 1, 65535, &port) != 0 || port == 0)
            return -1;
        o->port = (int)port;
    }
    if (strcmp(hostport, "localhost") == 0)
        snprintf(hostport, sizeof hostport, "127.0.0.1");
    struct in_addr a;
    if (inet_pton(AF_INET, hostport, &a) != 1)
        return -1;
    snprintf(o->host, sizeof o->host, "%s", hostport);
    snprintf(o->path, sizeof o->path, "%s", slash ? slash : "/");
    return 0;
}

static const char *mode_name(cb_mode m)
{
    return m == CB_MODE_WS ? "ws" : m == CB_MODE_SSE ? "sse" : "openai";
}

static int bad(const char *flag, const char *why)
{
    fprintf(stderr, "chatbench: %s: %s (see chatbench --help)\n", flag, why);
    return 2;
}

/* Reads a whole struct from a child's pipe. */
static int read_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* --token-file: one token per line (blank lines skipped), at most
 * CB_MAX_TOKEN_LINES of at most 4 KiB each. 0, or -1 after saying why. */
#define CB_MAX_TOKEN_LINES 100000
static int read_tokens(const char *path, cb_options *o)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "chatbench: --token-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        if (line[n] == '\0' && !feof(f)) {
            fprintf(stderr, "chatbench: --token-file %s: a line longer than %zu bytes\n", path,
                    sizeof line - 1);
            rc = -1;
            break;
        }
        line[n] = '\0';
        if (!n)
            continue;
        if (o->ntoken_list >= CB_MAX_TOKEN_LINES) {
            fprintf(stderr, "chatbench: --token-file %s: more than %d tokens\n", path,
                    CB_MAX_TOKEN_LINES);
            rc = -1;
            break;
        }
        char **grown = realloc(o->token_list, (size_t)(o->ntoken_list + 1) * sizeof *grown);
        char *copy = strdup(line);
        if (!grown || !copy) {
            free(copy);
            if (grown)
                o->token_list = grown;
            rc = -1;
            break;
        }
        o->token_list = grown;
        o->token_list[o->ntoken_list++] = copy;
    }
    fclose(f);
    if (rc == 0 && o->ntoken_list == 0) {
        fprintf(stderr, "chatbench: --token-file %s: no tokens\n", path);
        rc = -1;
    }
    return rc;
}

/* Runs the sessions over o->procs processes and merges their stats. */
static int run_procs(const cb_options *o, cb_stats *total)
{
    int P = o->procs;
    pid_t pids[64];
    int fds[64];
    int first = 0;
    for (int i = 0; i < P; i++) {
        int n = o->sessions / P + (i < o->sessions % P);
        uint64_t turns = o->turns ? o->turns / (uint64_t)P + ((uint64_t)i < o->turns % (uint64_t)P) : 0;
        int pfd[2];
        if (pipe(pfd) != 0) {
            perror("chatbench: pipe");
            return -1;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("chatbench: fork");
            return -1;
        }
        if (pid == 0) {
            close(pfd[0]);
            cb_stats *st = malloc(sizeof *st);
            if (!st)
                _exit(3);
            cb_stats_init(st);
            int rc = (o->turns && turns == 0) ? 0 : cb_run_sessions(o, first, n, o->rate / P, turns, st);
            if (rc != 0 || write_all(pfd[1], st, sizeof *st) != 0)
                _exit(3);
            _exit(0);
        }
        close(pfd[1]);
        pids[i] = pid;
        fds[i] = pfd[0];
        first += n;
    }
    /* Ctrl-C reaches the children (same process group); they end their
     * runs and report, and this process merges what they send. */
    signal(SIGINT, SIG_IGN);
    int failed = 0;
    cb_stats *st = malloc(sizeof *st);
    for (int i = 0; i < P; i++) {
        if (!st || read_all(fds[i], st, sizeof *st) != 0)
            failed = 1;
        else
            cb_stats_merge(total, st);
        close(fds[i]);
        int ws;
        waitpid(pids[i], &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
            failed = 1;
    }
    free(st);
    if (failed)
        fprintf(stderr, "chatbench: a worker process failed; the report covers the others\n");
    return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
    cb_options o;
    memset(&o, 0, sizeof o);
    o.sessions = 10;
    o.tokens = 20;
    o.conversation_turns = 10;
    o.question = "hello";
    o.timeout_ns = 60000000000ull;
    o.procs = 1;
    const char *url = NULL;
    const char *login = NULL;
    char *login_token = NULL;
    const char *token_file = NULL;
    int duration_set = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        char flag[64];
        /* --flag=value */
        const char *eq = (a[0] == '-' && a[1] == '-') ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof flag) {
            memcpy(flag, a, (size_t)(eq - a));
            flag[eq - a] = '\0';
            a = flag;
            v = eq + 1;
        }
#define IS(s, l) (strcmp(a, s) == 0 || strcmp(a, l) == 0)
#define VALUE()                                                                                    \
    do {                                                                                           \
        if (!v) {                                                                                  \
            if (i + 1 >= argc)                                                                     \
                return bad(a, "needs a value");                                                    \
            v = argv[++i];                                                                         \
        }                                                                                          \
    } while (0)
        uint64_t u;
        if (IS("-h", "--help")) {
            usage(stdout);
            return 0;
        } else if (IS("-V", "--version")) {
            printf("chatbench %s\n", CL_VERSION);
            return 0;
        } else if (IS("-m", "--mode")) {
            VALUE();
            if (strcmp(v, "ws") == 0)
                o.mode = CB_MODE_WS;
            else if (strcmp(v, "sse") == 0)
                o.mode = CB_MODE_SSE;
            else if (strcmp(v, "openai") == 0)
                o.mode = CB_MODE_OPENAI;
            else
                return bad(a, "ws, sse or openai");
            o.mode_set = 1;
        } else if (IS("-c", "--sessions") || strcmp(a, "--connections") == 0) {
            VALUE();
            if (parse_uint(v, 10000000, &u) != 0 || u == 0)
                return bad(a, "a positive number");
            o.sessions = (int)u;
        } else if (IS("-d", "--duration")) {
            VALUE();
            if (parse_duration(v, &o.duration_ns) != 0 || o.duration_ns == 0)
                return bad(a, "a duration such as 10s or 500ms");
            duration_set = 1;
        } else if (IS("-n", "--turns")) {
            VALUE();
            if (parse_uint(v, UINT64_MAX / 2, &o.turns) != 0 || o.turns == 0)
                return bad(a, "a positive number");
        } else if (IS("-r", "--ramp-up")) {
            VALUE();
            if (parse_duration(v, &o.ramp_ns) != 0)
                return bad(a, "a duration");
        } else if (IS("-R", "--rate")) {
            VALUE();
            char *end;
            o.rate = strtod(v, &end);
            if (*end || o.rate < 0)
                return bad(a, "turns per second, e.g. 1000");
        } else if (strcmp(a, "--think") == 0) {
            VALUE();
            if (parse_duration(v, &o.think_ns) != 0)
                return bad(a, "a duration");
        } else if (IS("-t", "--tokens")) {
            VALUE();
            if (parse_uint(v, 100000, &u) != 0 || u == 0)
                return bad(a, "1 to 100000");
            o.tokens = (int)u;
        } else if (strcmp(a, "--conversation-turns") == 0) {
            VALUE();
            if (parse_uint(v, 1000000, &u) != 0 || u == 0)
                return bad(a, "a positive number");
            o.conversation_turns = (int)u;
        } else if (IS("-q", "--question")) {
            VALUE();
            if (!*v)
                return bad(a, "must not be empty");
            o.question = v;
        } else if (strcmp(a, "--model") == 0) {
            VALUE();
            o.model = v;
        } else if (strcmp(a, "--token") == 0) {
            VALUE();
            o.token = v;
        } else if (strcmp(a, "--token-file") == 0) {
            VALUE();
            token_file = v;
        } else if (strcmp(a, "--login") == 0) {
            VALUE();
            login = v;
        } else if (IS("-H", "--header")) {
            VALUE();
            if (o.nheaders >= CB_MAX_HEADERS || !strchr(v, ':') || strpbrk(v, "\r\n"))
                return bad(a, "'Name: value', at most 16");
            o.headers[o.nheaders++] = v;
        } else if (IS("-s", "--source")) {
            VALUE();
            if (add_sources(&o, v) != 0)
                return bad(a, "IPv4 addresses: A, A-B or a comma list (at most 256)");
        } else if (strcmp(a, "--idle") == 0) {
            o.idle = 1;
        } else if (strcmp(a, "--timeout") == 0) {
            VALUE();
            if (parse_duration(v, &o.timeout_ns) != 0 || o.timeout_ns < 1000000)
                return bad(a, "a duration of at least 1ms");
        } else if (IS("-p", "--procs")) {
            VALUE();
            if (parse_uint(v, 64, &u) != 0 || u == 0)
                return bad(a, "1 to 64");
            o.procs = (int)u;
        } else if (strcmp(a, "--json") == 0) {
            o.json = 1;
        } else if (IS("-v", "--verbose")) {
            o.verbose = 1;
        } else if (a[0] == '-' && a[1]) {
            return bad(a, "unknown option");
        } else if (!url) {
            url = a;
        } else {
            return bad(a, "only one URL");
        }
#undef IS
#undef VALUE
    }
    if (!url)
        return bad("URL", "missing");
    int is_ws;
    if (parse_url(&o, url, &is_ws) != 0)
        return bad(url, "not a ws:// or http:// URL with an IPv4 host");
    if (!o.mode_set) {
        size_t pl = strlen(o.path);
        o.mode = is_ws ? CB_MODE_WS
                 : (pl >= 17 && strcmp(o.path + pl - 17, "/chat/completions") == 0) ? CB_MODE_OPENAI
                                                                                    : CB_MODE_SSE;
    }
    if (strcmp(o.path, "/") == 0)
        snprintf(o.path, sizeof o.path, "%s",
                 o.mode == CB_MODE_WS ? "/ws/chat"
                 : o.mode == CB_MODE_SSE ? "/api/v1/chat"
                                         : "/v1/chat/completions");
    if (o.idle && o.mode != CB_MODE_WS)
        return bad("--idle", "only with --mode ws");
    if (!o.model && o.mode == CB_MODE_OPENAI)
        o.model = "llama-3.3-70b-versatile";
    if (!duration_set && !o.turns)
        o.duration_ns = 10000000000ull;
    if (o.procs > o.sessions)
        o.procs = o.sessions;

    if (login) {
        if (cb_login(&o, login, &login_token) != 0)
            return 1;
        o.token = login_token;
    }
    if (token_file && read_tokens(token_file, &o) != 0)
        return 2;

    cl_raise_fd_limit();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
        (rlim_t)(o.sessions / o.procs + 64) > rl.rlim_cur)
        fprintf(stderr,
                "chatbench: warning: %d sessions per process but the file limit is %llu; "
                "use --procs\n",
                o.sessions / o.procs, (unsigned long long)rl.rlim_cur);

    cb_stats *st = malloc(sizeof *st);
    if (!st)
        return 3;
    cb_stats_init(st);
    int rc = o.procs > 1 ? run_procs(&o, st) : cb_run_sessions(&o, 0, o.sessions, o.rate, o.turns, st);
    if (rc != 0 && o.procs == 1) {
        fprintf(stderr, "chatbench: cannot start the run\n");
        free(st);
        return 3;
    }
    cb_report_info ri = {
        .mode = mode_name(o.mode), .url = url, .sessions = o.sessions, .tokens = o.tokens,
        .idle = o.idle, .procs = o.procs, .duration_s = (double)o.duration_ns / 1e9, .rate = o.rate,
    };
    if (o.json)
        cb_report_json(stdout, st, &ri);
    else
        cb_report_table(stdout, st, &ri);
    int failed = cb_stats_errors(st) > 0 || rc != 0 || (!o.idle && st->turns_ok == 0) ||
                 (o.idle && st->conns_ok == 0);
    free(st);
    free(login_token);
    for (int i = 0; i < o.ntoken_list; i++)
        free(o.token_list[i]);
    free(o.token_list);
    return failed ? 1 : 0;
}
