/*
 * check.c — every answer chatbench receives is compared with the one the
 * upstream was asked to give, byte for byte as it streams, so a wrong or
 * short answer is counted as an error and never as a fast success.
 */
#include "bench.h"

#include "chatloop/mock_text.h"

#include <stdlib.h>
#include <string.h>

int cb_expect_init(cb_expect *e, int ntokens)
{
    e->ntokens = ntokens;
    e->len = 0;
    e->text = malloc((size_t)ntokens * CL_MOCK_TOKEN_MAX + 1);
    if (!e->text)
        return -1;
    for (int i = 0; i < ntokens; i++)
        e->len += cl_mock_token((unsigned)i, e->text + e->len);
    e->text[e->len] = '\0';
    return 0;
}

void cb_expect_free(cb_expect *e)
{
    free(e->text);
    e->text = NULL;
}

void cb_check_piece(cb_check *c, const cb_expect *e, const char *p, size_t n)
{
    c->pieces++;
    if (c->wrong)
        return;
    if (n > e->len - c->got || memcmp(e->text + c->got, p, n) != 0) {
        c->wrong = 1;
        return;
    }
    c->got += n;
}

const char *cb_check_verdict(const cb_check *c, const cb_expect *e)
{
    if (c->wrong)
        return "CORRUPT";
    if (c->got < e->len)
        return "TRUNCATED";
    return NULL;
}

const char *cb_check_whole(const cb_expect *e, const char *p, size_t n)
{
    if (n > e->len || memcmp(e->text, p, n) != 0)
        return "CORRUPT";
    if (n < e->len)
        return "TRUNCATED";
    return NULL;
}
