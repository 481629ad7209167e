/*
 * main.c — chatloop-mock's command line. One worker on the project's own
 * HTTP core (no supervisor: a test double that crashes should fail the
 * test, not be restarted behind its back).
 *
 * Configuration is chatloop's cl_config (listen, limits, logging, the
 * mock_* keys) with defaults suited to a load-test upstream; no conf file
 * and no environment are read, so a test's flags are the whole story.
 */
#include "mock.h"

#include "chatloop/config.h"
#include "chatloop/log.h"
#include "chatloop/metrics.h"
#include "chatloop/version.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static void usage(FILE *out)
{
    fprintf(out,
"usage: chatloop-mock [options]\n"
"\n"
"chatloop-mock " CL_VERSION " — a fast OpenAI/Groq-compatible fake upstream for tests and\n"
"benchmarks. One libuv loop, chatloop's HTTP core; holds thousands of paced streams.\n"
"\n"
"options:\n"
"  --listen HOST:PORT          address to serve on (default 127.0.0.1:8090)\n"
"  --mock-tokens N             tokens per answer (default 20)\n"
"  --mock-token-interval MS    gap between tokens; a bare number is milliseconds, or\n"
"                              a duration like 20ms, 1s (default 20ms; 0 = all at once)\n"
"  --mock-first-token MS       delay before the first token (default 50ms)\n"
"  --record N                  keep the last N requests for GET /_mock/requests\n"
"                              (default 1000; 0 = record nothing)\n"
"  --KEY VALUE, --KEY=VALUE    any chatloop configuration key, e.g. --log-level debug,\n"
"                              --access-log on, --max-connections 200000,\n"
"                              --keepalive-timeout 120s, --max-body-bytes 8MiB\n"
"  --version                   print the version and exit\n"
"  --help                      this text\n"
"Defaults that differ from chatloop's: max-connections 1000000, keepalive-timeout\n"
"120s, max-output-bytes 256MiB, max-body-bytes 8MiB, backlog 4096, access-log off,\n"
"drain-timeout 2s. SIGTERM/SIGINT cut answers in flight and exit 0.\n"
"\n"
"endpoints (each API path also under /openai/v1 and at the root):\n"
"  POST /v1/chat/completions   OpenAI chat request; \"stream\": true answers with\n"
"                              Groq-style chat.completion.chunk SSE and data: [DONE]\n"
"  GET  /v1/models             model list; GET /v1/models/{id} one model\n"
"  GET  /_mock/requests        the last requests (method, path, query, headers with\n"
"                              lower-case names, body as JSON or string, timestamp, id),\n"
"                              oldest first; ?since=ID keeps newer ones, ?limit=N the last N\n"
"  DELETE /_mock/requests      forget them\n"
"  GET  /_mock/stats           requests, streams_started/completed/aborted/cut/open,\n"
"                              completions_started/completed/aborted/open, faults,\n"
"                              connections_open, recorded\n"
"  DELETE /_mock/faults        reset the X-Mock-Fault-Count counters\n"
"  POST /_mock/reset           recordings, fault counters and stats start over\n"
"  GET  /health, GET /metrics  as chatloop's\n"
"\n"
"the answer (deterministic): N tokens \"tok1\", \" tok2\", ... \" tokN\", so the text is\n"
"  \"tok1 tok2 ... tokN\". N = X-Mock-Tokens, else min(mock-tokens, max_tokens or\n"
"  max_completion_tokens; finish_reason \"length\" when that cut it), else \"stop\".\n"
"  prompt_tokens = (bytes of message text) / 4 + 1. The role chunk goes out at once,\n"
"  token k at first-token + (k-1) * interval. Non-streamed answers arrive whole when\n"
"  the last token would have. usage is in x_groq.usage of the final chunk, plus a\n"
"  usage-only chunk (\"choices\": []) when stream_options.include_usage is true.\n"
"\n"
"tool calls: when the request has tools, tool_choice is not \"none\", the last message\n"
"  is not a tool result, and \"tool\" appears in the last user message (or\n"
"  X-Mock-Tool-Call: 1, tool_choice \"required\" or a named function): a call\n"
"  call_mock_1 to the first (or the named) tool. Arguments set the schema's first\n"
"  required property (else first property) to \"mock\", 1, true, [], {} or its first\n"
"  enum value; streamed as an opening delta then up to 3 argument fragments;\n"
"  finish_reason \"tool_calls\"; completion_tokens = number of deltas.\n"
"  X-Mock-Tool-Call: 0 never calls a tool.\n"
"\n"
"request headers:\n"
"  X-Mock-Tokens: N            answer length (0..100000)\n"
"  X-Mock-First-Token-Ms: MS   delay before the first token\n"
"  X-Mock-Interval-Ms: MS      gap between tokens\n"
"  X-Mock-Fault: F             one of the faults below (also model \"mock-<F>\", e.g.\n"
"                              mock-429, mock-cut, mock-groq-error; the header wins)\n"
"  X-Mock-Fault-Count: K       only the first K requests of the fault's key fail;\n"
"                              later ones are answered normally\n"
"  X-Mock-Fault-Key: KEY       the key for X-Mock-Fault-Count (default: the fault name);\n"
"                              at most 4096 keys are tracked, then the table starts over\n"
"  X-Mock-Fault-After: K       tokens sent before a cut/stall/malformed/groq_error\n"
"  X-Mock-Retry-After: S       retry-after seconds on a status fault (default 1 on 429;\n"
"                              may be fractional, e.g. 0.2)\n"
"  X-Mock-Tool-Call: 0|1       force or forbid the tool call\n"
"  X-Mock-Multiline-Data: 1    every stream chunk's JSON spans several data: lines\n"
"                              (one per top-level member; the event's data is them\n"
"                              joined with \"\\n\")\n"
"  Authorization: Bearer bad*  any key starting with \"bad\" gets 401 invalid_api_key\n"
"\n"
"faults:\n"
"  429 (or any 4xx/5xx)  that status at once with an OpenAI error body\n"
"                        {\"error\":{\"message\",\"type\",\"code\"}}; 429 has retry-after\n"
"  cut         stream: after half the tokens the connection is closed (FIN inside the\n"
"              chunked body: no final chunk, no [DONE]); non-stream: closed, no answer\n"
"  stall       stream: after 3 tokens nothing more until the client leaves;\n"
"              non-stream: never answers\n"
"  malformed   stream: after 3 tokens `data: {not json`, then the response ends;\n"
"              non-stream: 200 with body `{not json`\n"
"  groq_error  stream: after 3 tokens a chunk with x_groq.error = \"mock upstream\n"
"              failure\", then the response ends (no [DONE]); non-stream: 500\n"
"  error_chunk same, but OpenAI's form: data: {\"error\":{\"message\",\"type\",\"code\"}}\n"
"  slow_first  first token after X-Mock-First-Token-Ms, default 2000 ms\n"
"  corrupt     the answer is complete but token X-Mock-Fault-After (default: the\n"
"              middle one) ends in 'X' instead of its digit (\"tok1 tok2 tok3\" ->\n"
"              \"tok1 tokX tok3\"), so a client that checks answers must see an error\n");
}

