/* chatbench's pure parts (src/bench/): the latency histogram and its
 * nearest-rank percentiles, the small JSON scanner of the hot path, the
 * expected-answer check, and the error table of a run's stats (merging, the
 * OTHER bucket). The network parts are covered end to end by
 * test/e2e/chatbench.test.mjs. */
#include "../../src/bench/bench.h"
#include "test.h"

#include "chatloop/mock_text.h"

#include <stdint.h>

/* ---- hist.c -------------------------------------------------------------------- */

static cb_hist *hist_new(void)
{
    cb_hist *h = malloc(sizeof *h);
    cb_hist_init(h);
    return h;
}

/* The p-th percentile by nearest rank over sorted v[0..n): v[ceil(p*n/100) - 1],
 * the rank computed in integers (p given as num/den percent). */
static uint64_t nearest_rank(const uint64_t *sorted, uint64_t n, uint64_t num, uint64_t den)
{
    uint64_t rank = (num * n + 100 * den - 1) / (100 * den);
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1];
}

static void test_hist_small_values_exact(void)
{
    cb_hist *h = hist_new();
    for (uint64_t v = 1; v <= 100; v++)
        cb_hist_add(h, v);
    CHECK_EQ_INT(h->n, 100);
    CHECK_EQ_INT(h->min, 1);
    CHECK_EQ_INT(h->max, 100);
    CHECK(h->sum == 5050.0);
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 50);
    CHECK_EQ_INT(cb_hist_percentile(h, 90), 90);
    CHECK_EQ_INT(cb_hist_percentile(h, 99), 99);
    CHECK_EQ_INT(cb_hist_percentile(h, 100), 100);
    CHECK_EQ_INT(cb_hist_percentile(h, 1), 1);
    CHECK_EQ_INT(cb_hist_percentile(h, 0.5), 1);   /* rank ceil(0.5) = 1 */
    CHECK_EQ_INT(cb_hist_percentile(h, 99.5), 100); /* rank ceil(99.5) = 100 */
    /* every value below 256 has a bucket of its own */
    for (uint64_t v = 0; v < 256; v++) {
        CHECK_EQ_INT(cb_hist_index(v), v);
        CHECK_EQ_INT(cb_hist_bucket_low((int)v), v);
        CHECK_EQ_INT(cb_hist_bucket_high((int)v), v);
    }
    free(h);
}

static void test_hist_single_and_empty(void)
{
    cb_hist *h = hist_new();
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 0);
    CHECK_EQ_INT(cb_hist_percentile(h, 99), 0);
    CHECK_EQ_INT(cb_hist_percentile(h, 100), 0);
    CHECK_EQ_INT(h->n, 0);

    cb_hist_add(h, 42);
    CHECK_EQ_INT(cb_hist_percentile(h, 0.001), 42);
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 42);
    CHECK_EQ_INT(cb_hist_percentile(h, 100), 42);
    CHECK_EQ_INT(h->min, 42);
    CHECK_EQ_INT(h->max, 42);

    /* a single large value: reported as itself (clamped to min and max) */
    cb_hist_init(h);
    cb_hist_add(h, 123456789);
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 123456789);
    CHECK_EQ_INT(cb_hist_percentile(h, 99), 123456789);

    /* zero is a value like any other */
    cb_hist_init(h);
    cb_hist_add(h, 0);
    cb_hist_add(h, 0);
    CHECK_EQ_INT(h->n, 2);
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 0);
    CHECK_EQ_INT(h->max, 0);
    free(h);
}

static void test_hist_nearest_rank(void)
{
    cb_hist *h = hist_new();
    /* 10 values: p95 needs 9.5 -> 10 values, the 10th */
    uint64_t ten[10];
    for (int i = 0; i < 10; i++) {
        ten[i] = (uint64_t)(i + 1) * 10;
        cb_hist_add(h, ten[i]);
    }
    CHECK_EQ_INT(cb_hist_percentile(h, 95), 100);
    CHECK_EQ_INT(cb_hist_percentile(h, 90), 90);
    CHECK_EQ_INT(cb_hist_percentile(h, 91), 100);
    CHECK_EQ_INT(cb_hist_percentile(h, 50), 50);
    CHECK_EQ_INT(cb_hist_percentile(h, 51), 60);
    CHECK_EQ_INT(cb_hist_percentile(h, 10), 10);
    CHECK_EQ_INT(cb_hist_percentile(h, 11), 20);
    CHECK_EQ_INT(cb_hist_percentile(h, 0.1), 10);

    /* Every integer percentile, for every count up to 300, against the
     * definition computed in integers: ceil(p/100 * n) must not be pushed
     * up a rank by floating point (0.07 * 100 = 7.000000000000001). */
    uint64_t *v = malloc(300 * sizeof *v);
    int bad = 0;
    for (uint64_t n = 1; n <= 300; n++) {
        cb_hist_init(h);
        for (uint64_t i = 0; i < n; i++) {
            v[i] = i < 255 ? i + 1 : 255; /* sorted, exact buckets */
            cb_hist_add(h, v[i]);
        }
        for (uint64_t p = 1; p <= 100; p++) {
            uint64_t want = nearest_rank(v, n, p, 1);
            uint64_t got = cb_hist_percentile(h, (double)p);
            if (got != want) {
                if (bad++ < 5)
                    fprintf(stderr, "  n=%llu p=%llu: got %llu, want %llu\n",
                            (unsigned long long)n, (unsigned long long)p,
                            (unsigned long long)got, (unsigned long long)want);
            }
        }
    }
    CHECK_EQ_INT(bad, 0);

    /* duplicates: ranks count every value */
    cb_hist_init(h);
    for (int i = 0; i < 99; i++)
        cb_hist_add(h, 7);
    cb_hist_add(h, 200);
    CHECK_EQ_INT(cb_hist_percentile(h, 99), 7);
    CHECK_EQ_INT(cb_hist_percentile(h, 99.9), 200);
    CHECK_EQ_INT(cb_hist_percentile(h, 100), 200);
    free(v);
    free(h);
}

