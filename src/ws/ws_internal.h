/*
 * ws_internal.h — what ws.c and handshake.c share, and hooks for
 * test/unit/test_ws.c and test/fuzz/fuzz_ws.c. Not part of the contract.
 */
#ifndef CHATLOOP_WS_INTERNAL_H
#define CHATLOOP_WS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/ws.h"

/* base64 of a SHA-1 digest: 28 characters and a NUL. */
#define CL_WS_ACCEPT_LEN 28

/**
 * Sec-WebSocket-Accept for a client key (RFC 6455 §4.2.2: base64 of the
 * SHA-1 of the key followed by the protocol's GUID). 0, or -1 when mbedTLS
 * fails.
 */
int cl_ws__accept_key(const char *key, size_t len, char out[CL_WS_ACCEPT_LEN + 1]);

/**
 * Checks an upgrade request against RFC 6455 §4.2.1. On success fills
 * `accept` and returns 0; otherwise answers the request (400 naming the
 * header at fault, 426 with `Sec-WebSocket-Version: 13` for another
 * version), which ends it, and returns -1.
 */
int cl_ws__check_handshake(cl_req *r, char accept[CL_WS_ACCEPT_LEN + 1]);

/** Test hook: 1 while the cl_ws holds a wslay context. */
int cl_ws__has_ctx(const cl_ws *ws);

/** Test hook: the connection's cl_ws, or NULL if it does not speak WebSocket. */
cl_ws *cl_ws__of_conn(const cl_conn *c);

#endif
