/* test_tool_text.c — the <TOOL_CALLS> filter and parser (src/llm/tool_text.c):
 * what the client sees and which calls are cut out, for every way the
 * answer can be split into pieces (whole, every two-way split, byte by
 * byte, and many random splits), markers that are almost markers, blocks
 * that never close, the budget, and malformed blocks. */
#include "test.h"

#include "chatloop/tool_text.h"

#include <stdint.h>

/* Runs `in` through a filter in pieces whose ends are given by cuts[]
 * (ascending, within the string); the released text goes to *out (malloc'd). */
static void run_cuts(const char *in, const size_t *cuts, int ncuts, cl_tool_text *f, char **out)
{
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_tool_text_init(f);
    size_t n = strlen(in), at = 0;
    for (int i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        CHECK(cl_tool_text_feed(f, in + at, end - at, &b) == 0);
        at = end;
    }
    CHECK(cl_tool_text_finish(f, &b) == 0);
    const char *s = cl_buf_cstr(&b);
    *out = strdup(s ? s : "");
    cl_buf_release(&b);
}

/* "name args|name args|..." or "!error|..." for the calls of f. */
static void calls_str(cl_tool_text *f, char *dst, size_t len)
{
    cl_tool_text_call calls[CL_TOOL_TEXT_MAX_CALLS];
    int n = cl_tool_text_calls(f, calls, CL_TOOL_TEXT_MAX_CALLS);
    dst[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t used = strlen(dst);
        if (calls[i].error)
            snprintf(dst + used, len - used, "%s!%s", i ? "|" : "", calls[i].error);
        else
            snprintf(dst + used, len - used, "%s%s %s", i ? "|" : "", calls[i].name, calls[i].arguments);
    }
    cl_tool_text_calls_free(calls, n);
}

static uint32_t rng = 12345;
static uint32_t next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* Every split of `in` gives `want_out` and `want_calls`. */
static void check_all_splits(const char *in, const char *want_out, const char *want_calls)
{
    size_t n = strlen(in);
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    char got_calls[2048];
    int failures_before = cl_test_failures_;
    for (int mode = 0; mode < 3 + 200; mode++) {
        int ncuts = 0;
        if (mode == 0) {
            ncuts = 0;                                  /* whole */
        } else if (mode == 1) {
            for (size_t i = 1; i < n; i++)              /* byte by byte */
                cuts[ncuts++] = i;
        } else if (mode == 2) {
            /* every two-way split, checked one by one below */
        } else {
            for (size_t i = 1; i < n; i++)              /* random pieces */
                if (next_rand() % 5 == 0)
                    cuts[ncuts++] = i;
        }
        if (mode == 2) {
            for (size_t i = 1; i < n; i++) {
                size_t one = i;
                cl_tool_text f;
                char *out;
                run_cuts(in, &one, 1, &f, &out);
                calls_str(&f, got_calls, sizeof got_calls);
                CHECK_EQ_STR(out, want_out);
                CHECK_EQ_STR(got_calls, want_calls);
                free(out);
                cl_tool_text_release(&f);
                if (cl_test_failures_ != failures_before) {
                    fprintf(stderr, "  (split at %zu of \"%s\")\n", i, in);
                    free(cuts);
                    return;
                }
            }
            continue;
        }
        cl_tool_text f;
        char *out;
        run_cuts(in, cuts, ncuts, &f, &out);
        calls_str(&f, got_calls, sizeof got_calls);
        CHECK_EQ_STR(out, want_out);
        CHECK_EQ_STR(got_calls, want_calls);
        free(out);
        cl_tool_text_release(&f);
        if (cl_test_failures_ != failures_before) {
            fprintf(stderr, "  (mode %d, %d pieces, of \"%s\")\n", mode, ncuts + 1, in);
            break;
        }
    }
    free(cuts);
}

