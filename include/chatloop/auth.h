/**
 * auth.h — passwords and session tokens (SPEC §8).
 *
 * Passwords: PBKDF2-HMAC-SHA256 (mbedTLS) with a random 16-byte salt and a
 * configurable iteration count (kdf_iterations, default 600,000 — OWASP's
 * figure for PBKDF2-SHA256), computed on the libuv threadpool: it costs a
 * few hundred milliseconds of CPU on purpose and must never run on the loop.
 * Stored as "pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>", so
 * a hash keeps verifying after the configured count changes.
 *
 * Tokens: JWT HS256 signed with jwt_secret (mbedTLS HMAC). Verification
 * refuses any header alg but "HS256" (so "none" and RS256 confusion fail),
 * compares signatures in constant time, and checks exp, nbf and iat.
 * jwt_secret must be at least CL_JWT_MIN_SECRET_LEN bytes (startup refuses
 * a shorter one with auth = required).
 *
 * Nothing here logs; callers never log passwords, hashes or tokens.
 */
#ifndef CHATLOOP_AUTH_H
#define CHATLOOP_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- passwords ------------------------------------------------------------ */

#define CL_PASSWORD_HASH_MAX 160

/**
 * Hashes `password` on the threadpool; `done` runs on the loop with the
 * encoded hash (NUL-terminated) or NULL on failure. The password is copied
 * (and wiped after use); the caller's buffer may be freed at once.
 * Returns the job — a handle for cl_password_cancel, valid until done has
 * run or cancel was called — or NULL if the work could not be queued or
 * iterations is outside 1000..100000000 (done never runs). done never runs
 * from inside this call. cl_password_cancel (before done ran) stops done
 * from running.
 */
typedef struct cl_password_job cl_password_job;
cl_password_job *cl_password_hash(uv_loop_t *loop, const char *password, uint32_t iterations,
                                  void (*done)(void *ud, const char *encoded), void *ud);

/**
 * Verifies `password` against `encoded` on the threadpool; `done` gets 1
 * (match), 0 (no match, or a malformed encoding). Constant-time compare.
 * Both strings are copied. Returns the job or NULL, as cl_password_hash.
 */
cl_password_job *cl_password_verify(uv_loop_t *loop, const char *password, const char *encoded,
                                    void (*done)(void *ud, int ok), void *ud);

/** The job's callback will not run (the hashing itself may still finish on
 *  its thread; its memory is released then). */
void cl_password_cancel(cl_password_job *job);

/** Jobs of this process queued or running on the threadpool, cancelled
 *  ones included until their KDF has stopped: what a bound on the queue
 *  (kdf_queue_max) counts. The pool's threads run at nice 10, below the
 *  event loop. */
unsigned cl_password_jobs(void);

/** Synchronous versions, for tests and startup only (never on the loop).
 *  hash: 0 or -1 (iterations outside 1000..100000000, no randomness);
 *  verify: 1 match, 0 otherwise. */
int cl_password_hash_sync(const char *password, uint32_t iterations, char out[CL_PASSWORD_HASH_MAX]);
int cl_password_verify_sync(const char *password, const char *encoded);

/* ---- JWT HS256 -------------------------------------------------------------- */

/** Longer tokens are refused as CL_JWT_MALFORMED before any decoding. */
#define CL_JWT_MAX_LEN 8192

/** The shortest jwt_secret accepted: 32 bytes, HS256's own key size. Anyone
 *  holding one token can try secrets offline as fast as they can compute
 *  HMACs, so a short or guessable secret lets them mint tokens for any
 *  user. (A generated secret is 32 random bytes written as 64 hex chars.) */
#define CL_JWT_MIN_SECRET_LEN 32

/** How far in the future a token's iat may lie: clock skew between the
 *  instances that sign and verify, not tokens minted for later. */
#define CL_JWT_IAT_LEEWAY_S 60

typedef enum {
    CL_JWT_OK = 0,
    CL_JWT_MALFORMED,       /* not three base64url parts of JSON; exp, nbf or iat not an integer */
    CL_JWT_BAD_ALG,         /* header alg is not HS256 (including "none") */
    CL_JWT_BAD_SIGNATURE,
    CL_JWT_EXPIRED,         /* exp <= now */
    CL_JWT_NO_SUBJECT,      /* no string "sub" claim */
    CL_JWT_NOT_YET_VALID,   /* nbf > now */
    CL_JWT_ISSUED_IN_FUTURE, /* iat > now + CL_JWT_IAT_LEEWAY_S */
} cl_jwt_status;

/**
 * Signs {"sub":subject,"iat":now,"exp":now+ttl_s,"jti":<random>} with
 * `secret`. Returns a malloc'd token, or NULL (also for an empty secret or
 * subject, a subject that is not UTF-8, or ttl_s <= 0).
 */
char *cl_jwt_sign(const char *secret, size_t secret_len, const char *subject, int64_t now,
                  int64_t ttl_s);

/**
 * Verifies `token` (len bytes). On CL_JWT_OK copies the subject into
 * `subject` (subject_len bytes, NUL-terminated) and the expiry into *exp.
 * `subject` and `exp` may be NULL. A subject that does not fit is
 * CL_JWT_MALFORMED (never truncated). Checks, in order: shape and base64url
 * (MALFORMED), header alg (BAD_ALG), signature (BAD_SIGNATURE), integer exp
 * (missing: MALFORMED; EXPIRED), nbf if present (NOT_YET_VALID, no leeway:
 * chatloop never sets it), iat if present (ISSUED_IN_FUTURE), then sub.
 */
cl_jwt_status cl_jwt_verify(const char *secret, size_t secret_len, const char *token, size_t len,
                            int64_t now, char *subject, size_t subject_len, int64_t *exp);

/** A short English reason for a status ("token expired", ...). */
const char *cl_jwt_status_text(cl_jwt_status s);

/* ---- helpers --------------------------------------------------------------- */

/** Fills `out` with n cryptographically random bytes from the kernel
 *  (getrandom). Returns 0 or -1. Safe to call from any thread. */
int cl_random_bytes(void *out, size_t n);

/** Writes a random UUID v4 ("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx") into out[37]. */
int cl_uuid_v4(char out[37]);

/** 1 when s is a UUID in its 36-character text form (any version). */
int cl_uuid_valid(const char *s);

/** Lower-case hex SHA-256 of data into out[65] (API keys are stored this way). */
void cl_sha256_hex(const void *data, size_t len, char out[65]);

/** Constant-time comparison of two equal-length buffers: 1 if equal. */
int cl_ct_equal(const void *a, const void *b, size_t n);

#endif
