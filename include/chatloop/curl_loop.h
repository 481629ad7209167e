/**
 * curl_loop.h — libcurl's multi interface driven by a libuv loop.
 *
 * One multi handle per worker. curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION → one uv_poll_t per socket, remembered with
 * curl_multi_assign) and when to wake it (CURLMOPT_TIMERFUNCTION → one
 * uv_timer_t). We never call back into curl from inside its own callbacks:
 * a 0 ms timeout becomes a timer, and finished transfers are collected with
 * curl_multi_info_read after every socket action (STYLE 11).
 *
 * Name resolution: libcurl's asynchronous resolver (threaded in Debian's
 * build) — the loop never blocks on DNS. Connections are cached by the multi
 * handle and reused; HTTP/2 streams are multiplexed when the upstream offers
 * it.
 *
 * Ownership: the caller creates and owns each easy handle. After `done`
 * fires (once, with the transfer already removed from the multi handle) or
 * after cl_curl_loop_remove, the caller may clean it up.
 */
#ifndef CHATLOOP_CURL_LOOP_H
#define CHATLOOP_CURL_LOOP_H

#include <curl/curl.h>
#include <uv.h>

typedef struct cl_curl_loop cl_curl_loop;

/** Fires when a transfer ends (success or error). `result` is curl's code. */
typedef void (*cl_curl_done_cb)(CURL *easy, CURLcode result, void *ud);

cl_curl_loop *cl_curl_loop_new(uv_loop_t *loop);
/** Removes every transfer (no done callbacks) and closes the handles; the
 *  memory is released once the loop runs the close callbacks. */
void cl_curl_loop_free(cl_curl_loop *cl);

/** Starts a transfer. 0, or -1 if curl refused it. */
int cl_curl_loop_add(cl_curl_loop *cl, CURL *easy, cl_curl_done_cb done, void *ud);

/**
 * Removes a transfer now (cancel): its socket is closed in this loop
 * iteration unless the connection can be reused. Must not be called from
 * inside a curl callback (write/header/read): there, return an error from
 * the callback instead and let `done` report it.
 */
void cl_curl_loop_remove(cl_curl_loop *cl, CURL *easy);

/** Transfers running (for metrics and draining). */
int cl_curl_loop_running(const cl_curl_loop *cl);

/** Un-pauses a transfer paused with CURL_WRITEFUNC_PAUSE (back-pressure). */
void cl_curl_loop_resume(cl_curl_loop *cl, CURL *easy);

#endif
