/*
 * turn_internal.h — the turn's states, for turn.c and its unit test
 * (test/unit/test_turn.c). Not part of the contract: callers see turn.h.
 */
#ifndef CHATLOOP_TURN_INTERNAL_H
#define CHATLOOP_TURN_INTERNAL_H

#include "chatloop/turn.h"

typedef enum {
    /* One statement checks the conversation is the caller's (or creates
     * the session-keyed one), reads the history and stores the user
     * message. Deadline: request_timeout (the query's own is shorter).
     * Issue 12 inserts RETRIEVING after it. */
    TURN_LOADING,
    /* The provider call streams; every delta goes to the sink as it
     * arrives. Issue 12 adds TOOL_RUNNING, entered from here and left
     * back to GENERATING for the next round. */
    TURN_GENERATING,
    /* The answer is complete and its write (assistant message + usage) is
     * in flight; `done` waits for the database's confirmation, or for the
     * write to be spooled to disk. */
    TURN_STORING,
    /* Terminal: the sink has heard the outcome (or the turn was
     * cancelled: it hears nothing); freed once its timer has closed. */
    TURN_FINISHED,
    TURN__COUNT
} turn_state;

/** 1 when from -> to is in the transition table. */
int cl_turn__legal(turn_state from, turn_state to);
const char *cl_turn__state_name(turn_state s);

#endif
