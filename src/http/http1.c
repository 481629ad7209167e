/*
 * http1.c — HTTP/1.1 on a cl_conn with llhttp.
 *
 * The proceed loop: feed bytes to llhttp; on_message_complete pauses the
 * parser, so llhttp_execute returns after exactly one request; we dispatch
 * it, and continue with the bytes after it only once its response has been
 * queued. If the handler answers later, the unparsed rest is kept in
 * conn->in and reading stops until the response ends (pipelining stays in
 * order and a client cannot make us buffer without bound).
 *
 * Request state lives in a cl_req allocated at the first byte of a request
 * and freed when its response ends: an idle keep-alive connection holds none.
 */
#include "chatloop/http.h"
#include "chatloop/api.h"
#include "chatloop/cors.h"
#include "chatloop/jsonw.h"
#include "chatloop/log.h"
#include "chatloop/router.h"
#include "chatloop/version.h"
#include "chatloop/worker.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Above this much queued output, stop parsing pipelined requests until the
 * client reads: answers to a flood of pipelined requests are not buffered
 * without bound. */
#define PIPELINE_HIGH_WATER (256 * 1024)

static llhttp_settings_t g_settings;
static int g_settings_ready;

static void proceed(cl_conn *c, const char *data, size_t len);
static const cl_conn_proto http1_proto;
static void end_request(cl_req *r);
static void access_log(cl_req *r, double ms);

static inline cl_req *conn_req(cl_conn *c) { return c->proto_data; }

/* ---- request object ---------------------------------------------------- */

/* Requests are recycled through a small cache with their head buffer and
 * header array kept: a keep-alive client then costs no malloc per request.
 * Only busy workers fill it; its size is bounded. One per process: a
 * worker is a process with one loop. */
#define REQ_CACHE_MAX 64
#define REQ_KEEP_HEAD 4096
#define REQ_KEEP_HEADERS 32

static cl_req *g_req_cache;
static int g_req_cache_len;

/* A request (and its parser) starts with the first byte of a message: an
 * idle keep-alive connection — or a WebSocket — carries no parser. */
static cl_req *req_new(cl_conn *c)
{
    cl_worker *w = c->w;
    cl_req *r = g_req_cache;
    if (r) {
        g_req_cache = r->next_cached;
        g_req_cache_len--;
        cl_buf head = r->head;
        cl_header_ref *headers = r->headers;
        uint32_t headers_cap = r->headers_cap;
        memset(r, 0, sizeof *r);
        r->head = head;
        r->head.len = 0;
        r->headers = headers;
        r->headers_cap = headers_cap;
    } else {
        r = calloc(1, sizeof *r);
        if (!r)
            return NULL;
        cl_buf_init(&r->head, 0);
        /* most request heads fit: one allocation instead of doublings */
        cl_buf_reserve(&r->head, 512);
    }
    r->head.max = w->cfg->max_header_bytes;
    r->conn = c;
    llhttp_init(&r->parser, HTTP_REQUEST, &g_settings);
    /* Versions are checked by on_version_complete (llhttp 8.1 has the flag
     * but no setter for it). */
    r->parser.lenient_flags |= LENIENT_VERSION;
    r->parser.data = c;
    r->start_ns = uv_hrtime();
    cl_buf_init(&r->body, w->cfg->max_body_bytes);
    r->keep_alive = 1;
    return r;
}

static void req_free(cl_req *r)
{
    if (!r)
        return;
    cl_conn_unhold(r->conn, r->body.len);
    cl_buf_release(&r->body);
    if (g_req_cache_len < REQ_CACHE_MAX && r->head.cap <= REQ_KEEP_HEAD &&
        r->headers_cap <= REQ_KEEP_HEADERS) {
        r->next_cached = g_req_cache;
        g_req_cache = r;
        g_req_cache_len++;
        return;
    }
    cl_buf_release(&r->head);
    free(r->headers);
    free(r);
}

void cl_http1_cleanup(void)
{
    while (g_req_cache) {
        cl_req *r = g_req_cache;
        g_req_cache = r->next_cached;
        cl_buf_release(&r->head);
        free(r->headers);
        free(r);
    }
    g_req_cache_len = 0;
}

/* Records why a callback refuses the request; returning -1 makes llhttp
 * stop with HPE_USER and the proceed loop answers with this status. */
static int refuse(cl_req *r, int status, cl_err_code code, const char *message)
{
    r->refuse_status = status;
    r->refuse_code = (int)code;
    r->refuse_message = message;
    return -1;
}

/* ---- llhttp callbacks ---------------------------------------------------- */

static int on_message_begin(llhttp_t *p)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    r->start_ns = uv_hrtime();
    cl_conn_set_timeout(c, c->w->cfg->header_timeout_ms);
    return 0;
}

/* The head's size as it was on the wire, near enough: stored bytes plus the
 * separators llhttp stripped (": " and CRLF per header, the request line's). */
static int head_too_big(cl_req *r, size_t more)
{
    uint64_t approx = r->head.len + more + 4ull * r->nheaders + 16;
    return approx > r->conn->w->cfg->max_header_bytes;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    if (r->url_len + len > c->w->cfg->max_request_line)
        return refuse(r, 414, CL_ERR_URI_TOO_LONG, "request target is longer than max_request_line");
    if (head_too_big(r, len) || cl_buf_append(&r->head, at, len) != 0)
        return refuse(r, 431, CL_ERR_HEADERS_TOO_LARGE, "request head is larger than max_header_bytes");
    r->url_len += (uint32_t)len;
    return 0;
}

