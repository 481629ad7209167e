/*
 * password.c — PBKDF2-HMAC-SHA256 password hashes, computed on the libuv
 * threadpool (SPEC §8: a slow KDF, off the loop).
 *
 * Encoding: "pbkdf2-sha256$<iterations>$<salt>$<hash>", salt 16 bytes and
 * hash 32 bytes in standard base64 with padding (24 and 44 chars). The
 * iteration count travels with the hash, so raising kdf_iterations only
 * affects new hashes. Parsing is strict: one spelling per value, so a
 * stored hash cannot be altered into an "equivalent" one.
 *
 * A job is owned by libuv from uv_queue_work until its after-work callback,
 * which is the one place it is freed. work_cb runs on a pool thread and
 * touches only the job's own fields; cancellation is a flag that work_cb may
 * read (atomic) and after_cb honours, plus uv_cancel for a job that has not
 * started yet.
 *
 * The libuv threadpool runs nothing but these jobs in chatloop (no uv_fs_*,
 * no uv_getaddrinfo: curl resolves on its own), so two things about the
 * pool are decided here. Its threads compute at a lower priority (nice 10)
 * than the event loops, so a flood of logins cannot take the CPU from a
 * loop serving everything else. And the jobs alive are counted
 * (cl_password_jobs), so callers can bound the queue (kdf_queue_max).
 */
#include "chatloop/auth.h"
#include "auth_internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <mbedtls/base64.h>
#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>

#define PREFIX "pbkdf2-sha256$"
#define SALT_LEN 16
#define HASH_LEN 32
#define SALT_B64_LEN 24     /* 4 * ceil(16 / 3) */
#define HASH_B64_LEN 44     /* 4 * ceil(32 / 3) */
#define ITER_MIN 1000u
#define ITER_MAX 100000000u

int cl_auth__pbkdf2_sha256(const void *password, size_t password_len, const void *salt,
                           size_t salt_len, uint32_t iterations, uint8_t *out, size_t outlen)
{
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_context_t md;
    int rc = -1;
    if (!info || iterations == 0 || outlen == 0 || outlen > UINT32_MAX)
        return -1;
    mbedtls_md_init(&md);
    if (mbedtls_md_setup(&md, info, 1) != 0)    /* 1: HMAC */
        goto done;
    if (mbedtls_pkcs5_pbkdf2_hmac(&md, password, password_len, salt, salt_len, iterations,
                                  (uint32_t)outlen, out) != 0)
        goto done;
    rc = 0;
done:
    mbedtls_md_free(&md);       /* zeroizes the HMAC state (it holds key pads) */
    return rc;
}

/* ---- encoding --------------------------------------------------------------- */

static int encode(uint32_t iterations, const uint8_t salt[SALT_LEN], const uint8_t hash[HASH_LEN],
                  char out[CL_PASSWORD_HASH_MAX])
{
    unsigned char s64[SALT_B64_LEN + 1], h64[HASH_B64_LEN + 1];
    size_t slen, hlen;
    if (mbedtls_base64_encode(s64, sizeof s64, &slen, salt, SALT_LEN) != 0 ||
        mbedtls_base64_encode(h64, sizeof h64, &hlen, hash, HASH_LEN) != 0)
        return -1;
    int n = snprintf(out, CL_PASSWORD_HASH_MAX, PREFIX "%u$%s$%s", (unsigned)iterations,
                     (const char *)s64, (const char *)h64);
    cl_auth__wipe(h64, sizeof h64);
    return n > 0 && n < CL_PASSWORD_HASH_MAX ? 0 : -1;
}

/* Decodes exactly `want` bytes from the `len` chars at s. mbedTLS's decoder
 * tolerates line breaks and spaces, so the charset is checked first, and the
 * result is re-encoded and compared to catch non-zero padding bits. */
static int decode_exact(const char *s, size_t len, uint8_t *out, size_t want)
{
    unsigned char buf[64], again[64];
    size_t n, n2;
    if (len >= sizeof again)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/' || c == '='))
            return -1;
    }
    if (mbedtls_base64_decode(buf, sizeof buf, &n, (const unsigned char *)s, len) != 0 ||
        n != want)
        return -1;
    if (mbedtls_base64_encode(again, sizeof again, &n2, buf, n) != 0 || n2 != len ||
        memcmp(again, s, len) != 0)
        return -1;
    memcpy(out, buf, want);
    cl_auth__wipe(buf, sizeof buf);
    return 0;
}

