/*
 * api_query.h — the shape of most /api/v1 handlers: authenticate →
 * validate → one query → answer. The query is owned by the request
 * (cl_req_defer): a client that leaves cancels it, and its callback then
 * never runs.
 */
#ifndef CHATLOOP_API_QUERY_H
#define CHATLOOP_API_QUERY_H

#include "chatloop/db.h"
#include "chatloop/http.h"

typedef struct cl_api_query {
    cl_db_query *q;
    int a, b;                   /* the handler's own numbers: a page (limit, offset), a flag */
    char id[37];                /* the path id, for answers that echo it */
    char secret[48];            /* a value answered once (a new API key); wiped after */
    const char *noun;           /* "agent", "API key": what cl_api_removed answers about */
    const char *removed;        /* "deleted", "revoked" */
} cl_api_query;

/** Runs one query for r (`flags`: CL_DB_*); `cb` gets the cl_api_query
 *  and takes r back with cl_req_resume. Answers 500 and returns NULL if
 *  the query cannot be queued. */
cl_api_query *cl_api_query_run(cl_req *r, const char *sql, int n, const char *const *params,
                               int flags, cl_db_cb cb);

/** The {id} path parameter if it is a UUID, into out; otherwise answers
 *  404 "<noun> not found" and returns 0 (an id that is not a UUID names
 *  nothing of the caller's either). */
int cl_api_path_id(cl_req *r, char out[37], const char *noun);

/** 404 "<noun> not found". */
void cl_api_not_found(cl_req *r, const char *noun);

/** A cb for "DELETE/UPDATE ... WHERE id AND user_id RETURNING id" run with
 *  id, noun and removed set: {id, <removed>: true}, or 404 when no row. */
void cl_api_removed(void *ud, const cl_db_res *res);

/** `status` (400, 409) INVALID_REQUEST with details {"field": field}; field
 *  is escaped, so it may be a short key of the client's. */
void cl_api_field_error(cl_req *r, int status, const char *field, const char *message);

/** The answer to a list query that fetched one row more than the page
 *  (limit in p->a, offset in p->b): {"<key>": [column 0 of each row, JSON
 *  text], "next_offset": offset + limit, or null on the last page}. `what`
 *  names the query in an error answer ("list agents"). */
void cl_api_page_reply(void *ud, const cl_db_res *res, const char *key, const char *what);

#endif
