/**
 * jscan.h — just enough JSON for hot paths: find a few members of an object
 * without building a tree, and unescape a string. Used where a message is
 * parsed once per token (upstream chunks in a turn, chatbench's token
 * frames) and a full parser would cost more than everything else together.
 * It still checks the structure it walks: malformed input is reported, and
 * callers fall back to jansson or fail, never guess.
 */
#ifndef CHATLOOP_JSCAN_H
#define CHATLOOP_JSCAN_H

#include <stddef.h>

/* A span of the input: a JSON value as it appears (strings with quotes). */
typedef struct cl_json_span {
    const char *p;
    size_t n;
} cl_json_span;

/**
 * Finds the members `keys[0..nkeys)` of the JSON object in s[0..n) (top level
 * only) and stores their value spans in out[] (p = NULL when absent).
 * Returns 0 when s is one well-formed object (trailing whitespace allowed),
 * -1 otherwise. Nesting is bounded (64) so hostile input cannot recurse.
 */
int cl_json_members(const char *s, size_t n, const char *const *keys, cl_json_span *out, int nkeys);
/** The first element of a JSON array span, or p = NULL. */
cl_json_span cl_json_first(cl_json_span arr);
/** 1 if the span is the JSON string "lit" written without escapes (the
 *  protocol words compared this way never need any). */
int cl_json_is(cl_json_span v, const char *lit);
/**
 * Unescapes a JSON string span into out (capacity cap; \uXXXX becomes UTF-8,
 * surrogate pairs joined). Returns the length, -1 if the span is not a valid
 * string, -2 if it does not fit.
 */
long cl_json_string(cl_json_span v, char *out, size_t cap);

#endif
