/*
 * router.c — a linear table of split patterns. chatloop has a few dozen
 * routes; comparing segments of a short path against each is well under a
 * microsecond, and a table is easy to read and to print in 405's Allow.
 */
#include "chatloop/router.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SEGMENTS 12

typedef struct route {
    char method[8];
    char *text;                     /* the pattern as given, for logs */
    char *pattern;                  /* owned copy cut into segments */
    int nseg;
    const char *seg[MAX_SEGMENTS];  /* NUL-terminated segment texts */
    uint8_t seg_len[MAX_SEGMENTS];
    uint8_t is_param[MAX_SEGMENTS];
    cl_handler_fn fn;
    int guard;
} route;

struct cl_router {
    route *routes;
    int n, cap;
};

cl_router *cl_router_new(void)
{
    return calloc(1, sizeof(cl_router));
}

void cl_router_free(cl_router *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++) {
        free(r->routes[i].pattern);
        free(r->routes[i].text);
    }
    free(r->routes);
    free(r);
}

int cl_router_add(cl_router *r, const char *method, const char *pattern, cl_handler_fn fn)
{
    return cl_router_add_guarded(r, method, pattern, fn, 0);
}

int cl_router_add_guarded(cl_router *r, const char *method, const char *pattern, cl_handler_fn fn,
                          int guard)
{
    if (pattern[0] != '/' || strlen(method) >= sizeof r->routes[0].method)
        return -1;
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        route *p = realloc(r->routes, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        r->routes = p;
        r->cap = cap;
    }
    route *rt = &r->routes[r->n];
    memset(rt, 0, sizeof *rt);
    strcpy(rt->method, method);
    rt->fn = fn;
    rt->guard = guard;
    rt->pattern = strdup(pattern);
    rt->text = strdup(pattern);
    if (!rt->pattern || !rt->text)
        goto bad;
    int nparams = 0;
    char *s = rt->pattern + 1;
    if (*s) {
        for (;;) {
            char *slash = strchr(s, '/');
            if (slash)
                *slash = '\0';
            size_t len = strlen(s);
            if (len == 0 || len > 255 || rt->nseg == MAX_SEGMENTS)
                goto bad;
            rt->seg[rt->nseg] = s;
            rt->seg_len[rt->nseg] = (uint8_t)len;
            if (s[0] == '{') {
                if (len < 3 || s[len - 1] != '}' || ++nparams > CL_MAX_PATH_PARAMS)
                    goto bad;
                rt->is_param[rt->nseg] = 1;
                s[len - 1] = '\0'; /* the param's name is the text between the braces */
            }
            rt->nseg++;
            if (!slash)
                break;
            s = slash + 1;
        }
    }
    r->n++;
    return 0;
bad:
    free(rt->pattern);
    free(rt->text);
    return -1;
}

/* Does route rt match the split path? Fills params on success. */
static int match_route(const route *rt, int nseg, const char *const *seg, const size_t *len,
                       cl_route_match *m)
{
    if (rt->nseg != nseg)
        return 0;
    int np = 0;
    for (int i = 0; i < nseg; i++) {
        if (rt->is_param[i]) {
            if (len[i] == 0)
                return 0;
            continue;
        }
        if (rt->seg_len[i] != len[i] || memcmp(rt->seg[i], seg[i], len[i]) != 0)
            return 0;
    }
    if (m) {
        for (int i = 0; i < nseg; i++) {
            if (!rt->is_param[i])
                continue;
            m->params[np].name = rt->seg[i] + 1;
            m->params[np].value = seg[i];
            m->params[np].len = len[i];
            np++;
        }
        m->nparams = np;
    }
    return 1;
}

cl_route_result cl_router_match(const cl_router *r, const char *method, const char *path,
                                size_t plen, cl_route_match *m)
{
    memset(m, 0, offsetof(cl_route_match, allow));
    m->allow[0] = '\0';
    const char *seg[MAX_SEGMENTS];
    size_t len[MAX_SEGMENTS];
    int nseg = 0;
    if (plen == 0 || path[0] != '/')
        return CL_ROUTE_NOT_FOUND;
    /* Split on '/'; a trailing slash ("/health/") does not match "/health". */
    size_t i = 1;
    if (plen > 1) {
        for (;;) {
            if (nseg == MAX_SEGMENTS)
                return CL_ROUTE_NOT_FOUND;
            size_t start = i;
            while (i < plen && path[i] != '/')
                i++;
            seg[nseg] = path + start;
            len[nseg] = i - start;
            if (len[nseg] == 0)
                return CL_ROUTE_NOT_FOUND;
            nseg++;
            if (i >= plen)
                break;
            i++;
        }
    }
    int is_head = strcmp(method, "HEAD") == 0;
    int path_matched = 0;
    size_t allow_len = 0;
    for (int k = 0; k < r->n; k++) {
        const route *rt = &r->routes[k];
        if (!match_route(rt, nseg, seg, len, NULL))
            continue;
        if (strcmp(rt->method, method) == 0 || (is_head && strcmp(rt->method, "GET") == 0)) {
            match_route(rt, nseg, seg, len, m);
            m->fn = rt->fn;
            m->guard = rt->guard;
            m->pattern = rt->text;
            return CL_ROUTE_FOUND;
        }
        path_matched = 1;
        const char *names[2] = {rt->method, strcmp(rt->method, "GET") == 0 ? "HEAD" : NULL};
        for (int j = 0; j < 2 && names[j]; j++) {
            size_t ml = strlen(names[j]);
            if (strstr(m->allow, names[j]))
                continue;
            if (allow_len + ml + 3 >= sizeof m->allow)
                break;
            if (allow_len) {
                memcpy(m->allow + allow_len, ", ", 2);
                allow_len += 2;
            }
            memcpy(m->allow + allow_len, names[j], ml + 1);
            allow_len += ml;
        }
    }
    return path_matched ? CL_ROUTE_BAD_METHOD : CL_ROUTE_NOT_FOUND;
}

void cl_router_each(const cl_router *r,
                    void (*fn)(void *ud, const char *method, const char *pattern, int guard),
                    void *ud)
{
    for (int i = 0; i < r->n; i++)
        fn(ud, r->routes[i].method, r->routes[i].text, r->routes[i].guard);
}
