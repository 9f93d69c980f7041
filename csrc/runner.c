/* Per-thread state, the runner pool, the switch protocol's checks and the
 * runner greenlets' body. Mirrors _ThreadState, _runner_main and the pool
 * helpers in _portal_py.py. */

/* The process's one instance of the core's globals (see cportal.h). */
static gbl_globals gbl_st;
/* Non-NULL once module_exec has set gbl_st up. */
static gbl_globals *gbl_state = NULL;

/* This thread's ThreadStateObject (owned by the thread's dict). The default
 * TLS model: the module may be loaded with dlopen() late in a process whose
 * static TLS surplus is used up, where initial-exec would fail to load. */
static _Thread_local ThreadStateObject *gbl_tls = NULL;

#ifdef GBL_DEBUG_BUILD
static unsigned long gbl_runners_created = 0;
#endif

/* -- memory headroom for switches ------------------------------------------ */

/* greenlet copies a greenlet's C stack slice to the heap when it switches
 * away from it, and aborts the process ("Failed low-level slp_switch()")
 * when that allocation fails. Malloc fails in practice only under an
 * address-space or data-size limit (elsewhere the kernel overcommits), so
 * under such a limit a step and a park first check that a generous slice
 * can be had: running out then raises MemoryError in the task that needed
 * the memory, before greenlet's switch. The limit is looked up again at
 * every runner creation, which is when a program parking many tasks grows. */
#define GBL_HEADROOM (256 * 1024)
static int gbl_memory_limited = 0;

static void
gbl_refresh_memory_limit(void)
{
#ifdef GBL_HAVE_RLIMIT
    struct rlimit r;
    int limited = getrlimit(RLIMIT_AS, &r) == 0 && r.rlim_cur != RLIM_INFINITY;
#ifdef RLIMIT_DATA
    limited = limited || (getrlimit(RLIMIT_DATA, &r) == 0 && r.rlim_cur != RLIM_INFINITY);
#endif
    gbl_memory_limited = limited;
#endif
}

/* 0, or -1 with MemoryError when a switch's stack copy could not be had. */
static inline int
gbl_switch_headroom(void)
{
    if (!gbl_memory_limited) {
        return 0;
    }
    void *probe = malloc(GBL_HEADROOM);
    if (probe == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    free(probe);
    return 0;
}

/* -- ThreadState ----------------------------------------------------------- */

static int
thread_state_traverse(ThreadStateObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->hub);
    for (int i = 0; i < self->npool; i++) {
        Py_VISIT(self->pool[i]);
    }
    return 0;
}

static int
thread_state_clear(ThreadStateObject *self)
{
    self->current = NULL;
    self->gc_portal = NULL;
    Py_CLEAR(self->hub);
    while (self->npool > 0) {
        self->npool--;
        Py_CLEAR(self->pool[self->npool]);
    }
    return 0;
}

