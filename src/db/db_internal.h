/*
 * db_internal.h — what pool.c and spool_replay.c share (internal to src/db).
 */
#ifndef CHATLOOP_DB_INTERNAL_H
#define CHATLOOP_DB_INTERNAL_H

/** 1 for SQLSTATEs a durable write survives by being sent again: out of
 *  time (statement_timeout, a lock), a serialization or deadlock loss, the
 *  server shutting down, the connection failing. */
int cl_db__transient_sqlstate(const char *sqlstate);

#endif
