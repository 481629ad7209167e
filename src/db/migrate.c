/*
 * migrate.c — cl_db_migrate: applies the embedded migrations (migrations.c)
 * once, at startup, before any worker exists. Synchronous libpq is right
 * here and nowhere else: nothing is being served yet.
 *
 * Everything happens in ONE transaction that first takes a transaction-level
 * advisory lock, so instances starting together serialize: the first applies
 * what is missing, the others wait, then find every version recorded and
 * commit nothing. The lock is taken before CREATE TABLE IF NOT EXISTS
 * schema_migrations because that statement itself races (two sessions may
 * both see no table; the second fails on pg_type's unique index).
 * DDL is transactional in PostgreSQL: a failing migration leaves the
 * database exactly as it was.
 *
 * A database that records versions this binary does not know (a newer
 * binary migrated it) is accepted: migrations are meant to be additive so
 * that old and new instances can run side by side during a deploy. A
 * version recorded under a different name is refused: the histories diverged.
 *
 * Secrets: the URL appears in messages only through cl_redact_url, and every
 * message that libpq wrote is scrubbed of the password (libpq quotes pieces
 * of a malformed conninfo string back, and those may be the password).
 */
#include "chatloop/hex.h"
#include "chatloop/config.h"
#include "chatloop/db.h"
#include "migrations.h"

#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "chatloop" read as a big-endian 64-bit integer: the key of the advisory
 * lock every instance takes to migrate. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_xact_lock(7163082359996116848)"
#define CONNECT_TIMEOUT_S "10"

#define MAX_SECRETS 6
#define SECRET_MAX 256

typedef struct secrets {
    int n;
    char s[MAX_SECRETS][SECRET_MAX];
} secrets;

static void add_secret(secrets *sc, const char *p, size_t len)
{
    if (len == 0 || sc->n >= MAX_SECRETS)
        return;
    if (len >= SECRET_MAX)
        len = SECRET_MAX - 1; /* a prefix of it still hides it */
    memcpy(sc->s[sc->n], p, len);
    sc->s[sc->n][len] = 0;
    sc->n++;
}

/* Adds the raw span and, when it differs, its percent-decoded form. */
static void add_secret_span(secrets *sc, const char *p, size_t len)
{
    add_secret(sc, p, len);
    char dec[SECRET_MAX];
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < sizeof dec; i++) {
        int h, l;
        if (p[i] == '%' && i + 2 < len && (h = cl_hexval(p[i + 1])) >= 0 && (l = cl_hexval(p[i + 2])) >= 0) {
            dec[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            dec[o++] = p[i];
        }
    }
    if (o != len || memcmp(dec, p, len) != 0)
        add_secret(sc, dec, o);
}

/*
 * Finds what could be the password in a URL or key=value string, without
 * trusting it to be well formed (we need this most when libpq refused it):
 * the userinfo of scheme://user:pw@host, and every password=... value, in a
 * URI query (up to '&') or a conninfo string (up to a space, or quoted).
 */
static void collect_secrets(const char *url, secrets *sc)
{
    const char *scheme = strstr(url, "://");
    if (scheme) {
        const char *auth = scheme + 3;
        size_t alen = strcspn(auth, "/?#");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (auth[i] == '@')
                at = auth + i; /* the last '@' ends the userinfo */
        if (at) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon)
                add_secret_span(sc, colon + 1, (size_t)(at - colon - 1));
        }
    }
    for (const char *p = url; (p = strstr(p, "password=")) != NULL;) {
        p += 9;
        size_t len;
        if (*p == '\'') {
            p++;
            len = 0;
            while (p[len] && p[len] != '\'') {
                if (p[len] == '\\' && p[len + 1])
                    len++;
                len++;
            }
        } else {
            len = strcspn(p, scheme ? "&#" : " \t\n");
        }
        add_secret_span(sc, p, len);
        p += len;
    }
}