/* Length of the "http://authority" prefix of an absolute-form target
 * (RFC 9112 §3.2.2), 0 for any other form. */
static size_t absolute_form_prefix(const char *u, size_t len)
{
    size_t skip = len >= 7 && strncasecmp(u, "http://", 7) == 0    ? 7
                  : len >= 8 && strncasecmp(u, "https://", 8) == 0 ? 8
                                                                   : 0;
    if (!skip)
        return 0;
    while (skip < len && u[skip] != '/' && u[skip] != '?')
        skip++;
    return skip;
}

/* A server must accept the absolute form (what a client sends to a proxy,
 * and some send to us directly) and route on its path. The head holds only
 * the target so far, so it is turned into the origin form in place and
 * everything after (routing, logs, query) sees "/path?query". */
static void to_origin_form(cl_req *r)
{
    size_t cut = absolute_form_prefix(r->head.data, r->url_len);
    if (!cut)
        return;
    char *u = r->head.data;
    if (cut == r->url_len || u[cut] == '?')
        u[--cut] = '/'; /* "http://h" and "http://h?q" mean "/" and "/?q" */
    memmove(u, u + cut, r->url_len - cut);
    r->url_len -= (uint32_t)cut;
    r->head.len -= cut;
}

static int on_url_complete(llhttp_t *p)
{
    cl_req *r = conn_req(p->data);
    /* llhttp reaches here with version 0.9 already set only for a request
     * line without a version (HTTP/0.9, "GET /\r\n"); it would then wait
     * for headers that such a client never sends. */
    if (p->http_major == 0 && p->http_minor == 9)
        return refuse(r, 400, CL_ERR_INVALID_REQUEST,
                      "request line without an HTTP version (HTTP/0.9 is not supported)");
    to_origin_form(r);
    const char *q = r->url_len ? memchr(r->head.data, '?', r->url_len) : NULL;
    r->path_len = q ? (uint32_t)(q - r->head.data) : r->url_len;
    return 0;
}

/* llhttp checks versions itself only when not lenient (LENIENT_VERSION,
 * set in cl_http1_attach), and then says 400 to HTTP/2.0's neighbours but
 * passes 2.0 through. Decided here instead: any 1.x is spoken as 1.1 (RFC
 * 9110 §2.5), any other major version gets 505. */
static int on_version_complete(llhttp_t *p)
{
    cl_req *r = conn_req(p->data);
    if (p->http_major != 1)
        return refuse(r, 505, CL_ERR_INVALID_REQUEST,
                      "HTTP version not supported: this server speaks HTTP/1.0 and HTTP/1.1");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    if (!r->last_was_value && r->nheaders > 0 &&
        r->headers[r->nheaders - 1].value_len == 0 &&
        r->headers[r->nheaders - 1].value_off == 0) {
        /* continuation of a field name split across reads */
    } else {
        if (r->nheaders >= (uint32_t)c->w->cfg->max_headers)
            return refuse(r, 431, CL_ERR_HEADERS_TOO_LARGE, "request has more headers than max_headers");
        if (r->nheaders == r->headers_cap) {
            uint32_t cap = r->headers_cap ? r->headers_cap * 2 : 16;
            cl_header_ref *h = realloc(r->headers, cap * sizeof *h);
            if (!h)
                return -1;
            r->headers = h;
            r->headers_cap = cap;
        }
        cl_header_ref *h = &r->headers[r->nheaders++];
        memset(h, 0, sizeof *h);
        h->name_off = (uint32_t)r->head.len;
        r->last_was_value = 0;
    }
    if (head_too_big(r, len) || cl_buf_append(&r->head, at, len) != 0)
        return refuse(r, 431, CL_ERR_HEADERS_TOO_LARGE, "request head is larger than max_header_bytes");
    r->headers[r->nheaders - 1].name_len += (uint32_t)len;
    return 0;
}

/* RFC 9110 token characters. Debian's llhttp build lets a space into a
 * header name ("Bad Name: x"); RFC 9112 §5.1 requires a 400 for that, and
 * a name we would read differently from a proxy in front of us is how
 * request smuggling starts. */
static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int on_header_field_complete(llhttp_t *p)
{
    cl_req *r = conn_req(p->data);
    const cl_header_ref *h = &r->headers[r->nheaders - 1];
    const unsigned char *name = (const unsigned char *)r->head.data + h->name_off;
    if (h->name_len == 0)
        return refuse(r, 400, CL_ERR_INVALID_REQUEST, "empty header name");
    for (uint32_t i = 0; i < h->name_len; i++)
        if (!is_tchar(name[i]))
            return refuse(r, 400, CL_ERR_INVALID_REQUEST,
                          "header name contains a character that is not allowed (RFC 9110 token)");
    /* From here on the entry's value_off is set, which also marks the name
     * as finished for on_header_field. */
    r->headers[r->nheaders - 1].value_off = (uint32_t)r->head.len;
    r->last_was_value = 1;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    cl_req *r = conn_req(p->data);
    if (head_too_big(r, len) || cl_buf_append(&r->head, at, len) != 0)
        return refuse(r, 431, CL_ERR_HEADERS_TOO_LARGE, "request head is larger than max_header_bytes");
    r->headers[r->nheaders - 1].value_len += (uint32_t)len;
    return 0;
}

