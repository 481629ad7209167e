#include "chatloop/log.h"
#include "chatloop/jsonw.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_FLUSH_AT (64 * 1024)

static cl_log_level g_level = CL_LOG_INFO;
static cl_log_format g_format = CL_LOG_TEXT;
static char g_who[32] = "main";
static int g_buffered;
static void (*g_wake)(void *ud);
static void *g_wake_ud;
static int g_wake_sent;             /* the hook ran since the last flush */
static cl_buf g_out = {NULL, 0, 0, (size_t)-1};

static const char *level_name(cl_log_level l)
{
    switch (l) {
    case CL_LOG_DEBUG: return "debug";
    case CL_LOG_INFO: return "info";
    case CL_LOG_WARN: return "warn";
    default: return "error";
    }
}

void cl_log_setup(cl_log_level level, cl_log_format format, const char *who)
{
    g_level = level;
    g_format = format;
    snprintf(g_who, sizeof g_who, "%s", who);
}

void cl_log_set_buffered(int on)
{
    g_buffered = on;
    if (!on)
        cl_log_flush();
}

void cl_log_set_wake(void (*wake)(void *ud), void *ud)
{
    g_wake = wake;
    g_wake_ud = ud;
    g_wake_sent = 0;
}

int cl_log_enabled(cl_log_level level) { return level >= g_level; }
cl_log_format cl_log_get_format(void) { return g_format; }

void cl_log_flush(void)
{
    size_t off = 0;
    while (off < g_out.len) {
        ssize_t n = write(STDERR_FILENO, g_out.data + off, g_out.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* nowhere to report a failing stderr; drop the lines */
        }
        off += (size_t)n;
    }
    g_out.len = 0;
    g_wake_sent = 0;
    if (g_out.cap > 4 * LOG_FLUSH_AT)
        cl_buf_release(&g_out);
}

/* The timestamp is cached per second: a busy worker logs many lines a second
 * and formatting the date each time shows in profiles. */
static void append_ts(cl_buf *b)
{
    static time_t last_sec = -1;
    static char last[32];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(last, sizeof last, "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = tv.tv_sec;
    }
    cl_buf_printf(b, "%s.%03dZ", last, (int)(tv.tv_usec / 1000));
}

cl_buf *cl_log_begin(cl_log_level level)
{
    cl_buf *b = &g_out;
    if (g_format == CL_LOG_JSON) {
        cl_buf_append_str(b, "{\"ts\":\"");
        append_ts(b);
        cl_buf_printf(b, "\",\"level\":\"%s\",\"who\":", level_name(level));
        cl_jsonw_cstr(b, g_who);
    } else {
        append_ts(b);
        cl_buf_printf(b, " %-5s %s ", level_name(level), g_who);
    }
    return b;
}

void cl_log_end(void)
{
    if (g_format == CL_LOG_JSON)
        cl_buf_append_char(&g_out, '}');
    cl_buf_append_char(&g_out, '\n');
    if (!g_buffered || g_out.len >= LOG_FLUSH_AT) {
        cl_log_flush();
    } else if (g_wake && !g_wake_sent) {
        g_wake_sent = 1;
        g_wake(g_wake_ud);
    }
}

void cl_log(cl_log_level level, const char *fmt, ...)
{
    if (level < g_level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    cl_buf *b = cl_log_begin(level);
    if (g_format == CL_LOG_JSON) {
        cl_buf_append_str(b, ",\"msg\":");
        cl_jsonw_str(b, msg, len);
    } else {
        cl_buf_append(b, msg, len);
    }
    cl_log_end();
}

void cl_iso_now(char out[40])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ldZ", (long)tv.tv_usec);
}
