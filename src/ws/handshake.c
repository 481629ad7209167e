/*
 * handshake.c — the server side of the RFC 6455 opening handshake: which
 * upgrade requests are accepted, and the Sec-WebSocket-Accept value.
 *
 * Refusals are plain HTTP answers through the API envelope, so a client
 * that cannot speak WebSocket sees the same JSON errors as everywhere else.
 */
#include "ws_internal.h"

#include "chatloop/api.h"
#include "chatloop/cors.h"
#include "chatloop/worker.h"

#include <mbedtls/base64.h>
#include <mbedtls/sha1.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* RFC 6455 §1.3: the fixed GUID the key is concatenated with. */
static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* A key is 16 random bytes in base64: exactly 24 characters. */
#define KEY_B64_LEN 24

int cl_ws__accept_key(const char *key, size_t len, char out[CL_WS_ACCEPT_LEN + 1])
{
    char joined[KEY_B64_LEN + sizeof WS_GUID];
    unsigned char digest[20];
    size_t olen = 0;
    if (len != KEY_B64_LEN)
        return -1;
    memcpy(joined, key, len);
    memcpy(joined + len, WS_GUID, sizeof WS_GUID - 1);
    if (mbedtls_sha1_ret((const unsigned char *)joined, len + sizeof WS_GUID - 1, digest) != 0)
        return -1;
    if (mbedtls_base64_encode((unsigned char *)out, CL_WS_ACCEPT_LEN + 1, &olen, digest,
                              sizeof digest) != 0 ||
        olen != CL_WS_ACCEPT_LEN)
        return -1;
    out[CL_WS_ACCEPT_LEN] = '\0';
    return 0;
}

static int is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The header's value without surrounding whitespace, or NULL. */
static const char *header_trimmed(const cl_req *r, const char *name, size_t *len)
{
    size_t n;
    const char *v = cl_req_header(r, name, &n);
    if (!v)
        return NULL;
    while (n && is_ows(*v)) {
        v++;
        n--;
    }
    while (n && is_ows(v[n - 1]))
        n--;
    *len = n;
    return v;
}

/* Whether a comma-separated header value lists `token` (ASCII case
 * insensitive): browsers send "Connection: keep-alive, Upgrade". */
static int header_has_token(const cl_req *r, const char *name, const char *token)
{
    size_t len;
    const char *v = header_trimmed(r, name, &len);
    size_t tl = strlen(token);
    while (v && len) {
        const char *comma = memchr(v, ',', len);
        size_t item = comma ? (size_t)(comma - v) : len;
        const char *s = v;
        size_t sl = item;
        while (sl && is_ows(*s)) {
            s++;
            sl--;
        }
        while (sl && is_ows(s[sl - 1]))
            sl--;
        if (sl == tl && strncasecmp(s, token, tl) == 0)
            return 1;
        if (!comma)
            break;
        v += item + 1;
        len -= item + 1;
    }
    return 0;
}

static int refuse(cl_req *r, const char *message)
{
    cl_api_error(r, CL_ERR_INVALID_REQUEST, message, NULL, NULL);
    return -1;
}

int cl_ws__check_handshake(cl_req *r, char accept[CL_WS_ACCEPT_LEN + 1])
{
    if (r->method != HTTP_GET)
        return refuse(r, "a WebSocket upgrade must be a GET request");
    if (r->http_major < 1 || (r->http_major == 1 && r->http_minor < 1))
        return refuse(r, "a WebSocket upgrade needs HTTP/1.1");
    if (!header_has_token(r, "upgrade", "websocket"))
        return refuse(r, "header Upgrade must be \"websocket\"");
    if (!header_has_token(r, "connection", "upgrade"))
        return refuse(r, "header Connection must include \"Upgrade\"");
    size_t len;
    const char *v = header_trimmed(r, "sec-websocket-version", &len);
    if (!v)
        return refuse(r, "header Sec-WebSocket-Version is missing (this server speaks 13)");
    if (len != 2 || memcmp(v, "13", 2) != 0) {
        /* RFC 6455 §4.2.2: 426 and the versions we do speak */
        cl_api_error_status(r, 426, CL_ERR_INVALID_REQUEST,
                            "header Sec-WebSocket-Version: only version 13 is supported", NULL,
                            "Sec-WebSocket-Version: 13\r\n");
        return -1;
    }
    const char *key = header_trimmed(r, "sec-websocket-key", &len);
    unsigned char raw[18];
    size_t rawlen = 0;
    if (!key)
        return refuse(r, "header Sec-WebSocket-Key is missing");
    if (len != KEY_B64_LEN ||
        mbedtls_base64_decode(raw, sizeof raw, &rawlen, (const unsigned char *)key, len) != 0 ||
        rawlen != 16)
        return refuse(r, "header Sec-WebSocket-Key must be 16 bytes in base64");
    if (!cl_cors_ws_origin_ok(r->conn->w->cors, r)) {
        /* Cross-site WebSocket hijacking: CORS does not apply to an
         * upgrade, so any page a browser shows could open this socket
         * (with auth = off, and spend the operator's upstream key). A
         * browser always says which page asks; clients that are not
         * browsers send no Origin and pass. */
        size_t ol = 0;
        const char *o = header_trimmed(r, "origin", &ol);
        char msg[256];
        snprintf(msg, sizeof msg,
                 "Origin %.*s may not open a WebSocket here: it is not this server's own origin "
                 "and cors_origins does not list it",
                 (int)(ol > 100 ? 100 : ol), o ? o : "");
        cl_api_error(r, CL_ERR_FORBIDDEN, msg, NULL, NULL);
        return -1;
    }
    if (cl_ws__accept_key(key, len, accept) != 0) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "could not compute Sec-WebSocket-Accept", NULL,
                     NULL);
        return -1;
    }
    return 0;
}
