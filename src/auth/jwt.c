/*
 * jwt.c — session tokens: JWT (RFC 7519) signed with HS256 (RFC 7515).
 *
 * The verifier trusts nothing in the token before the signature checks out,
 * except the one thing it must read first: the header's alg, which has to
 * be exactly "HS256". Accepting whatever alg the token names is the classic
 * JWT hole ("none" skips the signature; an RS256/HS256 confusion signs with
 * a public key), so there is no other branch. Each part is decoded strictly
 * (one accepted spelling per byte string), JSON is parsed by jansson with
 * duplicate keys refused (two "alg" members must not mean two things to two
 * parsers), and the signature is compared in constant time.
 */
#include "chatloop/auth.h"
#include "auth_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define HEADER_JSON "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define SIG_LEN 32

/* ---- base64url -------------------------------------------------------------- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void cl_auth__b64url_encode(const void *in, size_t n, char *out)
{
    const uint8_t *s = in;
    size_t i = 0, o = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

long cl_auth__b64url_decode(const char *in, size_t len, uint8_t *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    if (len % 4 == 1 || len > (size_t)LONG_MAX / 3)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* 2 or 4 bits left over from the last char: they must be zero, or
     * "AB" and "AA" would both decode to the same single byte. */
    if (acc != 0)
        return -1;
    return (long)o;
}

/* ---- sign ------------------------------------------------------------------- */

char *cl_jwt_sign(const char *secret, size_t secret_len, const char *subject, int64_t now,
                  int64_t ttl_s)
{
    char *token = NULL, *payload = NULL;
    json_t *claims = NULL;
    uint8_t jti_raw[16], sig[SIG_LEN];
    char jti[33];

    if (!secret || secret_len == 0 || !subject || !*subject || ttl_s <= 0 ||
        now > INT64_MAX - ttl_s)
        return NULL;
    if (cl_random_bytes(jti_raw, sizeof jti_raw) != 0)
        return NULL;
    cl_auth__hex(jti_raw, sizeof jti_raw, jti);
    /* json_pack refuses a subject that is not valid UTF-8. */
    claims = json_pack("{s:s, s:I, s:I, s:s}", "sub", subject, "iat", (json_int_t)now,
                       "exp", (json_int_t)(now + ttl_s), "jti", jti);
    if (!claims)
        goto fail;
    payload = json_dumps(claims, JSON_COMPACT);
    if (!payload)
        goto fail;

    size_t hlen = sizeof HEADER_JSON - 1, plen = strlen(payload);
    size_t h64 = cl_auth__b64url_len(hlen), p64 = cl_auth__b64url_len(plen);
    size_t s64 = cl_auth__b64url_len(SIG_LEN);
    token = malloc(h64 + 1 + p64 + 1 + s64 + 1);
    if (!token)
        goto fail;
    cl_auth__b64url_encode(HEADER_JSON, hlen, token);
    token[h64] = '.';
    cl_auth__b64url_encode(payload, plen, token + h64 + 1);
    if (cl_auth__hmac_sha256(secret, secret_len, token, h64 + 1 + p64, sig) != 0)
        goto fail;
    token[h64 + 1 + p64] = '.';
    cl_auth__b64url_encode(sig, SIG_LEN, token + h64 + 1 + p64 + 1);
    free(payload);
    json_decref(claims);
    return token;
fail:
    free(token);
    free(payload);
    json_decref(claims);
    return NULL;
}

/* ---- verify ----------------------------------------------------------------- */

/* Decodes one part into a fresh buffer (NUL-terminated for convenience).
 * Returns it with *n set, or NULL. */
static uint8_t *decode_part(const char *s, size_t len, size_t *n)
{
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf)
        return NULL;
    long r = cl_auth__b64url_decode(s, len, buf);
    if (r < 0) {
        free(buf);
        return NULL;
    }
    buf[r] = '\0';
    *n = (size_t)r;
    return buf;
}