static void test_plain_text_passes_whole(void)
{
    check_all_splits("Hello, world.", "Hello, world.", "");
    check_all_splits("", "", "");
    check_all_splits("a < b and b > c", "a < b and b > c", "");
    check_all_splits("<TOOL not a marker>", "<TOOL not a marker>", "");
    check_all_splits("<TOOL_CALL>", "<TOOL_CALL>", "");
    check_all_splits("<<<TOOL_CALLS", "<<<TOOL_CALLS", "");
    check_all_splits("ends with <TOOL_CALLS", "ends with <TOOL_CALLS", "");
    check_all_splits("<tool_calls>{}</tool_calls>", "<tool_calls>{}</tool_calls>", "");
    check_all_splits("ünïcödé ✓ <3", "ünïcödé ✓ <3", "");
}

static void test_one_block_cut_out(void)
{
    check_all_splits("<TOOL_CALLS>{\"tools\":[{\"name\":\"add_task\",\"params\":{\"title\":\"Buy milk\"}}]}</TOOL_CALLS>",
                     "", "add_task {\"title\":\"Buy milk\"}");
    check_all_splits("Sure. <TOOL_CALLS>{\"tools\":[{\"name\":\"list_tasks\"}]}</TOOL_CALLS> Done.",
                     "Sure.  Done.", "list_tasks {}");
    /* a "<" inside the block's JSON, and almost-close markers */
    check_all_splits("x<TOOL_CALLS>{\"tools\":[{\"name\":\"add_task\",\"params\":{\"title\":\"a<b </TOOL\"}}]}</TOOL_CALLS>y",
                     "xy", "add_task {\"title\":\"a<b </TOOL\"}");
    /* "<" right before the marker */
    check_all_splits("<<TOOL_CALLS>{\"tools\":[]}</TOOL_CALLS>", "<", "");
}

static void test_two_blocks_and_many_calls(void)
{
    check_all_splits("a<TOOL_CALLS>{\"tools\":[{\"name\":\"add_task\",\"params\":{\"title\":\"x\"}},"
                     "{\"name\":\"complete_task\",\"params\":{\"task_id\":1}}]}</TOOL_CALLS>b"
                     "<TOOL_CALLS>{\"tools\":[{\"name\":\"list_tasks\",\"params\":{\"status\":\"pending\"}}]}</TOOL_CALLS>c",
                     "abc",
                     "add_task {\"title\":\"x\"}|complete_task {\"task_id\":1}|list_tasks {\"status\":\"pending\"}");
}

static void test_unclosed_block_ends_with_the_answer(void)
{
    /* models forget the close marker: the block ends with the answer */
    check_all_splits("ok <TOOL_CALLS>{\"tools\":[{\"name\":\"delete_task\",\"params\":{\"task_id\":2}}]}",
                     "ok ", "delete_task {\"task_id\":2}");
    /* an unclosed block whose end looks like the start of a close marker */
    check_all_splits("<TOOL_CALLS>{\"tools\":[]}</TOOL", "", "!the tool call block is not "
                     "{\"tools\":[{\"name\":...,\"params\":{...}}]} JSON");
}

static void test_malformed_blocks_are_errors_for_the_model(void)
{
    const char *shape = "!the tool call block is not {\"tools\":[{\"name\":...,\"params\":{...}}]} JSON";
    check_all_splits("<TOOL_CALLS>not json</TOOL_CALLS>", "", shape);
    check_all_splits("<TOOL_CALLS>{\"tool\":[]}</TOOL_CALLS>", "", shape);
    check_all_splits("<TOOL_CALLS>{\"tools\":[{\"params\":{}}]}</TOOL_CALLS>", "",
                     "!a tool call needs a \"name\" string");
    check_all_splits("<TOOL_CALLS>{\"tools\":[{\"name\":\"add_task\",\"params\":[1]}]}</TOOL_CALLS>", "",
                     "!\"params\" must be an object");
    /* one bad entry does not hide the good ones */
    check_all_splits("<TOOL_CALLS>{\"tools\":[{\"name\":7},{\"name\":\"list_tasks\",\"params\":null}]}</TOOL_CALLS>",
                     "", "!a tool call needs a \"name\" string|list_tasks {}");
}

