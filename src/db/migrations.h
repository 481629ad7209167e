/**
 * migrations.h — the schema migrations embedded in the binary (internal to
 * src/db). cl_db_migrate (migrate.c) applies them in array order.
 *
 * Rules for adding one: append it with the next version; never edit or
 * reorder one that has shipped (a database records each version as applied
 * and will not run it again); `sql` is one or more statements run inside the
 * migration transaction, so it must not contain BEGIN/COMMIT or statements
 * that cannot run in a transaction block (CREATE INDEX CONCURRENTLY, VACUUM).
 */
#ifndef CHATLOOP_DB_MIGRATIONS_H
#define CHATLOOP_DB_MIGRATIONS_H

#include <stddef.h>

typedef struct cl_migration {
    int version;        /* 1, 2, ... strictly increasing */
    const char *name;   /* "0001_initial" */
    const char *sql;
} cl_migration;

extern const cl_migration cl_migrations[];
extern const size_t cl_migration_count;

#endif