static void test_hist_large_values(void)
{
    cb_hist *h = hist_new();
    /* a value alone: reported within 1/128 of itself, never above max */
    uint64_t samples[] = {256,        257,          300,          1000,         4097,
                          65535,      1000000,      1234567,      999999999,    60000000000ull,
                          (1ull << 40) + 12345, (1ull << 53) + 1, UINT64_MAX / 3, UINT64_MAX - 1,
                          UINT64_MAX};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        uint64_t x = samples[i];
        int idx = cb_hist_index(x);
        uint64_t lo = cb_hist_bucket_low(idx), hi = cb_hist_bucket_high(idx);
        uint64_t mid = lo + (hi - lo) / 2;
        uint64_t d = mid > x ? mid - x : x - mid;
        CHECK((double)d <= (double)x / 128.0);
        /* two values in the bucket: the percentile is the bucket's middle,
         * clamped to [min, max] */
        cb_hist_init(h);
        cb_hist_add(h, x);
        cb_hist_add(h, x);
        uint64_t p = cb_hist_percentile(h, 50);
        CHECK(p <= h->max);
        CHECK(p == x); /* clamped to min == max == x */
    }

    /* many values spread over magnitudes: each percentile is within 1/128
     * of the true nearest-rank value and never above max */
    enum { N = 5000 };
    uint64_t *v = malloc(N * sizeof *v);
    uint64_t x = 88172645463325252ull;
    cb_hist_init(h);
    for (int i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[i] = 256 + (x >> (x % 40 + 10)); /* 256 .. ~2^54, many scales */
        cb_hist_add(h, v[i]);
    }
    /* sort (insertion is fine for 5000) */
    for (int i = 1; i < N; i++) {
        uint64_t t = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > t) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = t;
    }
    double ps[] = {1, 10, 25, 50, 75, 90, 95, 99, 99.9};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        uint64_t num = (uint64_t)(ps[i] * 10 + 0.5);
        uint64_t want = nearest_rank(v, N, num, 10);
        uint64_t got = cb_hist_percentile(h, ps[i]);
        uint64_t d = got > want ? got - want : want - got;
        if (!((double)d <= (double)want / 128.0))
            fprintf(stderr, "  p%g: got %llu, want %llu\n", ps[i], (unsigned long long)got,
                    (unsigned long long)want);
        CHECK((double)d <= (double)want / 128.0);
        CHECK(got <= h->max);
        CHECK(got >= h->min);
    }
    CHECK_EQ_INT(cb_hist_percentile(h, 100), v[N - 1]);
    CHECK_EQ_INT(h->max, v[N - 1]);
    CHECK_EQ_INT(h->min, v[0]);

    /* the top value of a wide bucket: the bucket's middle would be above
     * it; the percentile says max instead */
    cb_hist_init(h);
    uint64_t big = (1ull << 40) + 1; /* bucket [2^40, 2^40 + 2^33) */
    cb_hist_add(h, big);
    cb_hist_add(h, 1000);
    CHECK_EQ_INT(cb_hist_percentile(h, 99), big);
    CHECK(cb_hist_percentile(h, 99) <= h->max);
    free(v);
    free(h);
}

static void check_bucket(uint64_t v)
{
    int idx = cb_hist_index(v);
    CHECK(idx >= 0 && idx < CB_HIST_BUCKETS);
    if (idx < 0 || idx >= CB_HIST_BUCKETS)
        return;
    uint64_t lo = cb_hist_bucket_low(idx), hi = cb_hist_bucket_high(idx);
    if (!(lo <= v && v <= hi))
        fprintf(stderr, "  v=%llu idx=%d [%llu, %llu]\n", (unsigned long long)v, idx,
                (unsigned long long)lo, (unsigned long long)hi);
    CHECK(lo <= v && v <= hi);
    /* the bucket's ends map back to it */
    CHECK_EQ_INT(cb_hist_index(lo), idx);
    CHECK_EQ_INT(cb_hist_index(hi), idx);
    /* buckets are at most 1/128 of their low end wide (above 255) */
    if (v >= 256)
        CHECK((double)(hi - lo) <= (double)lo / 128.0);
}

