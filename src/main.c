/*
 * main.c — command line, configuration, and the supervisor that forks the
 * workers, restarts a worker that dies, and drains them all on SIGTERM.
 *
 * The supervisor runs no event loop: it waits for signals with sigsuspend,
 * so nothing it does can stall a worker.
 */
#include "chatloop/app.h"
#include "chatloop/config.h"
#include "chatloop/db.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"
#include "chatloop/routes.h"
#include "chatloop/version.h"
#include "chatloop/worker.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_WORKERS 256
/* A worker that dies sooner than this after starting counts as crash-looping:
 * restarts then back off, up to MAX_BACKOFF_MS. */
#define STABLE_MS 5000
#define MAX_BACKOFF_MS 5000
/* Exit code a worker uses for "cannot start" (bind failure and the like):
 * restarting would not help, so the supervisor stops. */
#define EXIT_FATAL 2

static void usage(FILE *out)
{
    fprintf(out,
            "usage: chatloop [options]\n"
            "\n"
            "chatloop " CL_VERSION " — an LLM chat server (HTTP, SSE, WebSocket, OpenAI-compatible API)\n"
            "\n"
            "options:\n"
            "  --config PATH        read configuration from PATH (default: conf/chatloop.conf if present)\n"
            "  --listen HOST:PORT   address to serve on (default 127.0.0.1:8080)\n"
            "  --workers N|auto     worker processes (auto = one per core)\n"
            "  --provider NAME      groq, openai or mock\n"
            "  --KEY VALUE          any configuration key, e.g. --max-body-bytes 2MiB\n"
            "  --check-config       print the effective configuration (secrets redacted) and exit\n"
            "  --migrate            apply the database migrations to database_url and exit\n"
            "  --routes             print every route this configuration serves (METHOD PATH AUTH) and exit\n"
            "  --version            print the version and exit\n"
            "  --help               this text\n"
            "\n"
            "Precedence: defaults < config file < CHATLOOP_<KEY> environment < flags.\n"
            "GROQ_API_KEY and DATABASE_URL are read as api_key and database_url.\n");
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- configuration from file, environment and flags ----------------------- */

typedef struct cli {
    const char *config_path;
    int config_required;
    int check_config;
    int migrate;
    int routes;
} cli;

/* Flags are applied after the file and the environment, so this runs twice:
 * once to find --config and the actions, once to apply the key flags. */
static int parse_flags(int argc, char **argv, cli *o, cl_config *cfg, int apply, char *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--version") == 0) {
            printf("chatloop %s\n", CL_VERSION);
            exit(0);
        }
        if (strcmp(a, "--check-config") == 0) {
            o->check_config = 1;
            continue;
        }
        if (strcmp(a, "--migrate") == 0) {
            o->migrate = 1;
            continue;
        }
        if (strcmp(a, "--routes") == 0) {
            o->routes = 1;
            continue;
        }
        char key[128];
        const char *value;
        if (cl_config_flag(argc, argv, &i, key, sizeof key, &value, err) != 0)
            return -1;
        if (strcmp(key, "config") == 0) {
            o->config_path = value;
            o->config_required = 1;
            continue;
        }
        if (!apply)
            continue;
        char source[160];
        snprintf(source, sizeof source, "--%s", key);
        if (cl_config_set(cfg, key, value, source, err) != 0)
            return -1;
    }
    return 0;
}

static int load_config(int argc, char **argv, cl_config *cfg, cli *o)
{
    char err[CL_ERRBUF];
    memset(o, 0, sizeof *o);
    o->config_path = "conf/chatloop.conf";
    if (cl_config_init(cfg, err) != 0 ||
        parse_flags(argc, argv, o, cfg, 0, err) != 0 ||
        cl_config_load_file(cfg, o->config_path, o->config_required, err) != 0 ||
        cl_config_apply_env(cfg, environ, err) != 0 ||
        parse_flags(argc, argv, o, cfg, 1, err) != 0 ||
        cl_config_validate(cfg, err) != 0) {
        fprintf(stderr, "chatloop: configuration error: %s\n", err);
        return -1;
    }
    return 0;
}

/* ---- --routes ---------------------------------------------------------------- */

static void print_route(void *ud, const char *method, const char *pattern, int guard)
{
    (void)ud;
    printf("%s %s %s\n", method, pattern, guard ? "auth" : "public");
}

/* The table a worker would build from this configuration, built by the same
 * code (cl_routes_build): what the OpenAPI document is checked against. */
static int print_routes(const cl_config *cfg)
{
    cl_router *r = cl_routes_build(cfg);
    if (!r) {
        fprintf(stderr, "chatloop: cannot build the routes\n");
        return 1;
    }
    cl_router_each(r, print_route, NULL);
    cl_router_free(r);
    return 0;
}

/* ---- supervisor ------------------------------------------------------------- */

typedef struct worker_slot {
    pid_t pid;                  /* 0 = not running */
    long long started_ms;
    long long restart_at_ms;    /* 0 = not waiting to restart */
    int crashes;                /* consecutive quick deaths */
} worker_slot;

