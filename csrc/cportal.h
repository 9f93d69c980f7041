/* Shared declarations of the C core: module state, the portal, the
 * per-thread state. The core is one translation unit (_cportal.c includes
 * the other .c files), because greenlet.h keeps its API table in a static. */
#ifndef GBL_CPORTAL_H
#define GBL_CPORTAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "greenlet.h"

#include "compat.h"

/* Idle runners kept per thread; more are made on demand. */
#define GBL_POOL_MAX 64

/* Message kinds left for the stepping greenlet (mirror _portal_py). */
enum gbl_msg_kind {
    GBL_MSG_NONE = 0,
    GBL_MSG_YIELD,   /* value: the coroutine yielded it; the step ended */
    GBL_MSG_RETURN,  /* value: the coroutine returned it */
    GBL_MSG_RAISE,   /* value: the exception the coroutine raised */
    GBL_MSG_SUSPEND, /* value yielded by await_; resume, awaiting set */
};

typedef struct {
    PyTypeObject *portal_type;
    PyTypeObject *thread_state_type;
    PyTypeObject *create_task_type;
    PyObject *runner_run;      /* the callable every runner greenlet runs */
    PyObject *thread_dict_key; /* key of the ThreadState in thread dicts */
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *coroutine_abc;   /* collections.abc.Coroutine */
    PyObject *errors_module;   /* greenback_loop._errors, imported on first use */
    Py_ssize_t runner_refs; /* refcount of an unshared runner at the check */
} gbl_module_state;

typedef struct {
    PyObject_HEAD
    PyObject *coro;       /* the real coroutine */
    PyGreenlet *runner;   /* while stepping, parked or pinned */
    PyGreenlet *resume;   /* the greenlet parked in await_ */
    PyObject *awaiting;   /* what await_ drives while parked */
    PyGreenlet *stepper;  /* borrowed: the greenlet doing the step, during it;
                             non-NULL exactly while the portal is stepping */
    PyObject *weakreflist;
} PortalObject;

typedef struct {
    PyObject_HEAD
    PortalObject *current; /* borrowed: the portal stepping in this thread */
    PyGreenlet *hub;       /* this thread's main greenlet */
    /* job for the runner or parked greenlet being switched to */
    PyObject *job_coro;
    PyObject *job_arg;
    PyObject *job_context; /* the context to run the step in */
    PortalObject *job_portal; /* tag, never dereferenced: whose job */
    int job_throw;
    /* message for the stepping greenlet */
    int msg_kind;
    PyObject *msg_value;
    PyGreenlet *msg_resume;
    PyObject *msg_awaiting;
    PortalObject *msg_portal; /* tag, never dereferenced: whose message */
    int npool;
    PyGreenlet *pool[GBL_POOL_MAX];
    unsigned long owner_thread;
} ThreadStateObject;

#endif /* GBL_CPORTAL_H */
