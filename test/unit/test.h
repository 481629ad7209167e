/**
 * test.h — a tiny unit-test harness for chatloop's C tests.
 *
 * Each test file defines `static void test_xxx(void)` functions and a
 * `CL_TEST_MAIN(test_a, test_b, ...)` at the end. CHECK* record a failure
 * and go on; the binary prints one line per test and exits non-zero when any
 * failed. test/run.sh sums the "passed/failed" counts of all binaries.
 */
#ifndef CHATLOOP_TEST_H
#define CHATLOOP_TEST_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int cl_test_failures_;

#define CHECK(cond) do { if (!(cond)) { cl_test_failures_++; \
    fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ != b_) { cl_test_failures_++; fprintf(stderr, "  %s:%d: %s == %lld, expected %s == %lld\n", \
    __FILE__, __LINE__, #a, a_, #b, b_); } } while (0)
#define CHECK_EQ_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) { cl_test_failures_++; \
    fprintf(stderr, "  %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
    a_ ? a_ : "(null)", b_ ? b_ : "(null)"); } } while (0)
#define CHECK_CONTAINS(hay, needle) do { const char *h_ = (hay), *n_ = (needle); \
    if (!h_ || !strstr(h_, n_)) { cl_test_failures_++; \
    fprintf(stderr, "  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
    h_ ? h_ : "(null)", n_); } } while (0)

typedef void (*cl_test_fn)(void);

static inline int cl_test_run_all_(const char *file, cl_test_fn *fns, const char **names, int n) {
    int passed = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        int before = cl_test_failures_;
        fns[i]();
        if (cl_test_failures_ == before) { passed++; printf("ok   %s\n", names[i]); }
        else { failed++; printf("FAIL %s\n", names[i]); }
    }
    printf("%s: %d passed, %d failed\n", file, passed, failed);
    return failed ? 1 : 0;
}

#define CL_TEST_STR_(...) #__VA_ARGS__
#define CL_TEST_MAIN(...) \
    int main(void) { \
        cl_test_fn fns_[] = { __VA_ARGS__ }; \
        char names_buf_[] = CL_TEST_STR_(__VA_ARGS__); \
        const char *names_[sizeof fns_ / sizeof fns_[0]]; \
        int n_ = 0; char *s_ = names_buf_; \
        while (s_ && n_ < (int)(sizeof fns_ / sizeof fns_[0])) { \
            while (*s_ == ' ' || *s_ == ',') s_++; \
            names_[n_++] = s_; s_ = strchr(s_, ','); if (s_) *s_++ = 0; } \
        return cl_test_run_all_(__FILE__, fns_, names_, n_); }

#endif
