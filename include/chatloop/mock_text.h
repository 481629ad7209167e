/**
 * mock_text.h — the deterministic answer of chatloop-mock (and of any other
 * mock that wants to agree with it), so tests and chatbench can compute the
 * exact expected text from the token count alone.
 *
 * An answer of N tokens is tokens i = 0 .. N-1, where token 0 is "tok1" and
 * token i > 0 is " tok<i+1>" (a leading space, as real tokenizers emit):
 *
 *     N = 3  ->  "tok1" + " tok2" + " tok3"  =  "tok1 tok2 tok3"
 *     N = 0  ->  ""
 *
 * In JavaScript: Array.from({length: N}, (_, i) => `tok${i + 1}`).join(' ').
 * Every token is plain ASCII, so no JSON escaping is ever needed for it.
 */
#ifndef CHATLOOP_MOCK_TEXT_H
#define CHATLOOP_MOCK_TEXT_H

#include <stddef.h>

/** Longest token: " tok" plus ten digits. */
#define CL_MOCK_TOKEN_MAX 16

/**
 * Writes token i (0-based) into out (at least CL_MOCK_TOKEN_MAX bytes, not
 * NUL-terminated) and returns its length.
 */
static inline size_t cl_mock_token(unsigned i, char out[CL_MOCK_TOKEN_MAX])
{
    char digits[12];
    size_t nd = 0;
    unsigned v = i + 1;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t n = 0;
    if (i > 0)
        out[n++] = ' ';
    out[n++] = 't';
    out[n++] = 'o';
    out[n++] = 'k';
    while (nd)
        out[n++] = digits[--nd];
    return n;
}

#endif
