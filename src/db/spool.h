/*
 * spool.h — the on-disk queue of durable writes (internal to src/db).
 *
 * While the database is unavailable (or too slow to confirm a turn's
 * answer), a durable write is appended here and fdatasync'ed before the
 * client is told its turn is stored; the write stays in the pool's memory
 * queue too and is sent as soon as a connection is back. The file only
 * matters when the process dies first: the next process of the same worker
 * slot adopts it (cl_spool_open), and the supervisor replays every file at
 * startup (cl_db_spool_replay), before any worker exists. Every spooled
 * statement is idempotent (client-made ids, ON CONFLICT DO NOTHING, unique
 * idempotency keys), so replaying a record that had reached the database
 * stores nothing twice.
 *
 * File format (one file per worker slot, "worker-<id>.spool"):
 *   "CLSPOOL1\n", then records:
 *   u32 magic 'CSPR' | u32 payload length | u32 CRC-32 of the payload | payload
 *   payload: u32 nparams | u32 sql length | sql | per param: u32 length
 *            (0xffffffff = NULL) | bytes
 * All integers little-endian. A record cut short by a crash (or whose CRC
 * does not match) ends the file: it was never acknowledged, because the
 * acknowledgement waits for the fdatasync that would have completed it.
 *
 * A worker's file is emptied (ftruncate) whenever every record in it has
 * been settled by the database, so it stays small outside outages.
 */
#ifndef CHATLOOP_DB_SPOOL_H
#define CHATLOOP_DB_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/buf.h"

typedef struct cl_spool cl_spool;

/** One record read back: valid during the callback only. */
typedef int (*cl_spool_record_cb)(void *ud, const char *sql, int nparams,
                                  const char *const *params);

/**
 * Opens (creating it if needed) this worker slot's file in `dir`, reads the
 * records a previous process of the slot left, hands each to `cb` (which
 * re-queues it) and cuts a torn tail off. Returns NULL with err set.
 */
cl_spool *cl_spool_open(const char *dir, int worker_id, cl_spool_record_cb cb, void *ud,
                        char *err, size_t errlen);
void cl_spool_close(cl_spool *s);

/** Buffers one record; nothing is durable before cl_spool_sync. 0 or -1. */
int cl_spool_append(cl_spool *s, const char *sql, int nparams, const char *const *params);
/** Writes what was appended and fdatasyncs. 0, or -1 (then nothing appended
 *  since the last successful sync may be counted on). */
int cl_spool_sync(cl_spool *s);
/** Bytes appended and not yet synced. */
size_t cl_spool_unsynced(const cl_spool *s);
/** `n` records (appended or adopted) have been settled by the database;
 *  when none is left the file is emptied. */
void cl_spool_settled(cl_spool *s, int n);
/** Records in the file not yet settled. */
int cl_spool_outstanding(const cl_spool *s);

/**
 * Reads every record of the file at `path` in order. Returns the number of
 * records, or -1 with err set when the file cannot be read; *good_bytes
 * gets the length of the intact prefix (a torn tail starts there).
 * A callback returning non-zero stops the read (the count so far is returned).
 */
long cl_spool_read_file(const char *path, cl_spool_record_cb cb, void *ud, uint64_t *good_bytes,
                        char *err, size_t errlen);


#define CL_SPOOL_FILE_MAGIC "CLSPOOL1\n"

#endif