static void test_hist_buckets(void)
{
    uint64_t fixed[] = {0, 1, 127, 128, 255, 256, 257, 383, 384, 511, 512, 513, 1023, 1024,
                        1ull << 20, (1ull << 20) - 1, (1ull << 40) + 12345, 1ull << 63,
                        (1ull << 63) - 1, UINT64_MAX - 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        check_bucket(fixed[i]);
    for (int b = 0; b < 64; b++) {
        uint64_t p = 1ull << b;
        check_bucket(p);
        check_bucket(p - 1);
        check_bucket(p + 1);
        check_bucket(p + p / 3);
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        check_bucket(x >> (i % 64));
    }
    /* indexes never go down as values go up, and the buckets tile the
     * range: each one starts right after the previous one ends */
    CHECK_EQ_INT(cb_hist_index(UINT64_MAX), CB_HIST_BUCKETS - 1);
    int ok = 1;
    for (int i = 1; i <= cb_hist_index(UINT64_MAX); i++) {
        if (cb_hist_bucket_low(i) != cb_hist_bucket_high(i - 1) + 1 ||
            cb_hist_bucket_low(i) > cb_hist_bucket_high(i)) {
            if (ok)
                fprintf(stderr, "  bucket %d: [%llu, %llu] after [.., %llu]\n", i,
                        (unsigned long long)cb_hist_bucket_low(i),
                        (unsigned long long)cb_hist_bucket_high(i),
                        (unsigned long long)cb_hist_bucket_high(i - 1));
            ok = 0;
        }
    }
    CHECK(ok);
    CHECK_EQ_INT(cb_hist_bucket_high(CB_HIST_BUCKETS - 1), UINT64_MAX);
}

static void test_hist_merge(void)
{
    cb_hist *a = hist_new(), *b = hist_new(), *all = hist_new(), *empty = hist_new();
    uint64_t x = 12345;
    for (int i = 0; i < 3000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t v = (x >> 20) % (i % 3 ? 5000 : 50000000);
        cb_hist_add(i % 2 ? a : b, v);
        cb_hist_add(all, v);
    }
    cb_hist_add(b, 3); /* b holds the minimum */
    cb_hist_add(all, 3);
    cb_hist_add(a, 90000000); /* a the maximum */
    cb_hist_add(all, 90000000);

    cb_hist *m = hist_new();
    cb_hist_merge(m, empty); /* merging nothing into nothing */
    CHECK_EQ_INT(m->n, 0);
    CHECK_EQ_INT(cb_hist_percentile(m, 50), 0);
    cb_hist_merge(m, a);
    cb_hist_merge(m, empty);
    cb_hist_merge(m, b);
    CHECK_EQ_INT(m->n, all->n);
    CHECK_EQ_INT(m->min, all->min);
    CHECK_EQ_INT(m->max, all->max);
    CHECK(m->sum == all->sum);
    CHECK(memcmp(m->counts, all->counts, sizeof m->counts) == 0);
    double ps[] = {1, 50, 90, 99, 99.9, 100};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        CHECK_EQ_INT(cb_hist_percentile(m, ps[i]), cb_hist_percentile(all, ps[i]));

    /* min survives a merge whose other side is larger, and the reverse order */
    cb_hist *m2 = hist_new();
    cb_hist_merge(m2, b);
    cb_hist_merge(m2, a);
    CHECK_EQ_INT(m2->min, all->min);
    CHECK_EQ_INT(m2->max, all->max);
    CHECK(memcmp(m2->counts, all->counts, sizeof m2->counts) == 0);

    /* a histogram whose min is 0 merged into a non-empty one keeps 0 */
    cb_hist *z = hist_new(), *m3 = hist_new();
    cb_hist_add(z, 0);
    cb_hist_add(m3, 10);
    cb_hist_merge(m3, z);
    CHECK_EQ_INT(m3->min, 0);
    CHECK_EQ_INT(m3->max, 10);
    CHECK_EQ_INT(m3->n, 2);
    free(a);
    free(b);
    free(all);
    free(empty);
    free(m);
    free(m2);
    free(z);
    free(m3);
}

/* ---- jscan.c ------------------------------------------------------------------- */

static int members(const char *s, const char *const *keys, cl_json_span *out, int n)
{
    return cl_json_members(s, strlen(s), keys, out, n);
}

/* The span as a NUL-terminated string in a static buffer ("(null)" when absent). */
static const char *span_str(cl_json_span v)
{
    static char buf[4][256];
    static int k;
    char *b = buf[k++ % 4];
    if (!v.p)
        return "(null)";
    snprintf(b, sizeof buf[0], "%.*s", (int)v.n, v.p);
    return b;
}

static void test_json_members(void)
{
    static const char *const keys[] = {"type", "token", "session_id", "absent"};
    cl_json_span v[4];
    CHECK_EQ_INT(members("{\"type\":\"token\",\"session_id\":\"s1\",\"token\":\" tok2\"}", keys,
                         v, 4),
                 0);
    CHECK_EQ_STR(span_str(v[0]), "\"token\"");
    CHECK_EQ_STR(span_str(v[1]), "\" tok2\"");
    CHECK_EQ_STR(span_str(v[2]), "\"s1\"");
    CHECK(v[3].p == NULL && v[3].n == 0);

    /* any order, whitespace anywhere, every value kind */
    CHECK_EQ_INT(members(" \r\n\t{ \"token\" :\t[1, {\"a\": [true, false, null]}, \"x\"] ,\n"
                         " \"n\": -12.5e+3, \"b\": false, \"session_id\" : null ,"
                         "\"type\":{\"k\":\"v\"} } \n\t ",
                         keys, v, 4),
                 0);
    CHECK_EQ_STR(span_str(v[0]), "{\"k\":\"v\"}");
    CHECK_EQ_STR(span_str(v[1]), "[1, {\"a\": [true, false, null]}, \"x\"]");
    CHECK_EQ_STR(span_str(v[2]), "null");
    CHECK(v[3].p == NULL);

    /* nested keys of the same name are not top-level members */
    CHECK_EQ_INT(members("{\"outer\":{\"type\":\"nested\",\"token\":\"no\"},\"list\":[{\"type\":1}],"
                         "\"type\":\"top\"}",
                         keys, v, 4),
                 0);
    CHECK_EQ_STR(span_str(v[0]), "\"top\"");
    CHECK(v[1].p == NULL);
    CHECK_EQ_INT(members("{\"outer\":{\"type\":\"nested\"}}", keys, v, 4), 0);
    CHECK(v[0].p == NULL);
    /* a key is matched whole, and strings that look like keys are values */
    CHECK_EQ_INT(members("{\"types\":1,\"typ\":2,\"x\":\"type\",\"type\":3}", keys, v, 4), 0);
    CHECK_EQ_STR(span_str(v[0]), "3");
    /* a duplicate key: the last one counts, as in jansson */
    CHECK_EQ_INT(members("{\"type\":\"a\",\"type\":\"b\"}", keys, v, 4), 0);
    CHECK_EQ_STR(span_str(v[0]), "\"b\"");
    /* strings are checked as a full parser would: escapes and UTF-8 */
    CHECK_EQ_INT(members("{\"type\":\"\xc3\xa9\xf0\x9f\x98\x80\\ud83d\\ude00\\u00e9\"}", keys, v, 4), 0);
    CHECK_EQ_INT(members("{\"\x88" "d\":1}", keys, v, 4), -1);
    CHECK_EQ_INT(members("{\"type\":\"\xc0\xaf\"}", keys, v, 4), -1);      /* overlong */
    CHECK_EQ_INT(members("{\"type\":\"\xed\xa0\x80\"}", keys, v, 4), -1);  /* surrogate */
    CHECK_EQ_INT(members("{\"type\":\"\xe2\x82\"}", keys, v, 4), -1);      /* cut short */
    CHECK_EQ_INT(members("{\"type\":\"\\x\"}", keys, v, 4), -1);           /* bad escape */
    CHECK_EQ_INT(members("{\"type\":\"\\u12\"}", keys, v, 4), -1);
    CHECK_EQ_INT(members("{\"type\":\"\\ud800\"}", keys, v, 4), -1);       /* lone high */
    CHECK_EQ_INT(members("{\"type\":\"\\udc00\"}", keys, v, 4), -1);       /* lone low */
    CHECK_EQ_INT(members("{\"type\":\"\\ud83d\\ede00\"}", keys, v, 4), -1); /* high, then not \\u */
    /* escaped quotes and braces inside strings do not confuse the walk */
    CHECK_EQ_INT(members("{\"x\":\"a \\\"}\\\\\",\"token\":\"{[\\\"type\\\":1]}\",\"type\":\"t\"}",
                         keys, v, 4),
                 0);
    CHECK_EQ_STR(span_str(v[0]), "\"t\"");
    CHECK_EQ_STR(span_str(v[1]), "\"{[\\\"type\\\":1]}\"");

    /* empty object; no keys asked */
    CHECK_EQ_INT(members("{}", keys, v, 4), 0);
    CHECK(v[0].p == NULL && v[1].p == NULL && v[2].p == NULL && v[3].p == NULL);
    CHECK_EQ_INT(members("  { }  ", keys, v, 4), 0);
    CHECK_EQ_INT(members("{\"a\":1}", keys, v, 0), 0);

    /* the length bounds the input: what follows n is not read */
    const char *s = "{\"type\":\"x\"}GARBAGE";
    CHECK_EQ_INT(cl_json_members(s, 12, keys, v, 4), 0);
    CHECK_EQ_STR(span_str(v[0]), "\"x\"");
}

static void test_json_members_malformed(void)
{
    static const char *const keys[] = {"type"};
    static const char *const bad[] = {
        "",
        "   ",
        "{",
        "{\"type\"",
        "{\"type\":",
        "{\"type\":\"token\"",        /* truncated object */
        "{\"type\":\"token\",",
        "{\"type\":\"tok",            /* unterminated string */
        "{\"type\":\"tok\\",          /* ends inside an escape */
        "{not json",
        "{\"type\":\"x\"} x",          /* trailing garbage */
        "{\"type\":\"x\"}{}",
        "{\"type\":\"x\"},",
        "{\"type\" \"x\"}",            /* missing colon */
        "{\"type\"=\"x\"}",
        "{\"type\":\"a\x01b\"}",       /* control character in a string */
        "{\"type\":\"a\nb\"}",
        "{\"ty\tpe\":1}",
        "{\"type\":}",
        "{\"type\":,}",
        "{\"type\":1,}",               /* trailing comma */
        "{,\"type\":1}",
        "{\"type\":1 \"b\":2}",        /* missing comma */
        "{type:1}",                    /* unquoted key */
        "{'type':1}",
        "{\"a\":[1,2}",                /* mismatched brackets */
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":{\"b\"}}",
        "{\"a\":{\"b\":1]}",
        "{\"a\":[1 2]}",
        "[\"type\",1]",                /* not an object */
        "\"type\"",
        "null",
        "}",
    };
    cl_json_span v[1];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = members(bad[i], keys, v, 1);
        if (rc != -1)
            fprintf(stderr, "  accepted: %s\n", bad[i]);
        CHECK_EQ_INT(rc, -1);
    }
    /* a NUL byte inside the given length is a control character */
    CHECK_EQ_INT(cl_json_members("{\"type\":\"a\0b\"}", 14, keys, v, 1), -1);

    /* nesting is bounded: deep input is refused, not recursed into */
    char deep[600];
    size_t n = 0;
    n += (size_t)snprintf(deep + n, sizeof deep - n, "{\"a\":");
    for (int i = 0; i < 200; i++)
        deep[n++] = '[';
    for (int i = 0; i < 200; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    CHECK_EQ_INT(cl_json_members(deep, n, keys, v, 1), -1);
    /* ... but ordinary nesting is fine */
    n = 0;
    n += (size_t)snprintf(deep + n, sizeof deep - n, "{\"a\":");
    for (int i = 0; i < 20; i++)
        deep[n++] = '[';
    for (int i = 0; i < 20; i++)
        deep[n++] = ']';
    n += (size_t)snprintf(deep + n, sizeof deep - n, ",\"type\":2}");
    CHECK_EQ_INT(cl_json_members(deep, n, keys, v, 1), 0);
    CHECK_EQ_STR(span_str(v[0]), "2");

    /* every prefix of a good message is refused (the whole one accepted) */
    const char *good = "{\"type\":\"token\",\"token\":\" tok2\",\"n\":[1,{\"x\":null}]}";
    size_t len = strlen(good);
    for (size_t k = 0; k < len; k++)
        CHECK_EQ_INT(cl_json_members(good, k, keys, v, 1), -1);
    CHECK_EQ_INT(cl_json_members(good, len, keys, v, 1), 0);
    CHECK_EQ_STR(span_str(v[0]), "\"token\"");
}

static void test_json_literals(void)
{
    /* literals and numbers follow the JSON grammar exactly */
    static const char *const good[] = {
        "{\"a\":true}", "{\"a\":false}", "{\"a\":null}", "{\"a\":0}", "{\"a\":-0.5e+3}",
        "{\"a\":12E7,\"b\":[1,-2,3.25]}", "{\"a\":0.0}",
    };
    static const char *const bad[] = {
        "{\"a\":xyz}", "{\"a\":tru}", "{\"a\":1.2.3}", "{\"a\":-}", "{\"a\":01}",
        "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":truex}", "{\"a\":nul}",
        "{\"a\":+1}", "{\"a\":NaN}",
    };
    static const char *const keys[] = {"a"};
    cl_json_span v;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK_EQ_INT(cl_json_members(good[i], strlen(good[i]), keys, &v, 1), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_EQ_INT(cl_json_members(bad[i], strlen(bad[i]), keys, &v, 1), -1);
}

static void test_json_first(void)
{
    cl_json_span a, f;
#define SPAN(s) (a.p = (s), a.n = strlen(a.p), a)
    f = cl_json_first(SPAN("[1,2,3]"));
    CHECK_EQ_STR(span_str(f), "1");
    f = cl_json_first(SPAN("[ {\"delta\":{\"content\":\"x\"}} , 2]"));
    CHECK_EQ_STR(span_str(f), "{\"delta\":{\"content\":\"x\"}}");
    f = cl_json_first(SPAN("[\"a,b\"]"));
    CHECK_EQ_STR(span_str(f), "\"a,b\"");
    f = cl_json_first(SPAN("[[1,2],3]"));
    CHECK_EQ_STR(span_str(f), "[1,2]");
    f = cl_json_first(SPAN("[]"));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("[ \n ]"));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("["));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("[ "));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("{\"a\":1}"));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("\"[1]\""));
    CHECK(f.p == NULL);
    f = cl_json_first(SPAN("[\"unterminated]"));
    CHECK(f.p == NULL);
    a.p = NULL;
    a.n = 0;
    f = cl_json_first(a);
    CHECK(f.p == NULL);
    /* as used on a chunk: choices[0].delta.content */
    static const char *const top[] = {"choices"};
    static const char *const ch[] = {"delta"};
    static const char *const dl[] = {"content"};
    const char *chunk = "{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok2\"},"
                        "\"finish_reason\":null}]}";
    cl_json_span v, c, d;
    CHECK_EQ_INT(cl_json_members(chunk, strlen(chunk), top, &v, 1), 0);
    f = cl_json_first(v);
    CHECK(f.p != NULL);
    if (f.p) {
        CHECK_EQ_INT(cl_json_members(f.p, f.n, ch, &c, 1), 0);
        CHECK(c.p != NULL);
        if (c.p) {
            CHECK_EQ_INT(cl_json_members(c.p, c.n, dl, &d, 1), 0);
            CHECK(cl_json_is(d, " tok2"));
        }
    }
