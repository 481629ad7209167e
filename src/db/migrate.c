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
 * Secrets: every message, the URL and whatever libpq wrote included, goes
 * through cl_conninfo_redact (libpq quotes pieces of a malformed conninfo
 * string back, and those may be the password).
 */
#include "chatloop/config.h"
#include "chatloop/conninfo.h"
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

/* The connection string whose password fail() hides in every message. */
typedef struct secrets {
    const char *conninfo;
} secrets;

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
    cl_conninfo_redact(sc->conninfo, full, err, errlen);
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

    sc.conninfo = database_url;
    char shown[512];
    cl_redact_url(database_url, shown, sizeof shown);

    /* Parse first: a malformed URL gets libpq's precise reason. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(database_url, &perr);
    if (!opts) {
        fail(err, errlen, &sc, "migrations: invalid database_url %s: %s", shown,
             perr ? perr : "out of memory");
        PQfreemem(perr);
        return -1;
    }
    PQconninfoFree(opts);

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
