/**
 * tasks.h — a user's tasks: the REST routes (src/api/tasks.c) and what the
 * task tools share with them.
 */
#ifndef CHATLOOP_TASKS_H
#define CHATLOOP_TASKS_H

#include <jansson.h>
#include <stddef.h>

#define CL_TASK_TITLE_MAX_CHARS 500
#define CL_TASK_DESCRIPTION_MAX_BYTES 10000
/* Tasks per user: a budget on the table, far above a person's list. */
#define CL_TASKS_PER_USER 10000

/** Checks one field of a task body ("title", "description" or "status";
 *  any other key is refused). 0, or -1 with the reason in why. */
int cl_task_field_check(const char *key, json_t *v, char *why, size_t len);

#endif