#undef SPAN
}

static long jstr(const char *s, char *out, size_t cap)
{
    cl_json_span v = {s, strlen(s)};
    return cl_json_string(v, out, cap);
}

static void test_json_string(void)
{
    char out[64];
    long n;
    n = jstr("\"plain\"", out, sizeof out);
    CHECK_EQ_INT(n, 5);
    CHECK(memcmp(out, "plain", 5) == 0);
    n = jstr("\"\"", out, sizeof out);
    CHECK_EQ_INT(n, 0);
    n = jstr("\"a\\nb\\\"c\\\\d\\/e\"", out, sizeof out);
    CHECK_EQ_INT(n, 9);
    CHECK(memcmp(out, "a\nb\"c\\d/e", 9) == 0);
    n = jstr("\"\\b\\f\\r\\t\"", out, sizeof out);
    CHECK_EQ_INT(n, 4);
    CHECK(memcmp(out, "\b\f\r\t", 4) == 0);
    n = jstr("\"\\u0041\\u00e9\"", out, sizeof out);
    CHECK_EQ_INT(n, 3);
    CHECK(memcmp(out, "A\xC3\xA9", 3) == 0);
    n = jstr("\"\\u00E9\"", out, sizeof out); /* upper-case hex */
    CHECK_EQ_INT(n, 2);
    CHECK(memcmp(out, "\xC3\xA9", 2) == 0);
    n = jstr("\"\\u20ac\"", out, sizeof out); /* three bytes */
    CHECK_EQ_INT(n, 3);
    CHECK(memcmp(out, "\xE2\x82\xAC", 3) == 0);
    n = jstr("\"\\ud83d\\ude00!\"", out, sizeof out); /* a surrogate pair */
    CHECK_EQ_INT(n, 5);
    CHECK(memcmp(out, "\xF0\x9F\x98\x80!", 5) == 0);
    n = jstr("\"\\uDBFF\\uDFFF\"", out, sizeof out); /* U+10FFFF */
    CHECK_EQ_INT(n, 4);
    CHECK(memcmp(out, "\xF4\x8F\xBF\xBF", 4) == 0);
    n = jstr("\"\\u0000\"", out, sizeof out);
    CHECK_EQ_INT(n, 1);
    CHECK(out[0] == '\0');
    n = jstr("\"h\xC3\xA9\"", out, sizeof out); /* raw UTF-8 passes through */
    CHECK_EQ_INT(n, 3);
    CHECK(memcmp(out, "h\xC3\xA9", 3) == 0);

    static const char *const bad[] = {
        "\"\\ud83d\"",           /* lone high surrogate */
        "\"\\ud83dx\"",
        "\"\\ud83d\\u0041\"",    /* high surrogate, then not a low one */
        "\"\\ud83d\\ud83d\"",
        "\"\\ude00\"",           /* lone low surrogate */
        "\"\\ude00\\ud83d\"",    /* the pair backwards */
        "\"\\x41\"",             /* bad escapes */
        "\"\\a\"",
        "\"\\'\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"\\u\"",
        "\"abc\\\"",             /* the closing quote is escaped */
        "\"a\"b\"",              /* a raw quote inside */
        "\"a\nb\"",              /* a raw control character */
        "\"a\x1f\"",
        "\"abc",                 /* not a string */
        "abc\"",
        "\"",
        "",
        "123",
        "null",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        long rc = jstr(bad[i], out, sizeof out);
        if (rc != -1)
            fprintf(stderr, "  accepted: %s -> %ld\n", bad[i], rc);
        CHECK_EQ_INT(rc, -1);
    }
    cl_json_span none = {NULL, 0};
    CHECK_EQ_INT(cl_json_string(none, out, sizeof out), -1);

    /* -2 when the text does not fit; exactly fitting is fine */
    CHECK_EQ_INT(jstr("\"abc\"", out, 2), -2);
    CHECK_EQ_INT(jstr("\"abc\"", out, 3), 3);
    CHECK_EQ_INT(jstr("\"abc\"", out, 0), -2);
    CHECK_EQ_INT(jstr("\"\"", out, 0), 0);
    CHECK_EQ_INT(jstr("\"\\u00e9\"", out, 1), -2);
    CHECK_EQ_INT(jstr("\"\\u00e9\"", out, 2), 2);
    CHECK_EQ_INT(jstr("\"\\ud83d\\ude00\"", out, 3), -2);
    CHECK_EQ_INT(jstr("\"\\ud83d\\ude00\"", out, 4), 4);
    CHECK_EQ_INT(jstr("\"a\\n\"", out, 1), -2);
    /* nothing is written past cap */
    memset(out, 'Z', sizeof out);
    CHECK_EQ_INT(jstr("\"0123456789\"", out, 4), -2);
    CHECK(out[4] == 'Z');
}

