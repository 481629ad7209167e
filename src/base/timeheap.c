/* timeheap.c — see timeheap.h. */
#include "chatloop/timeheap.h"

#include <assert.h>
#include <stdlib.h>

static void place(cl_theap *h, uint32_t i, cl_theap_node *n)
{
    h->v[i] = n;
    n->idx = i + 1;
}

static void sift_up(cl_theap *h, uint32_t i)
{
    cl_theap_node *n = h->v[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->v[parent]->at <= n->at)
            break;
        place(h, i, h->v[parent]);
        i = parent;
    }
    place(h, i, n);
}

static void sift_down(cl_theap *h, uint32_t i)
{
    cl_theap_node *n = h->v[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t at = n->at;
        if (l < h->n && h->v[l]->at < at) {
            m = l;
            at = h->v[l]->at;
        }
        if (r < h->n && h->v[r]->at < at)
            m = r;
        if (m == i)
            break;
        place(h, i, h->v[m]);
        i = m;
    }
    place(h, i, n);
}

int cl_theap_set(cl_theap *h, cl_theap_node *node, uint64_t at)
{
    if (node->idx) {
        uint32_t i = node->idx - 1;
        assert(i < h->n && h->v[i] == node);
        uint64_t old = node->at;
        node->at = at;
        if (at < old)
            sift_up(h, i);
        else
            sift_down(h, i);
        return 0;
    }
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 64;
        cl_theap_node **v = realloc(h->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    node->at = at;
    h->v[h->n] = node;
    node->idx = ++h->n;
    sift_up(h, h->n - 1);
    return 0;
}

void cl_theap_remove(cl_theap *h, cl_theap_node *node)
{
    if (!node->idx)
        return;
    uint32_t i = node->idx - 1;
    assert(i < h->n && h->v[i] == node);
    node->idx = 0;
    cl_theap_node *last = h->v[--h->n];
    if (i < h->n) {
        place(h, i, last);
        sift_down(h, i);
        sift_up(h, last->idx - 1);
    }
    if (h->n == 0) {
        free(h->v);
        h->v = NULL;
        h->cap = 0;
    }
}