/* Replaces every occurrence of each secret in s (capacity cap) by "***",
 * truncating if a short secret made the text longer than cap. */
static void scrub(char *s, size_t cap, const secrets *sc)
{
    char tmp[2048];
    for (int k = 0; k < sc->n; k++) {
        const char *sec = sc->s[k];
        size_t n = strlen(sec);
        if (!strstr(s, sec))
            continue;
        size_t o = 0;
        for (const char *p = s; *p && o + 1 < sizeof tmp;) {
            if (strncmp(p, sec, n) == 0) {
                for (int j = 0; j < 3 && o + 1 < sizeof tmp; j++)
                    tmp[o++] = '*';
                p += n;
            } else {
                tmp[o++] = *p++;
            }
        }
        tmp[o] = 0;
        snprintf(s, cap, "%s", tmp);
    }
}

/* libpq messages end in "\n" and continue lines with "\n\t": one line. */
static void one_line(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t') {
            if (o > s && o[-1] != ' ')
                *o++ = ' ';
        } else {
            *o++ = *p;
        }
    }
    while (o > s && o[-1] == ' ')
        o--;
    *o = 0;
}

static int fail(char *err, size_t errlen, const secrets *sc, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return -1;
    /* Scrub before truncating to errlen: a cut could leave a prefix of the
     * password that no longer matches. */
    char full[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(full, sizeof full, fmt, ap);
    va_end(ap);
    one_line(full);
    scrub(full, sizeof full, sc);
    snprintf(err, errlen, "%s", full);
    return -1;
}

/* 1-based line of character `pos` (1-based, as PostgreSQL reports it) in sql. */
static int line_of(const char *sql, long pos)
{
    int line = 1;
    for (long i = 0; sql[i] && i < pos - 1; i++)
        if (sql[i] == '\n')
            line++;
    return line;
}

/* Formats a failed statement's result: primary message, SQLSTATE, and the
 * line within `sql` when PostgreSQL reported a position. */
static void describe(char *out, size_t n, PGconn *c, const PGresult *r, const char *sql)
{
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg) {
        snprintf(out, n, "%s", PQerrorMessage(c));
        return;
    }
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
    int len = snprintf(out, n, "%s", msg);
    if (state && len >= 0 && (size_t)len < n)
        len += snprintf(out + len, n - (size_t)len, " (SQLSTATE %s)", state);
    if (pos && sql && len >= 0 && (size_t)len < n)
        snprintf(out + len, n - (size_t)len, " at line %d", line_of(sql, atol(pos)));
}

