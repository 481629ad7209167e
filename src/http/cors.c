/*
 * cors.c — the policy of cors.h.
 *
 * Each allowed origin carries the whole block of header lines its answers
 * need, built here once, so the response-head writer appends one string.
 * A request's Origin is compared with the list as browsers send it
 * (lower case, no default port: see origin.h), ignoring case for other
 * clients; the list is short, so a linear scan beats anything cleverer.
 */
#include "chatloop/cors.h"
#include "chatloop/api.h"
#include "chatloop/origin.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What a page may read of an answer besides the CORS-safelisted headers:
 * how long to wait after a 429/503, and the id to quote in a report. */
#define EXPOSE "Access-Control-Expose-Headers: Retry-After, X-Request-Id\r\n"
#define VARY "Vary: Origin\r\n"
#define ANY_HEAD "Access-Control-Allow-Origin: *\r\n" EXPOSE

/* The methods the router serves, and the request headers a page or the
 * official browser SDKs send: the openai and groq-sdk clients (with
 * dangerouslyAllowBrowser) add their X-Stainless-* platform headers, the
 * organization/project pair, User-Agent where the browser lets them, and
 * Idempotency-Key on retried POSTs. A header missing here makes the
 * browser fail the request before it is sent. Access-Control-Allow-Headers
 * has no prefix wildcard, and "*" would not cover Authorization. */
#define PREFLIGHT_HEADERS                                                                         \
    "Access-Control-Allow-Methods: GET, POST, PATCH, DELETE, OPTIONS\r\n"                       \
    "Access-Control-Allow-Headers: Authorization, Content-Type, Accept, X-Request-Id, "          \
    "Idempotency-Key, User-Agent, OpenAI-Organization, OpenAI-Project, X-Stainless-Arch, "      \
    "X-Stainless-Lang, X-Stainless-OS, X-Stainless-Package-Version, X-Stainless-Runtime, "      \
    "X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout, "               \
    "X-Stainless-Helper-Method, X-Stainless-Poll-Helper, X-Stainless-Custom-Poll-Interval\r\n"  \
    "Access-Control-Max-Age: 600\r\n"

typedef struct allowed_origin {
    char *origin;                   /* normalised, NUL-terminated */
    size_t len;
    char *head;                     /* its header block */
    size_t head_len;
} allowed_origin;

struct cl_cors {
    int any;                        /* cors_origins = * */
    int n;
    allowed_origin *list;
};

void cl_cors_free(cl_cors *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n; i++) {
        free(c->list[i].origin);
        free(c->list[i].head);
    }
    free(c->list);
    free(c);
}

static int add_origin(cl_cors *c, const char *s, size_t n)
{
    char norm[CL_ORIGIN_MAX + 1];
    const char *why;
    int len = cl_origin_normalize(s, n, norm, &why);
    if (len < 0)
        return -1;
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->list[i].origin, norm) == 0)
            return 0; /* listed twice */
    allowed_origin *a = &c->list[c->n];
    size_t cap = (size_t)len + sizeof "Access-Control-Allow-Origin: \r\n" VARY EXPOSE;
    a->origin = strdup(norm);
    a->head = malloc(cap);
    if (!a->origin || !a->head) {
        free(a->origin);
        free(a->head);
        return -1;
    }
    a->len = (size_t)len;
    a->head_len = (size_t)snprintf(a->head, cap, "Access-Control-Allow-Origin: %s\r\n" VARY EXPOSE,
                                   norm);
    c->n++;
    return 0;
}

cl_cors *cl_cors_new(const char *spec)
{
    cl_cors *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t entries = 1;
    for (const char *p = spec; *p; p++)
        entries += *p == ',';
    c->list = calloc(entries, sizeof *c->list);
    if (!c->list)
        goto fail;
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        const char *e = comma ? comma : p + strlen(p);
        while (p < e && isspace((unsigned char)*p))
            p++;
        const char *t = e;
        while (t > p && isspace((unsigned char)t[-1]))
            t--;
        if (t - p == 1 && *p == '*')
            c->any = 1;
        else if (t > p && add_origin(c, p, (size_t)(t - p)) != 0)
            goto fail;
        if (!comma)
            break;
        p = comma + 1;
    }
    return c;
