/*
 * libFuzzer target for the HTTP/1 request path: arbitrary bytes, cut into
 * reads at positions the input chooses, go through a connection's on_data
 * exactly as socket reads would (see test/unit/test_http1.c for the harness
 * idea). Whatever the bytes, the server must answer or close without a
 * sanitizer report and without leaking.
 */
#include "chatloop/conn.h"
#include "chatloop/http.h"
#include "chatloop/log.h"
#include "chatloop/routes.h"
#include "chatloop/worker.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t g_loop;
static cl_config g_cfg;
static cl_metrics_slot g_slot;
static cl_worker g_w;

static void init_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char err[CL_ERRBUF];
    uv_loop_init(&g_loop);
    cl_config_init(&g_cfg, err);
    g_cfg.debug_routes = 1;
    g_cfg.access_log = 0;
    g_cfg.max_header_bytes = 4096;
    g_cfg.max_body_bytes = 8192;
    cl_log_setup(CL_LOG_ERROR, CL_LOG_TEXT, "fuzz");
    g_w.loop = &g_loop;
    g_w.cfg = &g_cfg;
    g_w.metrics = &g_slot;
    g_w.router = cl_routes_build(&g_cfg);
    cl_metrics_set_all(&g_slot, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    if (size < 1)
        return 0;
    /* The first byte picks the read size, so splits are explored too. */
    size_t step = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    cl_conn *c = cl_conn_new(&g_w);
    cl_http1_attach(c);
    for (size_t at = 0; at < size && !c->closing; at += step) {
        size_t n = size - at < step ? size - at : step;
        c->proto->on_data(c, (const char *)data + at, n);
    }
    cl_conn_close(c);
    uv_run(&g_loop, UV_RUN_NOWAIT);
    return 0;
}
