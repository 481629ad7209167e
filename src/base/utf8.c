#include "chatloop/utf8.h"

#include <assert.h>
#include <string.h>

static int is_cont(uint8_t b)
{
    return (b & 0xC0) == 0x80;
}

/* Byte ranges of Unicode table 3-7 rather than decoding and comparing the
 * code point: the second byte's range is what rules out overlongs (E0, F0),
 * surrogates (ED) and values past U+10FFFF (F4), so no arithmetic is needed. */
size_t cl_utf8_seq_len(const uint8_t *s, size_t n)
{
    assert(n >= 1);
    uint8_t b = s[0];
    if (b < 0x80)
        return 1;
    if (b < 0xC2)
        return 0; /* a continuation byte first, or C0/C1: an overlong 2-byte form */
    if (b < 0xE0)
        return n >= 2 && is_cont(s[1]) ? 2 : 0;
    if (b < 0xF0) {
        if (n < 3 || !is_cont(s[1]) || !is_cont(s[2]))
            return 0;
        if (b == 0xE0 && s[1] < 0xA0)
            return 0; /* overlong: below U+0800 */
        if (b == 0xED && s[1] >= 0xA0)
            return 0; /* U+D800..U+DFFF: surrogates are not characters */
        return 3;
    }
    if (b < 0xF5) {
        if (n < 4 || !is_cont(s[1]) || !is_cont(s[2]) || !is_cont(s[3]))
            return 0;
        if (b == 0xF0 && s[1] < 0x90)
            return 0; /* overlong: below U+10000 */
        if (b == 0xF4 && s[1] >= 0x90)
            return 0; /* above U+10FFFF */
        return 4;
    }
    return 0; /* F5..FF never occur in UTF-8 */
}

int cl_utf8_valid(const void *data, size_t len)
{
    const uint8_t *s = data;
    size_t i = 0;
    while (i < len) {
        /* ASCII runs (almost all JSON) eight bytes at a time; memcpy because
         * s + i has no alignment. */
        if (len - i >= 8) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if ((v & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        size_t l = cl_utf8_seq_len(s + i, len - i);
        if (!l)
            return 0;
        i += l;
    }
    return 1;
}

size_t cl_utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += !is_cont((uint8_t)*s);
    return n;
}

int cl_utf8_has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}
