/**
 * utf8.h — the one UTF-8 validator and code-point counter.
 *
 * Well-formed means RFC 3629 (Unicode table 3-7): no overlong forms, no
 * surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no lead byte
 * without all its continuation bytes, no stray continuation byte. Every
 * check of peer bytes (WebSocket text, the JSON scanner, the JSON writer's
 * replacement of bad bytes) goes through cl_utf8_seq_len, so they cannot
 * disagree about what is UTF-8.
 */
#ifndef CHATLOOP_UTF8_H
#define CHATLOOP_UTF8_H

#include <stddef.h>
#include <stdint.h>

/**
 * Length of the well-formed sequence that starts at s, with n >= 1 bytes
 * readable: 1 for ASCII, 2..4 for a multi-byte sequence, 0 when s[0] starts
 * none (ill-formed, or cut short by the end at s + n).
 */
size_t cl_utf8_seq_len(const uint8_t *s, size_t n);

/** 1 when s[0..len) is well-formed UTF-8 (an empty span is), else 0. */
int cl_utf8_valid(const void *s, size_t len);

/**
 * Code points in the NUL-terminated string s, which must already be
 * well-formed (jansson's strings are): it counts the bytes that are not
 * continuation bytes. Limits a user types against (max_message_chars, a
 * password's length) are in characters, not bytes.
 */
size_t cl_utf8_chars(const char *s);

/** 1 when s has an ASCII control character (names, titles: one line of text). */
int cl_utf8_has_control(const char *s);

#endif
