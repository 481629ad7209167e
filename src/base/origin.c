/*
 * origin.c — parsing and normalising the origins of origin.h.
 *
 * Strict on purpose: an allowlist entry that can never match what a
 * browser sends ("https://app.example.com/", "app.example.com") would
 * silently refuse every request from the site the operator meant to allow,
 * so it stops startup instead, saying which entry and why.
 */
#include "chatloop/origin.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int is_host_char(unsigned char ch)
{
    return isalnum(ch) || ch == '-' || ch == '.';
}

int cl_origin_normalize(const char *s, size_t n, char out[CL_ORIGIN_MAX + 1], const char **why)
{
    size_t skip;
    unsigned default_port;
    if (n > CL_ORIGIN_MAX)
        return *why = "too long", -1;
    if (n >= 7 && strncasecmp(s, "http://", 7) == 0) {
        skip = 7;
        default_port = 80;
    } else if (n >= 8 && strncasecmp(s, "https://", 8) == 0) {
        skip = 8;
        default_port = 443;
    } else if (memmem(s, n, "://", 3)) {
        return *why = "the scheme must be http or https", -1;
    } else {
        return *why = "no scheme: write it as scheme://host[:port], e.g. https://app.example.com",
               -1;
    }
    size_t o = 0;
    for (size_t i = 0; i < skip; i++)
        out[o++] = (char)tolower((unsigned char)s[i]);
    size_t i = skip;
    if (i < n && s[i] == '[') {
        /* an IPv6 literal: hex digits, ':' and '.' (an embedded IPv4) */
        size_t start = i++;
        while (i < n && (isxdigit((unsigned char)s[i]) || s[i] == ':' || s[i] == '.'))
            i++;
        if (i >= n || s[i] != ']' || i == start + 1)
            return *why = "a bracketed IPv6 host must be hex digits and ':' closed by ']'", -1;
        i++;
    } else {
        size_t start = i;
        while (i < n && is_host_char((unsigned char)s[i]))
            i++;
        if (i == start)
            return *why = i < n && s[i] == '*'
                              ? "wildcards are not supported: list each origin, or * alone for any"
                              : "no host after the scheme",
                   -1;
        if (s[start] == '.' || s[i - 1] == '.' || s[start] == '-')
            return *why = "the host must not begin or end with '.' or begin with '-'", -1;
    }
    size_t host_end = i;
    for (size_t k = skip; k < host_end; k++)
        out[o++] = (char)tolower((unsigned char)s[k]);
    if (i < n && s[i] == ':') {
        unsigned port = 0;
        size_t digits = 0;
        for (i++; i < n && isdigit((unsigned char)s[i]) && digits < 6; i++, digits++)
            port = port * 10 + (unsigned)(s[i] - '0');
        if (digits == 0 || digits > 5 || port < 1 || port > 65535 ||
            (i < n && isdigit((unsigned char)s[i])))
            return *why = "the port must be a number 1..65535", -1;
        /* browsers leave the scheme's default port out of Origin */
        if (port != default_port)
            o += (size_t)snprintf(out + o, CL_ORIGIN_MAX + 1 - o, ":%u", port);
    }
    if (i < n) {
        switch (s[i]) {
        case '/':
            return *why = "an origin has no path, not even a trailing slash", -1;
        case '?':
        case '#':
            return *why = "an origin has no query or fragment", -1;
        case '@':
            return *why = "an origin has no user info", -1;
        case '*':
            return *why = "wildcards are not supported: list each origin, or * alone for any", -1;
        default:
            return *why = "unexpected character after the host (an origin is scheme://host[:port])",
                   -1;
        }
    }
    out[o] = '\0';
    return (int)o;
}

int cl_origin_list_check(const char *spec, char *why, size_t whylen)
{
    const char *p = spec;
    int entries = 0, star = 0;
    if (!*spec)
        return 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *e = comma ? comma : p + strlen(p);
        const char *b = p;
        while (b < e && isspace((unsigned char)*b))
            b++;
        const char *t = e;
        while (t > b && isspace((unsigned char)t[-1]))
            t--;
        size_t n = (size_t)(t - b);
        entries++;
        if (n == 0) {
            snprintf(why, whylen, "entry %d is empty (a stray comma?)", entries);
            return -1;
        }
        if (n == 1 && *b == '*') {
            star = 1;
        } else {
            char out[CL_ORIGIN_MAX + 1];
            const char *reason;
            if (cl_origin_normalize(b, n, out, &reason) < 0) {
                snprintf(why, whylen, "entry \"%.*s\": %s", (int)(n > 80 ? 80 : n), b, reason);
                return -1;
            }
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    if (star && entries > 1) {
        snprintf(why, whylen, "* means any origin and cannot be combined with a list");
        return -1;
    }
    return 0;
}
