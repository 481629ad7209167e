/* static.c — GET / and the browser client's other files (src/http/assets/,
 * built into the binary by scripts/embed.sh), with a strict CSP.
 *
 * index.html is served as "/", every other asset as "/<name>". The page
 * carries the server's auth mode (`data-auth` on <html>), so the client
 * knows whether to show the login form without a failing probe: the file
 * says data-auth="required" and a second copy saying "off" is made at
 * registration; each request picks the one matching its worker's config.
 * ETags are a hash of the bytes served; If-None-Match answers 304.
 * X-Frame-Options and the other headers of every answer come from the
 * response-head writer (http1.c). */
#include "chatloop/api.h"
#include "chatloop/assets.h"
#include "chatloop/routes.h"
#include "chatloop/worker.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CL_CSP                                                                                  \
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; "  \
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

#define AUTH_MARK "data-auth=\"required\""
#define AUTH_OFF "data-auth=\"off\""
#define MAX_SERVED 16

typedef struct variant {
    const unsigned char *data;
    size_t len;
    char etag[20];                  /* "\"" 16 hex digits "\"" */
    char headers[512];              /* extra headers, ETag included */
} variant;

typedef struct served {
    char path[64];
    const char *ctype;
    variant v[2];                   /* [0] auth required, [1] auth off */
} served;

static served g_served[MAX_SERVED];
static int g_nserved;
static unsigned char *g_index_off;  /* index.html saying data-auth="off" */

static const char *content_type(const char *name)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
    };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t el = strlen(types[i].ext);
        if (n > el && strcmp(name + n - el, types[i].ext) == 0)
            return types[i].type;
    }
    return "application/octet-stream";
}

static void make_variant(variant *v, const unsigned char *data, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ data[i]) * 0x100000001b3ull;
    char etag[sizeof v->etag];
    snprintf(etag, sizeof etag, "\"%016llx\"", (unsigned long long)h);
    v->data = data;
    v->len = len;
    memcpy(v->etag, etag, sizeof etag);
    snprintf(v->headers, sizeof v->headers,
             "ETag: %s\r\n"
             "Cache-Control: no-cache\r\n"
             "Content-Security-Policy: " CL_CSP "\r\n",
             etag);
}

/* The index with data-auth="required" on its <html> tag replaced by "off"
 * (malloc'd), or NULL when the tag has no such mark (then both modes get
 * the file as it is). */
static unsigned char *index_for_auth_off(const cl_asset *a, size_t *outlen)
{
    const char *s = (const char *)a->data; /* asset data ends with a NUL */
    const char *tag = strstr(s, "<html");
    const char *end = tag ? strchr(tag, '>') : NULL;
    const char *m = tag ? strstr(tag, AUTH_MARK) : NULL;
    if (!m || !end || m > end)
        return NULL;
    size_t pre = (size_t)(m - s), ml = strlen(AUTH_MARK), ol = strlen(AUTH_OFF);
    size_t len = a->len - ml + ol;
    unsigned char *out = malloc(len + 1);
    if (!out)
        return NULL;
    memcpy(out, s, pre);
    memcpy(out + pre, AUTH_OFF, ol);
    memcpy(out + pre + ol, s + pre + ml, a->len - pre - ml);
    out[len] = '\0';
    *outlen = len;
    return out;
}

/* If-None-Match: "*" or a list of entity tags, compared weakly. */
static int etag_matches(const char *h, size_t n, const char *etag)
{
    size_t el = strlen(etag);
    size_t i = 0;
    while (i < n) {
        while (i < n && (h[i] == ' ' || h[i] == '\t' || h[i] == ','))
            i++;
        if (i == n)
            break;
        if (h[i] == '*')
            return 1;
        if (n - i >= 2 && h[i] == 'W' && h[i + 1] == '/')
            i += 2;
        size_t start = i;
        if (i < n && h[i] == '"') {
            i++;
            while (i < n && h[i] != '"')
                i++;
            if (i < n)
                i++;
        }
        if (i - start == el && memcmp(h + start, etag, el) == 0)
            return 1;
        while (i < n && h[i] != ',')
            i++;
    }
    return 0;
}

static void serve(cl_req *r)
{
    const served *s = NULL;
    for (int i = 0; i < g_nserved; i++) {
        if (strlen(g_served[i].path) == r->path_len &&
            memcmp(g_served[i].path, cl_req_path(r), r->path_len) == 0) {
            s = &g_served[i];
            break;
        }
    }
    if (!s) {
        cl_api_error(r, CL_ERR_NOT_FOUND, "no such file", NULL, NULL);
        return;
    }
    const variant *v = &s->v[r->conn->w->cfg->auth == CL_AUTH_OFF];
    size_t inm_len = 0;
    const char *inm = cl_req_header(r, "if-none-match", &inm_len);
    if (inm && etag_matches(inm, inm_len, v->etag)) {
        /* 304 carries no body; its Content-Length (if any) must be the
         * 200's, which is what a HEAD-style send writes. */
        r->head_only = 1;
        cl_res_send(r, 304, NULL, v->headers, v->data, v->len);
        return;
    }
    cl_res_send(r, 200, s->ctype, v->headers, v->data, v->len);
}

int cl_static_routes(cl_router *r)
{
    free(g_index_off);
    g_index_off = NULL;
    g_nserved = 0;
    int rc = 0;
    for (size_t i = 0; i < cl_assets_count; i++) {
        const cl_asset *a = &cl_assets[i];
        if (g_nserved == MAX_SERVED || strlen(a->name) + 2 > sizeof g_served[0].path)
            return -1;
        served *s = &g_served[g_nserved++];
        int is_index = strcmp(a->name, "index.html") == 0;
        snprintf(s->path, sizeof s->path, "/%s", is_index ? "" : a->name);
        s->ctype = content_type(a->name);
        make_variant(&s->v[0], a->data, a->len);
        s->v[1] = s->v[0];
        if (is_index) {
            size_t len = 0;
            g_index_off = index_for_auth_off(a, &len);
            if (g_index_off)
                make_variant(&s->v[1], g_index_off, len);
        }
        rc |= cl_router_add(r, "GET", s->path, serve);
    }
    return rc;
}