fail:
    cl_cors_free(c);
    return NULL;
}

static int is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The request's Origin without surrounding blanks, or NULL. */
static const char *origin_of(const cl_req *r, size_t *len)
{
    size_t n;
    const char *v = cl_req_header(r, "origin", &n);
    if (!v)
        return NULL;
    while (n && is_ows(*v)) {
        v++;
        n--;
    }
    while (n && is_ows(v[n - 1]))
        n--;
    *len = n;
    return v;
}

static const allowed_origin *find(const cl_cors *c, const char *o, size_t n)
{
    for (int i = 0; i < c->n; i++)
        if (c->list[i].len == n && strncasecmp(c->list[i].origin, o, n) == 0)
            return &c->list[i];
    return NULL;
}

int cl_cors_head(const cl_cors *c, const cl_req *r, cl_buf *b)
{
    if (!c)
        return 0;
    /* Any origin: the same bytes for every request (Origin or not), so a
     * cache needs no Vary. */
    if (c->any)
        return cl_buf_append(b, ANY_HEAD, sizeof ANY_HEAD - 1);
    if (c->n == 0)
        return 0;
    size_t n;
    const char *o = origin_of(r, &n);
    const allowed_origin *a = o ? find(c, o, n) : NULL;
    if (a)
        return cl_buf_append(b, a->head, a->head_len);
    /* The answer would differ for an allowed Origin: caches must know. */
    return cl_buf_append(b, VARY, sizeof VARY - 1);
}

int cl_cors_is_preflight(const cl_req *r)
{
    return r->method == HTTP_OPTIONS && cl_req_header(r, "origin", NULL) &&
           cl_req_header(r, "access-control-request-method", NULL);
}

static int allows(const cl_cors *c, const cl_req *r)
{
    size_t n;
    const char *o;
    return c && (c->any || ((o = origin_of(r, &n)) && find(c, o, n)));
}

void cl_cors_preflight(const cl_cors *c, cl_req *r)
{
    if (allows(c, r)) {
        cl_res_send(r, 204, NULL, PREFLIGHT_HEADERS, NULL, 0);
        return;
    }
    /* Chosen over a bare 204: the status says in the browser's network
     * panel why the call failed. */
    size_t n = 0;
    const char *o = origin_of(r, &n);
    char msg[256];
    snprintf(msg, sizeof msg, "cross-origin requests from %.*s are not allowed (cors_origins %s)",
             (int)(n > 100 ? 100 : n), o ? o : "", c && c->n ? "does not list it" : "is empty");
    cl_api_error(r, CL_ERR_FORBIDDEN, msg, NULL, NULL);
}

/* "scheme://authority" of a same-origin request: the authority is the
 * request's Host, with the scheme's default port written or not. */
static int same_origin(const char *o, size_t n, const cl_req *r)
{
    size_t skip;
    const char *dflt;
    if (n >= 7 && strncasecmp(o, "http://", 7) == 0) {
        skip = 7;
        dflt = ":80";
    } else if (n >= 8 && strncasecmp(o, "https://", 8) == 0) {
        skip = 8;
        dflt = ":443";
    } else {
        return 0;
    }
    o += skip;
    n -= skip;
    size_t hn;
    const char *h = cl_req_header(r, "host", &hn);
    if (!h || n == 0)
        return 0;
    while (hn && is_ows(*h)) {
        h++;
        hn--;
    }
    while (hn && is_ows(h[hn - 1]))
        hn--;
    if (hn == n && strncasecmp(h, o, n) == 0)
        return 1;
    size_t dl = strlen(dflt);
    return hn == n + dl && strncasecmp(h, o, n) == 0 && strncasecmp(h + n, dflt, dl) == 0;
}

int cl_cors_ws_origin_ok(const cl_cors *c, const cl_req *r)
{
    size_t n;
    const char *o = origin_of(r, &n);
    if (!o)
        return 1;
    return same_origin(o, n, r) || allows(c, r);
}