static void test_json_is(void)
{
    cl_json_span v;
#define SPAN(s) (v.p = (s), v.n = strlen(v.p), v)
    CHECK(cl_json_is(SPAN("\"token\""), "token"));
    CHECK(!cl_json_is(SPAN("\"tokens\""), "token"));
    CHECK(!cl_json_is(SPAN("\"toke\""), "token"));
    CHECK(!cl_json_is(SPAN("\"Token\""), "token"));
    CHECK(!cl_json_is(SPAN("token"), "token"));
    CHECK(!cl_json_is(SPAN("{\"token\":1}"), "token"));
    CHECK(cl_json_is(SPAN("\"\""), ""));
    CHECK(!cl_json_is(SPAN("null"), ""));
    v.p = NULL;
    v.n = 0;
    CHECK(!cl_json_is(v, "token"));
    CHECK(!cl_json_is(v, ""));
    /* as used: the value span cl_json_members found */
    static const char *const keys[] = {"type", "session_id"};
    cl_json_span m[2];
    const char *msg = "{\"session_id\":\"cb-1-0-0\",\"type\":\"complete\"}";
    CHECK_EQ_INT(cl_json_members(msg, strlen(msg), keys, m, 2), 0);
    CHECK(cl_json_is(m[0], "complete"));
    CHECK(cl_json_is(m[1], "cb-1-0-0"));
    CHECK(!cl_json_is(m[1], "cb-1-0-1"));
#undef SPAN
}

/* ---- check.c ------------------------------------------------------------------- */

static const char *feed(const cb_expect *e, const char *const *pieces, int n)
{
    cb_check c;
    cb_check_reset(&c);
    for (int i = 0; i < n; i++)
        cb_check_piece(&c, e, pieces[i], strlen(pieces[i]));
    return cb_check_verdict(&c, e);
}

