/* test_timeheap.c — the deadline heap against a sorted reference, under
 * random adds, moves and removals. */
#include "chatloop/timeheap.h"
#include "test.h"

#define N 2000

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* The earliest deadline among the nodes in the heap, by brute force. */
static uint64_t min_of(cl_theap_node *nodes, int n, int *found)
{
    uint64_t m = UINT64_MAX;
    *found = 0;
    for (int i = 0; i < n; i++)
        if (nodes[i].idx && nodes[i].at <= m) {
            m = nodes[i].at;
            *found = 1;
        }
    return m;
}

static void test_random_operations(void)
{
    static cl_theap_node nodes[N];
    cl_theap h = {0};
    memset(nodes, 0, sizeof nodes);
    for (int step = 0; step < 20000; step++) {
        cl_theap_node *x = &nodes[next() % N];
        uint64_t op = next() % 3;
        if (op < 2)
            CHECK_EQ_INT(cl_theap_set(&h, x, next() % 1000), 0);
        else
            cl_theap_remove(&h, x);
        int found;
        uint64_t want = min_of(nodes, N, &found);
        cl_theap_node *top = cl_theap_top(&h);
        CHECK_EQ_INT(top != NULL, found);
        if (top && top->at != want) {
            CHECK_EQ_INT(top->at, want);
            break;
        }
    }
    /* drain in order */
    uint64_t last = 0;
    int drained = 0;
    while (cl_theap_top(&h)) {
        cl_theap_node *t = cl_theap_top(&h);
        CHECK(t->at >= last);
        last = t->at;
        cl_theap_remove(&h, t);
        drained++;
    }
    CHECK(drained > 0);
    CHECK(h.v == NULL); /* an empty heap holds no memory */
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(nodes[i].idx, 0);
}

static void test_move_earlier_and_later(void)
{
    cl_theap h = {0};
    cl_theap_node a = {0}, b = {0}, c = {0};
    cl_theap_set(&h, &a, 10);
    cl_theap_set(&h, &b, 20);
    cl_theap_set(&h, &c, 30);
    CHECK(cl_theap_top(&h) == &a);
    cl_theap_set(&h, &c, 5);
    CHECK(cl_theap_top(&h) == &c);
    cl_theap_set(&h, &c, 50);
    CHECK(cl_theap_top(&h) == &a);
    cl_theap_remove(&h, &a);
    CHECK(cl_theap_top(&h) == &b);
    cl_theap_remove(&h, &a); /* not in it: nothing happens */
    cl_theap_remove(&h, &b);
    cl_theap_remove(&h, &c);
    CHECK(cl_theap_top(&h) == NULL);
}

CL_TEST_MAIN(test_random_operations, test_move_earlier_and_later)