static void
thread_state_dealloc(ThreadStateObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (gbl_tls == self) {
        gbl_tls = NULL;
    }
    thread_state_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot thread_state_slots[] = {
    {Py_tp_dealloc, thread_state_dealloc},
    {Py_tp_traverse, thread_state_traverse},
    {Py_tp_clear, thread_state_clear},
    {Py_tp_doc, "greenback_loop's per-thread portal state."},
    {0, NULL},
};

static PyType_Spec thread_state_spec = {
    .name = "greenback_loop._cportal._ThreadState",
    .basicsize = sizeof(ThreadStateObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = thread_state_slots,
};

/* Make this thread's state, owned by the thread's dict so it goes away with
 * the thread. Returns a borrowed reference, or NULL with an exception. */
static ThreadStateObject *
thread_state_create(void)
{
    PyObject *dict = PyThreadState_GetDict();
    if (dict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop: no thread state dict");
        return NULL;
    }
    ThreadStateObject *ts = PyObject_GC_New(ThreadStateObject, gbl_st.thread_state_type);
    if (ts == NULL) {
        return NULL;
    }
    ts->current = NULL;
    ts->hub = NULL;
    ts->gc_portal = NULL;
    ts->npool = 0;
    PyObject_GC_Track(ts);

    /* The hub: the root of the current greenlet's parent chain. */
    PyGreenlet *g = PyGreenlet_GetCurrent();
    if (g == NULL) {
        goto error;
    }
    for (;;) {
        PyGreenlet *parent = PyGreenlet_GetParent(g);
        if (parent == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(g);
                goto error;
            }
            break;
        }
        Py_SETREF(g, parent);
    }
    ts->hub = g;
    if (PyDict_SetItem(dict, gbl_st.thread_dict_key, (PyObject *)ts) < 0) {
        goto error;
    }
    Py_DECREF(ts); /* the dict owns it */
    gbl_tls = ts;
    return ts;
error:
    Py_DECREF(ts);
    return NULL;
}

/* This thread's state (borrowed), or NULL with an exception. */
static inline ThreadStateObject *
gbl_thread_state(void)
{
    ThreadStateObject *ts = gbl_tls;
    if (ts != NULL) {
        return ts;
    }
    return thread_state_create();
}

static inline int
greenlet_is_dead(PyGreenlet *g)
{
    return PyGreenlet_STARTED(g) && !PyGreenlet_ACTIVE(g);
}

/* -- the switch protocol ------------------------------------------------------ */

#define GBL_FOREIGN_SWITCH_MESSAGE                                                              \
    "greenback_loop: a greenlet that belongs to a task's portal was switched into (or thrown " \
    "into) from outside the task's step, e.g. by greenlet.switch() or greenlet.throw() on "   \
    "it; it cannot run from there, and stays as it was"

/* The switch arguments that hand portal p over (new reference): the
 * process's spare 1-tuple when no switch holds it, else a new tuple. The
 * owner (the portal's job_args or msg_args) keeps them until the receiver
 * has taken the portal out and calls gbl_args_drop(). The spare is claimed
 * before its item is replaced, so code run by that decref (a finalizer)
 * finds it taken and makes its own. Saves an allocation per switch. */
static inline PyObject *
gbl_args_take(PortalObject *p)
{
    PyObject *t = gbl_st.spare_args;
    if (Py_REFCNT(t) != 1) {
        return PyTuple_Pack(1, (PyObject *)p);
    }
    Py_INCREF(t);
    PyObject *old = PyTuple_GET_ITEM(t, 0);
    PyTuple_SET_ITEM(t, 0, Py_NewRef(p));
    Py_DECREF(old);
    return t;
}

/* Release the switch arguments in *pargs (if any). The spare, if no switch
 * still carries it, gives up its portal at once: it must not keep a
 * finished task's portal alive. The caller holds a reference to that
 * portal, so the decref frees nothing. */
static inline void
gbl_args_drop(PyObject **pargs)
{
    PyObject *t = *pargs;
    if (t == NULL) {
        return;
    }
    *pargs = NULL;
    if (t == gbl_st.spare_args && Py_REFCNT(t) == 2) {
        PyObject *old = PyTuple_GET_ITEM(t, 0);
        PyTuple_SET_ITEM(t, 0, Py_NewRef(Py_None));
        Py_DECREF(t);
        Py_DECREF(old);
        return;
    }
    Py_DECREF(t);
}

/* Whether ret, what a switch into greenlet `me` returned, is a step of a
 * portal handing `me` its job. ret is only compared and type-checked until
 * that is known: it may be anything a foreign switch passed. */
static inline int
gbl_is_job_for(PyObject *ret, PyGreenlet *me)
{
    if (ret == NULL || Py_TYPE(ret) != gbl_st.portal_type) {
        return 0;
    }
    PortalObject *p = (PortalObject *)ret;
    return p->target == me && p->stepper != NULL && p->job_arg != NULL;
}

/* After a switch into `me` failed with an exception: the portal whose step
 * was entering `me` (borrowed), when the switch was that step's (a settrace
 * callback that raises turns the step's switch into a throw), else NULL. */
static inline PortalObject *
gbl_step_entering(ThreadStateObject *ts, PyGreenlet *me)
{
    PortalObject *p = ts != NULL ? ts->current : NULL;
    if (p != NULL && p->target == me && p->stepper != NULL && p->job_arg != NULL) {
        return p;
    }
    return NULL;
}

/* Whether greenlet `me`, thrown into with the exception now set, is being
 * killed by greenlet because its last reference went away (greenlet then
 * holds the only references: a temporary one and the thread's "current"
 * one; measured at import): such a throw must unwind. Any other throw came
 * from code that holds a reference to `me` on top of its owner's. */
static inline int
gbl_is_being_killed(PyGreenlet *me)
{
    return PyErr_ExceptionMatches(PyExc_GreenletExit) && Py_REFCNT(me) <= gbl_st.killed_refs;
}

/* `me` (a runner waiting for a job, or a greenlet parked in await_) was
 * switched or thrown into from outside any step: `ret` is what came (NULL:
 * an exception is set). Leave `me` as it was and raise a RuntimeError in
 * the greenlet that most likely made the foreign call: the greenlet the
 * innermost running step entered, else the thread's hub. Returns what the
 * next switch into `me` brings. */
static PyObject *
gbl_bounce(ThreadStateObject *ts, PyGreenlet *me, PyObject *ret)
{
    if (ret == NULL) {
        PyErr_Clear();
    }
    else {
        Py_DECREF(ret);
    }
    PyGreenlet *to = ts->hub;
    PortalObject *p = ts->current;
    if (p != NULL && p->stepper != NULL && p->target != NULL && p->target != me &&
        !greenlet_is_dead(p->target))
    {
        to = p->target;
    }
    assert(to != me); /* the hub is never a runner or parked */
    PyObject *msg = PyUnicode_FromString(GBL_FOREIGN_SWITCH_MESSAGE);
    if (msg == NULL) {
        return NULL;
    }
    ret = PyGreenlet_Throw(to, PyExc_RuntimeError, msg, NULL);
    Py_DECREF(msg);
    return ret;
}

/* module.name (new reference), or NULL with an exception. */
static PyObject *
gbl_import_attr(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return attr;
}

/* greenback_loop._errors (borrowed), imported on first use, or NULL with
 * an exception. */
static PyObject *
gbl_errors_module(void)
{
    if (gbl_st.errors_module == NULL) {
        gbl_st.errors_module = PyImport_ImportModule("greenback_loop._errors");
    }
    return gbl_st.errors_module;
}

/* Whether exc, which a switch raised where it brought a step's message or
 * job (a settrace callback raising; in the twin also a signal), is a
 * KeyboardInterrupt handed to the running loop to raise from a callback
 * (see _errors.redeliver_interrupt): the message or job is then kept.
 * Leaves no exception set. */
static int
gbl_redeliver_interrupt(PyObject *exc)
{
    if (!PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)) {
        return 0;
    }
    PyObject *errors = gbl_errors_module();
    PyObject *r = errors == NULL ? NULL
                                 : PyObject_CallMethod(errors, "redeliver_interrupt", "O", exc);
    int done = r == Py_True;
    Py_XDECREF(r);
    PyErr_Clear();
    return done;
}