static void test_expect_text(void)
{
    cb_expect e;
    CHECK_EQ_INT(cb_expect_init(&e, 3), 0);
    CHECK_EQ_STR(e.text, "tok1 tok2 tok3");
    CHECK_EQ_INT(e.len, 14);
    CHECK_EQ_INT(e.ntokens, 3);
    cb_expect_free(&e);
    CHECK(e.text == NULL);

    CHECK_EQ_INT(cb_expect_init(&e, 1), 0);
    CHECK_EQ_STR(e.text, "tok1");
    cb_expect_free(&e);
    CHECK_EQ_INT(cb_expect_init(&e, 0), 0);
    CHECK_EQ_STR(e.text, "");
    CHECK_EQ_INT(e.len, 0);
    cb_expect_free(&e);

    /* 1000 tokens: the same text as the mock's, token by token */
    CHECK_EQ_INT(cb_expect_init(&e, 1000), 0);
    size_t off = 0;
    int ok = 1;
    for (unsigned i = 0; i < 1000; i++) {
        char t[CL_MOCK_TOKEN_MAX + 1];
        char want[32];
        size_t k = cl_mock_token(i, t);
        snprintf(want, sizeof want, "%stok%u", i ? " " : "", i + 1);
        if (k != strlen(want) || memcmp(t, want, k) != 0 || memcmp(e.text + off, want, k) != 0)
            ok = 0;
        off += k;
    }
    CHECK(ok);
    CHECK_EQ_INT(e.len, off);
    CHECK(e.text[e.len] == '\0');
    CHECK(strncmp(e.text + e.len - 8, " tok1000", 8) == 0);
    cb_expect_free(&e);
}

static void test_check_pieces(void)
{
    cb_expect e;
    CHECK_EQ_INT(cb_expect_init(&e, 3), 0);
    static const char *const exact[] = {"tok1", " tok2", " tok3"};
    static const char *const missing[] = {"tok1", " tok2"};
    static const char *const wrong[] = {"tok1", " tokX", " tok3"};
    static const char *const extra[] = {"tok1", " tok2", " tok3", " tok4"};
    static const char *const longer_last[] = {"tok1", " tok2", " tok33"};
    static const char *const wrong_first[] = {"tok0", " tok2", " tok3"};
    static const char *const none[] = {NULL};
    static const char *const empties[] = {"", "tok1", "", " tok2 tok3", ""};
    static const char *const whole[] = {"tok1 tok2 tok3"};
    static const char *const space_extra[] = {"tok1 tok2 tok3", " "};
    CHECK(feed(&e, exact, 3) == NULL);
    CHECK_EQ_STR(feed(&e, missing, 2), "TRUNCATED");
    CHECK_EQ_STR(feed(&e, wrong, 3), "CORRUPT");
    CHECK_EQ_STR(feed(&e, extra, 4), "CORRUPT");
    CHECK_EQ_STR(feed(&e, longer_last, 3), "CORRUPT");
    CHECK_EQ_STR(feed(&e, wrong_first, 3), "CORRUPT");
    CHECK_EQ_STR(feed(&e, none, 0), "TRUNCATED");
    CHECK(feed(&e, empties, 5) == NULL);
    CHECK(feed(&e, whole, 1) == NULL);
    CHECK_EQ_STR(feed(&e, space_extra, 2), "CORRUPT");
    /* a wrong piece cut short is still CORRUPT, never TRUNCATED */
    CHECK_EQ_STR(feed(&e, wrong, 2), "CORRUPT");

    /* counters: pieces counts every piece, got the bytes matched */
    cb_check c;
    cb_check_reset(&c);
    for (int i = 0; i < 3; i++)
        cb_check_piece(&c, &e, wrong[i], strlen(wrong[i]));
    CHECK_EQ_INT(c.pieces, 3);
    CHECK_EQ_INT(c.got, 4);
    CHECK(c.wrong);
    cb_check_reset(&c);
    CHECK_EQ_INT(c.got, 0);
    CHECK_EQ_INT(c.pieces, 0);
    CHECK(!c.wrong);
    cb_expect_free(&e);
}

static void test_check_every_split(void)
{
    cb_expect e;
    CHECK_EQ_INT(cb_expect_init(&e, 25), 0);
    const char *t = e.text;
    size_t n = e.len;
    int bad = 0;
    /* two pieces cut at every byte */
    for (size_t i = 0; i <= n; i++) {
        cb_check c;
        cb_check_reset(&c);
        cb_check_piece(&c, &e, t, i);
        cb_check_piece(&c, &e, t + i, n - i);
        if (cb_check_verdict(&c, &e) != NULL)
            bad++;
        /* the first piece alone is a truncated answer (unless it is all) */
        cb_check_reset(&c);
        cb_check_piece(&c, &e, t, i);
        const char *v = cb_check_verdict(&c, &e);
        if (i < n ? (!v || strcmp(v, "TRUNCATED") != 0) : v != NULL)
            bad++;
    }
    /* three pieces cut at every pair of positions */
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            cb_check c;
            cb_check_reset(&c);
            cb_check_piece(&c, &e, t, i);
            cb_check_piece(&c, &e, t + i, j - i);
            cb_check_piece(&c, &e, t + j, n - j);
            if (cb_check_verdict(&c, &e) != NULL)
                bad++;
        }
    }
    /* one byte at a time; then with one byte changed anywhere: CORRUPT */
    cb_check c;
    cb_check_reset(&c);
    for (size_t i = 0; i < n; i++)
        cb_check_piece(&c, &e, t + i, 1);
    if (cb_check_verdict(&c, &e) != NULL)
        bad++;
    char *copy = malloc(n + 1);
    for (size_t k = 0; k < n; k++) {
        memcpy(copy, t, n);
        copy[k] ^= 0x20;
        for (size_t i = 0; i <= n; i += 7) {
            cb_check_reset(&c);
            cb_check_piece(&c, &e, copy, i);
            cb_check_piece(&c, &e, copy + i, n - i);
            const char *v = cb_check_verdict(&c, &e);
            if (!v || strcmp(v, "CORRUPT") != 0)
                bad++;
        }
    }
    free(copy);
    CHECK_EQ_INT(bad, 0);
    cb_expect_free(&e);
}

static void test_check_whole(void)
{
    cb_expect e;
    CHECK_EQ_INT(cb_expect_init(&e, 3), 0);
    const char *w = "tok1 tok2 tok3";
    CHECK(cb_check_whole(&e, w, strlen(w)) == NULL);
    CHECK_EQ_STR(cb_check_whole(&e, w, strlen(w) - 1), "TRUNCATED");
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tok2", 9), "TRUNCATED");
    CHECK_EQ_STR(cb_check_whole(&e, "", 0), "TRUNCATED");
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tok2 tok3 tok4", 19), "CORRUPT");
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tok2 tok3 ", 15), "CORRUPT");
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tokX tok3", 14), "CORRUPT");
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tokX", 9), "CORRUPT"); /* shorter and different */
    CHECK_EQ_STR(cb_check_whole(&e, "TOK1 TOK2 TOK3", 14), "CORRUPT");
    /* the length is what counts, not a NUL */
    CHECK_EQ_STR(cb_check_whole(&e, "tok1 tok2 tok3\0", 15), "CORRUPT");
    cb_expect_free(&e);

    CHECK_EQ_INT(cb_expect_init(&e, 0), 0);
    CHECK(cb_check_whole(&e, "", 0) == NULL);
    CHECK_EQ_STR(cb_check_whole(&e, "x", 1), "CORRUPT");
    cb_expect_free(&e);
}

