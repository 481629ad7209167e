/**
 * timeheap.h — a binary min-heap of deadlines, for a worker that wants one
 * uv_timer for many objects (every WebSocket's token expiry) instead of a
 * timer per object: 16 bytes embedded in the owner and one pointer in the
 * heap, O(log n) to add, move or remove a deadline.
 *
 * Ownership: the heap holds pointers to nodes embedded in their owners; an
 * owner removes its node before it is freed. The heap's array is freed
 * when it empties, so an idle worker holds nothing.
 */
#ifndef CHATLOOP_TIMEHEAP_H
#define CHATLOOP_TIMEHEAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct cl_theap_node {
    uint64_t at;        /* the deadline (any clock the user picks) */
    uint32_t idx;       /* position + 1 in the heap; 0: not in it */
} cl_theap_node;

typedef struct cl_theap {
    cl_theap_node **v;
    uint32_t n, cap;
} cl_theap;

/** Adds `node` due `at`, or moves it there if it is in the heap. 0, or -1
 *  when out of memory (the node is then not in the heap). */
int cl_theap_set(cl_theap *h, cl_theap_node *node, uint64_t at);
/** Removes the node if it is in the heap. */
void cl_theap_remove(cl_theap *h, cl_theap_node *node);
/** The earliest node, or NULL. */
static inline cl_theap_node *cl_theap_top(const cl_theap *h) { return h->n ? h->v[0] : NULL; }

#endif
