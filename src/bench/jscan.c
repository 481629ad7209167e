/*
 * jscan.c — just enough JSON for chatbench's hot path: find a few members of
 * an object without building a tree, and unescape a string. Token frames and
 * chunks arrive by the hundred thousand per second on the same cores as the
 * server under test, so the client must stay cheap. The scanner still checks
 * the structure it walks (a malformed message is a protocol error, never a
 * token).
 */
#include "bench.h"

#include <string.h>

#define MAX_DEPTH 64

typedef struct {
    const char *p, *end;
} scan;

static void ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Skips a string starting at '"'. */
static int skip_string(scan *s)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    s->p++;
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            s->p++;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            s->p++;
            if (s->p >= s->end)
                return -1;
        }
        s->p++;
    }
    return -1;
}

static int skip_value(scan *s, int depth);

static int skip_container(scan *s, int depth, char close)
{
    if (depth > MAX_DEPTH)
        return -1;
    s->p++; /* '{' or '[' */
    ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        ws(s);
        if (close == '}') {
            if (skip_string(s) != 0)
                return -1;
            ws(s);
            if (s->p >= s->end || *s->p != ':')
                return -1;
            s->p++;
            ws(s);
        }
        if (skip_value(s, depth + 1) != 0)
            return -1;
        ws(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        if (*s->p == close) {
            s->p++;
            return 0;
        }
        return -1;
    }
}

static int skip_value(scan *s, int depth)
{
    if (s->p >= s->end)
        return -1;
    char c = *s->p;
    if (c == '"')
        return skip_string(s);
    if (c == '{')
        return skip_container(s, depth, '}');
    if (c == '[')
        return skip_container(s, depth, ']');
    /* numbers, true, false, null */
    const char *start = s->p;
    while (s->p < s->end) {
        char d = *s->p;
        if ((d >= '0' && d <= '9') || (d >= 'a' && d <= 'z') || d == '-' || d == '+' || d == '.' ||
            d == 'E')
            s->p++;
        else
            break;
    }
    return s->p > start ? 0 : -1;
}

int cb_json_members(const char *str, size_t n, const char *const *keys, cb_span *out, int nkeys)
{
    for (int i = 0; i < nkeys; i++) {
        out[i].p = NULL;
        out[i].n = 0;
    }
    scan s = {str, str + n};
    ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    s.p++;
    ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
        goto tail;
    }
    for (;;) {
        ws(&s);
        const char *k = s.p;
        if (skip_string(&s) != 0)
            return -1;
        size_t klen = (size_t)(s.p - k) - 2;
        ws(&s);
        if (s.p >= s.end || *s.p != ':')
            return -1;
        s.p++;
        ws(&s);
        const char *v = s.p;
        if (skip_value(&s, 1) != 0)
            return -1;
        /* Keys are compared as written: the ones chatbench asks for never
         * need escapes. */
        for (int i = 0; i < nkeys; i++) {
            if (!out[i].p && strlen(keys[i]) == klen && memcmp(keys[i], k + 1, klen) == 0) {
                out[i].p = v;
                out[i].n = (size_t)(s.p - v);
            }
        }
        ws(&s);
        if (s.p >= s.end)
            return -1;
        if (*s.p == ',') {
            s.p++;
            continue;
        }
        if (*s.p == '}') {
            s.p++;
            break;
        }
        return -1;
    }
tail:
    ws(&s);
    return s.p == s.end ? 0 : -1;
}

cb_span cb_json_first(cb_span arr)
{
    cb_span r = {NULL, 0};
    if (!arr.p || arr.n < 2 || arr.p[0] != '[')
        return r;
    scan s = {arr.p + 1, arr.p + arr.n};
    ws(&s);
    if (s.p >= s.end || *s.p == ']')
        return r;
    const char *v = s.p;
    if (skip_value(&s, 1) != 0)
        return r;
    r.p = v;
    r.n = (size_t)(s.p - v);
    return r;
}

int cb_json_is(cb_span v, const char *lit)
{
    size_t n = strlen(lit);
    return v.p && v.n == n + 2 && v.p[0] == '"' && memcmp(v.p + 1, lit, n) == 0;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

long cb_json_string(cb_span v, char *out, size_t cap)
{
    if (!v.p || v.n < 2 || v.p[0] != '"' || v.p[v.n - 1] != '"')
        return -1;
    const char *p = v.p + 1, *end = v.p + v.n - 1;
    size_t o = 0;
#define PUT(ch)                                                                                    \
    do {                                                                                           \
        if (o >= cap)                                                                              \
            return -2;                                                                             \
        out[o++] = (char)(ch);                                                                     \
    } while (0)
    while (p < end) {
        unsigned char c = (unsigned char)*p++;
        if (c != '\\') {
            if (c < 0x20 || c == '"')
                return -1;
            PUT(c);
            continue;
        }
        if (p >= end)
            return -1;
        char e = *p++;
        switch (e) {
        case '"': PUT('"'); break;
        case '\\': PUT('\\'); break;
        case '/': PUT('/'); break;
        case 'b': PUT('\b'); break;
        case 'f': PUT('\f'); break;
        case 'n': PUT('\n'); break;
        case 'r': PUT('\r'); break;
        case 't': PUT('\t'); break;
        case 'u': {
            unsigned cp;
            if (end - p < 4 || hex4(p, &cp) != 0)
                return -1;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            if (cp < 0x80) {
                PUT(cp);
            } else if (cp < 0x800) {
                PUT(0xC0 | (cp >> 6));
                PUT(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                PUT(0xE0 | (cp >> 12));
                PUT(0x80 | ((cp >> 6) & 0x3F));
                PUT(0x80 | (cp & 0x3F));
            } else {
                PUT(0xF0 | (cp >> 18));
                PUT(0x80 | ((cp >> 12) & 0x3F));
                PUT(0x80 | ((cp >> 6) & 0x3F));
                PUT(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return -1;
        }
    }
#undef PUT
    return (long)o;
}
