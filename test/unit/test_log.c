/* The log buffer's wake hook: a line that starts waiting in an empty buffer
 * asks the loop's owner once for a flush; after the flush the next line
 * asks again; unbuffered lines never ask. (The e2e test in process.test.mjs
 * checks the worker's side: the "listening" line with no I/O at all.) */
#include "chatloop/log.h"
#include "test.h"

#include <unistd.h>

static int g_wakes;
static void *g_ud;

static void wake(void *ud)
{
    g_wakes++;
    g_ud = ud;
}

static void test_wake_once_per_flush(void)
{
    /* keep the lines out of the test's output */
    int saved = dup(STDERR_FILENO);
    FILE *f = tmpfile();
    dup2(fileno(f), STDERR_FILENO);

    int token;
    cl_log_setup(CL_LOG_INFO, CL_LOG_TEXT, "test");
    cl_log_set_wake(wake, &token);
    CL_INFO("unbuffered");
    CHECK_EQ_INT(g_wakes, 0); /* written at once: nothing waits */
    cl_log_set_buffered(1);
    CL_INFO("one");
    CHECK_EQ_INT(g_wakes, 1);
    CHECK(g_ud == &token);
    CL_INFO("two");
    CL_DEBUG("below the level: not a line");
    CHECK_EQ_INT(g_wakes, 1); /* the flush already asked for covers it */
    cl_log_flush();
    CL_INFO("three");
    CHECK_EQ_INT(g_wakes, 2);
    cl_log_set_wake(NULL, NULL);
    cl_log_flush();
    CL_INFO("four");
    CHECK_EQ_INT(g_wakes, 2);
    cl_log_set_buffered(0);

    dup2(saved, STDERR_FILENO);
    close(saved);
    char out[512] = "";
    lseek(fileno(f), 0, SEEK_SET);
    ssize_t n = read(fileno(f), out, sizeof out - 1);
    out[n > 0 ? n : 0] = '\0';
    fclose(f);
    CHECK_CONTAINS(out, "unbuffered\n");
    CHECK_CONTAINS(out, "one\n");
    CHECK_CONTAINS(out, "four\n"); /* set_buffered(0) flushed it */
}

CL_TEST_MAIN(test_wake_once_per_flush)
