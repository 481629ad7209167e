/**
 * sse.h — an incremental Server-Sent Events parser (the upstream side).
 *
 * Bytes arrive in arbitrary pieces (curl write callbacks); events come out
 * exactly as if the whole stream had been parsed at once, whatever the
 * split. Follows the WHATWG event-stream rules that matter for LLM streams:
 * lines end in LF, CRLF or CR (a CRLF split across two feeds is one line
 * end); a line starting with ':' is a comment; `field: value` with one
 * optional space after the colon; `data` lines of one event are joined with
 * '\n'; a blank line dispatches the event (nothing is dispatched for an
 * event with no data line); `event` sets the event name; `id` and `retry`
 * are accepted and ignored. A line longer than max_line is an error, so a
 * hostile or broken upstream cannot grow the buffer without bound; so is an
 * event whose joined data passes 4 * max_line (reported as
 * CL_SSE_ERR_LINE_TOO_LONG too). Event names past 63 bytes are truncated.
 * After an error every later feed returns the same error.
 *
 * Ownership: the parser owns its buffers; cl_sse_free releases them. The
 * event callback's pointers are valid only during the call.
 */
#ifndef CHATLOOP_SSE_H
#define CHATLOOP_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/buf.h"

enum {
    CL_SSE_OK = 0,
    CL_SSE_ERR_LINE_TOO_LONG = -1,
    CL_SSE_ERR_NOMEM = -2,
};

typedef struct cl_sse_parser {
    cl_buf line;        /* the current line when it spans feeds; capped */
    cl_buf data;        /* the current event's data, lines joined by '\n' */
    char event[64];     /* the current event's name ("" = "message") */
    size_t max_line;
    uint8_t after_cr;   /* the previous feed ended in CR: skip a leading LF */
    uint8_t has_data;   /* a data line was seen for the current event */
    uint8_t failed;     /* a previous feed failed: further feeds fail too */
} cl_sse_parser;

/** Called once per dispatched event. `event` is "message" when unnamed;
 *  `data` is NUL-terminated (the terminator is not counted in len).
 *  A non-zero return stops parsing; cl_sse_feed returns that value and the
 *  rest of that feed is dropped (the parser itself stays consistent).
 *  The callback must not free the parser: return non-zero and free it
 *  after cl_sse_feed returns. */
typedef int (*cl_sse_event_cb)(void *ud, const char *event, const char *data, size_t len);

/** max_line 0 selects 1 MiB. Allocates nothing until a feed needs it. */
void cl_sse_init(cl_sse_parser *p, size_t max_line);
/** Parses `len` more bytes. Returns CL_SSE_OK, a CL_SSE_ERR_* code, or the
 *  callback's non-zero return. */
int cl_sse_feed(cl_sse_parser *p, const char *buf, size_t len, cl_sse_event_cb cb, void *ud);
void cl_sse_free(cl_sse_parser *p);

#endif
