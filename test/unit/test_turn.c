/* test_turn.c — the chat turn's state machine, without sockets on the
 * client side: the built-in mock provider (timers only) and a real
 * PostgreSQL (CHATLOOP_TEST_DATABASE_URL, started by test/run.sh) under a
 * real uv loop. The test reads the database synchronously from inside the
 * sink's callbacks to see what was stored at each step. */
#include "../../src/chat/turn_internal.h"
#include "chatloop/auth.h"
#include "test.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <unistd.h>

static const char *g_url;
static PGconn *g_pg;                /* the test's own synchronous connection */
static uv_loop_t g_loop;
static cl_worker g_w;
static cl_app g_app;
static cl_config g_cfg;
static char g_user[37];
static char g_spool[64];

typedef struct events {
    int starts, tokens, dones, errors;
    cl_err_code code;
    char message[256];
    char conversation_id[37], message_id[37];
    char done_json[2048];
    char state_at_start[16], state_at_token[16], state_at_done[16];
    int user_rows_at_first_token;
    int cancel_at_token;            /* cancel the turn at this token (0: never) */
    int delete_at_token;            /* delete the conversation at this token */
    cl_turn *turn;
} events;

static events ev;

static long count_rows(const char *sql, const char *p1)
{
    const char *p[] = {p1};
    PGresult *r = PQexecParams(g_pg, sql, 1, NULL, p, NULL, NULL, 0);
    long n = PQresultStatus(r) == PGRES_TUPLES_OK ? atol(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

static void exec_sql(const char *sql)
{
    PGresult *r = PQexec(g_pg, sql);
    ExecStatusType st = PQresultStatus(r);
    CHECK(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fprintf(stderr, "  %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static void on_start(void *ud, const char *conversation_id, const char *message_id)
{
    events *e = ud;
    e->starts++;
    snprintf(e->conversation_id, sizeof e->conversation_id, "%s", conversation_id);
    snprintf(e->message_id, sizeof e->message_id, "%s", message_id);
    snprintf(e->state_at_start, sizeof e->state_at_start, "%s", cl_turn_state_name(e->turn));
}

static void on_token(void *ud, const char *text, size_t len)
{
    events *e = ud;
    (void)text;
    (void)len;
    e->tokens++;
    if (e->tokens == 1) {
        snprintf(e->state_at_token, sizeof e->state_at_token, "%s", cl_turn_state_name(e->turn));
        e->user_rows_at_first_token = (int)count_rows(
            "SELECT count(*) FROM messages WHERE conversation_id = $1::uuid AND role = 'user'",
            e->conversation_id);
    }
    if (e->delete_at_token && e->tokens == e->delete_at_token) {
        const char *p[] = {e->conversation_id};
        PGresult *r = PQexecParams(g_pg, "DELETE FROM conversations WHERE id = $1::uuid", 1, NULL,
                                   p, NULL, NULL, 0);
        CHECK(PQresultStatus(r) == PGRES_COMMAND_OK);
        PQclear(r);
    }
    if (e->cancel_at_token && e->tokens == e->cancel_at_token) {
        cl_turn_cancel(e->turn);
        e->turn = NULL;
    }
}

static void on_done(void *ud, const char *data_json)
{
    events *e = ud;
    e->dones++;
    snprintf(e->state_at_done, sizeof e->state_at_done, "%s", cl_turn_state_name(e->turn));
    snprintf(e->done_json, sizeof e->done_json, "%s", data_json);
    e->turn = NULL;
}

static void on_error(void *ud, cl_err_code code, const char *message)
{
    events *e = ud;
    e->errors++;
    e->code = code;
    snprintf(e->message, sizeof e->message, "%s", message);
    e->turn = NULL;
}

static const cl_turn_sink sink = {on_start, on_token, on_done, on_error};

static int setup(void)
{
    g_url = getenv("CHATLOOP_TEST_DATABASE_URL");
    if (!g_url) {
        fprintf(stderr, "  CHATLOOP_TEST_DATABASE_URL is not set (test/run.sh starts a cluster)\n");
        CHECK(g_url != NULL);
        return -1;
    }
    char err[512];
    CHECK_EQ_INT(cl_db_migrate(g_url, err, sizeof err), 0);
    g_pg = PQconnectdb(g_url);
    CHECK(PQstatus(g_pg) == CONNECTION_OK);
    cl_uuid_v4(g_user);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO users (id, email, password_hash) VALUES ('%s', '%s@turn.test', '!')",
             g_user, g_user);
    exec_sql(sql);

    CHECK_EQ_INT(cl_config_init(&g_cfg, err), 0);
    char cerr[CL_ERRBUF];
    cl_config_set(&g_cfg, "database_url", g_url, "test", cerr);
    snprintf(g_spool, sizeof g_spool, "/tmp/chatloop-turn-spool-XXXXXX");
    CHECK(mkdtemp(g_spool) != NULL);
    cl_config_set(&g_cfg, "spool_dir", g_spool, "test", cerr);
    g_cfg.mock_tokens = 5;
    g_cfg.mock_token_interval_ms = 5;
    g_cfg.mock_first_token_ms = 5;
    g_cfg.db_pool_size = 2;
    uv_loop_init(&g_loop);
    memset(&g_w, 0, sizeof g_w);
    g_w.loop = &g_loop;
    g_w.cfg = &g_cfg;
    g_app.w = &g_w;
    g_app.llm = cl_llm_new(&g_loop, &g_cfg);
    g_app.db = cl_db_new(&g_loop, &g_cfg, 0, err, sizeof err);
    CHECK(g_app.llm && g_app.db);
    /* the pool connects */
    for (int i = 0; i < 500 && !cl_db_available(g_app.db); i++)
        uv_run(&g_loop, UV_RUN_ONCE);
    CHECK(cl_db_available(g_app.db));
    return 0;
}

static void teardown(void)
{
    cl_llm_free(g_app.llm);
    cl_db_free(g_app.db);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&g_loop), 0); /* no handle left behind */
    cl_config_free(&g_cfg);
    PQfinish(g_pg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_spool);
    CHECK_EQ_INT(system(cmd), 0);
}

/* Runs the loop until the turn has told its sink (or `ms` pass). */
static void run_turn(const char *session, const char *message)
{
    cl_turn_input in;
    memset(&in, 0, sizeof in);
    in.user_id = g_user;
    in.session_key = session;
    in.message = message;
    ev.turn = cl_turn_start(&g_app, &in, &sink, &ev);
    CHECK(ev.turn != NULL);
    CHECK_EQ_STR(cl_turn_state_name(ev.turn), "LOADING");
    for (int i = 0; i < 5000 && (ev.dones + ev.errors) == 0 && ev.turn; i++)
        uv_run(&g_loop, UV_RUN_ONCE);
}

/* Lets the durable writes that outlive a turn settle. */
static void settle(void)
{
    for (int i = 0; i < 2000 && cl_db_pending_durable(g_app.db); i++)
        uv_run(&g_loop, UV_RUN_ONCE);
    CHECK_EQ_INT(cl_db_pending_durable(g_app.db), 0);
}

static void test_transition_table(void)
{
    static const int legal[TURN__COUNT][TURN__COUNT] = {
        /*               LOAD GEN STORE FIN */
        [TURN_LOADING] = {0, 1, 0, 1},
        [TURN_GENERATING] = {0, 0, 1, 1},
        [TURN_STORING] = {0, 0, 0, 1},
        [TURN_FINISHED] = {0, 0, 0, 0},
    };
    for (int a = 0; a < TURN__COUNT; a++)
        for (int b = 0; b < TURN__COUNT; b++)
            if (cl_turn__legal((turn_state)a, (turn_state)b) != legal[a][b]) {
                fprintf(stderr, "  %s -> %s\n", cl_turn__state_name((turn_state)a),
                        cl_turn__state_name((turn_state)b));
                CHECK(0);
            }
    CHECK_EQ_STR(cl_turn__state_name(TURN_STORING), "STORING");
    CHECK_EQ_INT(cl_turn__legal(TURN__COUNT, TURN_LOADING), 0);
}

static void test_turn_stores_user_message_first_then_acknowledges(void)
{
    memset(&ev, 0, sizeof ev);
    char session[64];
    snprintf(session, sizeof session, "s-%d", (int)getpid());
    run_turn(session, "hello turn");
    CHECK_EQ_INT(ev.starts, 1);
    CHECK_EQ_INT(ev.tokens, 5);
    CHECK_EQ_INT(ev.dones, 1);
    CHECK_EQ_INT(ev.errors, 0);
    CHECK_EQ_STR(ev.state_at_start, "GENERATING");
    CHECK_EQ_STR(ev.state_at_token, "GENERATING");
    CHECK_EQ_STR(ev.state_at_done, "FINISHED");
    /* the user message was stored before the first token */
    CHECK_EQ_INT(ev.user_rows_at_first_token, 1);
    /* acknowledged only once stored: the answer and its usage are in */
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM messages WHERE id = $1::uuid AND status = 'complete'",
                            ev.message_id), 1);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM usage_events WHERE message_id = $1::uuid",
                            ev.message_id), 1);
    CHECK_CONTAINS(ev.done_json, ev.message_id);
    CHECK_CONTAINS(ev.done_json, "\"response\":\"tok1 tok2 tok3 tok4 tok5\"");
    settle();
}

