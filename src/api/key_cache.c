/*
 * key_cache.c — which API keys are valid, as this worker last heard from
 * PostgreSQL. Direct-mapped on the key's hash: a collision evicts, which
 * only costs a lookup later. Negative answers are kept too, so a client
 * retrying with a revoked key costs one lookup per trust window, not one
 * per request. One loop per process: the cache is the worker's.
 */
#include "chatloop/apikey.h"
#include "chatloop/db.h"
#include "chatloop/hex.h"

#include <stdio.h>
#include <string.h>

#define KEY_CACHE_SLOTS 1024

typedef struct key_entry {
    char hash[64];              /* hex, the slot's key */
    char user_id[37];
    char key_id[37];
    uint64_t checked_ms;        /* 0: empty slot */
    uint8_t valid;
} key_entry;

static key_entry g_keys[KEY_CACHE_SLOTS];

static key_entry *slot_of(const char hash_hex[65])
{
    /* the hash is uniformly random already: its first hex digits index */
    unsigned h = 0;
    for (int i = 0; i < 4; i++)
        h = h << 4 | (unsigned)cl_hexval(hash_hex[i]);
    return &g_keys[h % KEY_CACHE_SLOTS];
}

cl_key_state cl_api_key_cached(const char hash_hex[65], uint64_t now_ms, int db_available,
                               char user_id[37], char key_id[37])
{
    key_entry *e = slot_of(hash_hex);
    if (!e->checked_ms || memcmp(e->hash, hash_hex, 64) != 0)
        return CL_KEY_ASK;
    if (db_available && now_ms - e->checked_ms >= CL_API_KEY_TRUST_MS)
        return CL_KEY_ASK;
    if (!e->valid)
        return db_available ? CL_KEY_INVALID : CL_KEY_ASK;
    memcpy(user_id, e->user_id, 37);
    memcpy(key_id, e->key_id, 37);
    return CL_KEY_VALID;
}

cl_db_query *cl_api_key_lookup(cl_db *db, const char hash_hex[65],
                               void (*cb)(void *ud, const cl_db_res *res), void *ud)
{
    /* Stamping last_used_at here makes it exact to the trust window at no
     * extra statement. */
    static const char sql[] = "UPDATE api_keys SET last_used_at = now()"
                              " WHERE key_hash = $1 AND revoked_at IS NULL"
                              " RETURNING id, user_id";
    const char *p[] = {hash_hex};
    return cl_db_exec(db, sql, 1, p, CL_DB_PREPARED, cb, ud);
}

cl_key_state cl_api_key_settle(const char hash_hex[65], const cl_db_res *res, uint64_t now_ms,
                               char user_id[37], char key_id[37])
{
    if (!res->ok)
        return CL_KEY_ASK;
    key_entry *e = slot_of(hash_hex);
    memcpy(e->hash, hash_hex, 64);
    e->checked_ms = now_ms ? now_ms : 1;
    e->valid = cl_db_rows(res) == 1;
    if (!e->valid) {
        e->user_id[0] = e->key_id[0] = '\0';
        return CL_KEY_INVALID;
    }
    snprintf(e->key_id, sizeof e->key_id, "%s", cl_db_get(res, 0, 0));
    snprintf(e->user_id, sizeof e->user_id, "%s", cl_db_get(res, 0, 1));
    memcpy(user_id, e->user_id, 37);
    memcpy(key_id, e->key_id, 37);
    return CL_KEY_VALID;
}

void cl_api_key_forget_id(const char key_id[37])
{
    for (size_t i = 0; i < KEY_CACHE_SLOTS; i++)
        if (g_keys[i].checked_ms && g_keys[i].valid && strcmp(g_keys[i].key_id, key_id) == 0)
            g_keys[i].checked_ms = 0;
}
