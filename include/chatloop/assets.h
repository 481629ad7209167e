/**
 * assets.h — files built into the binary (the files of src/http/assets/, turned into
 * $(BUILD)/gen/assets.c by scripts/embed.sh at build time). Served by
 * src/http/static.c.
 */
#ifndef CHATLOOP_ASSETS_H
#define CHATLOOP_ASSETS_H

#include <stddef.h>

typedef struct cl_asset {
    const char *name;               /* the file's base name: "index.html" */
    const unsigned char *data;      /* len bytes, then a NUL */
    size_t len;
} cl_asset;

/** cl_assets_count entries, then one of all zeros. */
extern const cl_asset cl_assets[];
extern const size_t cl_assets_count;

#endif
