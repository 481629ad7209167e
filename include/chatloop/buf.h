/**
 * buf.h — a growable byte buffer with a hard maximum from birth.
 *
 * Every buffer that holds peer-controlled bytes has a cap (STYLE 8): an
 * append that would pass `max` fails and leaves the buffer unchanged, so the
 * caller answers 413/431/1009 instead of growing without bound. A buffer with
 * no bytes owns no memory: cl_buf_release returns it to that state, which is
 * how idle connections stay small.
 */
#ifndef CHATLOOP_BUF_H
#define CHATLOOP_BUF_H

#include <stddef.h>
#include <stdarg.h>

typedef struct cl_buf {
    char *data;     /* NULL until the first append; owned */
    size_t len;
    size_t cap;
    size_t max;     /* appends past this fail; 0 means SIZE_MAX */
} cl_buf;

void cl_buf_init(cl_buf *b, size_t max);
/** Frees the memory; the buffer stays usable (empty, same max). */
void cl_buf_release(cl_buf *b);
/** Empties the buffer but keeps its memory for reuse. */
static inline void cl_buf_reset(cl_buf *b) { b->len = 0; }
/** Ensures room for `extra` more bytes. Returns 0, or -1 past max or on ENOMEM. */
int cl_buf_reserve(cl_buf *b, size_t extra);
int cl_buf_append(cl_buf *b, const void *p, size_t n);
int cl_buf_append_str(cl_buf *b, const char *s);
int cl_buf_append_char(cl_buf *b, char c);
int cl_buf_printf(cl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cl_buf_vprintf(cl_buf *b, const char *fmt, va_list ap);
/** Appends an unsigned decimal; faster than printf on hot paths. */
int cl_buf_append_u64(cl_buf *b, unsigned long long v);
/** Drops the first n bytes (n <= len). */
void cl_buf_consume(cl_buf *b, size_t n);
/** Returns a NUL-terminated view (terminator not counted in len), or NULL on failure. */
const char *cl_buf_cstr(cl_buf *b);

#endif