/* ---- stats.c ------------------------------------------------------------------- */

static cb_stats *stats_new(void)
{
    cb_stats *s = malloc(sizeof *s);
    cb_stats_init(s);
    return s;
}

static const cb_error *find_error(const cb_stats *s, const char *code)
{
    for (int i = 0; i < s->nerrors; i++)
        if (strcmp(s->errors[i].code, code) == 0)
            return &s->errors[i];
    if (strcmp(code, "OTHER") == 0 && s->errors[CB_MAX_CODES].n)
        return &s->errors[CB_MAX_CODES];
    return NULL;
}

static uint64_t error_count(const cb_stats *s, const char *code)
{
    const cb_error *e = find_error(s, code);
    return e ? e->n : 0;
}

static void test_stats_errors(void)
{
    cb_stats *s = stats_new();
    CHECK_EQ_INT(s->nerrors, 0);
    CHECK_EQ_INT(cb_stats_errors(s), 0);
    cb_stats_error(s, "TIMEOUT", "first timeout");
    cb_stats_error(s, "CLOSED", "the server closed the connection");
    cb_stats_error(s, "TIMEOUT", "second timeout");
    cb_stats_error(s, "TIMEOUT", NULL);
    cb_stats_error(s, "HTTP_429:rate_limit_exceeded", "HTTP 429 slow down");
    cb_stats_error(s, "EMPTY", NULL);
    CHECK_EQ_INT(s->nerrors, 4);
    CHECK_EQ_INT(error_count(s, "TIMEOUT"), 3);
    CHECK_EQ_INT(error_count(s, "CLOSED"), 1);
    CHECK_EQ_INT(error_count(s, "HTTP_429:rate_limit_exceeded"), 1);
    CHECK_EQ_INT(error_count(s, "EMPTY"), 1);
    const cb_error *e = find_error(s, "TIMEOUT");
    CHECK(e != NULL);
    if (e)
        CHECK_EQ_STR(e->example, "TIMEOUT: first timeout");
    e = find_error(s, "HTTP_429:rate_limit_exceeded");
    if (e)
        CHECK_EQ_STR(e->example, "HTTP_429:rate_limit_exceeded: HTTP 429 slow down");
    e = find_error(s, "EMPTY");
    if (e)
        CHECK_EQ_STR(e->example, "EMPTY: ");
    /* first-seen order is kept */
    CHECK_EQ_STR(s->errors[0].code, "TIMEOUT");
    CHECK_EQ_STR(s->errors[1].code, "CLOSED");
    CHECK_EQ_INT(s->errors[CB_MAX_CODES].n, 0);

    /* long codes and examples are cut, not overflowed */
    char longcode[100], longex[400];
    memset(longcode, 'C', sizeof longcode - 1);
    longcode[sizeof longcode - 1] = 0;
    memset(longex, 'x', sizeof longex - 1);
    longex[sizeof longex - 1] = 0;
    cb_stats_error(s, longcode, longex);
    e = &s->errors[s->nerrors - 1];
    CHECK_EQ_INT(strlen(e->code), CB_CODE_MAX - 1);
    CHECK_EQ_INT(strlen(e->example), CB_EXAMPLE_MAX - 1);
    CHECK_EQ_INT(e->n, 1);

    /* the failure total is failed turns plus failed connections */
    s->turns_failed = 5;
    s->conns_failed = 2;
    CHECK_EQ_INT(cb_stats_errors(s), 7);
    free(s);
}

static void test_stats_other(void)
{
    cb_stats *s = stats_new();
    char code[32], ex[32];
    for (int i = 0; i < CB_MAX_CODES + 10; i++) {
        snprintf(code, sizeof code, "CODE_%d", i);
        snprintf(ex, sizeof ex, "example %d", i);
        cb_stats_error(s, code, ex);
        cb_stats_error(s, code, "again");
    }
    CHECK_EQ_INT(s->nerrors, CB_MAX_CODES);
    for (int i = 0; i < CB_MAX_CODES; i++) {
        snprintf(code, sizeof code, "CODE_%d", i);
        CHECK_EQ_INT(error_count(s, code), 2);
    }
    snprintf(code, sizeof code, "CODE_%d", CB_MAX_CODES);
    CHECK(find_error(s, code) == NULL);
    const cb_error *o = &s->errors[CB_MAX_CODES];
    CHECK_EQ_STR(o->code, "OTHER");
    CHECK_EQ_INT(o->n, 20);
    /* OTHER's example is the first one it collected, with its own code */
    snprintf(ex, sizeof ex, "CODE_%d: example %d", CB_MAX_CODES, CB_MAX_CODES);
    CHECK_EQ_STR(o->example, ex);
    /* a code seen before the table filled still counts as itself */
    cb_stats_error(s, "CODE_0", "late");
    CHECK_EQ_INT(error_count(s, "CODE_0"), 3);
    CHECK_EQ_INT(o->n, 20);
    free(s);
}

