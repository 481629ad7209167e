/*
 * crypto.c — the small primitives under passwords, tokens and API keys:
 * kernel randomness, UUID v4, SHA-256 hex, HMAC-SHA256, constant-time
 * comparison and wiping. All of it is thread-safe (the password jobs call
 * it from libuv's threadpool).
 */
#include "chatloop/auth.h"
#include "auth_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>

int cl_random_bytes(void *out, size_t n)
{
    /* getrandom(2) with no flags reads the kernel CSPRNG and blocks only
     * until it is first seeded at boot. Requests above 256 bytes may come
     * back short, and a signal may interrupt it: loop until filled. */
    uint8_t *p = out;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void cl_auth__hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

int cl_uuid_v4(char out[37])
{
    uint8_t b[16];
    char hex[33];
    if (cl_random_bytes(b, sizeof b) != 0) {
        out[0] = '\0';
        return -1;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);     /* version 4 (RFC 9562 §5.4) */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);     /* variant 10xx */
    cl_auth__hex(b, sizeof b, hex);
    /* 8-4-4-4-12 */
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
    return 0;
}

void cl_sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t digest[32];
    /* The software SHA-256 cannot fail; the check is for a platform
     * accelerator build that might. An empty string never equals a stored
     * hash, so a failure cannot authenticate anyone. */
    if (mbedtls_sha256_ret(data, len, digest, 0) != 0) {
        out[0] = '\0';
        return;
    }
    cl_auth__hex(digest, sizeof digest, out);
}

int cl_auth__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                         uint8_t out[32])
{
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (!info)
        return -1;
    return mbedtls_md_hmac(info, key, key_len, data, len, out) == 0 ? 0 : -1;
}

int cl_ct_equal(const void *a, const void *b, size_t n)
{
    /* Touch every byte whatever the contents and fold the differences
     * into one accumulator: the time depends on n only. volatile keeps the
     * compiler from turning this back into an early-exit memcmp. */
    const volatile uint8_t *x = a, *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= (uint8_t)(x[i] ^ y[i]);
    return diff == 0;
}

void cl_auth__wipe(void *p, size_t n)
{
    if (p && n)
        mbedtls_platform_zeroize(p, n);
}

int cl_uuid_valid(const char *s)
{
    if (strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return 1;
}
