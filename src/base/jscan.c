/*
 * jscan.c — the small JSON scanner of jscan.h: skips values by their
 * structure (strings with escapes, nested containers up to MAX_DEPTH, bare
 * literals) and unescapes strings to UTF-8.
 */
#include "chatloop/jscan.h"
#include "chatloop/hex.h"
#include "chatloop/utf8.h"

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

/* Bytes that end a run of plain ASCII string bytes: '"', '\\', the control
 * characters JSON forbids inside strings, and every non-ASCII byte (its
 * UTF-8 sequence is checked). One table load per byte is what keeps this
 * loop cheap; it is most of the scanner's time. */
static const unsigned char string_stop[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1,
    [0x07] = 1, [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1,
    [0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1,
    [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1,
    [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, ['"'] = 1, ['\\'] = 1,
    [0x80 ... 0xff] = 1,
};

/* The \\u escape at p (p[0] == 'u'), a surrogate pair taken whole: stores
 * the code point and returns the bytes used after the backslash (5 or 11),
 * or -1 for bad hex or a lone surrogate. */
static int unicode_escape(const unsigned char *p, const unsigned char *end, unsigned long *cp)
{
    unsigned long v[2] = {0, 0};
    int units = 1;
    for (int u = 0; u < units; u++) {
        const unsigned char *q = p + 6 * u; /* the second unit follows "\\" */
        if (end - q < 5 || q[0] != 'u' || (u == 1 && q[-1] != '\\'))
            return -1;
        for (int i = 1; i <= 4; i++) {
            int h = cl_hexval(q[i]);
            if (h < 0)
                return -1;
            v[u] = v[u] * 16 + (unsigned long)h;
        }
        if (u == 0 && v[0] >= 0xD800 && v[0] <= 0xDBFF)
            units = 2;
    }
    if (units == 2) {
        if (v[1] < 0xDC00 || v[1] > 0xDFFF)
            return -1;
        *cp = 0x10000 + ((v[0] - 0xD800) << 10) + (v[1] - 0xDC00);
        return 11;
    }
    if (v[0] >= 0xDC00 && v[0] <= 0xDFFF)
        return -1;
    *cp = v[0];
    return 5;
}

/* Skips a string starting at '"', checking its escapes and UTF-8 as
 * strictly as a full parser would. */
static int skip_string(scan *s)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    const unsigned char *p = (const unsigned char *)s->p + 1;
    const unsigned char *end = (const unsigned char *)s->end;
    for (;;) {
        while (p < end && !string_stop[*p])
            p++;
        if (p >= end)
            return -1;
        if (*p == '"') {
            s->p = (const char *)p + 1;
            return 0;
        }
        if (*p >= 0x80) {
            size_t n = cl_utf8_seq_len(p, (size_t)(end - p));
            if (!n)
                return -1;
            p += n;
            continue;
        }
        if (*p != '\\' || p + 1 >= end)
            return -1; /* a control character, or a lone backslash at the end */
        p++;
        switch (*p) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            p++;
            break;
        case 'u': {
            unsigned long cp;
            int used = unicode_escape(p, end, &cp);
            if (used < 0)
                return -1;
            p += used;
            break;
        }
        default:
            return -1;
        }
    }
}

static int skip_value(scan *s, int depth);

static int digits(scan *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start ? 0 : -1;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int skip_number(scan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (digits(s) != 0)
        return -1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s) != 0)
            return -1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (digits(s) != 0)
            return -1;
    }
    return 0;
}

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
    if (c == 't' || c == 'f' || c == 'n') {
        const char *lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t n = strlen(lit);
        if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
            return -1;
        s->p += n;
        return 0;
    }
    return skip_number(s);
}

int cl_json_members(const char *str, size_t n, const char *const *keys, cl_json_span *out, int nkeys)
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
            /* a repeated key: the last one counts, as in jansson */
            if (strlen(keys[i]) == klen && memcmp(keys[i], k + 1, klen) == 0) {
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

cl_json_span cl_json_first(cl_json_span arr)
{
    cl_json_span r = {NULL, 0};
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

int cl_json_is(cl_json_span v, const char *lit)
{
    size_t n = strlen(lit);
    return v.p && v.n == n + 2 && v.p[0] == '"' && memcmp(v.p + 1, lit, n) == 0;
}

long cl_json_string(cl_json_span v, char *out, size_t cap)
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
            unsigned long cp;
            int used = unicode_escape((const unsigned char *)p - 1, (const unsigned char *)end, &cp);
            if (used < 0)
                return -1;
            p += used - 1; /* the 'u' was consumed already */
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