static void test_budget(void)
{
    /* a block past the budget is cut and refused; the text after it still flows */
    size_t big = CL_TOOL_TEXT_MAX_BYTES + 100;
    char *in = malloc(big + 64);
    strcpy(in, "a<TOOL_CALLS>");
    size_t at = strlen(in);
    memset(in + at, 'x', big);
    strcpy(in + at + big, "</TOOL_CALLS>b");
    cl_tool_text f;
    char *out;
    size_t cuts[64];
    int n = 0;
    for (size_t c = 1000; c < strlen(in) && n < 64; c += 1000)
        cuts[n++] = c;
    run_cuts(in, cuts, n, &f, &out);
    CHECK_EQ_STR(out, "ab");
    CHECK(f.over);
    char calls[256];
    calls_str(&f, calls, sizeof calls);
    CHECK_EQ_STR(calls, "!the tool call block is too long");
    CHECK(f.blocks.len <= CL_TOOL_TEXT_MAX_BYTES + 1);
    free(out);
    cl_tool_text_release(&f);
    free(in);

    /* more calls than the cap: the first CL_TOOL_TEXT_MAX_CALLS are taken */
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "<TOOL_CALLS>{\"tools\":[");
    for (int i = 0; i < CL_TOOL_TEXT_MAX_CALLS + 5; i++)
        cl_buf_printf(&b, "%s{\"name\":\"t%d\"}", i ? "," : "", i);
    cl_buf_append_str(&b, "]}</TOOL_CALLS>");
    run_cuts(cl_buf_cstr(&b), NULL, 0, &f, &out);
    cl_tool_text_call c[CL_TOOL_TEXT_MAX_CALLS];
    int got = cl_tool_text_calls(&f, c, CL_TOOL_TEXT_MAX_CALLS);
    CHECK_EQ_INT(got, CL_TOOL_TEXT_MAX_CALLS);
    CHECK_EQ_STR(c[CL_TOOL_TEXT_MAX_CALLS - 1].name, "t15");
    cl_tool_text_calls_free(c, got);
    free(out);
    cl_tool_text_release(&f);
    cl_buf_release(&b);
}

static void test_held_text_is_short_and_released(void)
{
    /* what is held at any moment is at most a marker's prefix */
    cl_tool_text f;
    cl_tool_text_init(&f);
    cl_buf out;
    cl_buf_init(&out, 0);
    CHECK(cl_tool_text_feed(&f, "abc <TOOL_CAL", 13, &out) == 0);
    CHECK_EQ_INT(out.len, 4);
    CHECK_EQ_INT(f.held.len, 9);
    CHECK(cl_tool_text_feed(&f, "X", 1, &out) == 0);   /* not a marker after all */
    CHECK_EQ_INT(f.held.len, 0);
    CHECK_EQ_STR(cl_buf_cstr(&out), "abc <TOOL_CALX");
    /* a long run of "<": one held at a time, the rest released at once */
    cl_buf_reset(&out);
    char lts[5000];
    memset(lts, '<', sizeof lts);
    CHECK(cl_tool_text_feed(&f, lts, sizeof lts, &out) == 0);
    CHECK_EQ_INT(out.len, sizeof lts - 1);
    CHECK_EQ_INT(f.held.len, 1);
    CHECK(cl_tool_text_finish(&f, &out) == 0);
    CHECK_EQ_INT(out.len, sizeof lts);
    cl_buf_release(&out);
    cl_tool_text_release(&f);
}

CL_TEST_MAIN(test_plain_text_passes_whole, test_one_block_cut_out, test_two_blocks_and_many_calls,
             test_unclosed_block_ends_with_the_answer, test_malformed_blocks_are_errors_for_the_model,
             test_budget, test_held_text_is_short_and_released)