/* -- collections ---------------------------------------------------------------- */

/* In gc.callbacks: note in this thread's state when a collection starts
 * and ends, and the portal whose step it runs in. Code the collector runs
 * (finalizers, __del__, weakref callbacks) runs in the middle of that step,
 * where the task never awaited: await_ must not suspend it there (nor the
 * collection, which would hold every other collection off until resumed). */
static PyObject *
gbl_gc_callback(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    ThreadStateObject *ts = gbl_tls;
    if (ts != NULL && nargs >= 1 && PyUnicode_Check(args[0])) {
        int start = PyUnicode_CompareWithASCIIString(args[0], "start") == 0;
        ts->gc_portal = start ? ts->current : NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef gbl_gc_callback_def = {
    "_gc_callback", (PyCFunction)(void (*)(void))gbl_gc_callback, METH_FASTCALL,
    "Notes collections in greenback_loop's per-thread state."};

/* Put gbl_gc_callback in the collector's callback list, unless it is there
 * (checked again whenever a runner is made: a program may clear the list). */
static int
gbl_watch_collections(void)
{
    gbl_globals *st = &gbl_st;
    if (st->gc_callbacks == NULL) {
        st->gc_callbacks = gbl_import_attr("gc", "callbacks");
        if (st->gc_callbacks == NULL) {
            return -1;
        }
        if (!PyList_Check(st->gc_callbacks)) {
            Py_CLEAR(st->gc_callbacks);
            PyErr_SetString(PyExc_ImportError, "greenback_loop: gc.callbacks is not a list");
            return -1;
        }
    }
    PyObject *list = st->gc_callbacks;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        if (PyList_GET_ITEM(list, i) == st->gc_callback) {
            return 0;
        }
    }
    return PyList_Append(list, st->gc_callback);
}

/* Whether a step of portal p would suspend the collection running in this
 * thread (see gbl_gc_callback). */
static inline int
gbl_suspends_collection(ThreadStateObject *ts, PortalObject *p)
{
    return ts->gc_portal == p;
}

/* -- runners ------------------------------------------------------------------ */

/* A runner from the pool (new reference), or NULL if the pool is empty. */
static PyGreenlet *
runner_from_pool(ThreadStateObject *ts)
{
    while (ts->npool > 0) {
        ts->npool--;
        PyGreenlet *runner = ts->pool[ts->npool];
        ts->pool[ts->npool] = NULL;
        if (!greenlet_is_dead(runner)) {
            return runner;
        }
        Py_DECREF(runner); /* killed while idle (foreign throw of GreenletExit) */
    }
    return NULL;
}

/* SQLAlchemy's greenlet-provider mark: a runner has the attribute
 * __sqlalchemy_greenlet_provider__ = True, except during a step made from a
 * greenlet other than the hub (see portal_step). SQLAlchemy's
 * await_only(aw) in a provider switches to its parent, the hub, with aw;
 * the hub is then the greenlet doing the step, and step_wait awaits aw for
 * the runner. Elsewhere the hub is not waiting in a step, so the runner is
 * no provider and SQLAlchemy refuses with its own error. An attribute in
 * the runner's dict, not a greenlet subclass: greenlet type-checks its
 * greenlets many times per switch, and a subclass fails the exact-type
 * fast path of every check (some 300 instructions a step). */
static int
runner_mark(PyGreenlet *runner, int on)
{
    if (on) {
        return PyObject_SetAttr((PyObject *)runner, gbl_st.str_provider, Py_True);
    }
    if (runner->dict != NULL && PyDict_DelItem(runner->dict, gbl_st.str_provider) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
            return -1;
        }
        PyErr_Clear();
    }
    return 0;
}

