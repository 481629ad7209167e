/* test_spool.c — the spool file: records read back as written (NULLs,
 * empty strings, large values), a torn tail or a flipped bit ends the file
 * at the last intact record, adoption counts what it re-queued, settling
 * every record empties the file. No database: the records are only read. */
#include "../../src/db/spool.h"
#include "test.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];

static void make_dir(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/chatloop-spool-test-XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL);
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK_EQ_INT(system(cmd), 0);
}

typedef struct seen {
    int n;
    char sql[8][64];
    int nparams[8];
    char p0[8][64];
    int p1_null[8];
} seen;

static int collect(void *ud, const char *sql, int nparams, const char *const *params)
{
    seen *s = ud;
    if (s->n < 8) {
        snprintf(s->sql[s->n], sizeof s->sql[0], "%s", sql);
        s->nparams[s->n] = nparams;
        snprintf(s->p0[s->n], sizeof s->p0[0], "%s", nparams > 0 && params[0] ? params[0] : "-");
        s->p1_null[s->n] = nparams > 1 && params[1] == NULL;
    }
    s->n++;
    return 0;
}

static char *path_of(int id)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/worker-%d.spool", g_dir, id);
    return p;
}

static off_t size_of(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

static void test_round_trip_and_adoption(void)
{
    make_dir();
    char err[256];
    cl_spool *s = cl_spool_open(g_dir, 0, NULL, NULL, err, sizeof err);
    CHECK(s != NULL);
    const char *a[] = {"first", NULL, ""};
    const char *b[] = {"second"};
    CHECK_EQ_INT(cl_spool_append(s, "INSERT a", 3, a), 0);
    CHECK_EQ_INT(cl_spool_append(s, "INSERT b", 1, b), 0);
    CHECK(cl_spool_unsynced(s) > 0);
    CHECK_EQ_INT(cl_spool_sync(s), 0);
    CHECK_EQ_INT(cl_spool_unsynced(s), 0);
    CHECK_EQ_INT(cl_spool_outstanding(s), 2);
    cl_spool_close(s); /* the process dies with both unsettled */

    seen got = {0};
    s = cl_spool_open(g_dir, 0, collect, &got, err, sizeof err);
    CHECK(s != NULL);
    CHECK_EQ_INT(got.n, 2);
    CHECK_EQ_STR(got.sql[0], "INSERT a");
    CHECK_EQ_INT(got.nparams[0], 3);
    CHECK_EQ_STR(got.p0[0], "first");
    CHECK(got.p1_null[0]);
    CHECK_EQ_STR(got.sql[1], "INSERT b");
    CHECK_EQ_INT(cl_spool_outstanding(s), 2);
    /* a new record goes after the adopted ones */
    CHECK_EQ_INT(cl_spool_append(s, "INSERT c", 1, b), 0);
    CHECK_EQ_INT(cl_spool_sync(s), 0);
    CHECK_EQ_INT(cl_spool_outstanding(s), 3);
    cl_spool_settled(s, 2);
    CHECK(size_of(path_of(0)) > 0);
    cl_spool_settled(s, 1);
    CHECK_EQ_INT(size_of(path_of(0)), 0); /* all stored: emptied */
    cl_spool_close(s);
    remove_dir();
}

static void test_torn_tail_and_corruption(void)
{
    make_dir();
    char err[256];
    cl_spool *s = cl_spool_open(g_dir, 1, NULL, NULL, err, sizeof err);
    const char *p[] = {"x"};
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(cl_spool_append(s, "INSERT t", 1, p), 0);
    CHECK_EQ_INT(cl_spool_sync(s), 0);
    cl_spool_close(s);
    off_t full = size_of(path_of(1));
    /* every cut inside the last record leaves the first two */
    for (off_t cut = full - 1; cut > full - 20; cut--) {
        CHECK_EQ_INT(truncate(path_of(1), cut), 0);
        seen got = {0};
        uint64_t good = 0;
        long n = cl_spool_read_file(path_of(1), collect, &got, &good, err, sizeof err);
        CHECK_EQ_INT(n, 2);
        CHECK(good < (uint64_t)cut);
    }
    /* adopting cuts the tail off the file, and appends start clean */
    seen got = {0};
    s = cl_spool_open(g_dir, 1, collect, &got, err, sizeof err);
    CHECK_EQ_INT(got.n, 2);
    CHECK_EQ_INT(cl_spool_append(s, "INSERT u", 1, p), 0);
    CHECK_EQ_INT(cl_spool_sync(s), 0);
    cl_spool_close(s);
    seen again = {0};
    uint64_t good = 0;
    CHECK_EQ_INT(cl_spool_read_file(path_of(1), collect, &again, &good, err, sizeof err), 3);
    CHECK_EQ_STR(again.sql[2], "INSERT u");
    /* a flipped bit in the second record: only the first survives */
    int fd = open(path_of(1), O_RDWR);
    unsigned char byte;
    off_t at = (off_t)(sizeof CL_SPOOL_FILE_MAGIC - 1) + 12 + 30; /* inside record 1 */
    CHECK_EQ_INT(pread(fd, &byte, 1, at), 1);
    byte ^= 0x01;
    CHECK_EQ_INT(pwrite(fd, &byte, 1, at), 1);
    close(fd);
    seen flipped = {0};
    CHECK_EQ_INT(cl_spool_read_file(path_of(1), collect, &flipped, &good, err, sizeof err), 1);
    remove_dir();
}

static void test_not_a_spool(void)
{
    make_dir();
    char err[256];
    FILE *f = fopen(path_of(2), "w");
    fputs("hello, I am not a spool file\n", f);
    fclose(f);
    seen got = {0};
    uint64_t good = 0;
    CHECK_EQ_INT(cl_spool_read_file(path_of(2), collect, &got, &good, err, sizeof err), 0);
    CHECK_EQ_INT(got.n, 0);
    CHECK_EQ_INT(cl_spool_read_file("/nonexistent/x.spool", collect, &got, &good, err, sizeof err), -1);
    CHECK_CONTAINS(err, "cannot open");
    remove_dir();
}

CL_TEST_MAIN(test_round_trip_and_adoption, test_torn_tail_and_corruption, test_not_a_spool)
