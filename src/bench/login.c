/*
 * login.c — --login EMAIL:PASSWORD: before the run, register the user (a
 * 409 "taken" is fine) and log in over chatloop's REST API, so a benchmark
 * against a server with `auth = required` needs no token pasted by hand.
 * This runs once, before the loop starts: a plain blocking socket is the
 * simplest correct client here.
 */
#include "bench.h"

#include "chatloop/buf.h"
#include "chatloop/jsonw.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define LOGIN_MAX_RESPONSE (256 * 1024)

/* POSTs body to path; fills *status and the response body. 0, or -1. */
static int post(const cb_options *o, const char *path, const char *body, int *status, cl_buf *resp)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {(time_t)(o->timeout_ns / 1000000000ull), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)o->port);
    inet_pton(AF_INET, o->host, &a.sin_addr);
    cl_buf req;
    cl_buf_init(&req, 0);
    cl_buf_printf(&req,
                  "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                  path, o->host, o->port, strlen(body), body);
    int rc = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        goto out;
    for (size_t off = 0; off < req.len;) {
        ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    cl_buf all;
    cl_buf_init(&all, LOGIN_MAX_RESPONSE);
    char chunk[4096];
    ssize_t n;
    while ((n = recv(fd, chunk, sizeof chunk, 0)) > 0)
        if (cl_buf_append(&all, chunk, (size_t)n) != 0)
            break;
    const char *s = cl_buf_cstr(&all);
    const char *sep = s ? strstr(s, "\r\n\r\n") : NULL;
    if (s && sep && sscanf(s, "HTTP/1.%*d %d", status) == 1) {
        /* chatloop answers these with Content-Length, never chunked */
        cl_buf_append(resp, sep + 4, all.len - (size_t)(sep + 4 - s));
        rc = 0;
    }
    cl_buf_release(&all);
out:
    cl_buf_release(&req);
    close(fd);
    return rc;
}

int cb_login(const cb_options *o, const char *email_password, char **token_out)
{
    const char *colon = strchr(email_password, ':');
    if (!colon || colon == email_password) {
        fprintf(stderr, "chatbench: --login wants EMAIL:PASSWORD\n");
        return -1;
    }
    char email[256];
    size_t elen = (size_t)(colon - email_password);
    if (elen >= sizeof email)
        return -1;
    memcpy(email, email_password, elen);
    email[elen] = '\0';
    cl_buf body, resp;
    cl_buf_init(&body, 0);
    cl_buf_init(&resp, 0);
    cl_buf_append_str(&body, "{\"email\":");
    cl_jsonw_cstr(&body, email);
    cl_buf_append_str(&body, ",\"password\":");
    cl_jsonw_cstr(&body, colon + 1);
    cl_buf_append_char(&body, '}');
    int status = 0, rc = -1;
    if (post(o, "/api/v1/auth/register", cl_buf_cstr(&body), &status, &resp) != 0) {
        fprintf(stderr, "chatbench: --login: cannot reach %s:%d\n", o->host, o->port);
        goto out;
    }
    if (status != 201 && status != 409) {
        fprintf(stderr, "chatbench: --login: registering answered HTTP %d: %.200s\n", status,
                resp.data ? cl_buf_cstr(&resp) : "");
        goto out;
    }
    cl_buf_reset(&resp);
    if (post(o, "/api/v1/auth/login", cl_buf_cstr(&body), &status, &resp) != 0 || status != 200) {
        fprintf(stderr, "chatbench: --login: logging in answered HTTP %d: %.200s\n", status,
                resp.data ? cl_buf_cstr(&resp) : "");
        goto out;
    }
    static const char *const top[] = {"data"};
    static const char *const in[] = {"access_token"};
    cl_json_span d, t;
    char tok[4096];
    long n;
    if (cl_json_members(resp.data, resp.len, top, &d, 1) != 0 || !d.p ||
        cl_json_members(d.p, d.n, in, &t, 1) != 0 || !t.p ||
        (n = cl_json_string(t, tok, sizeof tok - 1)) <= 0) {
        fprintf(stderr, "chatbench: --login: no data.access_token in the answer\n");
        goto out;
    }
    tok[n] = '\0';
    *token_out = strdup(tok);
    rc = *token_out ? 0 : -1;
out:
    cl_buf_release(&body);
    cl_buf_release(&resp);
    return rc;
}
