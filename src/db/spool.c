/*
 * spool.c — the on-disk queue of durable writes (see spool.h).
 *
 * The file is written with plain write(2) + fdatasync(2) on the loop. That
 * is a deliberate exception to "nothing blocks the loop": it happens only
 * while the database is unavailable or not confirming writes, at most once
 * per loop iteration for every record gathered in it, and the alternative —
 * the libuv threadpool — is reserved for the password KDF, where a login
 * flood would leave acknowledgements waiting behind it.
 */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECORD_MAGIC 0x52505343u /* "CSPR" little-endian */
#define HEADER_LEN (sizeof CL_SPOOL_FILE_MAGIC - 1)
/* A record bigger than this is not one we wrote: the file is damaged. */
#define RECORD_MAX (64u * 1024 * 1024)
#define NULL_LEN 0xffffffffu

struct cl_spool {
    int fd;
    char *path;
    uint64_t size;          /* bytes in the file */
    cl_buf pending;         /* appended, not yet written */
    int outstanding;        /* records in the file (or pending) not settled */
    int pending_records;
};

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: the
 * spool is written only during outages, so speed does not matter here. */
static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int append_u32(cl_buf *b, uint32_t v)
{
    unsigned char t[4];
    put_u32(t, v);
    return cl_buf_append(b, t, 4);
}

/* Serialises one record (header included) onto b, as the file holds it. */
static int encode_record(cl_buf *b, const char *sql, int nparams, const char *const *params)
{
    size_t start = b->len;
    int rc = append_u32(b, RECORD_MAGIC) | append_u32(b, 0) | append_u32(b, 0);
    size_t payload = b->len;
    size_t sl = strlen(sql);
    rc |= append_u32(b, (uint32_t)nparams) | append_u32(b, (uint32_t)sl);
    rc |= cl_buf_append(b, sql, sl);
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) {
            rc |= append_u32(b, NULL_LEN);
            continue;
        }
        size_t pl = strlen(params[i]);
        rc |= append_u32(b, (uint32_t)pl) | cl_buf_append(b, params[i], pl);
    }
    if (rc || b->len - payload > RECORD_MAX) {
        b->len = start;
        return -1;
    }
    unsigned char *h = (unsigned char *)b->data + start;
    put_u32(h + 4, (uint32_t)(b->len - payload));
    put_u32(h + 8, crc32_ieee((const unsigned char *)b->data + payload, b->len - payload));
    return 0;
}

/* Decodes one payload and hands it to cb. 1 = handed over, 0 = malformed,
 * or the callback's non-zero value negated (stop). */
static int decode_payload(const unsigned char *p, size_t n, cl_spool_record_cb cb, void *ud)
{
    if (n < 8)
        return 0;
    uint32_t np = get_u32(p), sl = get_u32(p + 4);
    if (np > 65535 || sl > n - 8)
        return 0;
    size_t off = 8;
    /* the SQL and every parameter are copied out NUL-terminated */
    char **texts = calloc((size_t)np + 1, sizeof *texts);
    if (!texts)
        return 0;
    int ok = 1;
    texts[np] = strndup((const char *)p + off, sl);
    ok = texts[np] != NULL;
    off += sl;
    for (uint32_t i = 0; ok && i < np; i++) {
        if (n - off < 4) {
            ok = 0;
            break;
        }
        uint32_t len = get_u32(p + off);
        off += 4;
        if (len == NULL_LEN)
            continue;
        if (len > n - off || memchr(p + off, 0, len)) {
            ok = 0;
            break;
        }
        texts[i] = strndup((const char *)p + off, len);
        ok = texts[i] != NULL;
        off += len;
    }
    int rc = 0;
    if (ok && off == n) {
        int stop = cb ? cb(ud, texts[np], (int)np, (const char *const *)texts) : 0;
        rc = stop ? -1 : 1;
    }
    for (uint32_t i = 0; i <= np; i++)
        free(texts[i]);
    free(texts);
    return rc;
}

long cl_spool_read_file(const char *path, cl_spool_record_cb cb, void *ud, uint64_t *good_bytes,
                        char *err, size_t errlen)
{
    *good_bytes = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    long count = 0;
    unsigned char hdr[12];
    char magic[HEADER_LEN];
    if (fread(magic, 1, HEADER_LEN, f) != HEADER_LEN ||
        memcmp(magic, CL_SPOOL_FILE_MAGIC, HEADER_LEN) != 0) {
        fclose(f);
        return 0; /* empty, or torn before the header: nothing in it */
    }
    uint64_t good = HEADER_LEN;
    unsigned char *payload = NULL;
    while (fread(hdr, 1, sizeof hdr, f) == sizeof hdr) {
        uint32_t len = get_u32(hdr + 4);
        if (get_u32(hdr) != RECORD_MAGIC || len > RECORD_MAX)
            break;
        unsigned char *p = realloc(payload, len ? len : 1);
        if (!p)
            break;
        payload = p;
        if (fread(payload, 1, len, f) != len || crc32_ieee(payload, len) != get_u32(hdr + 8))
            break;
        int rc = decode_payload(payload, len, cb, ud);
        if (rc == 0)
            break;
        good += sizeof hdr + len;
        count++;
        if (rc < 0)
            break;
    }
    free(payload);
    fclose(f);
    *good_bytes = good;
    return count;
}