static json_t *parse_object(const uint8_t *s, size_t n)
{
    json_error_t err;
    /* No JSON_DECODE_ANY and no JSON_ALLOW_NUL: the top level must be an
     * object or array, and no string may hide a NUL. */
    json_t *j = json_loadb((const char *)s, n, JSON_REJECT_DUPLICATES, &err);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

cl_jwt_status cl_jwt_verify(const char *secret, size_t secret_len, const char *token, size_t len,
                            int64_t now, char *subject, size_t subject_len, int64_t *exp)
{
    cl_jwt_status st = CL_JWT_MALFORMED;
    uint8_t *hdr = NULL, *pay = NULL, *sig = NULL;
    size_t hdr_n = 0, pay_n = 0, sig_n = 0;
    json_t *header = NULL, *claims = NULL;
    uint8_t mac[SIG_LEN];

    if (!token || len == 0 || len > CL_JWT_MAX_LEN)
        return CL_JWT_MALFORMED;

    /* header.payload.signature: exactly two dots */
    const char *d1 = memchr(token, '.', len);
    if (!d1)
        return CL_JWT_MALFORMED;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return CL_JWT_MALFORMED;
    const char *end = token + len;

    if (!(hdr = decode_part(token, (size_t)(d1 - token), &hdr_n)) ||
        !(pay = decode_part(d1 + 1, (size_t)(d2 - d1 - 1), &pay_n)) ||
        !(sig = decode_part(d2 + 1, (size_t)(end - d2 - 1), &sig_n)))
        goto out;

    if (!(header = parse_object(hdr, hdr_n)))
        goto out;
    json_t *alg = json_object_get(header, "alg");
    if (!json_is_string(alg) || json_string_length(alg) != 5 ||
        memcmp(json_string_value(alg), "HS256", 5) != 0) {
        st = CL_JWT_BAD_ALG;
        goto out;
    }
    /* "crit" names extensions the verifier must understand (RFC 7515
     * §4.1.11); we understand none. */
    if (json_object_get(header, "crit"))
        goto out;

    if (!secret || secret_len == 0 || sig_n != SIG_LEN ||
        cl_auth__hmac_sha256(secret, secret_len, token, (size_t)(d2 - token), mac) != 0 ||
        !cl_ct_equal(mac, sig, SIG_LEN)) {
        st = CL_JWT_BAD_SIGNATURE;
        goto out;
    }

    /* Signed by us from here on; still checked, never trusted blindly. */
    if (!(claims = parse_object(pay, pay_n)))
        goto out;
    json_t *jexp = json_object_get(claims, "exp");
    if (!json_is_integer(jexp))
        goto out;
    json_int_t e = json_integer_value(jexp);
    if (e <= now) {
        st = CL_JWT_EXPIRED;
        goto out;
    }
    /* nbf and iat are optional, but one that is present must be an integer
     * and must hold: a token cannot be accepted before its time. */
    json_t *nbf = json_object_get(claims, "nbf");
    if (nbf) {
        if (!json_is_integer(nbf))
            goto out;
        if (json_integer_value(nbf) > now) {
            st = CL_JWT_NOT_YET_VALID;
            goto out;
        }
    }
    json_t *iat = json_object_get(claims, "iat");
    if (iat) {
        if (!json_is_integer(iat))
            goto out;
        /* now + leeway cannot overflow for any clock this side of 2^62 */
        if (json_integer_value(iat) > now + CL_JWT_IAT_LEEWAY_S) {
            st = CL_JWT_ISSUED_IN_FUTURE;
            goto out;
        }
    }
    json_t *sub = json_object_get(claims, "sub");
    if (!json_is_string(sub) || json_string_length(sub) == 0) {
        st = CL_JWT_NO_SUBJECT;
        goto out;
    }
    if (subject) {
        size_t n = json_string_length(sub);
        /* Truncating could turn one subject into another: refuse instead. */
        if (n >= subject_len)
            goto out;
        memcpy(subject, json_string_value(sub), n + 1);
    }
    if (exp)
        *exp = (int64_t)e;
    st = CL_JWT_OK;
out:
    json_decref(header);
    json_decref(claims);
    free(hdr);
    free(pay);
    free(sig);
    return st;
}

const char *cl_jwt_status_text(cl_jwt_status s)
{
    switch (s) {
    case CL_JWT_OK:            return "ok";
    case CL_JWT_MALFORMED:     return "malformed token";
    case CL_JWT_BAD_ALG:       return "unsupported token algorithm";
    case CL_JWT_BAD_SIGNATURE: return "invalid token signature";
    case CL_JWT_EXPIRED:       return "token expired";
    case CL_JWT_NO_SUBJECT:    return "token has no subject";
    case CL_JWT_NOT_YET_VALID: return "token not valid yet";
    case CL_JWT_ISSUED_IN_FUTURE: return "token issued in the future";
    }
    return "invalid token";
}
