/* test_utf8.c — the UTF-8 validator and counter (src/base/utf8.c) against
 * RFC 3629: every boundary of every sequence length, truncations, surrogates,
 * overlongs, and an exhaustive comparison with a decoder written from the
 * RFC's arithmetic rather than its byte ranges. */
#include "test.h"

#include "chatloop/utf8.h"

#include <stdint.h>

static int valid_str(const char *s)
{
    return cl_utf8_valid(s, strlen(s));
}

/* The reference: decode by bit arithmetic, then refuse what RFC 3629 §3
 * refuses. Returns the sequence length or 0, like cl_utf8_seq_len. */
static size_t ref_seq_len(const uint8_t *s, size_t n)
{
    uint32_t cp;
    size_t len;
    if (s[0] < 0x80)
        return 1;
    else if ((s[0] & 0xE0) == 0xC0) { len = 2; cp = s[0] & 0x1F; }
    else if ((s[0] & 0xF0) == 0xE0) { len = 3; cp = s[0] & 0x0F; }
    else if ((s[0] & 0xF8) == 0xF0) { len = 4; cp = s[0] & 0x07; }
    else return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static int ref_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = ref_seq_len(s + i, n - i)))
            return 0;
    return 1;
}

static void test_boundaries(void)
{
    struct {
        const char *s;
        int ok;
    } cases[] = {
        {"", 1},
        {"plain ascii, long enough for the fast path", 1},
        {"\x01", 1}, {"\x7f", 1},          /* 1 byte: U+0001, U+007F */
        {"\xc2\x80", 1},                  /* 2 bytes: U+0080 */
        {"\xdf\xbf", 1},                  /* U+07FF */
        {"\xe0\xa0\x80", 1},              /* 3 bytes: U+0800 */
        {"\xed\x9f\xbf", 1},              /* U+D7FF, just below the surrogates */
        {"\xee\x80\x80", 1},              /* U+E000, just above */
        {"\xef\xbf\xbf", 1},              /* U+FFFF */
        {"\xf0\x90\x80\x80", 1},          /* 4 bytes: U+10000 */
        {"\xf4\x8f\xbf\xbf", 1},          /* U+10FFFF */
        {"h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x98\x80", 1},
        {"\x80", 0},                      /* lone continuation */
        {"\xbf", 0},
        {"\xc0\x80", 0},                  /* overlong NUL */
        {"\xc1\xbf", 0},                  /* overlong U+007F */
        {"\xe0\x80\x80", 0},              /* overlong 3-byte NUL */
        {"\xe0\x9f\xbf", 0},              /* overlong U+07FF */
        {"\xed\xa0\x80", 0},              /* U+D800 */
        {"\xed\xaf\xbf", 0},              /* U+DBFF */
        {"\xed\xb0\x80", 0},              /* U+DC00 */
        {"\xed\xbf\xbf", 0},              /* U+DFFF */
        {"\xed\xa0\x80\xed\xb0\x80", 0},  /* a CESU-8 surrogate pair */
        {"\xf0\x80\x80\x80", 0},          /* overlong 4-byte NUL */
        {"\xf0\x8f\xbf\xbf", 0},          /* overlong U+FFFF */
        {"\xf4\x90\x80\x80", 0},          /* U+110000 */
        {"\xf5\x80\x80\x80", 0},          /* leads that never occur */
        {"\xf8\x88\x80\x80\x80", 0},
        {"\xfe", 0}, {"\xff", 0},
        {"\xc3", 0},                      /* truncated at every length */
        {"\xe2\x82", 0}, {"\xe2", 0},
        {"\xf0\x9f\x98", 0}, {"\xf0\x9f", 0}, {"\xf0", 0},
        {"abcdefg\xc3", 0},               /* truncated right after the fast path */
        {"\xc3\x28", 0},                  /* a bad continuation in every position */
        {"\xe2\x28\xa1", 0}, {"\xe2\x82\x28", 0},
        {"\xf0\x28\x8c\xbc", 0}, {"\xf0\x90\x28\xbc", 0}, {"\xf0\x90\x8c\x28", 0},
        {"\xc3\xa9\xa9", 0},              /* one continuation too many */
        {"abcdefgh\xe2\x28\xa1", 0},
        {"abcdefghijklmnop\xed\xa0\x80xyz", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = valid_str(cases[i].s);
        if (got != cases[i].ok) {
            fprintf(stderr, "  utf8 case %zu: got %d\n", i, got);
            CHECK(0);
        }
    }
    /* NUL is U+0000: well-formed, and the span is what counts, not strlen */
    CHECK_EQ_INT(cl_utf8_valid("a\0b", 3), 1);
    CHECK_EQ_INT(cl_utf8_valid("\xc3\xa9", 1), 0);
}

static void test_seq_len(void)
{
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"a", 1), 1);
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xc3\xa9", 2), 2);
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xe2\x82\xac", 3), 3);
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xf0\x9f\x98\x80", 4), 4);
    /* only the first sequence is judged, whatever follows it */
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xc3\xa9\xff", 3), 2);
    /* n is a hard end: the bytes are there but may not be read */
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xf0\x9f\x98\x80", 3), 0);
    CHECK_EQ_INT(cl_utf8_seq_len((const uint8_t *)"\xe2\x82\xac", 2), 0);
}

