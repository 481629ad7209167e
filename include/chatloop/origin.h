/**
 * origin.h — web origins ("scheme://host[:port]", RFC 6454) as cors_origins
 * lists them: parsed, checked and put in the form browsers send.
 *
 * Browsers serialise an Origin header with the scheme and host in lower
 * case and without the scheme's default port, so an origin written in the
 * configuration is normalised the same way once at startup; a request's
 * Origin is then compared byte for byte (case-insensitively, for clients
 * that are not browsers). Nothing here allocates.
 */
#ifndef CHATLOOP_ORIGIN_H
#define CHATLOOP_ORIGIN_H

#include <stddef.h>

/** Longest origin accepted (a DNS name is at most 253 bytes). */
#define CL_ORIGIN_MAX 300

/**
 * Normalises one origin s[0..n): scheme http or https, a host (DNS name,
 * IPv4 or [IPv6]), an optional port 1..65535; no path, no trailing slash,
 * no query, no user info. Writes the normalised form (NUL-terminated) to
 * out[CL_ORIGIN_MAX + 1] and returns its length, or -1 with *why set to a
 * static sentence saying what is wrong.
 */
int cl_origin_normalize(const char *s, size_t n, char out[CL_ORIGIN_MAX + 1], const char **why);

/**
 * Checks a whole cors_origins value: "" (none), "*" (any), or origins
 * separated by commas (blanks around each allowed). On error returns -1 and
 * writes which entry is wrong and why to why[0..whylen).
 */
int cl_origin_list_check(const char *spec, char *why, size_t whylen);

#endif
