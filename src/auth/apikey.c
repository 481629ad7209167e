/*
 * apikey.c — the shape of an API key: making one and recognising one.
 * (Which keys are valid is key_cache.c's: that needs the database.)
 */
#include "chatloop/apikey.h"
#include "chatloop/auth.h"
#include "auth_internal.h"

#include <string.h>

#define KEY_RANDOM_BYTES 32

int cl_api_key_generate(char key[CL_API_KEY_LEN + 1])
{
    uint8_t raw[KEY_RANDOM_BYTES];
    if (cl_random_bytes(raw, sizeof raw) != 0)
        return -1;
    memcpy(key, CL_API_KEY_PREFIX, 3);
    cl_auth__b64url_encode(raw, sizeof raw, key + 3);
    key[CL_API_KEY_LEN] = '\0';
    return 0;
}

static int b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

int cl_api_key_shaped(const char *tok, size_t len)
{
    if (len != CL_API_KEY_LEN || memcmp(tok, CL_API_KEY_PREFIX, 3) != 0)
        return 0;
    for (size_t i = 3; i < len; i++)
        if (!b64url_char(tok[i]))
            return 0;
    return 1;
}

void cl_api_key_hash(const char *key, size_t len, char hash_hex[65])
{
    cl_sha256_hex(key, len, hash_hex);
}
