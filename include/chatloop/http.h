/**
 * http.h — HTTP/1.1 requests and responses on a cl_conn.
 *
 * One request is in progress per connection at a time: the parser pauses at
 * the end of each message, the request is dispatched, and parsing of the
 * next pipelined request resumes only after the response has been fully
 * queued. Pipelined answers are therefore in order by construction, and a
 * handler may answer later (after a database or upstream callback) simply by
 * keeping the cl_req and responding when ready.
 *
 * Ownership: the HTTP layer owns each cl_req; it is freed after the response
 * ends (cl_res_send / cl_res_end) or when the connection closes. A handler
 * that answers asynchronously must register `on_abort`, which fires if the
 * connection goes away first; after it returns the req is gone.
 *
 * cl_res_send and cl_res_end always end the request, even when the peer is
 * already gone (nothing is written then): after either returns, the req is
 * freed and on_abort will not fire. Exactly one of "the handler ends it" and
 * "on_abort fires" happens to every dispatched request.
 */
#ifndef CHATLOOP_HTTP_H
#define CHATLOOP_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "chatloop/buf.h"
#include "chatloop/conn.h"

#define CL_MAX_PATH_PARAMS 4
#define CL_REQUEST_ID_LEN 32

typedef struct cl_req cl_req;

typedef struct cl_header_ref {
    uint32_t name_off, name_len, value_off, value_len; /* offsets into req->head */
} cl_header_ref;

typedef struct cl_path_param {
    const char *name;               /* points into the route table */
    const char *value;              /* points into req->head (not NUL-terminated) */
    size_t len;
} cl_path_param;

struct cl_req {
    cl_conn *conn;
    llhttp_t parser;                /* lives with the request: an idle connection has none */
    llhttp_method_t method;
    uint8_t http_major, http_minor;
    uint8_t keep_alive;
    uint8_t expect_continue;
    uint8_t head_done;              /* headers complete */
    uint8_t complete;               /* whole message (body included) parsed */
    uint8_t dispatched;
    uint8_t started;                /* response head queued */
    uint8_t chunked_response;
    uint8_t head_only;              /* HEAD: no body bytes written */
    uint8_t ended;
    uint8_t last_was_value;
    uint8_t body_chunked;           /* the request body came chunked */
    uint8_t no_deadline;            /* request_timeout no longer applies (cl_req_clear_deadline) */

    cl_buf head;                    /* url and header bytes, capped by max_header_bytes */
    uint32_t url_len;               /* url is head.data[0..url_len) */
    uint32_t path_len;              /* the path part of the url, before '?' */
    cl_header_ref *headers;
    uint32_t nheaders, headers_cap;
    cl_buf body;                    /* capped by max_body_bytes; held against the budget */
    uint64_t body_deadline_ms;      /* loop time by which the whole body must be in */

    cl_path_param params[CL_MAX_PATH_PARAMS];
    int nparams;

    /* Set when the parser refuses the request (limit, bad framing). */
    int refuse_status;              /* 0 = not refused */
    int refuse_code;                /* a cl_err_code */
    const char *refuse_message;     /* static text */
    void (*refuse_answer)(cl_req *r); /* writes the refusal itself (a guard's 401), or NULL */

    uint64_t start_ns;              /* first byte of the request */
    int status;                     /* of the response */
    uint64_t resp_bytes;
    char request_id[CL_REQUEST_ID_LEN + 1];

    char user_id[37];               /* the authenticated caller (guarded routes), or "" */
    uint8_t authed;                 /* user_id holds a verified caller */
    int64_t token_exp;              /* the caller's token expiry (unix s), 0: none */
    char auth_error[96];            /* why the credentials were refused */
    char api_key_id[37];            /* the API key that authenticated it, or "" */
    char key_hash[65];              /* an API key to look up at dispatch (key_pending) */
    uint8_t key_pending;            /* an API key this worker does not know fresh */
    void (*handler)(cl_req *r);     /* a guarded route's handler, run once the guard passes */
    uint8_t guard;                  /* its guard class, while the guard works */

    /** Fires when the connection closes before the response ends. */
    void (*on_abort)(cl_req *req);
    void *handler_data;
    void (*deferred_cancel)(void *state); /* cl_req_defer */
    cl_req *next_cached;            /* the worker's request cache */
};

/** Frees this process's cache of request objects (at worker exit). */
void cl_http1_cleanup(void);

/**
 * For a protocol switch (cl_ws_upgrade): the handler has queued the 101
 * head itself (head_bytes long) and set the connection's new protocol;
 * this logs and counts the request and frees it, leaving the connection
 * alone. on_abort will not fire.
 */
void cl_http1_end_upgraded(cl_req *r, int status, size_t head_bytes);

/** Takes over a freshly accepted connection: the worker hooks' on_accept
 *  of a program that serves HTTP. */
void cl_http1_attach(cl_conn *c);

/** The request path (without query), not NUL-terminated. */
static inline const char *cl_req_path(const cl_req *r) { return r->head.data; }
/** Header value by case-insensitive name, or NULL; *len gets its length. */
const char *cl_req_header(const cl_req *r, const char *name, size_t *len);
/** The raw query string after '?', or NULL. */
const char *cl_req_query(const cl_req *r, size_t *len);
/** Path parameter by name, copied NUL-terminated into out; -1 if absent or too long. */
int cl_req_param(const cl_req *r, const char *name, char *out, size_t outlen);
const char *cl_req_method_name(const cl_req *r);
double cl_req_elapsed_ms(const cl_req *r);

/**
 * Queues a whole response: status line, Date, Server, Content-Length,
 * Connection, X-Request-Id, then `extra_headers` (each "Name: value\r\n",
 * or NULL), then the body. Ends the request.
 */
void cl_res_send(cl_req *r, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len);

/** Streaming: queue the head (chunked for HTTP/1.1; close-delimited for
 *  HTTP/1.0), then any number of writes, then end. Return 0 or -1 when the
 *  connection is gone (stop producing; on_abort has fired or will). */
int cl_res_start(cl_req *r, int status, const char *content_type, const char *extra_headers);
int cl_res_write(cl_req *r, const void *data, size_t len);
/** Writes several pieces as one body chunk (one chunk header for all). */
int cl_res_writev(cl_req *r, const uv_buf_t *bufs, int n);
void cl_res_end(cl_req *r);

/**
 * request_timeout: a dispatched request whose response has not started
 * within it is answered 504 REQUEST_TIMEOUT, after its on_abort ran (the
 * handler releases what it holds, as if the client had left). A handler
 * whose wait is bounded by deadlines of its own — a provider call with its
 * first-token, idle and total timeouts — calls this to take the request
 * off that clock; cl_res_start does it too.
 */
void cl_req_clear_deadline(cl_req *r);

/**
 * A request answered later, after asynchronous work (a query, an upstream
 * call, a hash): cl_req_defer gives the request `size` zeroed bytes of
 * handler state, owned by the request from now on. If the client leaves
 * before the answer, `cancel(state)` runs — it stops the pending work so
 * that its callback never fires — and the state is freed. When the work
 * completes, cl_req_resume(state) takes the request back and frees the
 * state (read what you need from it first); answer the request then.
 * cl_req_defer returns NULL after answering 500 when out of memory.
 */
void *cl_req_defer(cl_req *r, size_t size, void (*cancel)(void *state));
cl_req *cl_req_resume(void *state);

/** Standard reason phrase. */
const char *cl_http_reason(int status);

#endif
