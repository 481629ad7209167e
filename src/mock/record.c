/*
 * record.c — the last requests the mock received, for test assertions:
 * GET /_mock/requests returns them oldest first, DELETE clears them.
 *
 * Each request is rendered to its JSON text once, when it arrives, and kept
 * in a ring of `record_max` entries with a byte budget: a test that sends
 * large bodies evicts old entries instead of growing the mock without bound.
 */
#include "mock.h"

#include "chatloop/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#define RECORD_BUDGET_BYTES (64u * 1024 * 1024)

struct mock_record {
    char *json;
    size_t len;
    uint64_t id;
};

static void drop_oldest(mock_app *a)
{
    mock_record *e = &a->ring[a->ring_head];
    a->ring_bytes -= e->len;
    free(e->json);
    e->json = NULL;
    a->ring_head = (a->ring_head + 1) % a->opt.record_max;
    a->ring_len--;
}

void mock_record_free(mock_app *a)
{
    while (a->ring_len > 0)
        drop_oldest(a);
    free(a->ring);
    a->ring = NULL;
    a->ring_head = 0;
}

/* Header names lower-cased; a name sent more than once gets its values
 * joined with ", " (one JSON key each, as HTTP allows for most headers). */
static void write_headers(cl_buf *b, const cl_req *r)
{
    cl_buf_append_char(b, '{');
    int first = 1;
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const cl_header_ref *h = &r->headers[i];
        const char *name = r->head.data + h->name_off;
        int seen = 0;
        for (uint32_t j = 0; j < i && !seen; j++)
            seen = r->headers[j].name_len == h->name_len &&
                   strncasecmp(r->head.data + r->headers[j].name_off, name, h->name_len) == 0;
        if (seen)
            continue;
        char lower[256];
        size_t nl = h->name_len < sizeof lower ? h->name_len : sizeof lower;
        for (size_t k = 0; k < nl; k++) {
            char ch = name[k];
            lower[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        if (!first)
            cl_buf_append_char(b, ',');
        first = 0;
        cl_jsonw_str(b, lower, nl);
        cl_buf_append_char(b, ':');
        /* Gather the values of this name into one string. */
        cl_buf v;
        cl_buf_init(&v, 0);
        for (uint32_t j = i; j < r->nheaders; j++) {
            const cl_header_ref *o = &r->headers[j];
            if (o->name_len != h->name_len ||
                strncasecmp(r->head.data + o->name_off, name, h->name_len) != 0)
                continue;
            if (v.len)
                cl_buf_append(&v, ", ", 2);
            cl_buf_append(&v, r->head.data + o->value_off, o->value_len);
        }
        cl_jsonw_str(b, v.data ? v.data : "", v.len);
        cl_buf_release(&v);
    }
    cl_buf_append_char(b, '}');
}

void mock_record_request(mock_app *a, cl_req *r, int body_is_json)
{
    if (a->opt.record_max <= 0)
        return;
    if (!a->ring) {
        a->ring = calloc((size_t)a->opt.record_max, sizeof *a->ring);
        if (!a->ring)
            return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t id = ++a->record_seq;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_str(&b, "{\"id\":");
    cl_buf_append_u64(&b, id);
    cl_buf_printf(&b, ",\"timestamp\":%lld.%03d,\"method\":", (long long)tv.tv_sec,
                  (int)(tv.tv_usec / 1000));
    cl_jsonw_cstr(&b, cl_req_method_name(r));
    cl_buf_append_str(&b, ",\"path\":");
    cl_jsonw_str(&b, r->head.data, r->path_len);
    cl_buf_append_str(&b, ",\"query\":");
    size_t qlen;
    const char *q = cl_req_query(r, &qlen);
    if (q)
        cl_jsonw_str(&b, q, qlen);
    else
        cl_buf_append_str(&b, "null");
    cl_buf_append_str(&b, ",\"headers\":");
    write_headers(&b, r);
    cl_buf_append_str(&b, ",\"body\":");
    if (r->body.len == 0)
        cl_buf_append_str(&b, "null");
    else if (body_is_json)
        cl_buf_append(&b, r->body.data, r->body.len); /* jansson accepted it: valid JSON */
    else
        cl_jsonw_str(&b, r->body.data, r->body.len);
    if (cl_buf_append_char(&b, '}') != 0) {
        cl_buf_release(&b);
        return;
    }
    if (a->ring_len == a->opt.record_max)
        drop_oldest(a);
    while (a->ring_len > 0 && a->ring_bytes + b.len > RECORD_BUDGET_BYTES)
        drop_oldest(a);
    mock_record *e = &a->ring[(a->ring_head + a->ring_len) % a->opt.record_max];
    e->json = b.data; /* ownership moves to the ring */
    e->len = b.len;
    e->id = id;
    a->ring_len++;
    a->ring_bytes += b.len;
}

/* `name=<digits>` in the query string, or `def`. */
static uint64_t query_u64(const cl_req *r, const char *name, uint64_t def)
{
    size_t len;
    const char *q = cl_req_query(r, &len);
    size_t nl = strlen(name);
    while (q && len > nl) {
        if (memcmp(q, name, nl) == 0 && q[nl] == '=') {
            uint64_t v = 0;
            size_t i = nl + 1;
            if (i >= len || q[i] < '0' || q[i] > '9')
                return def;
            for (; i < len && q[i] >= '0' && q[i] <= '9'; i++)
                v = v * 10 + (uint64_t)(q[i] - '0');
            return v;
        }
        const char *amp = memchr(q, '&', len);
        if (!amp)
            break;
        len -= (size_t)(amp + 1 - q);
        q = amp + 1;
    }
    return def;
}

/* GET /_mock/requests[?since=ID][&limit=N]: oldest first; `since` keeps
 * entries with a larger id, `limit` keeps the newest N of those. */
void mock_h_requests_get(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    uint64_t since = query_u64(r, "since", 0);
    uint64_t limit = query_u64(r, "limit", UINT64_MAX);
    int start = 0;
    while (start < a->ring_len && a->ring[(a->ring_head + start) % a->opt.record_max].id <= since)
        start++;
    if ((uint64_t)(a->ring_len - start) > limit)
        start = a->ring_len - (int)limit;
    cl_buf b;
    cl_buf_init(&b, 0);
    cl_buf_append_char(&b, '[');
    for (int i = start; i < a->ring_len; i++) {
        const mock_record *e = &a->ring[(a->ring_head + i) % a->opt.record_max];
        if (i > start)
            cl_buf_append_char(&b, ',');
        cl_buf_append(&b, e->json, e->len);
    }
    if (cl_buf_append_char(&b, ']') != 0) {
        cl_buf_release(&b);
        mock_send_error(a, r, 500, "internal_server_error", "out_of_memory",
                        "cannot render the recorded requests", NULL);
        return;
    }
    cl_res_send(r, 200, "application/json", "Cache-Control: no-store\r\n", b.data, b.len);
    cl_buf_release(&b);
}

void mock_h_requests_delete(cl_req *r)
{
    mock_app *a = mock_app_of(r);
    int n = a->ring_len;
    mock_record_free(a);
    char body[64];
    int len = snprintf(body, sizeof body, "{\"deleted\":%d}", n);
    cl_res_send(r, 200, "application/json", NULL, body, (size_t)len);
}
