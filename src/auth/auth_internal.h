/*
 * auth_internal.h — helpers shared by the src/auth/ files and test/unit/test_auth.c.
 * Not a public header: everything outside src/auth/ goes through
 * chatloop/auth.h.
 */
#ifndef CHATLOOP_AUTH_INTERNAL_H
#define CHATLOOP_AUTH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) of password/salt into out[0..outlen).
 * Returns 0 or -1. Pure computation: safe on any thread. Exposed so the
 * unit test can check it against the RFC 7914 §11 vector. */
int cl_auth__pbkdf2_sha256(const void *password, size_t password_len, const void *salt,
                           size_t salt_len, uint32_t iterations, uint8_t *out, size_t outlen);

/* HMAC-SHA256 of data under key into out[32]. Returns 0 or -1. */
int cl_auth__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                         uint8_t out[32]);

/* base64url without padding (RFC 7515 §2). The encoder writes
 * cl_auth__b64url_len(n) chars plus a NUL; the decoder is strict — no '=',
 * nothing outside [A-Za-z0-9_-], no length ≡ 1 (mod 4), and the unused low
 * bits of the last char must be zero, so every byte string has exactly one
 * accepted encoding — and writes at most len*3/4 bytes. It returns the
 * decoded length, or -1. */
#define cl_auth__b64url_len(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))
void cl_auth__b64url_encode(const void *in, size_t n, char *out);
long cl_auth__b64url_decode(const char *in, size_t len, uint8_t *out);

/* Lower-case hex of n bytes into out[2n+1]. */
void cl_auth__hex(const uint8_t *in, size_t n, char *out);

/* Overwrites n bytes at p with zeros in a way the compiler may not drop
 * (for password copies and derived keys). NULL is allowed. */
void cl_auth__wipe(void *p, size_t n);

#endif