static int ok(const PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static void ignore_notice(void *arg, const PGresult *r)
{
    (void)arg;
    (void)r; /* "relation already exists, skipping" and the like */
}

/* Runs one statement outside the migrations; on failure fills err. */
static PGresult *step(PGconn *c, const char *what, const char *sql, char *err, size_t errlen,
                      const secrets *sc)
{
    PGresult *r = PQexec(c, sql);
    if (ok(r))
        return r;
    char why[512];
    describe(why, sizeof why, c, r, NULL);
    PQclear(r);
    fail(err, errlen, sc, "migrations: %s failed: %s", what, why);
    return NULL;
}

int cl_db_migrate(const char *database_url, char *err, size_t errlen)
{
    secrets sc;
    memset(&sc, 0, sizeof sc);
    if (!database_url || !*database_url)
        return fail(err, errlen, &sc, "migrations: database_url is not set (DATABASE_URL)");
    for (size_t i = 1; i < cl_migration_count; i++)
        if (cl_migrations[i].version <= cl_migrations[i - 1].version)
            return fail(err, errlen, &sc, "migrations: embedded migration %s is out of order",
                        cl_migrations[i].name);

    collect_secrets(database_url, &sc);
    char shown[512];
    cl_redact_url(database_url, shown, sizeof shown);
    scrub(shown, sizeof shown, &sc);

    /* Parse first: a malformed URL gets libpq's precise reason, and a well
     * formed one tells us the password exactly (decoded) for scrubbing. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(database_url, &perr);
    if (!opts) {
        fail(err, errlen, &sc, "migrations: invalid database_url %s: %s", shown,
             perr ? perr : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val)
            add_secret(&sc, o->val, strlen(o->val));
    PQconninfoFree(opts);
    scrub(shown, sizeof shown, &sc);

    /* expand_dbname: the URL's own settings override the earlier entries
     * (a connect_timeout in the URL wins over ours). */
    const char *const kw[] = { "connect_timeout", "fallback_application_name", "dbname", NULL };
    const char *const val[] = { CONNECT_TIMEOUT_S, "chatloop-migrate", database_url, NULL };
    PGconn *c = PQconnectdbParams(kw, val, 1);
    if (!c)
        return fail(err, errlen, &sc, "migrations: cannot connect to %s: out of memory", shown);
    if (PQstatus(c) != CONNECTION_OK) {
        fail(err, errlen, &sc, "migrations: cannot connect to %s: %s", shown, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PQsetNoticeReceiver(c, ignore_notice, NULL);

    PGresult *r;
    int rc = -1;
    if (!(r = step(c, "BEGIN", "BEGIN", err, errlen, &sc)))
        goto out;
    PQclear(r);
    if (!(r = step(c, "taking the migration lock", MIGRATE_LOCK_SQL, err, errlen, &sc)))
        goto rollback;
    PQclear(r);
    if (!(r = step(c, "creating schema_migrations",
                   "CREATE TABLE IF NOT EXISTS schema_migrations ("
                   " version int PRIMARY KEY,"
                   " name text NOT NULL,"
                   " applied_at timestamptz NOT NULL DEFAULT now())",
                   err, errlen, &sc)))
        goto rollback;
    PQclear(r);
    PGresult *have = step(c, "reading schema_migrations",
                          "SELECT version, name FROM schema_migrations ORDER BY version", err,
                          errlen, &sc);
    if (!have)
        goto rollback;

    for (size_t i = 0; i < cl_migration_count; i++) {
        const cl_migration *m = &cl_migrations[i];
        const char *recorded = NULL;
        for (int row = 0; row < PQntuples(have); row++)
            if (atoi(PQgetvalue(have, row, 0)) == m->version)
                recorded = PQgetvalue(have, row, 1);
        if (recorded) {
            if (strcmp(recorded, m->name) != 0) {
                fail(err, errlen, &sc,
                     "migrations: version %d is recorded as \"%s\" but this binary's is \"%s\"",
                     m->version, recorded, m->name);
                PQclear(have);
                goto rollback;
            }
            continue;
        }
        r = PQexec(c, m->sql);
        if (!ok(r)) {
            char why[512];
            describe(why, sizeof why, c, r, m->sql);
            PQclear(r);
            PQclear(have);
            fail(err, errlen, &sc, "migration %s failed: %s", m->name, why);
            goto rollback;
        }
        PQclear(r);
        char version[16];
        snprintf(version, sizeof version, "%d", m->version);
        const char *const params[2] = { version, m->name };
        r = PQexecParams(c, "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2)",
                         2, NULL, params, NULL, NULL, 0);
        if (!ok(r)) {
            char why[512];
            describe(why, sizeof why, c, r, NULL);
            PQclear(r);
            PQclear(have);
            fail(err, errlen, &sc, "migration %s: recording it failed: %s", m->name, why);
            goto rollback;
        }
        PQclear(r);
    }
    PQclear(have);
    if (!(r = step(c, "COMMIT", "COMMIT", err, errlen, &sc)))
        goto out;
    PQclear(r);
    rc = 0;
    goto out;

rollback:
    PQclear(PQexec(c, "ROLLBACK"));
out:
    PQfinish(c);
    return rc;
}