/* Durations given to the mock's own pacing flags may be bare milliseconds
 * (cl_config reads a bare number as seconds, which is never meant here). */
static const char *pacing_value(const char *key, const char *value, char *tmp, size_t tmplen)
{
    if (strcmp(key, "mock-token-interval") != 0 && strcmp(key, "mock_token_interval") != 0 &&
        strcmp(key, "mock-first-token") != 0 && strcmp(key, "mock_first_token") != 0)
        return value;
    if (value[0] == '\0' || strspn(value, "0123456789") != strlen(value))
        return value;
    snprintf(tmp, tmplen, "%sms", value);
    return tmp;
}

static int parse_flags(int argc, char **argv, cl_config *cfg, mock_options *opt, char *err)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            cl_config_free(cfg);
            exit(0);
        }
        if (strcmp(a, "--version") == 0) {
            printf("chatloop-mock %s\n", CL_VERSION);
            cl_config_free(cfg);
            exit(0);
        }
        char key[128];
        const char *value;
        if (cl_config_flag(argc, argv, &i, key, sizeof key, &value, err) != 0)
            return -1;
        if (strcmp(key, "record") == 0) {
            char *end;
            long n = strtol(value, &end, 10);
            if (*value == '\0' || *end != '\0' || n < 0 || n > 1000000) {
                snprintf(err, CL_ERRBUF, "--record %s: expected 0..1000000", value);
                return -1;
            }
            opt->record_max = (int)n;
            continue;
        }
        char tmp[64], source[160];
        snprintf(source, sizeof source, "--%s", key);
        if (cl_config_set(cfg, key, pacing_value(key, value, tmp, sizeof tmp), source, err) != 0)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const defaults[][2] = {
        {"listen", "127.0.0.1:8090"},   {"max_connections", "1000000"},
        {"keepalive_timeout", "120s"},  {"max_output_bytes", "256MiB"},
        {"max_body_bytes", "8MiB"},     {"backlog", "4096"},
        {"access_log", "off"},          {"drain_timeout", "2s"},
    };
    cl_config cfg;
    char err[CL_ERRBUF];
    mock_options opt = {.record_max = 1000};
    int bad = cl_config_init(&cfg, err) != 0;
    for (size_t i = 0; !bad && i < sizeof defaults / sizeof defaults[0]; i++)
        bad = cl_config_set(&cfg, defaults[i][0], defaults[i][1], "chatloop-mock default", err) != 0;
    if (bad || parse_flags(argc, argv, &cfg, &opt, err) != 0 || cl_config_validate(&cfg, err) != 0) {
        fprintf(stderr, "chatloop-mock: configuration error: %s\n", err);
        cl_config_free(&cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    cl_raise_fd_limit();
    cl_log_setup(cfg.log_level, cfg.log_format, "mock");
    cl_metrics_slot *slots = cl_metrics_map(1);
    if (!slots) {
        CL_ERROR("cannot map metrics");
        cl_config_free(&cfg);
        return 1;
    }
    mock_set_options(&opt);
    int rc = cl_worker_run(&cfg, 0, &slots[0], &mock_hooks);
    cl_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}