typedef struct supervisor {
    const cl_config *cfg;
    int n;
    cl_metrics_slot *slots;
    sigset_t oldmask;           /* the mask sigsuspend waits with */
    int alive;                  /* workers running */
    long long deadline;         /* stopping: when stragglers get SIGKILL; 0 = serving */
    int exit_code;
    worker_slot ws[MAX_WORKERS];
} supervisor;

static volatile sig_atomic_t g_got_term, g_got_chld;

static void on_term(int sig)
{
    g_got_term = sig;
}

static void on_chld(int sig)
{
    (void)sig;
    g_got_chld = 1;
}

static pid_t spawn_worker(const cl_config *cfg, int id, cl_metrics_slot *slots, sigset_t *oldmask)
{
    pid_t supervisor_pid = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* child: default signal dispositions, libuv installs its own handlers */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    /* A supervisor that dies (kill -9) must not leave workers serving the
     * port on their own: each drains as on SIGTERM. The check after the
     * prctl closes the window where the parent died before it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != supervisor_pid)
        raise(SIGTERM);
    char who[16];
    snprintf(who, sizeof who, "w%d", id);
    cl_log_setup(cfg->log_level, cfg->log_format, who);
    int rc = cl_worker_run(cfg, id, &slots[id], &cl_app_hooks);
    /* exit, not _exit: a worker frees what it owns and LeakSanitizer (make
     * asan) checks each worker at its exit. */
    cl_config_free((cl_config *)cfg);
    exit(rc);
}

static void sv_start_worker(supervisor *sv, int i)
{
    worker_slot *w = &sv->ws[i];
    w->restart_at_ms = 0;
    w->pid = spawn_worker(sv->cfg, i, sv->slots, &sv->oldmask);
    w->started_ms = now_ms();
    if (w->pid > 0) {
        sv->alive++;
    } else {
        CL_ERROR("cannot fork worker %d: %s; retrying in 1s", i, strerror(errno));
        w->pid = 0;
        w->restart_at_ms = now_ms() + 1000;
    }
}

/* Workers waiting for their backoff to end. While any is, the supervisor
 * keeps running even with no worker alive: a crash loop is retried
 * forever, never mistaken for the end of the program. */
static int sv_restart_pending(const supervisor *sv)
{
    for (int i = 0; i < sv->n; i++)
        if (sv->ws[i].restart_at_ms)
            return 1;
    return 0;
}

/* The next moment something is due (a restart, the drain deadline), 0 = none. */
static long long sv_next_wake(const supervisor *sv)
{
    long long wake = sv->deadline;
    for (int i = 0; i < sv->n; i++) {
        long long at = sv->ws[i].restart_at_ms;
        if (at && (!wake || at < wake))
            wake = at;
    }
    return wake;
}

/* Sleeps until a signal arrives or the next wake time passes. The signals
 * are blocked outside sigsuspend, so none is missed between the check of
 * the flags and the wait. */
static void sv_wait(supervisor *sv)
{
    if (g_got_term || g_got_chld)
        return;
    long long wake = sv_next_wake(sv);
    if (!wake) {
        sigsuspend(&sv->oldmask);
        return;
    }
    long long ms = wake - now_ms();
    if (ms <= 0)
        return;
    struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
    signal(SIGALRM, on_chld); /* any signal wakes sigsuspend */
    setitimer(ITIMER_REAL, &it, NULL);
    sigsuspend(&sv->oldmask);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
}

/* Stops every worker: no more restarts; those still alive get SIGTERM
 * and drain_timeout (+2 s of grace) before SIGKILL. */
static void sv_begin_stop(supervisor *sv, const char *why)
{
    CL_INFO("%s: stopping workers (drain up to %llums)", why,
            (unsigned long long)sv->cfg->drain_timeout_ms);
    for (int i = 0; i < sv->n; i++) {
        sv->ws[i].restart_at_ms = 0;
        if (sv->ws[i].pid > 0)
            kill(sv->ws[i].pid, SIGTERM);
    }
    sv->deadline = now_ms() + (long long)sv->cfg->drain_timeout_ms + 2000;
}

/* Doubling from 200 ms for each death within STABLE_MS of its start, capped
 * at MAX_BACKOFF_MS; a worker that ran stably is restarted at once. */
static long long restart_backoff_ms(int crashes)
{
    if (crashes <= 0)
        return 0;
    long long ms = 100LL << (crashes < 6 ? crashes : 6);
    return ms > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : ms;
}

/* Worker i (pid) ended with `status` while serving: schedule its restart,
 * unless it said it can never start (EXIT_FATAL), which stops everything. */
