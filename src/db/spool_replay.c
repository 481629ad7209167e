/*
 * spool_replay.c — startup side of the spool (see spool.h): in the
 * supervisor, before any worker exists, take spool_dir for this instance
 * and store every record a previous run left in it. Synchronous libpq, as
 * the migrations: nothing is being served yet.
 */
#include "chatloop/db.h"
#include "chatloop/log.h"
#include "db_internal.h"
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* mkdir -p for the spool directory (0700: it holds chat text). */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path) {
        snprintf(err, errlen, "spool_dir = \"%s\": empty or too long", dir);
        return -1;
    }
    memcpy(path, dir, n + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "spool_dir: cannot create %s: %s", path, strerror(errno));
            return -1;
        }
        *p = '/';
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "spool_dir: cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    if (access(path, R_OK | W_OK | X_OK) != 0) {
        snprintf(err, errlen, "spool_dir = \"%s\": %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* One instance per spool_dir: two would adopt each other's files. The lock
 * is held by the supervisor and inherited by the workers; after a restart
 * the previous instance's workers may still be draining, so wait for them. */
static int take_lock(const char *dir, uint64_t wait_ms, int *fd_out, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "spool_dir: cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int said = 0;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t waited = (uint64_t)(now.tv_sec - t0.tv_sec) * 1000 +
                          (uint64_t)((now.tv_nsec - t0.tv_nsec) / 1000000);
        if (errno != EWOULDBLOCK || waited >= wait_ms) {
            snprintf(err, errlen,
                     "spool_dir \"%s\" is in use by another running chatloop (give each instance "
                     "its own spool_dir)", dir);
            close(fd);
            return -1;
        }
        if (!said++)
            CL_INFO("spool_dir %s is locked: waiting for the previous chatloop to finish", dir);
        struct timespec pause = {0, 100 * 1000000};
        nanosleep(&pause, NULL);
    }
    *fd_out = fd;
    return 0;
}

typedef struct replay {
    PGconn *pg;
    long stored, rejected;
    int lost;                   /* the connection broke or the write timed out: stop, keep the file */
} replay;

static int replay_record(void *ud, const char *sql, int nparams, const char *const *params)
{
    replay *rp = ud;
    PGresult *r = PQexecParams(rp->pg, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        rp->stored++;
    } else if (PQstatus(rp->pg) != CONNECTION_OK ||
               cl_db__transient_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE))) {
        /* not the record's fault (a lock held past statement_timeout, the
         * server going away): keep it for the next start */
        rp->lost = 1;
    } else {
        const char *ss = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        CL_ERROR("spool: a write was refused by the database (SQLSTATE %s): %s",
                 ss ? ss : "?", PQresultErrorMessage(r));
        rp->rejected++;
    }
    PQclear(r);
    return rp->lost;
}

static int is_spool_file(const char *name)
{
    size_t n = strlen(name);
    return strncmp(name, "worker-", 7) == 0 && n > 13 && strcmp(name + n - 6, ".spool") == 0;
}

int cl_db_spool_prepare(const char *dir, const char *database_url, uint64_t lock_wait_ms,
                        uint64_t query_timeout_ms, int *lock_fd, char *err, size_t errlen)
{
    *lock_fd = -1;
    if (make_dirs(dir, err, errlen) != 0 || take_lock(dir, lock_wait_ms, lock_fd, err, errlen) != 0)
        return -1;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "spool_dir: cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    PGconn *pg = NULL;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!is_spool_file(e->d_name))
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || st.st_size == 0)
            continue;
        if (!pg) {
            /* every replayed write has the deadline the workers' have */
            char opt[64];
            snprintf(opt, sizeof opt, "-c statement_timeout=%llu",
                     (unsigned long long)query_timeout_ms);
            const char *const kw[] = {"connect_timeout", "fallback_application_name", "options",
                                      "dbname", NULL};
            const char *const val[] = {"10", "chatloop-spool", opt, database_url, NULL};
            pg = PQconnectdbParams(kw, val, 1);
            if (!pg || PQstatus(pg) != CONNECTION_OK) {
                snprintf(err, errlen, "spool: cannot connect to replay %s", path);
                rc = -1;
                break;
            }
        }
        replay rp = {pg, 0, 0, 0};
        uint64_t good = 0;
        long n = cl_spool_read_file(path, replay_record, &rp, &good, err, errlen);
        if (n < 0 || rp.lost) {
            if (rp.lost)
                snprintf(err, errlen,
                         "spool: the database did not store the writes of %s (connection lost, "
                         "or db_query_timeout passed); they are kept for the next start",
                         path);
            rc = -1;
            break;
        }
        if (rp.rejected) {
            char kept[4500];
            snprintf(kept, sizeof kept, "%s.rejected-%lld", path, (long long)time(NULL));
            if (rename(path, kept) != 0)
                unlink(path);
            CL_ERROR("spool: %ld write(s) from %s refused by the database; kept in %s",
                     rp.rejected, e->d_name, kept);
        } else {
            unlink(path);
        }
        CL_INFO("spool: stored %ld write(s) left in %s by a previous run", rp.stored, e->d_name);
    }
    closedir(d);
    PQfinish(pg);
    if (rc != 0) {
        close(*lock_fd);
        *lock_fd = -1;
    }
    return rc;
}
