/**
 * tool_text.h — tool calls written as text, for models without native
 * tools (SPEC §7): the answer may carry
 *
 *     <TOOL_CALLS>{"tools":[{"name":"add_task","params":{"title":"Buy milk"}}]}</TOOL_CALLS>
 *
 * and that block must never reach the client as tokens. The filter takes
 * the answer as it streams, in pieces split anywhere, releases the text
 * around blocks at once, and holds back only what may be the start of a
 * marker (a trailing "<", "<TOOL", ...) until the next piece says whether
 * it is one. The blocks it cut out are parsed into calls afterwards.
 */
#ifndef CHATLOOP_TOOL_TEXT_H
#define CHATLOOP_TOOL_TEXT_H

#include <stddef.h>

#include "chatloop/buf.h"

#define CL_TOOL_TEXT_OPEN "<TOOL_CALLS>"
#define CL_TOOL_TEXT_CLOSE "</TOOL_CALLS>"
/* A block's JSON may hold this much (every buffer has a budget). */
#define CL_TOOL_TEXT_MAX_BYTES 65536
/* Calls taken from one answer; the rest are refused (to the model). */
#define CL_TOOL_TEXT_MAX_CALLS 16

typedef struct cl_tool_text {
    cl_buf held;        /* a possible marker, not yet released or taken */
    cl_buf blocks;      /* the blocks' JSON texts, each ended by a NUL */
    int in_block;       /* between an open marker and its close */
    size_t cur;         /* bytes of the open block kept so far */
    int nblocks;
    int over;           /* a block passed CL_TOOL_TEXT_MAX_BYTES */
} cl_tool_text;

void cl_tool_text_init(cl_tool_text *f);
void cl_tool_text_release(cl_tool_text *f);

/** Feeds n bytes of the answer; appends what the client may see to out.
 *  Returns 0, or -1 when out could not grow (nothing lost from the filter:
 *  the caller fails the turn). A block past the budget is cut, kept as
 *  far as it fit, and flagged in `over`. */
int cl_tool_text_feed(cl_tool_text *f, const char *p, size_t n, cl_buf *out);

/** The answer ended: held text that turned out to be no marker goes to
 *  out; a block still open (its close never came) counts as ended there.
 *  Returns 0 or -1 as feed. */
int cl_tool_text_finish(cl_tool_text *f, cl_buf *out);

typedef struct cl_tool_text_call {
    char *name;         /* owned */
    char *arguments;    /* owned: the params object as compact JSON ("{}" when absent) */
    char *error;        /* owned: set instead of name/arguments when this entry is malformed */
} cl_tool_text_call;

/** Parses every block the filter cut out into calls (at most max), in
 *  order. A block that is not {"tools":[...]} JSON, or an entry without a
 *  string "name" or with "params" that is not an object, becomes one call
 *  with `error` set, for the model to see. Returns the number of calls
 *  (0 when there were no blocks), or -1 when memory ran out. */
int cl_tool_text_calls(const cl_tool_text *f, cl_tool_text_call *calls, int max);

void cl_tool_text_calls_free(cl_tool_text_call *calls, int n);

#endif