static void sv_worker_died(supervisor *sv, int i, pid_t pid, int status)
{
    worker_slot *w = &sv->ws[i];
    if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_FATAL) {
        CL_ERROR("worker %d could not start; stopping", i);
        sv->exit_code = 1;
        sv_begin_stop(sv, "a worker cannot start");
        return;
    }
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
    w->crashes = now_ms() - w->started_ms < STABLE_MS ? w->crashes + 1 : 0;
    long long backoff = restart_backoff_ms(w->crashes);
    CL_WARN("worker %d (pid %d) %s; restarting in %lldms", i, (int)pid, how, backoff);
    cl_metrics_reset_gauges(&sv->slots[i]);
    cl_metric_add(&sv->slots[i].worker_restarts, 1);
    w->restart_at_ms = now_ms() + backoff; /* never 0: the clock started long ago */
}

static void sv_reap(supervisor *sv)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < sv->n; i++) {
            if (sv->ws[i].pid != pid)
                continue;
            sv->ws[i].pid = 0;
            sv->alive--;
            if (!sv->deadline) /* when stopping, every exit is expected */
                sv_worker_died(sv, i, pid, status);
            break;
        }
    }
}

static void sv_kill_stragglers(supervisor *sv)
{
    for (int i = 0; i < sv->n; i++)
        if (sv->ws[i].pid > 0) {
            CL_WARN("worker %d did not stop in time; killing it", i);
            kill(sv->ws[i].pid, SIGKILL);
        }
    sv->deadline = now_ms() + 60000; /* SIGKILL cannot be refused: just reap */
}

static void sv_restart_due(supervisor *sv)
{
    long long now = now_ms();
    for (int i = 0; i < sv->n; i++)
        if (sv->ws[i].restart_at_ms && sv->ws[i].restart_at_ms <= now)
            sv_start_worker(sv, i);
}

static int sv_setup(supervisor *sv, const cl_config *cfg)
{
    memset(sv, 0, sizeof *sv);
    sv->cfg = cfg;
    sv->n = cfg->workers;
    sv->slots = cl_metrics_map(sv->n);
    if (!sv->slots) {
        CL_ERROR("cannot map shared metrics: %s", strerror(errno));
        return -1;
    }
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    sigprocmask(SIG_BLOCK, &block, &sv->oldmask);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/*
 * Runs until the workers are stopped. Exit code 0 after SIGTERM/SIGINT
 * drained them; 1 when a worker reported it cannot start (EXIT_FATAL).
 * Any other death is a crash, restarted with backoff for as long as it
 * takes.
 */
static int supervise(const cl_config *cfg)
{
    supervisor sv;
    if (sv_setup(&sv, cfg) != 0)
        return 1;
    for (int i = 0; i < sv.n; i++)
        sv_start_worker(&sv, i);
    CL_INFO("chatloop %s serving on http://%s with %d worker%s", CL_VERSION, cfg->listen, sv.n,
            sv.n == 1 ? "" : "s");

    while (sv.alive > 0 || (!sv.deadline && sv_restart_pending(&sv))) {
        sv_wait(&sv);
        if (g_got_term && !sv.deadline)
            sv_begin_stop(&sv, g_got_term == SIGINT ? "SIGINT" : "SIGTERM");
        g_got_chld = 0;
        sv_reap(&sv);
        if (sv.deadline && now_ms() >= sv.deadline)
            sv_kill_stragglers(&sv);
        if (!sv.deadline)
            sv_restart_due(&sv);
    }
    CL_INFO("chatloop stopped");
    return sv.exit_code;
}

int main(int argc, char **argv)
{
    cl_config cfg;
    cli o;
    if (load_config(argc, argv, &cfg, &o) != 0) {
        cl_config_free(&cfg);
        return 1;
    }
    if (o.check_config) {
        char *dump = cl_config_dump(&cfg);
        if (dump)
            fputs(dump, stdout);
        free(dump);
        printf("# configuration OK\n");
        cl_config_free(&cfg);
        return 0;
    }
    if (o.routes) {
        int rc = print_routes(&cfg);
        cl_config_free(&cfg);
        return rc;
    }
    if (o.migrate) {
        char err[1024];
        int rc = cl_db_migrate(cfg.database_url, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "chatloop: %s\n", err);
        cl_config_free(&cfg);
        return rc == 0 ? 0 : 1;
    }
    if (cfg.workers > MAX_WORKERS)
        cfg.workers = MAX_WORKERS;
    cl_raise_fd_limit();
    cl_log_setup(cfg.log_level, cfg.log_format, "main");
    if (cl_app_prepare(&cfg) != 0) {
        cl_config_free(&cfg);
        return 1;
    }

    /* Fail now, with a clear message, if the address cannot be bound,
     * rather than in every worker. */
    char err[256];
    int fd = cl_listen_socket(&cfg, 0, err, sizeof err);
    if (fd < 0) {
        CL_ERROR("%s", err);
        cl_config_free(&cfg);
        return 1;
    }
    close(fd);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    cl_builtin_set_start_time((double)tv.tv_sec + tv.tv_usec / 1e6);

    int rc = supervise(&cfg);
    cl_config_free(&cfg);
    return rc;
}
