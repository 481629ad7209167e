/* query_args.c — the query string of a native API request (query_args.h). */
#include "chatloop/query_args.h"

#include "chatloop/api.h"
#include "chatloop/hex.h"

#include <stdio.h>
#include <string.h>

int cl_query_param(const cl_req *r, const char *name, char *out, size_t outlen)
{
    size_t qlen = 0;
    const char *q = cl_req_query(r, &qlen);
    size_t nlen = strlen(name);
    while (q && qlen) {
        const char *amp = memchr(q, '&', qlen);
        size_t plen = amp ? (size_t)(amp - q) : qlen;
        if (plen > nlen && q[nlen] == '=' && memcmp(q, name, nlen) == 0) {
            size_t o = 0;
            for (size_t i = nlen + 1; i < plen; i++) {
                char c = q[i];
                if (c == '%') {
                    int hi = i + 2 < plen ? cl_hexval(q[i + 1]) : -1;
                    int lo = hi >= 0 ? cl_hexval(q[i + 2]) : -1;
                    if (lo < 0)
                        return -1;
                    c = (char)(hi * 16 + lo);
                    i += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (c == '\0' || o + 1 >= outlen)
                    return -1;
                out[o++] = c;
            }
            out[o] = '\0';
            return 1;
        }
        if (plen == nlen && memcmp(q, name, nlen) == 0) {   /* "name" or "name=" alone */
            out[0] = '\0';
            return 1;
        }
        if (!amp)
            break;
        qlen -= plen + 1;
        q = amp + 1;
    }
    return 0;
}

long cl_query_int(cl_req *r, const char *name, long def, long min, long max)
{
    char v[16];
    int got = cl_query_param(r, name, v, sizeof v);
    if (got == 0)
        return def;
    long n = 0;
    int ok = got == 1 && v[0] && strlen(v) <= 6;
    for (const char *s = v; ok && *s; s++) {
        ok = *s >= '0' && *s <= '9';
        n = n * 10 + (*s - '0');
    }
    if (!ok || n < min || n > max) {
        char msg[96], details[64];
        snprintf(msg, sizeof msg, "'%s' must be an integer from %ld to %ld", name, min, max);
        snprintf(details, sizeof details, "{\"field\":\"%s\"}", name);
        cl_api_error(r, CL_ERR_INVALID_REQUEST, msg, details, NULL);
        return -1;
    }
    return n;
}

