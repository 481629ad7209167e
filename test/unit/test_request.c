/* Request building: configured defaults, per-turn overrides, what is left out. */
#include "chatloop/llm.h"
#include "test.h"

static json_t *messages(void)
{
    return json_pack("[{s:s,s:s},{s:s,s:s}]", "role", "system", "content", "be brief", "role",
                     "user", "content", "hi");
}

static void test_defaults_from_config(void)
{
    cl_config cfg;
    char err[CL_ERRBUF];
    CHECK(cl_config_init(&cfg, err) == 0);
    json_t *m = messages();
    json_t *r = cl_llm_build_request(&cfg, m, NULL);
    CHECK(r != NULL);
    CHECK_EQ_STR(json_string_value(json_object_get(r, "model")), "llama-3.3-70b-versatile");
    CHECK(json_real_value(json_object_get(r, "temperature")) == cfg.temperature);
    CHECK_EQ_INT(json_integer_value(json_object_get(r, "max_tokens")), cfg.max_tokens);
    CHECK(json_real_value(json_object_get(r, "top_p")) == cfg.top_p);
    CHECK(json_object_get(r, "reasoning_effort") == NULL);
    CHECK(json_object_get(r, "tools") == NULL);
    CHECK(json_is_false(json_object_get(r, "stream")));
    CHECK(json_object_get(r, "stream_options") == NULL);
    CHECK(json_object_get(r, "messages") == m);
    CHECK_EQ_INT(json_array_size(json_object_get(r, "messages")), 2);
    json_decref(r);
    json_decref(m);
    cl_config_free(&cfg);
}

static void test_overrides(void)
{
    cl_config cfg;
    char err[CL_ERRBUF];
    CHECK(cl_config_init(&cfg, err) == 0);
    CHECK(cl_config_set(&cfg, "reasoning_effort", "low", "test", err) == 0);
    json_t *m = messages();
    json_t *tools = json_pack("[{s:s,s:{s:s}}]", "type", "function", "function", "name", "add_task");
    cl_llm_params p = {.model = "llama-3.1-8b-instant", .has_temperature = 1, .temperature = 0.0,
                       .has_max_tokens = 1, .max_tokens = 7, .has_top_p = 1, .top_p = 0.5,
                       .tools = tools, .tool_choice = "auto", .stream = 1};
    json_t *r = cl_llm_build_request(&cfg, m, &p);
    CHECK(r != NULL);
    CHECK_EQ_STR(json_string_value(json_object_get(r, "model")), "llama-3.1-8b-instant");
    CHECK(json_real_value(json_object_get(r, "temperature")) == 0.0);
    CHECK_EQ_INT(json_integer_value(json_object_get(r, "max_tokens")), 7);
    CHECK(json_real_value(json_object_get(r, "top_p")) == 0.5);
    CHECK_EQ_STR(json_string_value(json_object_get(r, "reasoning_effort")), "low");
    CHECK(json_object_get(r, "tools") == tools);
    CHECK_EQ_STR(json_string_value(json_object_get(r, "tool_choice")), "auto");
    CHECK(json_is_true(json_object_get(r, "stream")));
    CHECK(json_is_true(json_object_get(json_object_get(r, "stream_options"), "include_usage")));
    /* an empty per-turn effort suppresses the configured one */
    p.reasoning_effort = "";
    json_t *r2 = cl_llm_build_request(&cfg, m, &p);
    CHECK(json_object_get(r2, "reasoning_effort") == NULL);
    /* no tools: no tool_choice either */
    p.tools = json_array();
    json_t *r3 = cl_llm_build_request(&cfg, m, &p);
    CHECK(json_object_get(r3, "tools") == NULL && json_object_get(r3, "tool_choice") == NULL);
    json_decref(p.tools);
    json_decref(r);
    json_decref(r2);
    json_decref(r3);
    json_decref(tools);
    json_decref(m);
    cl_config_free(&cfg);
}

/* A turn passes no messages: it splices them in as text (cl_llm_start_messages). */
static void test_without_messages(void)
{
    cl_config cfg;
    char err[CL_ERRBUF];
    CHECK(cl_config_init(&cfg, err) == 0);
    cl_llm_params p = {.stream = 1};
    json_t *r = cl_llm_build_request(&cfg, NULL, &p);
    CHECK(r != NULL);
    CHECK(json_object_get(r, "messages") == NULL);
    CHECK_EQ_STR(json_string_value(json_object_get(r, "model")), "llama-3.3-70b-versatile");
    CHECK(json_is_true(json_object_get(r, "stream")));
    json_decref(r);
    cl_config_free(&cfg);
}

CL_TEST_MAIN(test_defaults_from_config, test_overrides, test_without_messages)
