/*
 * tool_text.c — the <TOOL_CALLS> filter and parser (tool_text.h).
 *
 * Outside a block, a piece is released up to the last place where a
 * marker could be starting: only a suffix that is a proper prefix of
 * "<TOOL_CALLS>" is held, so ordinary text (and a lone "<" followed by
 * anything else) goes out with the piece that completes it. Inside a
 * block nothing is released, and the same holding finds the close marker
 * across pieces. Work per byte is bounded by the marker's length.
 */
#include "chatloop/tool_text.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void cl_tool_text_init(cl_tool_text *f)
{
    memset(f, 0, sizeof *f);
    /* a held marker prefix is shorter than the longest marker */
    cl_buf_init(&f->held, sizeof CL_TOOL_TEXT_CLOSE);
    cl_buf_init(&f->blocks, 0);
}

void cl_tool_text_release(cl_tool_text *f)
{
    cl_buf_release(&f->held);
    cl_buf_release(&f->blocks);
}

/* The length of the longest suffix of s[0..n) that is a proper prefix of
 * marker (0 when none). */
static size_t partial_marker(const char *s, size_t n, const char *marker)
{
    size_t m = strlen(marker);
    size_t k = n < m - 1 ? n : m - 1;
    for (; k > 0; k--)
        if (memcmp(s + n - k, marker, k) == 0)
            return k;
    return 0;
}

static const char *find(const char *s, size_t n, const char *marker)
{
    return memmem(s, n, marker, strlen(marker));
}

/* Bytes of the block being read, up to its budget. */
static void block_append(cl_tool_text *f, const char *p, size_t n)
{
    if (f->cur + n > CL_TOOL_TEXT_MAX_BYTES) {
        f->over = 1;
        n = CL_TOOL_TEXT_MAX_BYTES - f->cur;
    }
    if (!n)
        return;
    if (cl_buf_append(&f->blocks, p, n) != 0)
        f->over = 1;
    else
        f->cur += n;
}

static void block_end(cl_tool_text *f)
{
    if (cl_buf_append_char(&f->blocks, '\0') == 0)
        f->nblocks++;
    else
        f->over = 1;
    f->in_block = 0;
    f->cur = 0;
}

/* One run of bytes, with what was held put before it by the caller. */
static int scan(cl_tool_text *f, const char *p, size_t n, cl_buf *out)
{
    while (n) {
        const char *marker = f->in_block ? CL_TOOL_TEXT_CLOSE : CL_TOOL_TEXT_OPEN;
        const char *at = find(p, n, marker);
        if (at) {
            size_t before = (size_t)(at - p);
            if (f->in_block) {
                block_append(f, p, before);
                block_end(f);
            } else {
                if (before && cl_buf_append(out, p, before) != 0)
                    return -1;
                f->in_block = 1;
            }
            size_t used = before + strlen(marker);
            p += used;
            n -= used;
            continue;
        }
        size_t keep = partial_marker(p, n, marker);
        if (f->in_block)
            block_append(f, p, n - keep);
        else if (n - keep && cl_buf_append(out, p, n - keep) != 0)
            return -1;
        if (keep && cl_buf_append(&f->held, p + n - keep, keep) != 0)
            return -1;
        return 0;
    }
    return 0;
}

int cl_tool_text_feed(cl_tool_text *f, const char *p, size_t n, cl_buf *out)
{
    /* While something is held, the held prefix and the start of the piece
     * are scanned together: a marker that straddles them fits in a window
     * of two markers' length. */
    while (n && f->held.len) {
        char window[2 * sizeof CL_TOOL_TEXT_CLOSE];
        size_t h = f->held.len;
        size_t take = n < sizeof window - h ? n : sizeof window - h;
        memcpy(window, f->held.data, h);
        memcpy(window + h, p, take);
        cl_buf_reset(&f->held);
        if (scan(f, window, h + take, out) != 0)
            return -1;
        p += take;
        n -= take;
    }
    return n ? scan(f, p, n, out) : 0;
}

int cl_tool_text_finish(cl_tool_text *f, cl_buf *out)
{
    if (f->held.len) {
        /* a marker's start that the answer never completed */
        if (f->in_block)
            block_append(f, f->held.data, f->held.len);
        else if (cl_buf_append(out, f->held.data, f->held.len) != 0)
            return -1;
        cl_buf_reset(&f->held);
    }
    if (f->in_block)
        block_end(f);
    return 0;
}

/* ---- parsing ------------------------------------------------------------------------ */

static int set_error(cl_tool_text_call *c, const char *msg)
{
    c->error = strdup(msg);
    return c->error ? 0 : -1;
}

static int one_call(json_t *entry, cl_tool_text_call *c)
{
    json_t *name = json_object_get(entry, "name");
    if (!json_is_object(entry) || !json_is_string(name) || !json_string_length(name))
        return set_error(c, "a tool call needs a \"name\" string");
    json_t *params = json_object_get(entry, "params");
    if (params && !json_is_null(params) && !json_is_object(params))
        return set_error(c, "\"params\" must be an object");
    c->name = strdup(json_string_value(name));
    c->arguments = params && json_is_object(params) ? json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS)
                                                    : strdup("{}");
    return c->name && c->arguments ? 0 : -1;
}

int cl_tool_text_calls(const cl_tool_text *f, cl_tool_text_call *calls, int max)
{
    int n = 0;
    const char *p = f->blocks.data;
    for (int b = 0; b < f->nblocks && n < max; b++) {
        size_t len = strlen(p);
        json_error_t e;
        json_t *doc = json_loadb(p, len, JSON_REJECT_DUPLICATES, &e);
        json_t *tools = json_object_get(doc, "tools");
        if (!json_is_array(tools)) {
            memset(&calls[n], 0, sizeof calls[n]);
            int rc = set_error(&calls[n++], f->over ? "the tool call block is too long"
                                                    : "the tool call block is not "
                                                      "{\"tools\":[{\"name\":...,\"params\":{...}}]} JSON");
            json_decref(doc);
            if (rc != 0)
                return -1;
        } else {
            size_t i;
            json_t *entry;
            json_array_foreach(tools, i, entry) {
                if (n >= max)
                    break;
                memset(&calls[n], 0, sizeof calls[n]);
                if (one_call(entry, &calls[n++]) != 0) {
                    json_decref(doc);
                    cl_tool_text_calls_free(calls, n);
                    return -1;
                }
            }
            json_decref(doc);
        }
        p += len + 1;
    }
    return n;
}

void cl_tool_text_calls_free(cl_tool_text_call *calls, int n)
{
    for (int i = 0; i < n; i++) {
        free(calls[i].name);
        free(calls[i].arguments);
        free(calls[i].error);
        memset(&calls[i], 0, sizeof calls[i]);
    }
}
