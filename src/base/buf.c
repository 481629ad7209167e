#include "chatloop/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cl_buf_init(cl_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max ? max : SIZE_MAX;
}

void cl_buf_release(cl_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int cl_buf_reserve(cl_buf *b, size_t extra)
{
    if (extra > b->max - b->len)
        return -1;
    size_t need = b->len + extra;
    if (need < b->cap)
        return 0; /* fits with the spare byte for cl_buf_cstr */
    /* +1 keeps room for the terminator cl_buf_cstr adds, so it never reallocates. */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need + 1)
        cap = cap > SIZE_MAX / 2 ? need + 1 : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int cl_buf_append(cl_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (cl_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int cl_buf_append_str(cl_buf *b, const char *s)
{
    return cl_buf_append(b, s, strlen(s));
}

int cl_buf_append_char(cl_buf *b, char c)
{
    if (b->len < b->cap - (b->cap ? 1 : 0) && b->len < b->max) {
        b->data[b->len++] = c;
        return 0;
    }
    return cl_buf_append(b, &c, 1);
}

int cl_buf_vprintf(cl_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return -1;
    if ((size_t)n < room) {
        if ((size_t)n > b->max - b->len)
            return -1;
        b->len += (size_t)n;
        return 0;
    }
    if (cl_buf_reserve(b, (size_t)n + 1) != 0)
        return -1;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int cl_buf_printf(cl_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cl_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int cl_buf_append_u64(cl_buf *b, unsigned long long v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return cl_buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

void cl_buf_consume(cl_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

const char *cl_buf_cstr(cl_buf *b)
{
    /* reserve() always leaves one spare byte past len, so only an empty,
     * never-allocated buffer needs memory here; the terminator is not
     * charged against max. */
    if (!b->data) {
        b->data = malloc(16);
        if (!b->data)
            return NULL;
        b->cap = 16;
    }
    b->data[b->len] = '\0';
    return b->data;
}
