#include "chatloop/sse.h"

#include <stdint.h>
#include <string.h>

/* Used when cl_sse_init gets 0: a chat chunk is a few hundred bytes, a large
 * tool-call argument delta a few KiB, so 1 MiB is generous yet bounded. */
#define SSE_DEFAULT_MAX_LINE ((size_t)1 << 20)

/* One event's data may span several lines; without its own cap a stream of
 * short `data:` lines and no blank line would grow the buffer forever. */
#define SSE_DATA_LINES 4

static size_t data_cap(size_t max_line)
{
    return max_line > SIZE_MAX / SSE_DATA_LINES ? SIZE_MAX : max_line * SSE_DATA_LINES;
}

void cl_sse_init(cl_sse_parser *p, size_t max_line)
{
    if (max_line == 0)
        max_line = SSE_DEFAULT_MAX_LINE;
    /* Both buffers carry their caps as a second line of defence; the feed
     * checks the limits itself so it can tell "too long" from ENOMEM. */
    cl_buf_init(&p->line, max_line);
    cl_buf_init(&p->data, data_cap(max_line));
    p->event[0] = '\0';
    p->max_line = max_line;
    p->after_cr = 0;
    p->has_data = 0;
    p->failed = 0;
}

void cl_sse_free(cl_sse_parser *p)
{
    cl_buf_release(&p->line);
    cl_buf_release(&p->data);
    p->event[0] = '\0';
    p->after_cr = 0;
    p->has_data = 0;
}

/* `failed` holds the negated error code so every later feed reports the
 * same error as the one that broke the stream. */
static int fail(cl_sse_parser *p, int rc)
{
    p->failed = (uint8_t)-rc;
    return rc;
}

static int dispatch(cl_sse_parser *p, cl_sse_event_cb cb, void *ud)
{
    const char *ev = p->event[0] ? p->event : "message";
    int rc = 0;
    if (p->has_data) {
        const char *d = cl_buf_cstr(&p->data);
        if (!d)
            return fail(p, CL_SSE_ERR_NOMEM);
        rc = cb(ud, ev, d, p->data.len);
    }
    cl_buf_reset(&p->data);
    p->has_data = 0;
    p->event[0] = '\0';
    return rc;
}

/* One complete line without its terminator. */
static int process_line(cl_sse_parser *p, const char *s, size_t n, cl_sse_event_cb cb, void *ud)
{
    if (n == 0)
        return dispatch(p, cb, ud);
    if (s[0] == ':')
        return 0;
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen && *v == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && memcmp(s, "data", 4) == 0) {
        size_t extra = vlen + (p->has_data ? 1 : 0);
        /* An oversized event is the same failure as an oversized line: the
         * upstream is sending more than we agreed to hold. */
        if (extra > data_cap(p->max_line) - p->data.len)
            return fail(p, CL_SSE_ERR_LINE_TOO_LONG);
        if (cl_buf_reserve(&p->data, extra) != 0)
            return fail(p, CL_SSE_ERR_NOMEM);
        if (p->has_data)
            p->data.data[p->data.len++] = '\n';
        if (vlen)
            memcpy(p->data.data + p->data.len, v, vlen);
        p->data.len += vlen;
        p->has_data = 1;
    } else if (flen == 5 && memcmp(s, "event", 5) == 0) {
        /* Names past 63 bytes are truncated: the names that matter here
         * ("message", "error") are short, and a truncated long name can
         * never collide with a short one. */
        size_t m = vlen < sizeof p->event - 1 ? vlen : sizeof p->event - 1;
        memcpy(p->event, v, m);
        p->event[m] = '\0';
    }
    /* id, retry and unknown fields: LLM streams never reconnect with
     * Last-Event-ID, so there is nothing to keep. */
    return 0;
}

int cl_sse_feed(cl_sse_parser *p, const char *buf, size_t len, cl_sse_event_cb cb, void *ud)
{
    if (p->failed)
        return -(int)p->failed;
    if (len == 0)
        return CL_SSE_OK;
    size_t i = 0;
    if (p->after_cr) {
        p->after_cr = 0;
        if (buf[0] == '\n')
            i = 1;
    }
    /* Next LF and next CR at or after i, each searched once per region so a
     * feed costs O(len) even when it holds thousands of short lines: lf is
     * searched over [i, len), cr only up to lf. `len` means "none". */
    size_t lf = 0, cr = 0;
    int lf_known = 0, cr_known = 0;
    while (i < len) {
        if (!lf_known || lf < i) {
            const char *q = memchr(buf + i, '\n', len - i);
            lf = q ? (size_t)(q - buf) : len;
            lf_known = 1;
            cr_known = 0;
        }
        if (!cr_known || cr < i) {
            const char *q = memchr(buf + i, '\r', lf - i);
            cr = q ? (size_t)(q - buf) : lf;
            cr_known = 1;
        }
        size_t eol = cr < lf ? cr : lf;
        if (eol == len) {
            /* The line continues in a later feed: only now is a copy needed. */
            size_t rest = len - i;
            if (rest > p->max_line - p->line.len)
                return fail(p, CL_SSE_ERR_LINE_TOO_LONG);
            if (cl_buf_append(&p->line, buf + i, rest) != 0)
                return fail(p, CL_SSE_ERR_NOMEM);
            return CL_SSE_OK;
        }
        size_t n = eol - i;
        int rc;
        if (p->line.len) {
            if (n > p->max_line - p->line.len)
                return fail(p, CL_SSE_ERR_LINE_TOO_LONG);
            if (cl_buf_append(&p->line, buf + i, n) != 0)
                return fail(p, CL_SSE_ERR_NOMEM);
            rc = process_line(p, p->line.data, p->line.len, cb, ud);
            cl_buf_reset(&p->line);
        } else {
            if (n > p->max_line)
                return fail(p, CL_SSE_ERR_LINE_TOO_LONG);
            rc = process_line(p, buf + i, n, cb, ud);
        }
        i = eol + 1;
        if (buf[eol] == '\r') {
            if (i < len) {
                if (buf[i] == '\n')
                    i++;
            } else {
                p->after_cr = 1;
            }
        }
        if (rc != 0)
            return rc;
    }
    return CL_SSE_OK;
}
