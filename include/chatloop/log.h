/**
 * log.h — leveled logging, text or JSON, one line per event.
 *
 * Lines are gathered in a per-process buffer and written to stderr with one
 * write(2) per loop iteration (cl_log_flush from the worker's check handle),
 * or at once when no loop is running (startup, supervisor) or the buffer
 * passes 64 KiB. A line buffered while the loop has nothing else to do (the
 * "listening" line, one logged from a timer) calls the wake hook, so the
 * iteration reaches the flush instead of waiting in poll for unrelated I/O. Messages must never contain secrets: callers log key names,
 * never values of api_key, jwt_secret, passwords or tokens.
 */
#ifndef CHATLOOP_LOG_H
#define CHATLOOP_LOG_H

#include "chatloop/config.h"
#include "chatloop/buf.h"

void cl_log_setup(cl_log_level level, cl_log_format format, const char *who);
/** When on, lines wait in the buffer until cl_log_flush (worker loops). */
void cl_log_set_buffered(int on);
/** While lines are buffered: `wake(ud)` runs when a line starts waiting in
 *  an empty buffer (once until the next flush). The loop's owner installs
 *  it (the worker: cl_worker_wake_flush); base/ knows nothing of loops.
 *  NULL removes it. */
void cl_log_set_wake(void (*wake)(void *ud), void *ud);
int cl_log_enabled(cl_log_level level);
void cl_log(cl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cl_log_flush(void);
cl_log_format cl_log_get_format(void);

/** The current UTC time as ISO 8601 with microseconds ("...T03:15:33.441055Z"). */
void cl_iso_now(char out[40]);

/**
 * For structured lines (the access log): cl_log_begin returns the buffer with
 * the line's prefix written ("<ts> INFO who " in text, `{"ts":..,"level":..,
 * "who":..` in JSON); the caller appends fields and calls cl_log_end, which
 * closes the JSON object when needed and adds the newline.
 */
cl_buf *cl_log_begin(cl_log_level level);
void cl_log_end(void);

#define CL_DEBUG(...) do { if (cl_log_enabled(CL_LOG_DEBUG)) cl_log(CL_LOG_DEBUG, __VA_ARGS__); } while (0)
#define CL_INFO(...) cl_log(CL_LOG_INFO, __VA_ARGS__)
#define CL_WARN(...) cl_log(CL_LOG_WARN, __VA_ARGS__)
#define CL_ERROR(...) cl_log(CL_LOG_ERROR, __VA_ARGS__)

#endif