/* Every 1-, 2- and 3-byte input, and every lead and second byte of the
 * 4-byte ones with the continuation boundaries (80, BF) and one non-
 * continuation (7F, C0) behind: about 17 million comparisons, ~0.1 s. */
static void test_exhaustive_against_reference(void)
{
    long bad = 0;
    uint8_t s[4];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        bad += cl_utf8_seq_len(s, 1) != ref_seq_len(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            bad += cl_utf8_seq_len(s, 2) != ref_seq_len(s, 2);
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                bad += cl_utf8_seq_len(s, 3) != ref_seq_len(s, 3);
            }
            static const uint8_t edge[] = {0x7F, 0x80, 0xBF, 0xC0};
            for (size_t i = 0; i < sizeof edge; i++)
                for (size_t j = 0; j < sizeof edge; j++) {
                    s[2] = edge[i];
                    s[3] = edge[j];
                    bad += cl_utf8_seq_len(s, 4) != ref_seq_len(s, 4);
                    bad += cl_utf8_valid(s, 4) != ref_valid(s, 4);
                }
        }
    }
    CHECK_EQ_INT(bad, 0);
}

/* Every code point encoded by hand: all scalar values are accepted, all
 * surrogates refused, and the counter sees one character per sequence. */
static void test_every_code_point(void)
{
    long bad = 0;
    for (uint32_t cp = 1; cp <= 0x10FFFF; cp++) {
        char s[5] = {0};
        size_t n;
        if (cp < 0x80) { s[0] = (char)cp; n = 1; }
        else if (cp < 0x800) { s[0] = (char)(0xC0 | cp >> 6); s[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
        else if (cp < 0x10000) {
            s[0] = (char)(0xE0 | cp >> 12); s[1] = (char)(0x80 | (cp >> 6 & 0x3F));
            s[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
        } else {
            s[0] = (char)(0xF0 | cp >> 18); s[1] = (char)(0x80 | (cp >> 12 & 0x3F));
            s[2] = (char)(0x80 | (cp >> 6 & 0x3F)); s[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
        }
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        bad += cl_utf8_valid(s, n) != !surrogate;
        if (!surrogate)
            bad += cl_utf8_chars(s) != 1;
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_fast_path_offsets(void)
{
    /* an invalid byte at every offset of a 24-byte ASCII run, so it lands
     * inside, at the start and at the end of each 8-byte block */
    for (size_t at = 0; at < 24; at++) {
        char s[25];
        memset(s, 'x', 24);
        s[24] = 0;
        s[at] = (char)0x80;
        CHECK_EQ_INT(cl_utf8_valid(s, 24), 0);
        s[at] = 'y';
        CHECK_EQ_INT(cl_utf8_valid(s, 24), 1);
    }
    /* a multi-byte sequence straddling an 8-byte block boundary */
    CHECK_EQ_INT(valid_str("abcdef\xe2\x82\xac" "ghijklmnop"), 1);
    CHECK_EQ_INT(valid_str("abcdefg\xf0\x9f\x98\x80" "hijklmnop"), 1);
}

static void test_chars(void)
{
    CHECK_EQ_INT(cl_utf8_chars(""), 0);
    CHECK_EQ_INT(cl_utf8_chars("abc"), 3);
    CHECK_EQ_INT(cl_utf8_chars("h\xc3\xa9llo"), 5);
    CHECK_EQ_INT(cl_utf8_chars("\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9z"), 4);
}

CL_TEST_MAIN(test_boundaries, test_seq_len, test_exhaustive_against_reference,
             test_every_code_point, test_fast_path_offsets, test_chars)