/* Whether an idle runner carries nothing a later task could see: the hub
 * as its parent, no attributes but the provider mark, no weak references.
 * (It is alive: it just sent its message and a foreign throw into it
 * bounces; runner_from_pool checks that anyway.) */
static int
runner_is_clean(ThreadStateObject *ts, PyGreenlet *runner)
{
    if (runner->weakreflist != NULL || runner->dict == NULL ||
        PyDict_GET_SIZE(runner->dict) != 1)
    {
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    if (!PyDict_Next(runner->dict, &pos, &key, &value) || key != gbl_st.str_provider ||
        value != Py_True)
    {
        return 0;
    }
    PyGreenlet *parent = PyGreenlet_GetParent(runner);
    if (parent == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(parent);
    return parent == ts->hub;
}

/* Keep an idle runner for later steps (the reference is stolen), or let it
 * go if it carries anything of its last task or the pool is full. */
static void
runner_give_back(ThreadStateObject *ts, PyGreenlet *runner)
{
    if (ts->npool < GBL_POOL_MAX && runner_is_clean(ts, runner)) {
        ts->pool[ts->npool++] = runner;
    }
    else {
        Py_DECREF(runner);
    }
}

/* A new runner (new reference), not yet started; its parent is the hub.
 * Its first switch passes a one-item list holding the first job's portal:
 * greenlet keeps a greenlet's first switch arguments for its whole life,
 * and the list, emptied at once, then keeps nothing alive. */
static PyGreenlet *
runner_new(ThreadStateObject *ts)
{
#ifdef GBL_DEBUG_BUILD
    gbl_runners_created++;
#endif
    gbl_refresh_memory_limit();
    if (gbl_watch_collections() < 0) {
        PyErr_Clear(); /* best effort: the list was set up at import */
    }
    PyGreenlet *runner = PyGreenlet_New(gbl_st.runner_run, ts->hub);
    if (runner != NULL && runner_mark(runner, 1) < 0) {
        Py_CLEAR(runner);
    }
    return runner;
}

/* StopIteration's value (new reference) from the raised StopIteration. */
static PyObject *
gbl_fetch_stop_iteration_value(void)
{
    PyObject *exc = gbl_fetch_exception();
    if (exc == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *value = Py_NewRef(((PyStopIterationObject *)exc)->value);
    Py_DECREF(exc);
    return value;
}

/* Run one job of portal p on the current runner: send or throw into its
 * coroutine, in the step's context. Sets *pvalue (owned) and returns the
 * message kind. The runner holds the coroutine, not the portal, while the
 * coroutine runs, so a portal dropped while parked can be collected. */
static int
runner_do_job(PortalObject *p, PyThreadState *tstate, PyObject **pvalue)
{
    PyObject *coro = Py_NewRef(p->coro);
    PyObject *arg = p->job_arg;
    int throw = p->job_throw;
    p->job_arg = NULL;
    /* The very context object of the step, not a copy: its writes land. */
    Py_XDECREF(gbl_swap_context(tstate, p->job_context));
    p->job_context = NULL;
    Py_DECREF(p);

    int kind;
    PyObject *value = NULL;
    if (throw) {
        value = PyObject_CallMethodOneArg(coro, gbl_st.str_throw, arg);
        if (value != NULL) {
            kind = GBL_MSG_YIELD;
        }
        else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            kind = GBL_MSG_RETURN;
            value = gbl_fetch_stop_iteration_value();
        }
        else {
            kind = GBL_MSG_RAISE;
        }
    }
    else {
        PySendResult r = PyIter_Send(coro, arg, &value);
        kind = r == PYGEN_NEXT ? GBL_MSG_YIELD : r == PYGEN_RETURN ? GBL_MSG_RETURN : GBL_MSG_RAISE;
    }
    if (kind == GBL_MSG_RAISE) {
        value = gbl_fetch_exception();
    }
    /* No exception is set from here: the decrefs may run code. */
    Py_DECREF(coro);
    Py_DECREF(arg);
    /* Between steps, the runner holds no context (nothing of the task). */
    Py_XDECREF(gbl_swap_context(tstate, NULL));
    *pvalue = value;
    return kind;
}

/* Give this runner its frame stack before any of a task's code runs on it
 * (3.11: see GBL_PRIME_FRAME_STACK). 0, or -1 with an exception set. */
static int
runner_prime(void)
{
#if GBL_PRIME_FRAME_STACK
    PyObject *r = PyObject_CallNoArgs(gbl_st.frame_primer);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
#endif
    return 0;
}

/* A runner's own state, on the heap for the runner's whole life (see
 * runner_run). */
typedef struct {
    PyGreenlet *me;         /* borrowed: a tag, alive while it runs */
    PyThreadState *tstate;  /* the runner's thread */
    PyObject *first;        /* what the first switch into it brought */
    int primed;             /* whether runner_prime() succeeded */
} RunnerSelf;

/* What a runner does next: switch to `to` with `args` (both borrowed: the
 * stepper is waiting in its step, and the portal's msg_args own the
 * tuple), or, when `to` is NULL, end with `args` as its result (NULL with
 * an exception set). Small enough to come back in two registers. */
typedef struct {
    PyGreenlet *to;
    PyObject *args;
} RunnerNext;

/* The end of runner rs, with result (NULL with an exception set). */
static RunnerNext
runner_end(RunnerSelf *rs, PyObject *result)
{
    PyMem_Free(rs);
    return (RunnerNext){NULL, result};
}

/* One turn of runner rs: take ret, what the last switch into it brought
 * (owned; NULL if that switch raised), run the job it carries, if any, and
 * say where to switch next (at the end, rs is freed). Out of line so that
 * runner_run's frame stays a few bytes (see there). */
static Py_NO_INLINE RunnerNext
runner_turn(RunnerSelf *rs, PyObject *ret)
{
    PyGreenlet *me = rs->me;
    for (;;) {
        ThreadStateObject *ts;
        PortalObject *p;
        if (gbl_is_job_for(ret, me)) {
            p = (PortalObject *)ret;
            gbl_args_drop(&p->job_args);
        }
        else if (ret == NULL && (p = gbl_step_entering(ts = gbl_tls, me)) != NULL) {
            /* the step's switch raised (a settrace callback): throw that,
             * unless it is an interrupt the loop raises instead */
            Py_INCREF(p);
            PyObject *exc = gbl_fetch_exception();
            if (gbl_redeliver_interrupt(exc)) {
                Py_DECREF(exc);
            }
            else {
                Py_SETREF(p->job_arg, exc);
                p->job_throw = 1;
            }
            gbl_args_drop(&p->job_args);
        }
        else if ((ts = gbl_tls) == NULL || (ret == NULL && gbl_is_being_killed(me))) {
            Py_XDECREF(ret);
            return runner_end(rs, NULL); /* dropped while idle, or at thread exit: end */
        }
        else {
            ret = gbl_bounce(ts, me, ret);
            continue;
        }

        PyObject *value;
        int kind;
        if (!rs->primed && runner_prime() < 0) {
            /* No memory for the frames: the step fails with that error
             * and leaves the coroutine as it was. */
            value = gbl_fetch_exception();
            kind = GBL_MSG_RAISE;
            Py_CLEAR(p->job_arg);
            Py_CLEAR(p->job_context);
            Py_DECREF(p);
        }
        else {
            rs->primed = 1;
            kind = runner_do_job(p, rs->tstate, &value);
        }
        /* Report to the portal whose step is running on this runner now
         * (normally the one whose job started the send; after a park in
         * await_, the one that resumed it). */
        ts = gbl_tls;
        p = ts->current;
        if (p == NULL || p->runner != me || p->stepper == NULL) {
            /* No step of ours is running: the send ended after a foreign
             * switch resumed the coroutine, or greenlet killed the runner
             * while parked. Nobody can take the result: end the runner. */
            if (kind == GBL_MSG_RAISE && PyErr_GivenExceptionMatches(value, PyExc_GreenletExit)) {
                gbl_restore_exception(value);
                return runner_end(rs, NULL);
            }
            Py_XDECREF(value);
            PyErr_SetString(PyExc_RuntimeError, GBL_FOREIGN_SWITCH_MESSAGE);
            return runner_end(rs, NULL);
        }
        gbl_args_drop(&p->msg_args);
        PyObject *args = gbl_args_take(p);
        if (args == NULL) {
            Py_XDECREF(value);
            return runner_end(rs, NULL);
        }
        p->msg_kind = kind;
        p->msg_value = value;
        p->msg_args = args;
        return (RunnerNext){p->stepper, args};
    }
}

/* The capsule name of a new runner's state in its first switch. */
#define GBL_RUNNER_STATE_NAME "greenback_loop._cportal.runner_state"

static void
runner_state_free(PyObject *capsule)
{
    PyMem_Free(PyCapsule_GetPointer(capsule, GBL_RUNNER_STATE_NAME));
}

/* What the first switch into a new runner brings for portal p's job: a
 * list [p, the runner's state]. The state is allocated here, by the
 * stepper, where a failure is simply the step's MemoryError; on the
 * runner's side, before it has a job, nothing can fail (runner_begin). The
 * list, not the switch's argument tuple, holds p: the runner empties it, so
 * nothing of its first job stays on its stack for its whole life. */
static PyObject *
runner_first_box(PortalObject *p)
{
    RunnerSelf *rs = PyMem_Malloc(sizeof(RunnerSelf));
    if (rs == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *state = PyCapsule_New(rs, GBL_RUNNER_STATE_NAME, runner_state_free);
    if (state == NULL) {
        PyMem_Free(rs);
        return NULL;
    }
    PyObject *box = PyList_New(2);
    if (box == NULL) {
        Py_DECREF(state);
        return NULL;
    }
    PyList_SET_ITEM(box, 0, Py_NewRef(p));
    PyList_SET_ITEM(box, 1, state);
    return box;
}

/* A runner's state for runner_run, from what its first switch brought
 * (NULL with an exception set). A step's first switch (runner_first_box)
 * brings the state and the job, and taking them allocates nothing. */
static Py_NO_INLINE RunnerSelf *
runner_begin(PyObject *box)
{
    RunnerSelf *rs;
    PyObject *first;
    PyObject *state = PyList_CheckExact(box) && PyList_GET_SIZE(box) == 2
                          ? PyList_GET_ITEM(box, 1)
                          : NULL;
    if (state != NULL && PyCapsule_IsValid(state, GBL_RUNNER_STATE_NAME)) {
        rs = PyCapsule_GetPointer(state, GBL_RUNNER_STATE_NAME);
        /* rs is the runner's from here (no allocation: a valid capsule) */
        (void)PyCapsule_SetDestructor(state, NULL);
        first = PyList_GET_ITEM(box, 0); /* the list's reference, now ours */
        PyList_SET_ITEM(box, 0, Py_NewRef(Py_None));
    }
    else {
        /* A switch from outside any step into a runner that never ran
         * (its step's first switch failed): no job; runner_turn answers it
         * as any foreign switch. */
        rs = PyMem_Malloc(sizeof(RunnerSelf));
        if (rs == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        first = Py_NewRef(box);
    }
    rs->tstate = PyThreadState_Get();
    gbl_reset_recursion_depth(rs->tstate);
    rs->me = PyGreenlet_GetCurrent();
    if (rs->me == NULL) {
        Py_DECREF(first);
        PyMem_Free(rs);
        return NULL;
    }
    Py_DECREF(rs->me); /* a tag: this greenlet is alive while it runs */
    rs->first = first;
    rs->primed = 0;
    return rs;
}

/* The body of every runner greenlet: run one job per switch, forever.
 *
 * At every switch out of a runner, greenlet copies the runner's C stack,
 * from its start down to the switch, to the heap, and frees the copy when
 * the runner resumes. Its own frames make most of that copy; this one's
 * is one saved register, all the rest living in runner_turn's frame
 * (gone before the switch) and in rs. The copy of a runner between steps
 * then stays under glibc's per-thread cache of small blocks (1,032 bytes
 * on 64-bit), and each step's malloc and free take its fast path: some 330
 * instructions a step fewer than with the loop's locals in this frame. */
static PyObject *
runner_run(PyObject *Py_UNUSED(module), PyObject *box)
{
    RunnerSelf *rs = runner_begin(box);
    if (rs == NULL) {
        return NULL;
    }
    PyObject *first = rs->first;
    rs->first = NULL;
    RunnerNext next = runner_turn(rs, first);
    while (next.to != NULL) {
        next = runner_turn(rs, PyGreenlet_Switch(next.to, next.args, NULL));
    }
    return next.args;
}

static PyMethodDef runner_run_def = {"_runner_run", runner_run, METH_O,
                                     "Body of a portal runner greenlet."};
