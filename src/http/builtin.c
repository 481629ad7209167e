/* builtin.c — /health and /metrics. */
#include "chatloop/api.h"
#include "chatloop/jsonw.h"
#include "chatloop/metrics.h"
#include "chatloop/routes.h"
#include "chatloop/version.h"
#include "chatloop/worker.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static double g_start_unix;

void cl_builtin_set_start_time(double t) { g_start_unix = t; }

static double now_unix(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* Liveness and readiness. The db and provider fields join this object with
 * their features; until then the server is ready when it answers. */
static void health(cl_req *r)
{
    cl_worker *w = r->conn->w;
    double uptime = g_start_unix > 0 ? now_unix() - g_start_unix : 0;
    cl_buf fields;
    cl_buf_init(&fields, 0);
    int ready = !(w->hooks && w->hooks->health) || w->hooks->health(w, &fields) == 0;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_printf(&b, "{\"status\":\"%s\",\"version\":\"%s\",\"uptime_s\":%.3f,\"worker\":%d,\"pid\":%d",
                  ready ? "ok" : "degraded", CL_VERSION, uptime, w->id, (int)getpid());
    cl_buf_append(&b, fields.data, fields.len);
    cl_buf_append_char(&b, '}');
    cl_res_send(r, ready ? 200 : 503, "application/json", "Cache-Control: no-store\r\n", b.data,
                b.len);
    cl_buf_release(&b);
    cl_buf_release(&fields);
}

static void metrics(cl_req *r)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    if (cl_metrics_render(&b) != 0) {
        cl_buf_release(&b);
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "metrics unavailable", NULL, NULL);
        return;
    }
    cl_res_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", "Cache-Control: no-store\r\n",
                b.data, b.len);
    cl_buf_release(&b);
}

/* Echoes the request body back in the envelope: the end-to-end tests use it
 * to check body framing (chunked, Content-Length, 100-continue). */
static void debug_echo(cl_req *r)
{
    cl_buf data;
    cl_buf_init(&data, 0);
    size_t ctlen = 0;
    const char *ct = cl_req_header(r, "content-type", &ctlen);
    cl_buf_printf(&data, "{\"length\":%zu,\"chunked\":%s,\"content_type\":", r->body.len,
                  r->body_chunked ? "true" : "false");
    if (ct)
        cl_jsonw_str(&data, ct, ctlen);
    else
        cl_buf_append_str(&data, "null");
    cl_buf_append_str(&data, ",\"body\":");
    cl_jsonw_str(&data, r->body.data ? r->body.data : "", r->body.len);
    cl_buf_append_char(&data, '}');
    const char *json = cl_buf_cstr(&data);
    if (!json)
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
    else
        cl_api_ok(r, 200, "echo", json);
    cl_buf_release(&data);
}

int cl_builtin_routes(cl_router *r, const cl_config *cfg)
{
    int rc = 0;
    rc |= cl_router_add(r, "GET", "/health", health);
    rc |= cl_router_add(r, "GET", "/metrics", metrics);
    if (cfg->debug_routes)
        rc |= cl_router_add(r, "POST", "/api/v1/debug/echo", debug_echo);
    return rc;
}