static void test_cancel_while_generating_stores_cancelled_with_usage(void)
{
    memset(&ev, 0, sizeof ev);
    ev.cancel_at_token = 2;
    char session[64];
    snprintf(session, sizeof session, "c-%d", (int)getpid());
    run_turn(session, "cancel me");
    for (int i = 0; i < 50; i++)
        uv_run(&g_loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(ev.tokens, 2); /* nothing after the cancel */
    CHECK_EQ_INT(ev.dones + ev.errors, 0);
    settle();
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM messages WHERE id = $1::uuid AND status = 'cancelled'"
                            " AND content = 'tok1 tok2'", ev.message_id), 1);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM usage_events WHERE message_id = $1::uuid"
                            " AND completion_tokens > 0", ev.message_id), 1);
}

static void test_conversation_deleted_mid_turn_is_not_done_but_billed(void)
{
    memset(&ev, 0, sizeof ev);
    ev.delete_at_token = 2;
    char session[64];
    snprintf(session, sizeof session, "d-%d", (int)getpid());
    run_turn(session, "delete me");
    CHECK_EQ_INT(ev.dones, 0);
    CHECK_EQ_INT(ev.errors, 1);
    CHECK_EQ_INT(ev.code, CL_ERR_NOT_FOUND);
    CHECK_CONTAINS(ev.message, "deleted");
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM usage_events WHERE message_id = $1::uuid"
                            " AND conversation_id IS NULL", ev.message_id), 1);
    CHECK_EQ_INT(count_rows("SELECT count(*) FROM messages WHERE id = $1::uuid", ev.message_id), 0);
    settle();
}