static int header_is(const cl_req *r, const char *name, const char *value)
{
    size_t len;
    const char *v = cl_req_header(r, name, &len);
    return v && len == strlen(value) && strncasecmp(v, value, len) == 0;
}

/* RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any
 * request with more than one (two hosts could be read differently by a
 * proxy in front of us and by us). */
static int host_problem(const cl_req *r, const char **why)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->nheaders; i++)
        n += r->headers[i].name_len == 4 &&
             strncasecmp(r->head.data + r->headers[i].name_off, "host", 4) == 0;
    if (n > 1)
        *why = "more than one Host header";
    else if (n == 0 && r->http_minor >= 1)
        *why = "missing Host header (required in HTTP/1.1)";
    else
        return 0;
    return 1;
}

/* A route that needs credentials checks them before its body is read: a
 * stranger cannot make us buffer max_body_bytes for a request we would
 * refuse anyway. */
static int guard_refuses(cl_req *r)
{
    cl_worker *w = r->conn->w;
    if (!w->hooks || !w->hooks->guard_head)
        return 0;
    cl_route_match m;
    if (cl_router_match(w->router, llhttp_method_name(r->method), r->head.data, r->path_len, &m) !=
            CL_ROUTE_FOUND ||
        !m.guard)
        return 0;
    return !w->hooks->guard_head(r, m.guard);
}

static int on_headers_complete(llhttp_t *p)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    const cl_config *cfg = c->w->cfg;
    const char *why;
    r->head_done = 1;
    r->method = (llhttp_method_t)p->method;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    if (host_problem(r, &why))
        return refuse(r, 400, CL_ERR_INVALID_REQUEST, why);
    r->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
    r->body_chunked = (p->flags & F_CHUNKED) != 0;
    int has_body = r->body_chunked || p->content_length > 0;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > cfg->max_body_bytes)
        return refuse(r, 413, CL_ERR_PAYLOAD_TOO_LARGE, "request body is larger than max_body_bytes");
    if (has_body && guard_refuses(r))
        return -1; /* before any 100 Continue: the client must not send the body */
    if (cl_req_header(r, "expect", NULL)) {
        if (!header_is(r, "expect", "100-continue"))
            return refuse(r, 417, CL_ERR_INVALID_REQUEST, "only \"Expect: 100-continue\" is supported");
        r->expect_continue = 1;
        /* Tell the client to send the body now that we know we want it;
         * an HTTP/1.0 client does not understand 100. */
        if (has_body && r->http_minor >= 1)
            cl_conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    if (has_body) {
        r->body_deadline_ms = uv_now(c->w->loop) + cfg->body_total_timeout_ms;
        uint64_t first = cfg->body_timeout_ms < cfg->body_total_timeout_ms ? cfg->body_timeout_ms
                                                                          : cfg->body_total_timeout_ms;
        cl_conn_set_timeout(c, first);
    }
    return 0;
}

/* llhttp has the chunk's size in content_length here: a chunk that would
 * take the body past max_body_bytes is refused before its bytes arrive,
 * rather than after max_body_bytes of them. */
static int on_chunk_header(llhttp_t *p)
{
    cl_req *r = conn_req(p->data);
    uint64_t max = r->conn->w->cfg->max_body_bytes;
    if (p->content_length > max || r->body.len > max - p->content_length)
        return refuse(r, 413, CL_ERR_PAYLOAD_TOO_LARGE, "request body is larger than max_body_bytes");
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    const cl_config *cfg = c->w->cfg;
    uint64_t now = uv_now(c->w->loop);
    if (now >= r->body_deadline_ms)
        return refuse(r, 408, CL_ERR_REQUEST_TIMEOUT_HEAD,
                      "request body did not arrive within body_total_timeout");
    if (r->body.len + len > cfg->max_body_bytes)
        return refuse(r, 413, CL_ERR_PAYLOAD_TOO_LARGE, "request body is larger than max_body_bytes");
    if (cl_conn_hold(c, len) != 0)
        return refuse(r, 503, CL_ERR_SERVICE_UNAVAILABLE,
                      "the server is holding too much data for its clients (max_buffered_bytes); "
                      "try again shortly");
    if (cl_buf_append(&r->body, at, len) != 0) {
        cl_conn_unhold(c, len);
        return refuse(r, 413, CL_ERR_PAYLOAD_TOO_LARGE, "request body is larger than max_body_bytes");
    }
    /* body_timeout bounds the gap between reads, body_total_timeout the whole */
    uint64_t left = r->body_deadline_ms - now;
    cl_conn_set_timeout(c, left < cfg->body_timeout_ms ? left : cfg->body_timeout_ms);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    cl_conn *c = p->data;
    cl_req *r = conn_req(c);
    r->complete = 1;
    /* From here the handler has request_timeout to start its answer. */
    cl_conn_set_timeout(c, c->w->cfg->request_timeout_ms);
    return HPE_PAUSED; /* one request at a time: see the proceed loop */
}