static void test_stats_merge(void)
{
    cb_stats *a = stats_new(), *b = stats_new(), *m = stats_new();
    a->turns_ok = 10;
    a->turns_failed = 2;
    a->tokens = 200;
    a->bytes_in = 5000;
    a->conns_ok = 3;
    a->conns_failed = 1;
    a->conns_lost = 1;
    a->late_starts = 4;
    a->t_start_ns = 2000;
    a->t_end_ns = 9000;
    cb_hist_add(&a->ttft, 100);
    cb_hist_add(&a->turn, 1000);
    cb_hist_add(&a->connect, 7);
    cb_stats_error(a, "TIMEOUT", "a timeout");
    cb_stats_error(a, "TIMEOUT", "a second timeout");
    cb_stats_error(a, "CONNECT", "connection refused");
    cb_stats_error(a, "HTTP_429:rate_limit_exceeded", "HTTP 429 Rate limit reached");

    b->turns_ok = 5;
    b->turns_failed = 1;
    b->tokens = 100;
    b->bytes_in = 700;
    b->conns_ok = 2;
    b->conns_lost = 2;
    b->t_start_ns = 1000;
    b->t_end_ns = 8000;
    cb_hist_add(&b->ttft, 300);
    cb_hist_add(&b->gap, 5);
    cb_stats_error(b, "CORRUPT", "3 of 14 bytes matched");
    cb_stats_error(b, "TIMEOUT", "b timeout");

    cb_stats_merge(m, a);
    cb_stats_merge(m, b);
    CHECK_EQ_INT(m->turns_ok, 15);
    CHECK_EQ_INT(m->turns_failed, 3);
    CHECK_EQ_INT(m->tokens, 300);
    CHECK_EQ_INT(m->bytes_in, 5700);
    CHECK_EQ_INT(m->conns_ok, 5);
    CHECK_EQ_INT(m->conns_failed, 1);
    CHECK_EQ_INT(m->conns_lost, 3);
    CHECK_EQ_INT(m->late_starts, 4);
    CHECK_EQ_INT(m->t_start_ns, 1000); /* the earliest start */
    CHECK_EQ_INT(m->t_end_ns, 9000);   /* the latest end */
    CHECK_EQ_INT(m->ttft.n, 2);
    CHECK_EQ_INT(m->ttft.min, 100);
    CHECK_EQ_INT(m->ttft.max, 300);
    CHECK_EQ_INT(m->turn.n, 1);
    CHECK_EQ_INT(m->gap.n, 1);
    CHECK_EQ_INT(m->connect.n, 1);
    CHECK_EQ_INT(cb_stats_errors(m), 4);

    CHECK_EQ_INT(m->nerrors, 4);
    CHECK_EQ_INT(error_count(m, "TIMEOUT"), 3);     /* on both sides */
    CHECK_EQ_INT(error_count(m, "CONNECT"), 1);     /* only in a */
    CHECK_EQ_INT(error_count(m, "CORRUPT"), 1);     /* only in b */
    CHECK_EQ_INT(error_count(m, "HTTP_429:rate_limit_exceeded"), 1);
    /* examples: the first side's, unchanged by the trip through merge */
    const cb_error *e = find_error(m, "TIMEOUT");
    if (e)
        CHECK_EQ_STR(e->example, "TIMEOUT: a timeout");
    e = find_error(m, "CORRUPT");
    if (e)
        CHECK_EQ_STR(e->example, "CORRUPT: 3 of 14 bytes matched");
    /* a code with a colon in it (HTTP_<status>:<code>) keeps its example whole */
    e = find_error(m, "HTTP_429:rate_limit_exceeded");
    if (e)
        CHECK_EQ_STR(e->example, "HTTP_429:rate_limit_exceeded: HTTP 429 Rate limit reached");

    /* merging into a run that has some of the codes already */
    cb_stats *c = stats_new();
    cb_stats_error(c, "CORRUPT", "c's corrupt");
    cb_stats_merge(c, a);
    CHECK_EQ_INT(error_count(c, "CORRUPT"), 1);
    CHECK_EQ_INT(error_count(c, "TIMEOUT"), 2);
    e = find_error(c, "CORRUPT");
    if (e)
        CHECK_EQ_STR(e->example, "CORRUPT: c's corrupt");

    /* merging an empty run changes nothing; t_start 0 means "never started" */
    cb_stats *empty = stats_new();
    cb_stats_merge(m, empty);
    CHECK_EQ_INT(m->turns_ok, 15);
    CHECK_EQ_INT(m->t_start_ns, 1000);
    CHECK_EQ_INT(m->nerrors, 4);
    cb_stats *m2 = stats_new();
    cb_stats_merge(m2, empty);
    cb_stats_merge(m2, b);
    CHECK_EQ_INT(m2->t_start_ns, 1000);
    CHECK_EQ_INT(m2->t_end_ns, 8000);
    free(a);
    free(b);
    free(c);
    free(m);
    free(m2);
    free(empty);
}

static void test_stats_merge_other(void)
{
    /* two runs with 20 distinct codes each, 10 shared: 30 codes in all, so
     * the merged table has 24 of them and OTHER holds the rest */
    cb_stats *a = stats_new(), *b = stats_new(), *m = stats_new();
    char code[32];
    for (int i = 0; i < 20; i++) {
        snprintf(code, sizeof code, "E%02d", i);
        cb_stats_error(a, code, "from a");
        snprintf(code, sizeof code, "E%02d", i + 10);
        cb_stats_error(b, code, "from b");
        cb_stats_error(b, code, "from b");
    }
    cb_stats_merge(m, a);
    cb_stats_merge(m, b);
    CHECK_EQ_INT(m->nerrors, CB_MAX_CODES);
    uint64_t total = 0;
    for (int i = 0; i <= CB_MAX_CODES; i++)
        total += m->errors[i].n;
    CHECK_EQ_INT(total, 20 + 40); /* nothing lost */
    CHECK_EQ_INT(error_count(m, "E00"), 1);
    CHECK_EQ_INT(error_count(m, "E15"), 3);
    CHECK_EQ_INT(error_count(m, "E23"), 2);
    CHECK_EQ_STR(m->errors[CB_MAX_CODES].code, "OTHER");
    CHECK_EQ_INT(m->errors[CB_MAX_CODES].n, 12); /* E24..E29, 2 each */

    /* a run that already overflowed: its OTHER count is carried over */
    cb_stats *c = stats_new(), *m2 = stats_new();
    for (int i = 0; i < CB_MAX_CODES + 3; i++) {
        snprintf(code, sizeof code, "X%02d", i);
        cb_stats_error(c, code, "x");
    }
    CHECK_EQ_INT(c->errors[CB_MAX_CODES].n, 3);
    cb_stats_merge(m2, c);
    cb_stats_merge(m2, c);
    total = 0;
    for (int i = 0; i <= CB_MAX_CODES; i++)
        total += m2->errors[i].n;
    CHECK_EQ_INT(total, 2 * (CB_MAX_CODES + 3));
    CHECK_EQ_INT(error_count(m2, "X00"), 2);
    free(a);
    free(b);
    free(c);
    free(m);
    free(m2);
}

CL_TEST_MAIN(test_hist_small_values_exact, test_hist_single_and_empty, test_hist_nearest_rank,
             test_hist_large_values, test_hist_buckets, test_hist_merge, test_json_members,
             test_json_members_malformed, test_json_literals, test_json_first, test_json_string, test_json_is,
             test_expect_text, test_check_pieces, test_check_every_split, test_check_whole,
             test_stats_errors, test_stats_other, test_stats_merge, test_stats_merge_other)
