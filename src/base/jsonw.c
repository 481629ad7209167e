#include "chatloop/jsonw.h"
#include "chatloop/utf8.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

int cl_jsonw_str(cl_buf *b, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    /* Worst case is 6 output bytes per input byte; reserve once for the
     * common case of short strings and fall back to appends for the rest. */
    if (cl_buf_append_char(b, '"') != 0)
        return -1;
    size_t run = 0; /* start of the pending run of bytes needing no escape */
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t l = cl_utf8_seq_len(s + i, n - i);
            if (l) {
                i += l;
                continue;
            }
        }
        if (cl_buf_append(b, s + run, i - run) != 0)
            return -1;
        char esc[7];
        size_t el = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                el = 6;
            } else { /* invalid UTF-8 byte */
                memcpy(esc, "\xef\xbf\xbd", 3);
                el = 3;
            }
        }
        if (cl_buf_append(b, esc, el) != 0)
            return -1;
        i++;
        run = i;
    }
    if (cl_buf_append(b, s + run, n - run) != 0)
        return -1;
    return cl_buf_append_char(b, '"');
}

int cl_jsonw_cstr(cl_buf *b, const char *s)
{
    if (!s)
        return cl_buf_append(b, "null", 4);
    return cl_jsonw_str(b, s, strlen(s));
}

int cl_jsonw_ms(cl_buf *b, double ms)
{
    if (!isfinite(ms))
        return cl_buf_append(b, "null", 4);
    if (ms < 0)
        ms = 0;
    unsigned long long thousandths = (unsigned long long)(ms * 1000.0 + 0.5);
    if (cl_buf_append_u64(b, thousandths / 1000) != 0)
        return -1;
    char frac[5] = {'.', 0, 0, 0, 0};
    unsigned f = (unsigned)(thousandths % 1000);
    frac[1] = (char)('0' + f / 100);
    frac[2] = (char)('0' + f / 10 % 10);
    frac[3] = (char)('0' + f % 10);
    return cl_buf_append(b, frac, 4);
}