static void settings_init(void)
{
    if (g_settings_ready)
        return;
    llhttp_settings_init(&g_settings);
    g_settings.on_message_begin = on_message_begin;
    g_settings.on_url = on_url;
    g_settings.on_url_complete = on_url_complete;
    g_settings.on_version_complete = on_version_complete;
    g_settings.on_chunk_header = on_chunk_header;
    g_settings.on_header_field = on_header_field;
    g_settings.on_header_field_complete = on_header_field_complete;
    g_settings.on_header_value = on_header_value;
    g_settings.on_headers_complete = on_headers_complete;
    g_settings.on_body = on_body;
    g_settings.on_message_complete = on_message_complete;
    g_settings_ready = 1;
}

/* ---- request accessors ----------------------------------------------------- */

const char *cl_req_header(const cl_req *r, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const cl_header_ref *h = &r->headers[i];
        if (h->name_len == nl && strncasecmp(r->head.data + h->name_off, name, nl) == 0) {
            if (len)
                *len = h->value_len;
            return r->head.data + h->value_off;
        }
    }
    return NULL;
}

const char *cl_req_query(const cl_req *r, size_t *len)
{
    if (r->path_len >= r->url_len)
        return NULL;
    *len = r->url_len - r->path_len - 1;
    return r->head.data + r->path_len + 1;
}

int cl_req_param(const cl_req *r, const char *name, char *out, size_t outlen)
{
    for (int i = 0; i < r->nparams; i++) {
        if (strcmp(r->params[i].name, name) == 0) {
            if (r->params[i].len >= outlen)
                return -1;
            memcpy(out, r->params[i].value, r->params[i].len);
            out[r->params[i].len] = '\0';
            return 0;
        }
    }
    return -1;
}

const char *cl_req_method_name(const cl_req *r)
{
    return r->head_done ? llhttp_method_name(r->method) : "-";
}

double cl_req_elapsed_ms(const cl_req *r)
{
    return (double)(uv_hrtime() - r->start_ns) / 1e6;
}

/* ---- responses ----------------------------------------------------------- */

const char *cl_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* "Date: ...\r\n", formatted once a second. */
static const char *date_header(void)
{
    static time_t last;
    static char line[64];
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(line, sizeof line, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        last = now;
    }
    return line;
}

/* Response heads are assembled in one reusable buffer (a worker is one
 * thread), then copied into the connection's output with the body. */
static cl_buf *scratch(void)
{
    static cl_buf b = {NULL, 0, 0, (size_t)-1};
    if (b.cap > 64 * 1024)
        cl_buf_release(&b);
    cl_buf_reset(&b);
    return &b;
}

/* On every answer: no MIME sniffing, no Referer leaving the page, never in
 * a frame. One literal, appended as it is: this runs for every response. */
#define SECURITY_HEADERS                                                                          \
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"
/* API answers carry user data: no cache (browser or proxy) keeps them. */
#define NO_STORE "Cache-Control: no-store\r\n"
/* An HTML page without a policy of its own still may not be framed. */
#define HTML_CSP "Content-Security-Policy: frame-ancestors 'none'\r\n"

/* /api/... and /v1/...: the native and the OpenAI-compatible API. */
static int is_api_path(const cl_req *r)
{
    const char *p = r->head.data;
    size_t n = r->path_len;
    return (n >= 4 && memcmp(p, "/api", 4) == 0 && (n == 4 || p[4] == '/')) ||
           (n >= 3 && memcmp(p, "/v1", 3) == 0 && (n == 3 || p[3] == '/'));
}

/* Writes the status line and common headers into b. len < 0: no
 * Content-Length (streaming). The headers every response needs (security,
 * caching of API answers, CORS) are written here and nowhere else, so no
 * route can forget them; a route's `extra` may carry its own
 * Cache-Control or Content-Security-Policy instead of the default. */
static void build_head(cl_req *r, cl_buf *b, int status, const char *content_type,
                       const char *extra, long long len, int chunked)
{
    cl_conn *c = r->conn;
    if (c->w->draining)
        r->keep_alive = 0;
    r->status = status;
    cl_buf_append_str(b, "HTTP/1.1 ");
    cl_buf_append_u64(b, (unsigned)status);
    cl_buf_append_char(b, ' ');
    cl_buf_append_str(b, cl_http_reason(status));
    cl_buf_append_str(b, "\r\nServer: chatloop/" CL_VERSION "\r\n");
    cl_buf_append_str(b, date_header());
    if (content_type) {
        cl_buf_append_str(b, "Content-Type: ");
        cl_buf_append_str(b, content_type);
        cl_buf_append_str(b, "\r\n");
    }
    if (status == 204)
        len = -1; /* RFC 9110 §8.6: a 204 carries no Content-Length */
    if (len >= 0) {
        cl_buf_append_str(b, "Content-Length: ");
        cl_buf_append_u64(b, (unsigned long long)len);
        cl_buf_append_str(b, "\r\n");
    } else if (chunked) {
        cl_buf_append_str(b, "Transfer-Encoding: chunked\r\n");
    }
    if (!r->keep_alive)
        cl_buf_append_str(b, "Connection: close\r\n");
    else if (r->http_minor == 0)
        cl_buf_append_str(b, "Connection: keep-alive\r\n");
    if (r->request_id[0]) {
        cl_buf_append_str(b, "X-Request-Id: ");
        cl_buf_append_str(b, r->request_id);
        cl_buf_append_str(b, "\r\n");
    }
    cl_buf_append(b, SECURITY_HEADERS, sizeof SECURITY_HEADERS - 1);
    if (is_api_path(r) && !(extra && strstr(extra, "Cache-Control:")))
        cl_buf_append(b, NO_STORE, sizeof NO_STORE - 1);
    if (content_type && strncmp(content_type, "text/html", 9) == 0 &&
        !(extra && strstr(extra, "Content-Security-Policy:")))
        cl_buf_append(b, HTML_CSP, sizeof HTML_CSP - 1);
    cl_cors_head(c->w->cors, r, b);
    if (extra)
        cl_buf_append_str(b, extra);
    cl_buf_append_str(b, "\r\n");
}

