/*
 * hist.c — latency histograms with bounded memory and mergeable counts, so
 * a run of any length (and the children of --procs) can be summarised
 * without keeping every sample.
 */
#include "bench.h"

#include <math.h>
#include <string.h>

#define HALF (1 << (CB_HIST_SUB_BITS - 1))
#define EXACT (1 << CB_HIST_SUB_BITS)

void cb_hist_init(cb_hist *h)
{
    memset(h, 0, sizeof *h);
}

int cb_hist_index(uint64_t v)
{
    if (v < EXACT)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - (CB_HIST_SUB_BITS - 1);
    return shift * HALF + (int)(v >> shift);
}

uint64_t cb_hist_bucket_low(int idx)
{
    if (idx < EXACT)
        return (uint64_t)idx;
    int shift = idx / HALF - 1;
    uint64_t mant = (uint64_t)(idx - shift * HALF);
    return mant << shift;
}

uint64_t cb_hist_bucket_high(int idx)
{
    if (idx < EXACT)
        return (uint64_t)idx;
    int shift = idx / HALF - 1;
    return cb_hist_bucket_low(idx) + ((uint64_t)1 << shift) - 1;
}

void cb_hist_add(cb_hist *h, uint64_t v)
{
    h->counts[cb_hist_index(v)]++;
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

void cb_hist_merge(cb_hist *into, const cb_hist *from)
{
    if (from->n == 0)
        return;
    for (int i = 0; i < CB_HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    if (into->n == 0 || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->n += from->n;
    into->sum += from->sum;
}

uint64_t cb_hist_percentile(const cb_hist *h, double p)
{
    if (h->n == 0)
        return 0;
    if (p >= 100)
        return h->max;
    /* p * n first: exact for an integer p, so a rank such as 7% of 100 is
     * 7, not ceil(0.07 * 100) = ceil(7.000000000000001) = 8 */
    double r = ceil(p * (double)h->n / 100.0);
    uint64_t rank = r < 1 ? 1 : (uint64_t)r;
    uint64_t seen = 0;
    for (int i = 0; i < CB_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo = cb_hist_bucket_low(i), hi = cb_hist_bucket_high(i);
            uint64_t v = lo + (hi - lo) / 2;
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}
