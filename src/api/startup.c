/*
 * startup.c — what chatloop prepares once, in the supervisor, before any
 * worker exists: the JWT secret, the database schema, and the local user
 * that `auth = off` acts as. Synchronous libpq is allowed here only: no
 * loop is running yet.
 */
#include "chatloop/app.h"
#include "chatloop/auth.h"
#include "chatloop/buf.h"
#include "chatloop/conninfo.h"
#include "chatloop/db.h"
#include "chatloop/log.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static int ensure_local_user(const char *url, char *err, size_t errlen)
{
    PGconn *pg = PQconnectdb(url);
    if (PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect to the database: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return -1;
    }
    const char *p[] = {CL_LOCAL_USER_ID};
    /* '!' can never verify as a password: the local user cannot log in. */
    PGresult *res = PQexecParams(pg,
                                 "INSERT INTO users (id, email, password_hash) "
                                 "VALUES ($1::uuid, 'local@localhost', '!') ON CONFLICT DO NOTHING",
                                 1, NULL, p, NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "cannot create the local user: %s", PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(pg);
    return ok ? 0 : -1;
}

/* A short HS256 secret can be found offline from any one token (an HMAC
 * per guess, nothing to rate-limit), and with it tokens for every user.
 * With auth = off no token is ever checked, so any secret will do. */
static int check_jwt_secret(const cl_config *cfg)
{
    size_t n = strlen(cfg->jwt_secret);
    if (cfg->auth != CL_AUTH_REQUIRED || n >= CL_JWT_MIN_SECRET_LEN)
        return 0;
    CL_ERROR("configuration error: jwt_secret is %zu bytes; with auth = required it must be at "
             "least %d (a short HS256 secret falls to an offline brute force of any one token). "
             "Use e.g. `openssl rand -hex 32`, or leave it unset for a random one per start",
             n, CL_JWT_MIN_SECRET_LEN);
    return -1;
}

int cl_app_prepare(cl_config *cfg)
{
    char err[512];
    if (cfg->jwt_secret[0] && check_jwt_secret(cfg) != 0)
        return -1;
    if (cfg->jwt_secret[0] == '\0') {
        unsigned char raw[32];
        char hex[65];
        if (cl_random_bytes(raw, sizeof raw) != 0) {
            CL_ERROR("cannot generate a jwt_secret");
            return -1;
        }
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(hex + 2 * i, 3, "%02x", raw[i]);
        char cerr[CL_ERRBUF];
        if (cl_config_set(cfg, "jwt_secret", hex, "generated", cerr) != 0) {
            CL_ERROR("%s", cerr);
            return -1;
        }
        memset(hex, 0, sizeof hex);
        if (cfg->auth == CL_AUTH_REQUIRED)
            CL_WARN("jwt_secret is not set: using a random one, so tokens end with this process; "
                    "set jwt_secret (or CHATLOOP_JWT_SECRET) to keep them across restarts");
    }
    if (cfg->database_url[0] == '\0') {
        CL_WARN("no database_url: conversations, users and usage are unavailable "
                "(make run starts a local PostgreSQL)");
        return 0;
    }
    if (cl_db_migrate(cfg->database_url, err, sizeof err) != 0) {
        CL_ERROR("database migration failed: %s", err);
        return -1;
    }
    if (ensure_local_user(cfg->database_url, err, sizeof err) != 0) {
        char safe[512];
        cl_conninfo_redact(cfg->database_url, err, safe, sizeof safe);
        CL_ERROR("%s", safe);
        return -1;
    }
    /* The workers resolve the database host themselves, asynchronously,
     * before every connect (src/db/pool.c). What a previous run left in
     * the spool is stored now, before anything new is served. */
    if (cfg->spool_dir[0]) {
        static int lock_fd = -1; /* held (and inherited by the workers) for the process's life */
        if (cl_db_spool_prepare(cfg->spool_dir, cfg->database_url, cfg->drain_timeout_ms + 5000,
                                cfg->db_query_timeout_ms,
                                &lock_fd, err, sizeof err) != 0) {
            char safe[512];
            cl_conninfo_redact(cfg->database_url, err, safe, sizeof safe);
            CL_ERROR("%s", safe);
            return -1;
        }
    }
    return 0;
}