void cl_res_send(cl_req *r, int status, const char *content_type, const char *extra,
                 const void *body, size_t len)
{
    if (r->ended)
        return;
    if (r->started || r->conn->closing) {
        /* Nothing more can be said on this response (a stream already began,
         * or the peer is gone), but the request still ends here: the caller
         * counts on the req being finished, and on_abort never firing. */
        r->status = r->status ? r->status : status;
        end_request(r);
        return;
    }
    cl_buf *b = scratch();
    build_head(r, b, status, content_type, extra, (long long)len, 0);
    r->started = 1;
    /* Small answers go out as one piece: head and body copied together. */
    if (!r->head_only && len && len <= 4096 && cl_buf_append(b, body, len) == 0)
        len = 0;
    cl_conn_write(r->conn, b->data, b->len);
    r->resp_bytes = b->len;
    if (!r->head_only && len) {
        cl_conn_write(r->conn, body, len);
        r->resp_bytes += len;
    }
    end_request(r);
}

/* ---- deferred answers ------------------------------------------------------- */

/* The state handed out by cl_req_defer follows this header in one block. */
typedef struct deferred {
    cl_req *req;
    max_align_t align[];
} deferred;

static void deferred_abort(cl_req *r)
{
    deferred *d = r->handler_data;
    void (*cancel)(void *) = r->deferred_cancel;
    r->deferred_cancel = NULL;
    if (cancel)
        cancel(d->align);
    free(d);
}

void *cl_req_defer(cl_req *r, size_t size, void (*cancel)(void *state))
{
    assert(!r->on_abort && !r->handler_data); /* one pending step at a time */
    deferred *d = calloc(1, sizeof *d + size);
    if (!d) {
        cl_api_error(r, CL_ERR_PROCESSING_ERROR, "out of memory", NULL, NULL);
        return NULL;
    }
    d->req = r;
    r->handler_data = d;
    r->deferred_cancel = cancel;
    r->on_abort = deferred_abort;
    return d->align;
}

cl_req *cl_req_resume(void *state)
{
    deferred *d = (deferred *)((char *)state - offsetof(deferred, align));
    cl_req *r = d->req;
    assert(r->handler_data == d);
    r->on_abort = NULL;
    r->handler_data = NULL;
    r->deferred_cancel = NULL;
    free(d);
    return r;
}

void cl_req_clear_deadline(cl_req *r)
{
    if (r->no_deadline || r->ended)
        return;
    r->no_deadline = 1;
    if (r->conn->proto_data == r)
        cl_conn_set_timeout(r->conn, 0);
}

int cl_res_start(cl_req *r, int status, const char *content_type, const char *extra)
{
    if (r->started || r->ended || r->conn->closing)
        return -1;
    cl_req_clear_deadline(r); /* a started stream is bounded by its producer */
    /* HTTP/1.0 has no chunked encoding: the end of the body is the close. */
    int chunked = r->http_minor >= 1;
    if (!chunked)
        r->keep_alive = 0;
    r->chunked_response = (uint8_t)chunked;
    cl_buf *b = scratch();
    build_head(r, b, status, content_type, extra, -1, chunked);
    r->started = 1;
    r->resp_bytes = b->len;
    return cl_conn_write(r->conn, b->data, b->len);
}

int cl_res_writev(cl_req *r, const uv_buf_t *bufs, int n)
{
    if (!r->started || r->ended || r->conn->closing)
        return -1;
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += bufs[i].len;
    if (len == 0 || r->head_only)
        return 0;
    r->resp_bytes += len;
    /* One chunk for all pieces: "<hex>\r\n" piece... "\r\n", written
     * straight into the connection's output (no printf, no staging copy:
     * this runs once per relayed token). */
    char head[20];
    size_t hl = 0;
    if (r->chunked_response) {
        char tmp[16];
        size_t t = 0;
        for (size_t v = len; v; v >>= 4)
            tmp[t++] = "0123456789abcdef"[v & 15];
        while (t)
            head[hl++] = tmp[--t];
        head[hl++] = '\r';
        head[hl++] = '\n';
    }
    cl_conn *c = r->conn;
    if (hl && cl_conn_write(c, head, hl) != 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (bufs[i].len && cl_conn_write(c, bufs[i].base, bufs[i].len) != 0)
            return -1;
    return r->chunked_response ? cl_conn_write(c, "\r\n", 2) : 0;
}

int cl_res_write(cl_req *r, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned int)len);
    return cl_res_writev(r, &b, 1);
}

