/**
 * jsonw.h — appending JSON text to a cl_buf.
 *
 * Writing JSON is string escaping and number formatting, done here directly
 * because it sits on hot paths (every envelope, every token frame). Parsing
 * JSON is never done by hand: request bodies go through jansson.
 * All functions return 0, or -1 when the buffer refuses to grow.
 */
#ifndef CHATLOOP_JSONW_H
#define CHATLOOP_JSONW_H

#include "chatloop/buf.h"

/** Appends `s[0..n)` as a quoted JSON string. Invalid UTF-8 becomes U+FFFD. */
int cl_jsonw_str(cl_buf *b, const char *s, size_t n);
/** Same for a NUL-terminated string; NULL is written as null. */
int cl_jsonw_cstr(cl_buf *b, const char *s);
/** Appends a double with up to 3 decimals ("1.234"); non-finite becomes null. */
int cl_jsonw_ms(cl_buf *b, double ms);

#endif
