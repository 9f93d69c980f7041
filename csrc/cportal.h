/* Shared declarations of the C core: module state, the portal, the
 * per-thread state. The core is one translation unit (_cportal.c includes
 * the other .c files), because greenlet.h keeps its API table in a static. */
#ifndef GBL_CPORTAL_H
#define GBL_CPORTAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <frameobject.h> /* PyFrame_New, for await_'s traceback entries */

#include "greenlet.h"

#include "compat.h"

/* Idle runners kept per thread; more are made on demand. */
#define GBL_POOL_MAX 64

/* What a step's message says (mirror _portal_py). */
enum gbl_msg_kind {
    GBL_MSG_NONE = 0,
    GBL_MSG_YIELD,   /* msg_value: the coroutine yielded it; the step ended */
    GBL_MSG_RETURN,  /* msg_value: the coroutine returned it */
    GBL_MSG_RAISE,   /* msg_value: the exception the coroutine raised */
    GBL_MSG_SUSPEND, /* msg_value: what await_'s awaitable yielded; msg_resume
                        is the greenlet parked in await_ */
};

/* The process-wide state: one instance, set up by module_exec and never
 * torn down (the module refuses subinterpreters and a second load), so no
 * path can meet it half-cleared during interpreter shutdown. */
typedef struct {
    PyTypeObject *portal_type;
    PyTypeObject *thread_state_type;
    PyTypeObject *create_task_type;
    PyObject *runner_run;      /* the callable every runner greenlet runs */
    PyObject *await_func;      /* our await_, run by step_await_for's helpers */
    PyObject *thread_dict_key; /* key of the ThreadState in thread dicts */
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *str_provider; /* "__sqlalchemy_greenlet_provider__" (see runner_mark) */
    PyObject *coroutine_abc; /* collections.abc.Coroutine */
    PyObject *spare_args;    /* a 1-tuple reused as switch arguments (see gbl_args_take) */
    PyObject *errors_module; /* greenback_loop._errors, imported on first use */
    getter coro_get_await;   /* the C getter of coroutine.cr_await */
    getter coro_get_suspended; /* ... of coroutine.cr_suspended */
    getter coro_get_running;   /* ... of coroutine.cr_running */
    getter gen_get_suspended;  /* ... of generator.gi_suspended */
    PyObject *gc_callback;     /* ours, in gc.callbacks (see gbl_gc_callback) */
    PyObject *gc_callbacks;    /* the list the collector calls (gc.callbacks) */
    PyObject *await_code;      /* code of await_'s traceback entries (made on first use) */
    PyObject *await_globals;   /* ... and their frames' globals */
#if GBL_PRIME_FRAME_STACK
    PyObject *frame_primer; /* a no-op Python function (see runner_prime) */
#endif
    Py_ssize_t runner_refs;  /* refcount of an unshared runner at the check */
    Py_ssize_t killed_refs;  /* refcount of a greenlet greenlet is killing */
} gbl_globals;

/* A portal. A step hands its job to the greenlet it switches into, and that
 * greenlet hands its message back, through fields of the portal itself; the
 * switch in each direction carries the portal as its only argument, and the
 * receiver checks it before reading anything. greenlet moves switch
 * arguments into the target greenlet before any Python code (a settrace
 * callback, a dead greenlet's deletion, the collector) can run, so a step of
 * another portal inside that window can neither see nor overwrite this
 * step's job or message. */
typedef struct {
    PyObject_HEAD
    PyObject *coro;      /* the real coroutine */
    PyGreenlet *runner;  /* while stepping, parked, or pinned by outside refs */
    PyGreenlet *resume;  /* the greenlet parked in await_, between steps */
    PyObject *awaiting;  /* what await_ drives while parked */
    /* The step in progress; stepper is non-NULL exactly while stepping. */
    PyGreenlet *stepper; /* borrowed: the greenlet doing the step */
    PyGreenlet *target;  /* borrowed, a tag: the greenlet the step entered */
    PyObject *job_arg;   /* what to send or throw, until the target takes it */
    PyObject *job_args;  /* the switch arguments carrying the job, likewise */
    PyObject *job_context; /* a fresh step's context, until the runner takes it */
    int job_throw;
    /* Set while close() (or the finalizer) unwinds the coroutine: its
     * steps cannot suspend in await_, as await in a closing coroutine
     * cannot. */
    int closing;
    /* Set while the runner's provider mark is off: it was stepped from a
     * greenlet other than the hub (see runner_mark). */
    int unmarked;
    /* Set by _detach(): the coroutine is no longer the portal's to step or
     * close (its task resumes it directly again). */
    int detached;
    /* Set by the portal's first step, or when it is installed as a task's
     * coroutine (_own()): from then on closing the coroutine when the
     * portal is dropped is the portal's. A portal made around a coroutine
     * something else runs (and dropped before any step) leaves it alone. */
    int owned;
    int msg_kind;
    PyObject *msg_value;
    PyGreenlet *msg_resume;
    PyObject *msg_awaiting;
    /* The switch arguments carrying the message: owned here, not by the
     * sender's frame, which stays suspended (maybe for good) after it; the
     * receiver drops them. */
    PyObject *msg_args;
    PyObject *weakreflist;
    unsigned long long serial; /* creation order, for closing at exit */
} PortalObject;

typedef struct {
    PyObject_HEAD
    /* borrowed: the innermost portal stepping in this thread; steps nest
       and unnest like calls, so it is always a portal whose step holds it */
    PortalObject *current;
    PyGreenlet *hub; /* this thread's main greenlet: every runner's parent */
    /* Borrowed, a tag: while a garbage collection runs in this thread, the
     * portal whose step it runs in (NULL otherwise, or if none), which must
     * not be suspended until the collection is over. */
    PortalObject *gc_portal;
    int npool;
    PyGreenlet *pool[GBL_POOL_MAX];
} ThreadStateObject;

#endif /* GBL_CPORTAL_H */