static int parse(const char *enc, uint32_t *iterations, uint8_t salt[SALT_LEN],
                 uint8_t hash[HASH_LEN])
{
    if (!enc || strnlen(enc, CL_PASSWORD_HASH_MAX) >= CL_PASSWORD_HASH_MAX)
        return -1;
    if (strncmp(enc, PREFIX, sizeof PREFIX - 1) != 0)
        return -1;
    const char *p = enc + sizeof PREFIX - 1;

    /* iterations: decimal, no sign, no leading zero, within range */
    uint64_t it = 0;
    size_t digits = 0;
    if (*p < '1' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 9)
            return -1;
        it = it * 10 + (uint64_t)(*p++ - '0');
    }
    if (*p++ != '$' || it < ITER_MIN || it > ITER_MAX)
        return -1;

    const char *dollar = strchr(p, '$');
    if (!dollar || (size_t)(dollar - p) != SALT_B64_LEN ||
        decode_exact(p, SALT_B64_LEN, salt, SALT_LEN) != 0)
        return -1;
    p = dollar + 1;
    if (strlen(p) != HASH_B64_LEN || decode_exact(p, HASH_B64_LEN, hash, HASH_LEN) != 0)
        return -1;
    *iterations = (uint32_t)it;
    return 0;
}

/* ---- synchronous core ------------------------------------------------------- */

static int hash_password(const char *pw, size_t pwlen, uint32_t iterations,
                         char out[CL_PASSWORD_HASH_MAX])
{
    uint8_t salt[SALT_LEN], hash[HASH_LEN];
    int rc = -1;
    if (iterations < ITER_MIN || iterations > ITER_MAX)
        return -1;
    if (cl_random_bytes(salt, sizeof salt) == 0 &&
        cl_auth__pbkdf2_sha256(pw, pwlen, salt, sizeof salt, iterations, hash, sizeof hash) == 0 &&
        encode(iterations, salt, hash, out) == 0)
        rc = 0;
    cl_auth__wipe(hash, sizeof hash);
    return rc;
}

static int verify_password(const char *pw, size_t pwlen, const char *encoded)
{
    uint8_t salt[SALT_LEN], want[HASH_LEN], got[HASH_LEN];
    uint32_t iterations;
    int ok = 0;
    if (parse(encoded, &iterations, salt, want) != 0)
        return 0;
    if (cl_auth__pbkdf2_sha256(pw, pwlen, salt, sizeof salt, iterations, got, sizeof got) == 0)
        ok = cl_ct_equal(got, want, sizeof got);
    cl_auth__wipe(got, sizeof got);
    cl_auth__wipe(want, sizeof want);
    return ok;
}

int cl_password_hash_sync(const char *password, uint32_t iterations, char out[CL_PASSWORD_HASH_MAX])
{
    if (!password || !out)
        return -1;
    return hash_password(password, strlen(password), iterations, out);
}

int cl_password_verify_sync(const char *password, const char *encoded)
{
    if (!password || !encoded)
        return 0;
    return verify_password(password, strlen(password), encoded);
}

/* ---- threadpool jobs -------------------------------------------------------- */

typedef enum { JOB_HASH, JOB_VERIFY } job_kind;

struct cl_password_job {
    uv_work_t work;             /* work.data points back at the job */
    job_kind kind;
    atomic_int cancelled;       /* set on the loop, read by work_cb and after_cb */
    char *password;             /* copy; wiped as soon as the KDF is done */
    size_t password_len;
    uint32_t iterations;        /* JOB_HASH */
    char *encoded;              /* JOB_VERIFY: copy of the stored hash */
    int result;                 /* JOB_HASH: 0/-1; JOB_VERIFY: 1/0 */
    char out[CL_PASSWORD_HASH_MAX];
    void (*hash_done)(void *ud, const char *encoded);
    void (*verify_done)(void *ud, int ok);
    void *ud;
};

/* Jobs queued or running: counted from uv_queue_work to after_cb. Jobs
 * are created and freed on a loop thread; atomic all the same, since the
 * pool (and so the count) is one per process whatever the loops. */
static atomic_uint g_jobs;

unsigned cl_password_jobs(void)
{
    return atomic_load(&g_jobs);
}

/* Pool thread, once: nice 10 for this thread only (on Linux setpriority
 * with a thread id changes just that thread). An unprivileged process may
 * always lower its own priority; should it fail, the KDF simply runs at the
 * loop's priority, so the result is not checked. */