static void test_cancel_while_loading_fires_nothing(void)
{
    memset(&ev, 0, sizeof ev);
    cl_turn_input in;
    memset(&in, 0, sizeof in);
    in.user_id = g_user;
    in.session_key = "loading-cancel";
    in.message = "never mind";
    cl_turn *t = cl_turn_start(&g_app, &in, &sink, &ev);
    CHECK(t != NULL);
    cl_turn_cancel(t);
    for (int i = 0; i < 100; i++)
        uv_run(&g_loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(ev.starts + ev.tokens + ev.dones + ev.errors, 0);
}

static void test_loading_past_request_timeout(void)
{
    memset(&ev, 0, sizeof ev);
    exec_sql("BEGIN");
    exec_sql("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE");
    g_cfg.request_timeout_ms = 200;
    run_turn("locked", "anyone?");
    exec_sql("ROLLBACK");
    g_cfg.request_timeout_ms = 30000;
    CHECK_EQ_INT(ev.errors, 1);
    CHECK_EQ_INT(ev.code, CL_ERR_REQUEST_TIMEOUT);
    CHECK_EQ_INT(ev.starts, 0);
    /* the abandoned statement gives its connection back */
    for (int i = 0; i < 1000; i++) {
        cl_db_stats st;
        cl_db_get_stats(g_app.db, &st);
        if (st.busy == 0)
            break;
        uv_run(&g_loop, UV_RUN_ONCE);
    }
}

static int g_ready;

static void test_setup(void)
{
    g_ready = setup() == 0;
}

#define NEEDS_DB() do { if (!g_ready) { CHECK(g_ready); return; } } while (0)

static void test_user_message_first(void) { NEEDS_DB(); test_turn_stores_user_message_first_then_acknowledges(); }
static void test_cancel_generating(void) { NEEDS_DB(); test_cancel_while_generating_stores_cancelled_with_usage(); }
static void test_deleted_mid_turn(void) { NEEDS_DB(); test_conversation_deleted_mid_turn_is_not_done_but_billed(); }
static void test_cancel_loading(void) { NEEDS_DB(); test_cancel_while_loading_fires_nothing(); }
static void test_request_timeout(void) { NEEDS_DB(); test_loading_past_request_timeout(); }
static void test_teardown(void) { if (g_ready) teardown(); }

CL_TEST_MAIN(test_transition_table, test_setup, test_user_message_first, test_cancel_generating,
             test_deleted_mid_turn, test_cancel_loading, test_request_timeout, test_teardown)
