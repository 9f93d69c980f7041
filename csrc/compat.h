/* Differences between the CPython versions greenback_loop supports
 * (3.11 to 3.15), in one place. Everything else in csrc/ uses these. */
#ifndef GBL_COMPAT_H
#define GBL_COMPAT_H

#include <Python.h>

/* What `await x` says when x is not awaitable (reworded in 3.14). */
#if PY_VERSION_HEX >= 0x030E0000
#define GBL_NOT_AWAITABLE_FORMAT "'%.100s' object can't be awaited"
#else
#define GBL_NOT_AWAITABLE_FORMAT "object %.100s can't be used in 'await' expression"
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#define GBL_HAVE_RLIMIT 1
#endif

#if PY_VERSION_HEX < 0x030B0000
#error "greenback_loop needs CPython 3.11 or newer"
#endif

#ifdef Py_GIL_DISABLED
#error "greenback_loop's C core does not support free-threaded CPython builds yet; \
install with GREENBACK_LOOP_NO_EXTENSIONS=1 to use the pure-Python core"
#endif

/* Coroutines have cr_state ("CORO_CREATED", ...) from 3.15 on. */
#define GBL_HAS_CR_STATE (PY_VERSION_HEX >= 0x030F0000)

/* 3.11 only: a failed allocation of a frame-stack chunk in an inlined call
 * (CALL of a Python function from Python code) raises no exception
 * ("SystemError: error return without exception set") and drops one
 * reference to the called function too many: under memory exhaustion it
 * corrupts the function's refcount and crashes later, with or without
 * greenlets. A greenlet starts with no chunk, so a runner's first Python
 * call always allocates one; runners make that allocation first through a
 * call from C, whose failure is a clean MemoryError (see runner_prime). */
#define GBL_PRIME_FRAME_STACK (PY_VERSION_HEX < 0x030C0000)

/* The exception being raised, as one object (3.12 API), and back. */
static inline PyObject *
gbl_fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
#endif
}

/* Raise exc (a reference is stolen). */
static inline void
gbl_restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *type = Py_NewRef((PyObject *)Py_TYPE(exc));
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(type, exc, tb);
#endif
}

static inline int
gbl_is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* obj.name, or NULL with no exception set when the attribute is missing. */
static inline int
gbl_get_optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    return _PyObject_LookupAttr(obj, name, result);
#endif
}

/* The thread's current contextvars.Context (borrowed, may be NULL for a
 * thread that never used one). The field is in the public (non-limited)
 * PyThreadState struct from 3.7 to at least 3.15; greenlet relies on it too. */
static inline PyObject *
gbl_current_context(PyThreadState *tstate)
{
    return tstate->context;
}

/* Make ctx (stolen, may be NULL) the current greenlet's context and return
 * the previous one (owned), as greenlet's gr_context setter does for the
 * running greenlet; the version bump invalidates ContextVar caches. */
static inline PyObject *
gbl_swap_context(PyThreadState *tstate, PyObject *ctx)
{
    PyObject *old = tstate->context;
    tstate->context = ctx;
    tstate->context_ver++;
    return old;
}

/* The thread's chain of running Python frames, as an opaque link.
 *
 * A portal step switches from the greenlet running the event loop into a
 * runner. greenlet saves the frame chain of the greenlet it leaves, makes a
 * frame object for its top frame (the loop's Handle._run frame, new at every
 * step on asyncio) and, on 3.12+, walks the whole chain to make it
 * introspectable while suspended. portal_step unlinks the chain for the
 * length of the switch and links the very same pointer back when the switch
 * returns, before any Python code of this greenlet runs again. In between,
 * the loop greenlet shows no frames (its gr_frame is None), like a greenlet
 * running no Python code. The field is a pointer to an opaque struct
 * in the public (non-limited) PyThreadState, under _PyCFrame before 3.13. */
typedef struct _PyInterpreterFrame *gbl_frame_link;

#if PY_VERSION_HEX >= 0x030D0000
#define GBL_CURRENT_FRAME(tstate) ((tstate)->current_frame)
#else
#define GBL_CURRENT_FRAME(tstate) ((tstate)->cframe->current_frame)
#endif

static inline gbl_frame_link
gbl_unlink_frames(PyThreadState *tstate)
{
    gbl_frame_link top = GBL_CURRENT_FRAME(tstate);
    GBL_CURRENT_FRAME(tstate) = NULL;
    return top;
}

static inline void
gbl_relink_frames(PyThreadState *tstate, gbl_frame_link top)
{
    GBL_CURRENT_FRAME(tstate) = top;
}

/* Give the running greenlet a Python recursion depth of zero. A new runner
 * greenlet starts with the depth of wherever it was first switched into
 * (maybe deep inside another task's step), and greenlet keeps each
 * greenlet's depth across switches: reset once, at the runner's start,
 * every task later stepped on it gets the whole recursion limit. The C
 * recursion budget (3.12 and 3.13) is left alone: it guards the real C
 * stack, which the runner shares with whoever started it. */
static inline void
gbl_reset_recursion_depth(PyThreadState *tstate)
{
#if PY_VERSION_HEX >= 0x030C0000
    tstate->py_recursion_remaining = tstate->py_recursion_limit;
#else
    tstate->recursion_remaining = tstate->recursion_limit;
#endif
}

/* Generators flagged by types.coroutine are awaitable as they are. */
static inline int
gbl_is_iterable_coroutine(PyObject *obj)
{
    if (!PyGen_CheckExact(obj)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyCodeObject *code = PyGen_GetCode((PyGenObject *)obj);
    int flags = code->co_flags;
    Py_DECREF(code);
#else
    int flags = ((PyGenObject *)obj)->gi_code->co_flags;
#endif
    return (flags & CO_ITERABLE_COROUTINE) != 0;
}

/* A monotonic clock in nanoseconds (for the _debug_ measurements). */
static inline int64_t
gbl_perf_counter_ns(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return (int64_t)t;
#else
    return (int64_t)_PyTime_GetPerfCounter();
#endif
}

#endif /* GBL_COMPAT_H */
