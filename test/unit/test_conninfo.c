/* test_conninfo.c — cl_conninfo_redact (src/base/conninfo.c): both forms of
 * a database_url, their encodings, strings libpq refuses, and messages that
 * quote the password back. */
#include "test.h"

#include "chatloop/conninfo.h"

static char out[512];

static const char *url(const char *u)
{
    cl_redact_url(u, out, sizeof out);
    return out;
}

static const char *msg(const char *conninfo, const char *text)
{
    cl_conninfo_redact(conninfo, text, out, sizeof out);
    return out;
}

static void test_uri(void)
{
    CHECK_EQ_STR(url("postgres://app:s3cret@db:5432/chat"), "postgres://app:***@db:5432/chat");
    CHECK_EQ_STR(url("postgresql://app@db/chat"), "postgresql://app@db/chat");
    CHECK_EQ_STR(url("postgresql://db/chat"), "postgresql://db/chat");
    CHECK_EQ_STR(url("postgresql://app:@db/chat"), "postgresql://app:@db/chat");
    /* percent-encoded: the spelling and the decoded password both hidden */
    CHECK_EQ_STR(url("postgres://app:p%40ss%3Aw0rd@db/chat"), "postgres://app:***@db/chat");
    CHECK_EQ_STR(msg("postgres://app:p%40ss%3Aw0rd@db/chat", "auth failed for p@ss:w0rd"),
                 "auth failed for ***");
    /* a raw '@' in the password: hidden up to the last '@' of the authority */
    CHECK_EQ_STR(url("postgres://app:p@ss@db/chat"), "postgres://app:***@db/chat");
    /* in the query, between other parameters */
    CHECK_EQ_STR(url("postgresql://app@db/chat?sslmode=disable&password=s3cret&application_name=x"),
                 "postgresql://app@db/chat?sslmode=disable&password=***&application_name=x");
    CHECK_EQ_STR(msg("postgresql://app@db/chat?password=s%20cret", "was: s cret"), "was: ***");
    /* a keyword only libpq decodes: its parse is what finds this one */
    CHECK_EQ_STR(url("postgresql://app@db/chat?pass%77ord=s3cret"),
                 "postgresql://app@db/chat?pass%77ord=***");
}

static void test_key_value(void)
{
    CHECK_EQ_STR(url("host=db user=app password=s3cret dbname=chat"),
                 "host=db user=app password=*** dbname=chat");
    CHECK_EQ_STR(url("host=db password = s3cret dbname=chat"), "host=db password = *** dbname=chat");
    /* quoted, with a blank and an escaped quote inside */
    CHECK_EQ_STR(url("host=db password='se cr\\'et' dbname=chat"),
                 "host=db password='***' dbname=chat");
    CHECK_EQ_STR(msg("host=db password='se cr\\'et'", "got se cr'et"), "got ***");
    /* an escaped blank, unquoted */
    CHECK_EQ_STR(url("password=a\\ b host=x"), "password=*** host=x");
    CHECK_EQ_STR(msg("password=a\\ b host=x", "[a b]"), "[***]");
    CHECK_EQ_STR(url("host=db sslpassword=k3y"), "host=db sslpassword=***");
    CHECK_EQ_STR(url("host=db user=app"), "host=db user=app");
    CHECK_EQ_STR(url(""), "");
}

static void test_malformed(void)
{
    /* libpq refuses these; the fallback still finds the password */
    CHECK_EQ_STR(url("postgresql://app:s3cret%zz@db/chat"), "postgresql://app:***@db/chat");
    CHECK_EQ_STR(msg("postgresql://app:s3cret%zz@db/chat",
                     "invalid percent-encoded token: \"s3cret%zz\""),
                 "invalid percent-encoded token: \"***\"");
    CHECK_EQ_STR(url("host=db password='unterminated"), "host=db password='***");
    CHECK_EQ_STR(url("host=db password=s3cret bogus"), "host=db password=*** bogus");
    CHECK_EQ_STR(url("postgresql://app:s3cret@[::1/chat"), "postgresql://app:***@[::1/chat");
}

static void test_messages(void)
{
    /* the URL's password wherever a message repeats it */
    CHECK_EQ_STR(msg("postgres://u:hunter2@h/d", "cannot connect: hunter2 rejected"),
                 "cannot connect: *** rejected");
    /* no conninfo: only what the text itself spells out */
    CHECK_EQ_STR(msg(NULL, "migrations: cannot connect to postgres://u:pw@h/d: refused"),
                 "migrations: cannot connect to postgres://u:***@h/d: refused");
    CHECK_EQ_STR(msg("", "FATAL: password authentication failed for user \"app\""),
                 "FATAL: password authentication failed for user \"app\"");
    CHECK_EQ_STR(msg("host=h password=pw", NULL), "");
}

static void test_truncation(void)
{
    /* redaction comes first: no cut leaves a piece of the password */
    const char *u = "postgres://app:s3cret@db:5432/chat";
    for (size_t n = 1; n <= strlen(u) + 1; n++) {
        char small[64];
        memset(small, 'x', sizeof small);
        cl_redact_url(u, small, n);
        CHECK(strlen(small) < n);
        CHECK(!strstr(small, "s3"));
    }
    char none[1] = {'x'};
    cl_redact_url(u, none, 0);
    CHECK(none[0] == 'x');
}

static void test_long_password(void)
{
    /* longer than any fixed buffer the old scrubbers had */
    char u[1200], pw[1001];
    memset(pw, 'p', 1000);
    pw[1000] = 0;
    snprintf(u, sizeof u, "postgres://app:%s@db/chat", pw);
    CHECK_EQ_STR(url(u), "postgres://app:***@db/chat");
}

CL_TEST_MAIN(test_uri, test_key_value, test_malformed, test_messages, test_truncation,
             test_long_password)
