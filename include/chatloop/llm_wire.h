/**
 * llm_wire.h — the OpenAI-compatible wire format: decoding streamed chunks,
 * whole completions and error bodies into one accumulated result. All JSON
 * parsing goes through jansson.
 *
 * A cl_llm_result accumulates one completion: the assistant text, tool calls
 * merged by index from their deltas, the finish reason, the model, and the
 * usage — taken from `usage`, from `x_groq.usage`, or from a usage-only
 * chunk whose `choices` is empty, whichever comes (later ones win).
 *
 * Caps (STYLE 8): content 8 MiB, each tool call's arguments 1 MiB (past
 * them: CL_WIRE_NOMEM with err set), at most 128 tool calls with indexes
 * 0..65535 (else CL_WIRE_MALFORMED). "Choice 0" is the choice whose `index`
 * is 0 (or absent), wherever it sits in `choices`.
 *
 * Ownership: the result owns everything it holds; cl_llm_result_free
 * releases it and leaves it reusable (zeroed). Strings handed to callbacks
 * are valid only during the call.
 */
#ifndef CHATLOOP_LLM_WIRE_H
#define CHATLOOP_LLM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "chatloop/buf.h"

typedef struct cl_llm_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int present;                    /* the upstream reported usage */
    int estimated;                  /* not reported: estimated from the text (call.c) */
} cl_llm_usage;

typedef struct cl_llm_tool_call {
    int index;
    char *id;                       /* may be NULL until a delta names it */
    char *type;                     /* "function" */
    char *name;
    cl_buf arguments;               /* JSON text, concatenated from deltas */
} cl_llm_tool_call;

typedef struct cl_llm_result {
    cl_buf content;                 /* the assistant text (choice 0) */
    cl_llm_tool_call *tool_calls;   /* ordered by index */
    int ntool_calls;
    char finish_reason[32];         /* "" until the upstream says */
    char model[128];
    char id[128];
    cl_llm_usage usage;
    int64_t chunks;                 /* chunks decoded */
} cl_llm_result;

void cl_llm_result_init(cl_llm_result *r);
void cl_llm_result_free(cl_llm_result *r);

/** What a decoder reports besides accumulating. */
enum {
    CL_WIRE_OK = 0,
    CL_WIRE_MALFORMED = -1,         /* not JSON, or not the shape of a chunk/completion */
    CL_WIRE_UPSTREAM_ERROR = -2,    /* an error object inside a 200 (x_groq.error or "error") */
    CL_WIRE_NOMEM = -3,
};

/**
 * Decodes one `data:` payload of a chat.completion.chunk stream (the caller
 * handles "[DONE]"). For choice 0's content delta, `on_content` (may be NULL)
 * gets the text (already in r->content as well). On CL_WIRE_MALFORMED or
 * CL_WIRE_UPSTREAM_ERROR, `err` (may be NULL, errlen bytes) gets a one-line
 * reason: jansson's message with line/column, or the upstream's message.
 */
int cl_llm_decode_chunk(cl_llm_result *r, const char *json, size_t len,
                        void (*on_content)(void *ud, const char *text, size_t len), void *ud,
                        char *err, size_t errlen);

/**
 * The fast path for a chunk that a filter found to carry nothing but choice
 * 0's content (no finish reason, usage, tool call or error): the content is
 * read with the jscan scanner instead of jansson and handled as
 * cl_llm_decode_chunk would (model and id are not read: the first chunk of
 * a stream is decoded in full). Returns CL_WIRE_OK when handled, 1 when the
 * chunk is not of that plain shape (an error in it included); then decode
 * it with cl_llm_decode_chunk, which also reports malformed input precisely.
 */
int cl_llm_decode_plain_chunk(cl_llm_result *r, const char *json, size_t len,
                              void (*on_content)(void *ud, const char *text, size_t len), void *ud);
/** Decodes a whole non-streamed chat.completion body into r. */
int cl_llm_decode_completion(cl_llm_result *r, const char *json, size_t len, char *err,
                             size_t errlen);

/**
 * Reads an OpenAI-format error body {"error":{"message","type","code"}}.
 * Fills whatever is present (each buffer may be NULL, absent fields are
 * ""); returns 0 when the body had that shape (or {"error":"text"}, as
 * Ollama and some proxies send), -1 otherwise (then `message` gets a short excerpt of
 * the body, sanitized to printable ASCII).
 */
int cl_llm_decode_error(const char *body, size_t len, char *message, size_t msglen, char *type,
                        size_t typelen, char *code, size_t codelen);

/** Writes the usage as {"prompt_tokens":..,"completion_tokens":..,"total_tokens":..}. */
int cl_llm_usage_json(const cl_llm_usage *u, cl_buf *out);

/** Writes the tool calls as an OpenAI `tool_calls` array:
 *  [{"id":..,"type":"function","function":{"name":..,"arguments":"..."}}].
 *  A call no delta named gets "id":null; empty arguments are written as
 *  "{}". Returns 0, or -1 when `out` refuses to grow. */
int cl_llm_tool_calls_json(const cl_llm_result *r, cl_buf *out);

#endif
