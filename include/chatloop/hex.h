/**
 * hex.h — one hexadecimal digit's value, for the decoders that need it
 * (percent-encoding, JSON \u escapes).
 */
#ifndef CHATLOOP_HEX_H
#define CHATLOOP_HEX_H

/** 0..15 for [0-9a-fA-F], else -1. */
static inline int cl_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif
