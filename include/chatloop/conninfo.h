/**
 * conninfo.h — keeping PostgreSQL passwords out of logs and error messages.
 *
 * A database_url is either a URI (postgresql://user:pw@host/db?password=pw)
 * or a key=value string (host=db password='p w'). Its password can leak
 * through the URL itself and through libpq's own messages, which quote
 * pieces of a malformed string back. cl_conninfo_redact hides it in both.
 *
 * How the password is found:
 *   - libpq's PQconninfoParse reads the string exactly as a connection would
 *     and yields the password (and sslpassword) decoded, which also catches
 *     spellings the scan below misses (a keyword written pass%77ord);
 *   - where it is written in the string, in either form, as written and
 *     decoded: the userinfo after "://user:" up to the last '@' of the
 *     authority, and every password=... value (quoted or not, in a URI
 *     query or a key=value list). This is also the fallback for a string
 *     libpq refuses, which is when a message is most likely to quote it.
 * Every occurrence of any of these in the text becomes "***". A password
 * that also occurs elsewhere in the text (the host, a database name) is
 * hidden there too: hiding too much is the safe mistake.
 *
 * Not for the loop's hot path: it allocates and parses (startup, the
 * configuration dump, error paths).
 */
#ifndef CHATLOOP_CONNINFO_H
#define CHATLOOP_CONNINFO_H

#include <stddef.h>

/**
 * Copies `text` into out (outlen bytes, always NUL-terminated when outlen
 * > 0, truncated to fit) with every password of `conninfo` replaced by
 * "***", and also any password written in `text` itself by the rules above.
 * `text` may be `conninfo` (the URL for a log line) or a message that may
 * quote it; `conninfo` may be NULL or empty. If memory runs out, out is
 * "<redacted>". Redaction happens before truncation, so a cut never leaves
 * a recognisable prefix of a password behind.
 */
void cl_conninfo_redact(const char *conninfo, const char *text, char *out, size_t outlen);

/** A connection URL for a log line: cl_conninfo_redact(url, url, ...). */
static inline void cl_redact_url(const char *url, char *out, size_t outlen)
{
    cl_conninfo_redact(url, url, out, outlen);
}

#endif