typedef struct adopt_ctx {
    cl_spool_record_cb cb;
    void *ud;
    long n;
    int refused;        /* the callback could not take a record */
} adopt_ctx;

static int count_adopted(void *ud, const char *sql, int nparams, const char *const *params)
{
    adopt_ctx *a = ud;
    if (a->cb && a->cb(a->ud, sql, nparams, params) != 0) {
        a->refused = 1;
        return 1;
    }
    a->n++;
    return 0;
}

cl_spool *cl_spool_open(const char *dir, int worker_id, cl_spool_record_cb cb, void *ud,
                        char *err, size_t errlen)
{
    cl_spool *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->fd = -1;
    cl_buf_init(&s->pending, 0);
    size_t pl = strlen(dir) + 32;
    s->path = malloc(pl);
    if (!s->path) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    snprintf(s->path, pl, "%s/worker-%d.spool", dir, worker_id);
    struct stat st;
    if (stat(s->path, &st) == 0 && st.st_size > 0) {
        uint64_t good = 0;
        adopt_ctx a = {cb, ud, 0, 0};
        if (cl_spool_read_file(s->path, count_adopted, &a, &good, err, errlen) < 0)
            goto fail;
        if (a.refused) {
            /* never cut records nobody took: the next start tries again */
            snprintf(err, errlen, "cannot queue the records of %s again (out of memory)", s->path);
            goto fail;
        }
        s->outstanding = (int)a.n;
        s->size = good;
        if ((uint64_t)st.st_size != good && truncate(s->path, (off_t)good) != 0) {
            snprintf(err, errlen, "cannot cut the torn tail of %s: %s", s->path, strerror(errno));
            goto fail;
        }
    }
    s->fd = open(s->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", s->path, strerror(errno));
        goto fail;
    }
    if (s->outstanding == 0 && s->size == 0 && ftruncate(s->fd, 0) != 0) {
        snprintf(err, errlen, "cannot empty %s: %s", s->path, strerror(errno));
        goto fail;
    }
    return s;
fail:
    cl_spool_close(s);
    return NULL;
}

void cl_spool_close(cl_spool *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    cl_buf_release(&s->pending);
    free(s->path);
    free(s);
}

int cl_spool_append(cl_spool *s, const char *sql, int nparams, const char *const *params)
{
    if (s->size == 0 && s->pending.len == 0 &&
        cl_buf_append(&s->pending, CL_SPOOL_FILE_MAGIC, HEADER_LEN) != 0)
        return -1;
    if (encode_record(&s->pending, sql, nparams, params) != 0)
        return -1;
    s->pending_records++;
    s->outstanding++;
    return 0;
}

size_t cl_spool_unsynced(const cl_spool *s)
{
    return s->pending.len;
}

int cl_spool_sync(cl_spool *s)
{
    size_t off = 0;
    while (off < s->pending.len) {
        ssize_t n = write(s->fd, s->pending.data + off, s->pending.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        off += (size_t)n;
    }
    if (s->pending.len && fdatasync(s->fd) != 0)
        goto fail;
    s->size += s->pending.len;
    cl_buf_reset(&s->pending);
    s->pending_records = 0;
    if (s->outstanding == 0)
        cl_spool_settled(s, 0); /* all of it reached the database meanwhile */
    return 0;
fail:
    /* What was written of it is a torn tail for any reader; cut it so the
     * records appended later start on a clean boundary. */
    if (ftruncate(s->fd, (off_t)s->size) != 0) {
        /* the reader stops at the damage; later records would be lost
         * behind it, which is why their acknowledgement fails too */
    }
    s->outstanding -= s->pending_records;
    s->pending_records = 0;
    cl_buf_reset(&s->pending);
    return -1;
}

void cl_spool_settled(cl_spool *s, int n)
{
    s->outstanding -= n;
    if (s->outstanding < 0)
        s->outstanding = 0;
    if (s->outstanding == 0 && s->pending.len == 0 && s->size > 0) {
        /* Every record is in the database: the file starts over. */
        if (ftruncate(s->fd, 0) == 0)
            s->size = 0;
    }
}

int cl_spool_outstanding(const cl_spool *s)
{
    return s->outstanding;
}
