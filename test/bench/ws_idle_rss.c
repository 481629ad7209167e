/*
 * ws_idle_rss — what an idle WebSocket costs a worker, in resident memory.
 *
 * A worker (cl_worker_run, the real accept/read/write path) serves one
 * route, GET /ws, with an echo handler. This process forks it twice and
 * opens N connections to each over loopback:
 *   A. N idle HTTP connections (connected, nothing sent);
 *   B. N WebSockets, each upgraded, one text message echoed, then idle.
 * It reads the worker's VmRSS before and after, and prints bytes per
 * connection for both and the difference (what a WebSocket adds on top of
 * the connection it was). Kernel socket buffers are not in RSS; this is
 * the server's own memory.
 *
 * Not part of `make test` (it takes a few seconds and the numbers are a
 * measurement, not a pass/fail). Build and run:
 *   make && cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -I/usr/share/include/llhttp \
 *     $(pkg-config --cflags libuv) test/bench/ws_idle_rss.c \
 *     $(make -s -p -n | sed -n 's/^LIB_OBJS := //p' | head -1) -o build/ws_idle_rss \
 *     $(pkg-config --libs libuv libcurl libpq jansson) \
 *     -lwslay -lmbedtls -lmbedx509 -lmbedcrypto -lm
 *   ulimit -n 30000; ./build/ws_idle_rss 10000
 */
#include "chatloop/config.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/worker.h"
#include "chatloop/ws.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void echo_text(cl_ws *ws, const char *data, size_t len)
{
    cl_ws_send_text(ws, data, len);
}

static const cl_ws_handler echo = {.on_text = echo_text};

static void route_ws(cl_req *r)
{
    cl_ws_upgrade(r, &echo, NULL);
}

static cl_router *build_routes(const cl_config *cfg)
{
    (void)cfg;
    cl_router *r = cl_router_new();
    cl_router_add(r, "GET", "/ws", route_ws);
    return r;
}

static const cl_worker_hooks hooks = {.build_routes = build_routes};

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

static pid_t start_worker(int port)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    static cl_config cfg;
    static cl_metrics_slot slot;
    char err[CL_ERRBUF], addr[32];
    cl_config_init(&cfg, err);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    if (cl_config_set(&cfg, "listen", addr, "bench", err) != 0) {
        fprintf(stderr, "%s\n", err);
        _exit(2);
    }
    cfg.access_log = 0;
    cfg.backlog = 4096;
    cl_log_setup(CL_LOG_WARN, CL_LOG_TEXT, "rss");
    _exit(cl_worker_run(&cfg, 0, &slot, &hooks));
}

static int dial(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_until(int fd, const char *end, size_t want)
{
    char buf[512];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        buf[got] = '\0';
        if ((end && strstr(buf, end)) || (!end && got >= want))
            return 0;
    }
    return -1;
}

static int ws_handshake(int fd)
{
    static const char hs[] = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n";
    /* "hello", masked with a zero key (still a masked frame) */
    static const unsigned char msg[] = {0x81, 0x85, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'};
    if (write(fd, hs, sizeof hs - 1) != (ssize_t)(sizeof hs - 1) || read_until(fd, "\r\n\r\n", 0))
        return -1;
    if (write(fd, msg, sizeof msg) != (ssize_t)sizeof msg)
        return -1;
    return read_until(fd, NULL, 7); /* the echo: 2 header bytes + 5 */
}

/* RSS per connection, in bytes, for N connections of one kind. */
static double measure(int n, int port, int websocket)
{
    pid_t pid = start_worker(port);
    int probe = -1;
    for (int i = 0; i < 200 && probe < 0; i++) {
        usleep(10000);
        probe = dial(port);
    }
    if (probe < 0) {
        fprintf(stderr, "worker did not listen on %d\n", port);
        kill(pid, SIGKILL);
        return -1;
    }
    close(probe);
    /* a few connections first: first-use allocations are not per socket */
    int warm[16];
    for (int i = 0; i < 16; i++) {
        warm[i] = dial(port);
        if (websocket)
            ws_handshake(warm[i]);
    }
    usleep(200000);
    long before = rss_kib(pid);
    int *fds = calloc((size_t)n, sizeof *fds);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = dial(port);
        if (fds[i] >= 0 && (!websocket || ws_handshake(fds[i]) == 0))
            ok++;
    }
    usleep(500000); /* let the worker accept and settle */
    long after = rss_kib(pid);
    double per = (double)(after - before) * 1024.0 / ok;
    printf("  %-10s %6d connections: worker RSS %ld -> %ld KiB, %.0f B per connection\n",
           websocket ? "websocket" : "http idle", ok, before, after, per);
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    for (int i = 0; i < 16; i++)
        close(warm[i]);
    free(fds);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return per;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10000;
    int port = argc > 2 ? atoi(argv[2]) : 18931;
    signal(SIGPIPE, SIG_IGN);
    printf("ws_idle_rss: %d connections of each kind\n", n);
    double http = measure(n, port, 0);
    double ws = measure(n, port + 1, 1);
    printf("  an idle WebSocket costs %.0f B more than an idle HTTP connection\n", ws - http);
    return 0;
}