static void lower_thread_priority(void)
{
#ifdef __linux__
    static _Thread_local int lowered;
    if (!lowered) {
        lowered = 1;
        (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
    }
#endif
}

static void job_free(cl_password_job *job)
{
    if (!job)
        return;
    cl_auth__wipe(job->password, job->password_len);
    free(job->password);
    free(job->encoded);
    cl_auth__wipe(job->out, sizeof job->out);
    free(job);
}

/* Pool thread: no loop access, no logging. */
static void work_cb(uv_work_t *w)
{
    cl_password_job *job = w->data;
    lower_thread_priority();
    if (atomic_load(&job->cancelled)) {
        job->result = job->kind == JOB_HASH ? -1 : 0;
    } else if (job->kind == JOB_HASH) {
        job->result = hash_password(job->password, job->password_len, job->iterations, job->out);
    } else {
        job->result = verify_password(job->password, job->password_len, job->encoded);
    }
    /* The plaintext is not needed any more: do not leave it in the heap
     * while the job waits for the loop to pick up the result. */
    cl_auth__wipe(job->password, job->password_len);
}

/* Loop thread: the one place a job is freed. status is UV_ECANCELED when
 * uv_cancel removed it before it started (work_cb never ran). */
static void after_cb(uv_work_t *w, int status)
{
    cl_password_job *job = w->data;
    if (!atomic_load(&job->cancelled)) {
        if (job->kind == JOB_HASH)
            job->hash_done(job->ud, status == 0 && job->result == 0 ? job->out : NULL);
        else
            job->verify_done(job->ud, status == 0 && job->result == 1);
    }
    atomic_fetch_sub(&g_jobs, 1);
    job_free(job);
}

static cl_password_job *job_new(job_kind kind, const char *password, void *ud)
{
    cl_password_job *job = calloc(1, sizeof *job);
    if (!job)
        return NULL;
    job->kind = kind;
    atomic_init(&job->cancelled, 0);
    job->ud = ud;
    job->work.data = job;
    job->password_len = strlen(password);
    job->password = malloc(job->password_len + 1);
    if (!job->password) {
        free(job);
        return NULL;
    }
    memcpy(job->password, password, job->password_len + 1);
    return job;
}

static cl_password_job *job_queue(uv_loop_t *loop, cl_password_job *job)
{
    if (uv_queue_work(loop, &job->work, work_cb, after_cb) != 0) {
        job_free(job);
        return NULL;
    }
    atomic_fetch_add(&g_jobs, 1);
    return job;
}

cl_password_job *cl_password_hash(uv_loop_t *loop, const char *password, uint32_t iterations,
                                  void (*done)(void *ud, const char *encoded), void *ud)
{
    /* An out-of-range count is refused here rather than reported through
     * done: it is a configuration error, and the caller learns it at once. */
    if (!loop || !password || !done || iterations < ITER_MIN || iterations > ITER_MAX)
        return NULL;
    cl_password_job *job = job_new(JOB_HASH, password, ud);
    if (!job)
        return NULL;
    job->iterations = iterations;
    job->hash_done = done;
    return job_queue(loop, job);
}

cl_password_job *cl_password_verify(uv_loop_t *loop, const char *password, const char *encoded,
                                    void (*done)(void *ud, int ok), void *ud)
{
    /* A malformed encoding still goes through the pool: done must never run
     * from inside this call, and answering "no match" on the next loop turn
     * is what the caller would see anyway. */
    if (!loop || !password || !encoded || !done)
        return NULL;
    cl_password_job *job = job_new(JOB_VERIFY, password, ud);
    if (!job)
        return NULL;
    job->encoded = strndup(encoded, CL_PASSWORD_HASH_MAX);
    if (!job->encoded) {
        job_free(job);
        return NULL;
    }
    job->verify_done = done;
    return job_queue(loop, job);
}

void cl_password_cancel(cl_password_job *job)
{
    if (!job)
        return;
    atomic_store(&job->cancelled, 1);
    /* Succeeds only if no pool thread has picked the job up yet; then
     * after_cb runs with UV_ECANCELED. Otherwise (UV_EBUSY) the KDF
     * finishes on its thread and after_cb frees the job without calling
     * done. Either way the job is freed by after_cb, never here. */
    (void)uv_cancel((uv_req_t *)&job->work);
}