void cl_res_end(cl_req *r)
{
    if (r->ended)
        return;
    if (r->started && r->chunked_response && !r->head_only && !r->conn->closing)
        cl_conn_write(r->conn, "0\r\n\r\n", 5);
    if (!r->started && !r->status)
        r->status = 499; /* ended before any answer: the client left (nginx's 499) */
    end_request(r);
}

void cl_http1_end_upgraded(cl_req *r, int status, size_t head_bytes)
{
    cl_conn *c = r->conn;
    r->status = status;
    r->started = 1;
    r->resp_bytes = head_bytes;
    r->ended = 1;
    double ms = cl_req_elapsed_ms(r);
    cl_metrics_request(c->w->metrics, status, ms);
    access_log(r, ms);
    if (c->proto_data == r)
        c->proto_data = NULL;
    req_free(r);
}

/* ---- access log ------------------------------------------------------------ */

/* The path as the text log shows it, between double quotes: '"', '\\' and
 * every byte outside printable ASCII become escapes, so a request cannot
 * end the quoted field, forge a log line or send terminal controls. */
static void log_escaped(cl_buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            cl_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            cl_buf_printf(b, "\\x%02x", ch);
        else
            cl_buf_append_char(b, (char)ch);
    }
}

static void access_log(cl_req *r, double ms)
{
    cl_conn *c = r->conn;
    if (!c->w->cfg->access_log || !cl_log_enabled(CL_LOG_INFO))
        return;
    cl_buf *b = cl_log_begin(CL_LOG_INFO);
    const char *method = cl_req_method_name(r);
    if (cl_log_get_format() == CL_LOG_JSON) {
        cl_buf_append_str(b, ",\"msg\":\"request\",\"remote\":");
        cl_jsonw_cstr(b, c->peer);
        cl_buf_append_str(b, ",\"method\":");
        cl_jsonw_cstr(b, method);
        cl_buf_append_str(b, ",\"path\":");
        cl_jsonw_str(b, r->head.data ? r->head.data : "", r->path_len);
        cl_buf_printf(b, ",\"status\":%d,\"bytes\":%llu,\"ms\":", r->status,
                      (unsigned long long)r->resp_bytes);
        cl_jsonw_ms(b, ms);
        cl_buf_append_str(b, ",\"request_id\":");
        cl_jsonw_cstr(b, r->request_id);
    } else {
        cl_buf_printf(b, "%s \"%s ", c->peer, method);
        log_escaped(b, r->head.data ? r->head.data : "", r->path_len);
        cl_buf_printf(b, " HTTP/%d.%d\" %d %llu %.3fms id=%s", r->http_major, r->http_minor,
                      r->status, (unsigned long long)r->resp_bytes, ms,
                      r->request_id[0] ? r->request_id : "-");
    }
    cl_log_end();
}

/* ---- request lifecycle --------------------------------------------------- */

static void end_request(cl_req *r)
{
    cl_conn *c = r->conn;
    cl_worker *w = c->w;
    r->ended = 1;
    double ms = cl_req_elapsed_ms(r);
    cl_metrics_request(w->metrics, r->status, ms);
    access_log(r, ms);
    int keep = r->keep_alive && !w->draining && !c->closing;
    c->proto_data = NULL;
    req_free(r);
    if (c->closing)
        return;
    if (!keep) {
        cl_buf_release(&c->in);
        cl_conn_close_after_write(c);
        return;
    }
    cl_conn_set_timeout(c, w->cfg->keepalive_timeout_ms);
    if (c->proto_busy)
        return; /* the proceed loop on the stack continues with the next request */
    /* An asynchronous answer ended: parse what arrived meanwhile. */
    if (c->in.len && cl_conn_pending_bytes(c) < PIPELINE_HIGH_WATER) {
        cl_buf held = c->in;
        cl_buf_init(&c->in, 0);
        proceed(c, held.data, held.len);
        cl_buf_release(&held);
    } else if (c->in.len) {
        /* Too much output still queued: pause, so http1_on_drained parses
         * the held bytes once the client has read it (reading on now would
         * put newer bytes ahead of them, or leave them waiting forever). */
        c->proto_paused = 1;
    }
    if (!c->closing && !conn_req(c) && !c->proto_paused)
        cl_conn_read_start(c);
}

