/* docs.c — GET /docs: the OpenAPI document (/openapi.json) in Swagger UI.
 *
 * Swagger UI is not part of the repository: scripts/docs-assets.sh fetches
 * its npm package into docs_dir (var/docs by default; `make docs`). The
 * few files the page needs are read into memory when the routes are built,
 * at worker start, so serving them never touches the disk from the loop.
 * When they are missing, /docs still answers 200, with a page that says
 * how to get them, and the build and every other route are unaffected.
 *
 * The page loads its own init script (/docs/init.js, built in) rather than
 * an inline one, so it keeps working under a CSP without 'unsafe-inline'. */
#include "chatloop/api.h"
#include "chatloop/routes.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* swagger-ui-bundle.js is about 1.5 MB; this leaves room for new releases
 * while bounding what a wrong docs_dir can make every worker hold. */
#define MAX_FILE_BYTES (16u * 1024 * 1024)

typedef struct docs_file {
    const char *name;
    const char *ctype;
    int required;               /* the page cannot render without it */
    char *data;                 /* owned; NULL when not loaded */
    size_t len;
} docs_file;

static docs_file g_files[] = {
    {"swagger-ui-bundle.js", "text/javascript; charset=utf-8", 1, NULL, 0},
    {"swagger-ui.css", "text/css; charset=utf-8", 1, NULL, 0},
    {"favicon-32x32.png", "image/png", 0, NULL, 0},
    {"favicon-16x16.png", "image/png", 0, NULL, 0},
};
#define NFILES (sizeof g_files / sizeof g_files[0])

static int g_ready;             /* every required file loaded */
static char g_missing[1024];     /* the page saying what is missing, when !g_ready */

static const char PAGE[] =
    "<!doctype html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>chatloop API</title>\n"
    "<link rel=\"stylesheet\" href=\"/docs/swagger-ui.css\">\n"
    "<link rel=\"icon\" type=\"image/png\" href=\"/docs/favicon-32x32.png\">\n"
    "</head>\n"
    "<body>\n"
    "<div id=\"swagger-ui\"></div>\n"
    "<script src=\"/docs/swagger-ui-bundle.js\"></script>\n"
    "<script src=\"/docs/init.js\"></script>\n"
    "</body>\n"
    "</html>\n";

/* validatorUrl null: otherwise the page asks a public validator about the
 * document, a request to a third party on every visit. */
static const char INIT_JS[] =
    "window.ui = SwaggerUIBundle({\n"
    "  url: '/openapi.json',\n"
    "  dom_id: '#swagger-ui',\n"
    "  deepLinking: true,\n"
    "  validatorUrl: null,\n"
    "});\n";

#define HTML "text/html; charset=utf-8"
#define NO_CACHE "Cache-Control: no-cache\r\n"
/* The files are a pinned release: a stale copy for an hour is harmless. */
#define CACHED "Cache-Control: public, max-age=3600\r\n"

/* Reads dir/name whole into *out (malloc'd). Returns 0, or -1 with errno
 * (EFBIG past MAX_FILE_BYTES). */
static int read_file(const char *dir, const char *name, char **out, size_t *outlen)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_FILE_BYTES) {
        errno = S_ISREG(st.st_mode) ? EFBIG : EINVAL;
        goto fail;
    }
    size_t want = (size_t)st.st_size, got = 0;
    buf = malloc(want ? want : 1);
    if (!buf)
        goto fail;
    while (got < want) {
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {           /* shrank under us: serve nothing rather than a torn file */
            if (n == 0)
                errno = EIO;
            goto fail;
        }
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *outlen = got;
    return 0;
fail:
    free(buf);
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

static void docs_page(cl_req *r)
{
    if (g_ready)
        cl_res_send(r, 200, HTML, NO_CACHE, PAGE, sizeof PAGE - 1);
    else
        cl_res_send(r, 200, HTML, NO_CACHE, g_missing, strlen(g_missing));
}

static void docs_file_get(cl_req *r)
{
    char name[64];
    if (cl_req_param(r, "file", name, sizeof name) == 0) {
        if (strcmp(name, "init.js") == 0) {
            cl_res_send(r, 200, "text/javascript; charset=utf-8", NO_CACHE, INIT_JS,
                        sizeof INIT_JS - 1);
            return;
        }
        for (size_t i = 0; i < NFILES; i++) {
            if (g_files[i].data && strcmp(name, g_files[i].name) == 0) {
                cl_res_send(r, 200, g_files[i].ctype, CACHED, g_files[i].data, g_files[i].len);
                return;
            }
        }
    }
    cl_api_error(r, CL_ERR_NOT_FOUND, "no such file under /docs", NULL, NULL);
}

/* The page /docs shows while Swagger UI's files are missing. The directory
 * is the operator's own configuration, but it still goes into HTML, so
 * anything that is not plainly safe is left out. */
static void build_missing_page(const char *dir, const char *file, int err)
{
    char safe[200];
    size_t o = 0;
    for (const char *s = dir; *s && o + 1 < sizeof safe; s++)
        safe[o++] = (strchr("<>&\"'", *s) || (unsigned char)*s < 0x20) ? '?' : *s;
    safe[o] = '\0';
    snprintf(g_missing, sizeof g_missing,
             "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<title>chatloop API</title></head><body>\n"
             "<h1>API documentation</h1>\n"
             "<p>Swagger UI is not installed: %s/%s: %s.</p>\n"
             "<p>Run <code>make docs</code> (or <code>scripts/docs-assets.sh</code>) in the "
             "chatloop checkout, or point <code>docs_dir</code> at its files, and restart.</p>\n"
             "<p>The document itself is at <a href=\"/openapi.json\">/openapi.json</a>.</p>\n"
             "</body></html>\n",
             safe, file, strerror(err));
}

int cl_docs_routes(cl_router *r, const cl_config *cfg)
{
    /* Rebuilt per worker: drop what an earlier build loaded. */
    g_ready = 1;
    for (size_t i = 0; i < NFILES; i++) {
        free(g_files[i].data);
        g_files[i].data = NULL;
        g_files[i].len = 0;
    }
    const char *dir = cfg->docs_dir && cfg->docs_dir[0] ? cfg->docs_dir : NULL;
    for (size_t i = 0; i < NFILES; i++) {
        int e = ENOENT;
        if (dir && read_file(dir, g_files[i].name, &g_files[i].data, &g_files[i].len) == 0)
            continue;
        if (dir)
            e = errno;
        if (g_files[i].required && g_ready) {
            g_ready = 0;
            build_missing_page(dir ? dir : "(docs_dir is empty)", g_files[i].name, e);
        }
    }
    int rc = 0;
    rc |= cl_router_add(r, "GET", "/docs", docs_page);
    rc |= cl_router_add(r, "GET", "/docs/{file}", docs_file_get);
    return rc;
}
