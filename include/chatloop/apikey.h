/*
 * apikey.h — API keys: "cl-" and 43 base64url characters (32 random bytes),
 * stored as their SHA-256 (hex) — a fast hash is right for a random secret
 * of 256 bits; the slow KDF is for passwords people choose.
 *
 * Checking one costs no database round trip per request: each worker keeps
 * the keys it has seen for CL_API_KEY_TRUST_MS (positive and negative), then
 * asks PostgreSQL again — that lookup also stamps last_used_at. So a revoked
 * key stops working on every worker and every instance within
 * CL_API_KEY_TRUST_MS plus one lookup.
 */
#ifndef CHATLOOP_APIKEY_H
#define CHATLOOP_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#define CL_API_KEY_PREFIX "cl-"
#define CL_API_KEY_LEN 46          /* "cl-" + 43 */
#define CL_API_KEY_SHOWN 12        /* characters kept as the key's visible prefix */
#define CL_API_KEY_TRUST_MS 4000

typedef struct cl_db cl_db;
typedef struct cl_db_query cl_db_query;
struct cl_db_res;

/** A new key into key[CL_API_KEY_LEN + 1]: 0, or -1 without randomness. */
int cl_api_key_generate(char key[CL_API_KEY_LEN + 1]);

/** 1 when tok (len bytes) has the shape of a key: the prefix, then 43
 *  base64url characters. Anything else is treated as a JWT. */
int cl_api_key_shaped(const char *tok, size_t len);

typedef enum {
    CL_KEY_VALID,       /* known and active: user_id and key_id are filled */
    CL_KEY_INVALID,     /* unknown or revoked */
    CL_KEY_ASK,         /* not known fresh: look it up */
} cl_key_state;

/**
 * What this worker knows of the key whose hash is `hash_hex`, without a
 * round trip. `db_available` 0 lets a key seen valid before (however long
 * ago) pass: the routes that need the database say so themselves.
 */
cl_key_state cl_api_key_cached(const char hash_hex[65], uint64_t now_ms, int db_available,
                               char user_id[37], char key_id[37]);

/** Looks the key up (and stamps last_used_at); `cb` gets the result, which
 *  it hands to cl_api_key_settle. NULL when it cannot be queued. */
cl_db_query *cl_api_key_lookup(cl_db *db, const char hash_hex[65], void (*cb)(void *ud, const struct cl_db_res *res),
                               void *ud);

/** Caches what a lookup found and says it: CL_KEY_VALID (ids filled),
 *  CL_KEY_INVALID, or CL_KEY_ASK when the database did not answer. */
cl_key_state cl_api_key_settle(const char hash_hex[65], const struct cl_db_res *res, uint64_t now_ms,
                               char user_id[37], char key_id[37]);

/** Forgets the key with this id on this worker (revoked here: no need to
 *  wait out the trust window). */
void cl_api_key_forget_id(const char key_id[37]);

/** The SHA-256 (hex) of a key as stored. */
void cl_api_key_hash(const char *key, size_t len, char hash_hex[65]);

#endif
