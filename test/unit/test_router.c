/* Router: literal and parameter segments, 404 vs 405 with Allow, HEAD. */
#include "chatloop/router.h"
#include "test.h"

static int g_hit;
static void h_list(cl_req *r) { (void)r; g_hit = 1; }
static void h_create(cl_req *r) { (void)r; g_hit = 2; }
static void h_get(cl_req *r) { (void)r; g_hit = 3; }
static void h_del(cl_req *r) { (void)r; g_hit = 4; }
static void h_msgs(cl_req *r) { (void)r; g_hit = 5; }
static void h_root(cl_req *r) { (void)r; g_hit = 6; }

static cl_router *build(void)
{
    cl_router *r = cl_router_new();
    CHECK(cl_router_add(r, "GET", "/api/v1/conversations", h_list) == 0);
    CHECK(cl_router_add(r, "POST", "/api/v1/conversations", h_create) == 0);
    CHECK(cl_router_add(r, "GET", "/api/v1/conversations/{id}", h_get) == 0);
    CHECK(cl_router_add(r, "DELETE", "/api/v1/conversations/{id}", h_del) == 0);
    CHECK(cl_router_add(r, "POST", "/api/v1/conversations/{id}/messages", h_msgs) == 0);
    CHECK(cl_router_add(r, "GET", "/", h_root) == 0);
    return r;
}

static cl_route_result match(cl_router *r, const char *method, const char *path, cl_route_match *m)
{
    return cl_router_match(r, method, path, strlen(path), m);
}

static void test_literal_and_params(void)
{
    cl_router *r = build();
    cl_route_match m;
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_list);
    CHECK_EQ_INT(m.nparams, 0);
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations/42", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_get);
    CHECK_EQ_INT(m.nparams, 1);
    CHECK_EQ_STR(m.params[0].name, "id");
    CHECK_EQ_INT(m.params[0].len, 2);
    CHECK(memcmp(m.params[0].value, "42", 2) == 0);
    CHECK_EQ_STR(m.pattern, "/api/v1/conversations/{id}");
    CHECK_EQ_INT(match(r, "POST", "/api/v1/conversations/abc-def/messages", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_msgs);
    CHECK_EQ_INT(m.params[0].len, 7);
    CHECK_EQ_INT(match(r, "GET", "/", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_root);
    cl_router_free(r);
}

static void test_not_found(void)
{
    cl_router *r = build();
    cl_route_match m;
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conv", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations/", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations//messages", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations/1/messages/2", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "api/v1/conversations", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "", &m), CL_ROUTE_NOT_FOUND);
    CHECK_EQ_INT(match(r, "GET", "//", &m), CL_ROUTE_NOT_FOUND);
    /* a path with more segments than any route can have */
    CHECK_EQ_INT(match(r, "GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", &m), CL_ROUTE_NOT_FOUND);
    cl_router_free(r);
}

static void test_method_not_allowed(void)
{
    cl_router *r = build();
    cl_route_match m;
    CHECK_EQ_INT(match(r, "PUT", "/api/v1/conversations", &m), CL_ROUTE_BAD_METHOD);
    CHECK_EQ_STR(m.allow, "GET, HEAD, POST");
    CHECK_EQ_INT(match(r, "POST", "/api/v1/conversations/7", &m), CL_ROUTE_BAD_METHOD);
    CHECK_EQ_STR(m.allow, "GET, HEAD, DELETE");
    CHECK_EQ_INT(match(r, "GET", "/api/v1/conversations/7/messages", &m), CL_ROUTE_BAD_METHOD);
    CHECK_EQ_STR(m.allow, "POST");
    cl_router_free(r);
}

static void test_head_uses_get(void)
{
    cl_router *r = build();
    cl_route_match m;
    CHECK_EQ_INT(match(r, "HEAD", "/api/v1/conversations/9", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_get);
    CHECK_EQ_INT(match(r, "HEAD", "/api/v1/conversations/9/messages", &m), CL_ROUTE_BAD_METHOD);
    cl_router_free(r);
}

static void test_bad_patterns(void)
{
    cl_router *r = cl_router_new();
    CHECK(cl_router_add(r, "GET", "no-slash", h_list) != 0);
    CHECK(cl_router_add(r, "GET", "/a//b", h_list) != 0);
    CHECK(cl_router_add(r, "GET", "/a/{}", h_list) != 0);
    CHECK(cl_router_add(r, "GET", "/a/{x", h_list) != 0);
    CHECK(cl_router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}", h_list) != 0);
    CHECK(cl_router_add(r, "VERYLONGMETHOD", "/a", h_list) != 0);
    CHECK(cl_router_add(r, "GET", "/{a}/{b}/{c}/{d}", h_list) == 0);
    cl_route_match m;
    CHECK_EQ_INT(match(r, "GET", "/1/2/3/4", &m), CL_ROUTE_FOUND);
    CHECK_EQ_INT(m.nparams, 4);
    CHECK_EQ_STR(m.params[3].name, "d");
    CHECK(m.params[3].value[0] == '4');
    cl_router_free(r);
}

static void test_many_routes_first_wins(void)
{
    cl_router *r = cl_router_new();
    char path[64];
    for (int i = 0; i < 100; i++) {
        snprintf(path, sizeof path, "/r%d/{id}", i);
        CHECK(cl_router_add(r, "GET", path, i == 57 ? h_get : h_list) == 0);
    }
    cl_route_match m;
    CHECK_EQ_INT(match(r, "GET", "/r57/x", &m), CL_ROUTE_FOUND);
    CHECK(m.fn == h_get);
    cl_router_free(r);
}

typedef struct listing {
    char text[512];
    size_t len;
} listing;

static void list_route(void *ud, const char *method, const char *pattern, int guard)
{
    listing *l = ud;
    l->len += (size_t)snprintf(l->text + l->len, sizeof l->text - l->len, "%s %s %d\n", method,
                               pattern, guard);
}

/* cl_router_each: every route once, in registration order, with the
 * pattern as given (braces kept) and its guard; a refused route is not
 * listed. */
static void test_each_lists_the_table(void)
{
    cl_router *r = build();
    CHECK(cl_router_add_guarded(r, "GET", "/api/v1/usage", h_list, 3) == 0);
    CHECK(cl_router_add(r, "GET", "/a//b", h_list) != 0);
    listing l = {.len = 0};
    cl_router_each(r, list_route, &l);
    CHECK_EQ_STR(l.text, "GET /api/v1/conversations 0\n"
                         "POST /api/v1/conversations 0\n"
                         "GET /api/v1/conversations/{id} 0\n"
                         "DELETE /api/v1/conversations/{id} 0\n"
                         "POST /api/v1/conversations/{id}/messages 0\n"
                         "GET / 0\n"
                         "GET /api/v1/usage 3\n");
    cl_router_free(r);
}

CL_TEST_MAIN(test_literal_and_params, test_not_found, test_method_not_allowed, test_head_uses_get,
             test_bad_patterns, test_many_routes_first_wins, test_each_lists_the_table)