static int valid_request_id(const char *v, size_t len)
{
    if (len == 0 || len > CL_REQUEST_ID_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

static void assign_request_id(cl_req *r)
{
    size_t len;
    const char *v = cl_req_header(r, "x-request-id", &len);
    if (v && valid_request_id(v, len)) {
        memcpy(r->request_id, v, len);
        r->request_id[len] = '\0';
        return;
    }
    cl_worker *w = r->conn->w;
    snprintf(r->request_id, sizeof r->request_id, "%08x%012llx", w->request_id_prefix,
             (unsigned long long)++w->request_seq);
}

static void dispatch(cl_req *r)
{
    cl_conn *c = r->conn;
    r->dispatched = 1;
    assign_request_id(r);
    if (c->w->draining)
        r->keep_alive = 0;
    const char *method = llhttp_method_name(r->method);
    r->head_only = r->method == HTTP_HEAD;
    if (cl_cors_is_preflight(r)) {
        /* before routing and its guards: a preflight never carries
         * credentials, and answering it says nothing about a route */
        cl_cors_preflight(c->w->cors, r);
        return;
    }
    cl_route_match m;
    cl_route_result res = cl_router_match(c->w->router, method, r->head.data, r->path_len, &m);
    if (res == CL_ROUTE_FOUND) {
        r->nparams = m.nparams;
        memcpy(r->params, m.params, sizeof m.params);
        if (m.guard && c->w->hooks && c->w->hooks->guard_dispatch)
            c->w->hooks->guard_dispatch(r, m.guard, m.fn);
        else
            m.fn(r);
        return;
    }
    char msg[160];
    if (res == CL_ROUTE_BAD_METHOD) {
        char allow[128];
        snprintf(allow, sizeof allow, "Allow: %s\r\n", m.allow);
        snprintf(msg, sizeof msg, "method %s is not allowed here; allowed: %s", method, m.allow);
        cl_buf details;
        cl_buf_init(&details, 0);
        cl_buf_append_str(&details, "{\"allow\":");
        cl_jsonw_cstr(&details, m.allow);
        cl_buf_append_char(&details, '}');
        cl_api_error(r, CL_ERR_METHOD_NOT_ALLOWED, msg, cl_buf_cstr(&details), allow);
        cl_buf_release(&details);
        return;
    }
    cl_buf details;
    cl_buf_init(&details, 0);
    cl_buf_append_str(&details, "{\"path\":");
    cl_jsonw_str(&details, r->head.data ? r->head.data : "", r->path_len);
    cl_buf_append_char(&details, '}');
    cl_api_error(r, CL_ERR_NOT_FOUND, "no such endpoint", cl_buf_cstr(&details), NULL);
    cl_buf_release(&details);
}

/* Answers a request the parser refused and closes the connection: after a
 * framing error we cannot know where the next request would start. */
static void refuse_and_close(cl_conn *c, llhttp_errno_t err)
{
    cl_req *r = conn_req(c);
    if (!r) {
        r = req_new(c);
        if (!r) {
            cl_conn_close(c);
            return;
        }
        c->proto_data = r;
    }
    r->keep_alive = 0;
    r->dispatched = 1;
    cl_metric_add(&c->w->metrics->http_parse_errors, 1);
    cl_conn_read_stop(c);
    assign_request_id(r);
    if (r->refuse_answer) {
        r->refuse_answer(r);
        return;
    }
    if (r->refuse_status) {
        cl_api_error_status(r, r->refuse_status, (cl_err_code)r->refuse_code, r->refuse_message,
                            NULL, NULL);
        return;
    }
    char msg[200];
    const char *reason = llhttp_get_error_reason(&r->parser);
    snprintf(msg, sizeof msg, "malformed HTTP request: %s", reason ? reason : llhttp_errno_name(err));
    cl_api_error(r, CL_ERR_INVALID_REQUEST, msg, NULL, NULL);
}

static void proceed(cl_conn *c, const char *data, size_t len)
{
    c->proto_busy = 1;
    while (len > 0 && !c->closing && !c->close_after_write) {
        cl_req *r = conn_req(c);
        if ((r && r->dispatched) || cl_conn_pending_bytes(c) >= PIPELINE_HIGH_WATER) {
            /* Wait for the answer (or for the client to read): keep the rest
             * and stop reading. Bounded: reading stays off until we resume. */
            if (cl_buf_append(&c->in, data, len) != 0) {
                cl_conn_close(c);
                break;
            }
            c->proto_paused = !(r && r->dispatched);
            cl_conn_read_stop(c);
            break;
        }
        if (!r) {
            if (!(r = req_new(c))) {
                cl_conn_close(c);
                break;
            }
            c->proto_data = r;
        }
        llhttp_errno_t err = llhttp_execute(&r->parser, data, len);
        if (c->closing)
            break;
        if (err == HPE_OK)
            break; /* everything consumed; the request continues in later reads */
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            size_t used = (size_t)(llhttp_get_error_pos(&r->parser) - data);
            data += used;
            len -= used;
            if (err == HPE_PAUSED_UPGRADE) {
                /* Not reached: an Upgrade request leaves the loop below
                 * once dispatched. Defensive: nothing after it is HTTP. */
                cl_conn_close_after_write(c);
                break;
            }
            /* on_message_complete paused: one whole request. llhttp
             * reports an Upgrade request this way too (HPE_PAUSED_UPGRADE
             * only comes on the next execute), with parser.upgrade set. */
            llhttp_resume(&r->parser);
            cl_req *req = r;
            int upgrade = r->parser.upgrade;
            if (upgrade) {
                /* What follows is the new protocol's: unless the handler
                 * switches protocols (cl_ws_upgrade), its answer is the
                 * last thing on this connection. */
                req->keep_alive = 0;
            }
            dispatch(req);
            if (!upgrade)
                continue;
            if (c->proto != &http1_proto) {
                /* req is gone; the rest of this read is the new protocol's */
                c->proto_busy = 0;
                if (len && !c->closing)
                    c->proto->on_data(c, data, len);
                return;
            }
            if (conn_req(c) && len && !c->closing && cl_buf_append(&c->in, data, len) != 0)
                cl_conn_close(c); /* answered later: a late cl_ws_upgrade takes them */
            break;
        }
        refuse_and_close(c, err);
        break;
    }
    c->proto_busy = 0;
}

/* ---- connection protocol -------------------------------------------------- */

static void http1_on_data(cl_conn *c, const char *data, size_t len)
{
    cl_req *r = conn_req(c);
    if ((r && r->dispatched) || c->proto_paused) {
        /* Bytes that raced our read_stop within one read batch, or the
         * next request arriving while an asynchronous answer is still
         * being produced (reading stays on after a dispatch so that a
         * client leaving is noticed). Hold them, but past a request
         * head's worth stop reading until the answer ends: a client must
         * not make us buffer without bound during a long stream. */
        if (cl_buf_append(&c->in, data, len) != 0)
            cl_conn_close(c);
        else if (c->in.len >= c->w->cfg->max_header_bytes)
            cl_conn_read_stop(c);
        return;
    }
    proceed(c, data, len);
}

static void http1_on_drained(cl_conn *c)
{
    if (!c->proto_paused)
        return;
    c->proto_paused = 0;
    if (c->in.len) {
        cl_buf held = c->in;
        cl_buf_init(&c->in, 0);
        proceed(c, held.data, held.len);
        cl_buf_release(&held);
    }
    if (!c->closing && !c->proto_paused && !(conn_req(c) && conn_req(c)->dispatched))
        cl_conn_read_start(c);
}

static void http1_on_eof(cl_conn *c)
{
    cl_req *r = conn_req(c);
    if (r && r->dispatched && !r->ended) {
        /* The client left while we were still answering: abort the work. */
        cl_conn_close(c);
        return;
    }
    /* Answers already queued still go out, then we close. */
    cl_conn_close_after_write(c);
}

/* A dispatched request whose handler has not started its answer within
 * request_timeout: the handler lets go of everything it holds (its
 * on_abort, as if the client had left), and the client hears 504. */
static void request_timed_out(cl_req *r)
{
    cl_conn *c = r->conn;
    CL_WARN("conn %s: %s %.*s: no answer within request_timeout (%llums)", c->peer,
            cl_req_method_name(r), (int)r->path_len, r->head.data ? r->head.data : "",
            (unsigned long long)c->w->cfg->request_timeout_ms);
    void (*abort_fn)(cl_req *) = r->on_abort;
    r->on_abort = NULL;
    if (abort_fn)
        abort_fn(r);
    r->handler_data = NULL;
    r->keep_alive = 0; /* what the handler might still have read is unknowable */
    cl_api_error(r, CL_ERR_REQUEST_TIMEOUT, "the request was not answered within request_timeout",
                 NULL, NULL);
}

static void http1_on_timeout(cl_conn *c)
{
    cl_req *r = conn_req(c);
    if (r && r->dispatched && !r->started && !r->ended && !r->no_deadline) {
        request_timed_out(r);
        return;
    }
    if (!r || r->dispatched) {
        cl_conn_close(c); /* idle keep-alive (or never sent a byte) */
        return;
    }
    cl_metric_add(&c->w->metrics->header_timeouts, 1);
    const char *what = !r->head_done ? "request head did not arrive within header_timeout"
                       : uv_now(c->w->loop) >= r->body_deadline_ms
                           ? "request body did not arrive within body_total_timeout"
                           : "request body did not arrive within body_timeout";
    CL_DEBUG("conn %s: %s", c->peer, what);
    r->keep_alive = 0;
    r->dispatched = 1;
    cl_conn_read_stop(c);
    assign_request_id(r);
    cl_api_error(r, CL_ERR_REQUEST_TIMEOUT_HEAD, what, NULL, NULL);
}

static void http1_on_shutdown(cl_conn *c)
{
    cl_req *r = conn_req(c);
    if (r) {
        /* A request has begun (maybe still arriving): it is in flight, so
         * it gets its answer, then the connection closes. The drain timer
         * bounds how long that may take. */
        r->keep_alive = 0;
        return;
    }
    if (cl_conn_pending_bytes(c))
        cl_conn_close_after_write(c);
    else
        cl_conn_close(c);
}

static void http1_on_free(cl_conn *c)
{
    cl_req *r = conn_req(c);
    if (!r)
        return;
    if (r->dispatched && !r->ended && r->on_abort)
        r->on_abort(r);
    c->proto_data = NULL;
    req_free(r);
}

static const cl_conn_proto http1_proto = {
    .name = "http1",
    .on_data = http1_on_data,
    .on_eof = http1_on_eof,
    .on_drained = http1_on_drained,
    .on_timeout = http1_on_timeout,
    .on_shutdown = http1_on_shutdown,
    .on_free = http1_on_free,
};

void cl_http1_attach(cl_conn *c)
{
    settings_init();
    cl_conn_set_proto(c, &http1_proto, NULL);
    /* A connection that never sends a request is cut like a slow one. */
    cl_conn_set_timeout(c, c->w->cfg->header_timeout_ms);
}
