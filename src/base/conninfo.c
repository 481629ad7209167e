/*
 * conninfo.c — cl_conninfo_redact (see include/chatloop/conninfo.h).
 *
 * Every piece that may be the password goes into one list of secrets; the
 * copy then replaces each occurrence of any of them, longest first, so a
 * secret that contains another is hidden whole. The list points into the
 * caller's strings, libpq's parsed options and one scratch buffer for the
 * decoded spellings, all alive until the copy is done.
 */
#include "chatloop/conninfo.h"
#include "chatloop/hex.h"

#include <assert.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Far more than any real connection string holds (a userinfo and a
 * password=, each as written and decoded, plus libpq's two values); past
 * it the whole text is hidden rather than some of it. */
#define MAX_SECRETS 32

typedef struct secret {
    const char *p;
    size_t len;
} secret;

typedef struct secrets {
    secret s[MAX_SECRETS];
    int n;
    int overflow;
    /* Decoded spellings. Each finder's spans are disjoint within a string,
     * and a decoding is never longer than its span, so two finders need at
     * most twice the strings' length. */
    char *scratch;
    size_t scratch_used, scratch_cap;
} secrets;

static void add(secrets *sc, const char *p, size_t len)
{
    if (len == 0)
        return;
    if (sc->n == MAX_SECRETS) {
        sc->overflow = 1;
        return;
    }
    sc->s[sc->n].p = p;
    sc->s[sc->n].len = len;
    sc->n++;
}

/* Adds p[0..len) and, when it reads differently, its decoded spelling:
 * %XX in a URI, backslash escapes in a key=value string. */
static void add_span(secrets *sc, const char *p, size_t len, int uri)
{
    add(sc, p, len);
    assert(sc->scratch_used + len <= sc->scratch_cap);
    char *dec = sc->scratch + sc->scratch_used;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int h, l;
        if (uri && p[i] == '%' && i + 2 < len && (h = cl_hexval(p[i + 1])) >= 0 &&
            (l = cl_hexval(p[i + 2])) >= 0) {
            dec[o++] = (char)(h * 16 + l);
            i += 2;
        } else if (!uri && p[i] == '\\' && i + 1 < len) {
            dec[o++] = p[++i];
        } else {
            dec[o++] = p[i];
        }
    }
    if (o != len || memcmp(dec, p, len) != 0) {
        sc->scratch_used += o;
        add(sc, dec, o);
    }
}

/* The userinfo password of every scheme://user:pw@host in s. The last '@'
 * ends it: a password with a raw '@' is hidden whole, even where libpq
 * would have read a shorter one. */
static void find_userinfo(secrets *sc, const char *s)
{
    for (const char *p = s; (p = strstr(p, "://")) != NULL;) {
        const char *auth = p + 3;
        size_t alen = strcspn(auth, "/?# \t\r\n");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (auth[i] == '@')
                at = auth + i;
        if (at) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon)
                add_span(sc, colon + 1, (size_t)(at - colon - 1), 1);
        }
        p = auth + alen;
    }
}

/* Every password=... value (sslpassword too): in a URI query it ends at
 * '&' or '#'; in a key=value string libpq allows blanks around '=', quotes
 * with backslash escapes, and backslash escapes unquoted. */
static void find_password_values(secrets *sc, const char *s)
{
    int uri = strstr(s, "://") != NULL;
    for (const char *p = s; (p = strstr(p, "password")) != NULL;) {
        p += 8;
        const char *v = p + strspn(p, " \t\r\n");
        if (*v != '=')
            continue;
        v++;
        v += strspn(v, " \t\r\n");
        size_t len = 0;
        if (*v == '\'') {
            v++;
            while (v[len] && v[len] != '\'')
                len += v[len] == '\\' && v[len + 1] ? 2 : 1;
            add_span(sc, v, len, 0);
        } else if (uri) {
            len = strcspn(v, "&# \t\r\n");
            add_span(sc, v, len, 1);
        } else {
            while (v[len] && !strchr(" \t\r\n", v[len]))
                len += v[len] == '\\' && v[len + 1] ? 2 : 1;
            add_span(sc, v, len, 0);
        }
        p = v + len;
    }
}

/* 1 when some secret already contains v. */
static int held(const secrets *sc, const char *v)
{
    size_t n = strlen(v);
    for (int k = 0; k < sc->n; k++)
        if (memmem(sc->s[k].p, sc->s[k].len, v, n))
            return 1;
    return 0;
}

static int longer_first(const void *a, const void *b)
{
    size_t la = ((const secret *)a)->len, lb = ((const secret *)b)->len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static void copy_scrubbed(const char *text, const secrets *sc, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = text; *p && o + 1 < outlen;) {
        int hit = -1;
        for (int k = 0; k < sc->n && hit < 0; k++)
            if (strncmp(p, sc->s[k].p, sc->s[k].len) == 0)
                hit = k;
        if (hit < 0) {
            out[o++] = *p++;
            continue;
        }
        for (int j = 0; j < 3 && o + 1 < outlen; j++)
            out[o++] = '*';
        p += sc->s[hit].len;
    }
    out[o] = '\0';
}

void cl_conninfo_redact(const char *conninfo, const char *text, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    if (!text)
        text = "";
    if (!conninfo)
        conninfo = "";
    secrets sc;
    memset(&sc, 0, sizeof sc);
    sc.scratch_cap = 2 * (strlen(conninfo) + (text == conninfo ? 0 : strlen(text)));
    sc.scratch = malloc(sc.scratch_cap + 1);
    PQconninfoOption *opts = NULL;
    if (*conninfo) {
        char *perr = NULL;
        opts = PQconninfoParse(conninfo, &perr);
        PQfreemem(perr); /* its reason may quote the password: never shown */
    }
    if (!sc.scratch) {
        PQconninfoFree(opts);
        snprintf(out, outlen, "<redacted>");
        return;
    }
    find_userinfo(&sc, conninfo);
    find_password_values(&sc, conninfo);
    /* libpq's reading counts where the spans missed it (a keyword spelled
     * pass%77ord); where a span already holds it, adding it would only hide
     * unrelated text: "u:p@ss@host" is user u, password "p" to libpq, and
     * every 'p' of the message is not the secret. */
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val && (strcmp(o->keyword, "password") == 0 ||
                       strcmp(o->keyword, "sslpassword") == 0) &&
            !held(&sc, o->val))
            add(&sc, o->val, strlen(o->val));
    if (text != conninfo) {
        find_userinfo(&sc, text);
        find_password_values(&sc, text);
    }
    if (sc.overflow) {
        snprintf(out, outlen, "<redacted>");
    } else {
        qsort(sc.s, (size_t)sc.n, sizeof sc.s[0], longer_first);
        copy_scrubbed(text, &sc, out, outlen);
    }
    PQconninfoFree(opts);
    free(sc.scratch);
}
