/* The Portal type: a coroutine wrapper whose steps run in runner greenlets.
 * Mirrors Portal in _portal_py.py: same behaviour, names and messages. */

/* Raise StopIteration(value), with value kept as one object even when it is
 * a tuple or an exception. */
static void
gbl_set_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

/* Switch (args != NULL) or throw `exc` (args == NULL) into `to`, with the
 * calling greenlet's frame chain unlinked for the length of the switch:
 * greenlet would otherwise make a frame object for the loop's top frame
 * (new at every step on asyncio) and, on 3.12+, walk the whole chain. The
 * same pointer is linked back before any Python code of this greenlet runs
 * again; in between, this greenlet's gr_frame reads None. */
static inline PyObject *
step_switch(PyThreadState *tstate, PyGreenlet *to, PyObject *args, PyObject *exc)
{
    gbl_frame_link frames = gbl_unlink_frames(tstate);
    PyObject *ret = args != NULL ? PyGreenlet_Switch(to, args, NULL)
                                 : PyGreenlet_Throw(to, (PyObject *)Py_TYPE(exc), exc, NULL);
    gbl_relink_frames(tstate, frames);
    return ret;
}

/* The switch arguments that hand the step's job to `target`: the portal
 * itself, or for a runner's very first switch its first box. */
static PyObject *
step_args(PortalObject *self, int new_runner)
{
    if (!new_runner) {
        return gbl_args_take(self);
    }
    PyObject *box = runner_first_box(self);
    if (box == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, box);
    Py_DECREF(box);
    return args;
}

/* Whether ret, what came into the stepping greenlet from the step's greenlet
 * `from`, is a request in SQLAlchemy's greenlet-provider convention: the
 * runner, marked as a provider (runner_mark), switched to its parent, the
 * hub doing the step, with one awaitable for it to await. */
static int
step_is_provider_request(PortalObject *self, PyGreenlet *from, PyObject *ret)
{
    if (ret == NULL || from != self->runner || Py_TYPE(ret) == gbl_st.portal_type) {
        return 0;
    }
    if (PyCoro_CheckExact(ret) || gbl_is_iterable_coroutine(ret)) {
        return 1;
    }
    PyAsyncMethods *am = Py_TYPE(ret)->tp_as_async;
    return am != NULL && am->am_await != NULL;
}

/* Await aw (stolen) for the runner, which is suspended in its switch to the
 * stepping greenlet: on a helper greenlet, a child of the runner running in
 * its context, that calls our await_(aw). The helper suspends the step as
 * any await_ does and is resumed by later steps; when it ends, greenlet
 * hands its result (or raises its exception) in its parent, the runner,
 * where the switch returns it. Returns what next comes into the stepping
 * greenlet, as step_switch. */
static PyObject *
step_await_for(PortalObject *self, PyThreadState *tstate, PyGreenlet *runner, PyObject *aw)
{
    PyGreenlet *helper = PyGreenlet_New(gbl_st.await_func, runner);
    PyObject *args = NULL;
    if (helper != NULL) {
        PyObject *context = PyObject_GetAttrString((PyObject *)runner, "gr_context");
        int failed = context == NULL ||
                     PyObject_SetAttrString((PyObject *)helper, "gr_context", context) < 0;
        Py_XDECREF(context);
        if (!failed) {
            args = PyTuple_Pack(1, aw);
        }
    }
    Py_DECREF(aw);
    if (args == NULL) {
        Py_XDECREF(helper);
        PyObject *exc = gbl_fetch_exception();
        PyObject *ret = step_switch(tstate, runner, NULL, exc);
        Py_DECREF(exc);
        return ret;
    }
    self->target = helper;
    PyObject *ret = step_switch(tstate, helper, args, NULL);
    Py_DECREF(args);
    if (self->target == helper) {
        self->target = runner;
    }
    Py_DECREF(helper); /* a parked helper is the portal's, in msg_resume */
    return ret;
}

/* While the step runs, wait for its message. A runner's provider request
 * (step_is_provider_request) is served; anything else that switches
 * or throws into the stepping greenlet came from inside the step (only the
 * step's greenlets run meanwhile) and is refused: the caller, most likely
 * the greenlet the step entered, gets a RuntimeError. If the stepping
 * greenlet itself is being killed (its last reference dropped mid-step),
 * the step's greenlet is unwound with GreenletExit, as the task's frames
 * would be without a portal. Returns what finally came (NULL: an
 * exception), with the message, if any, in the portal's fields. */
static PyObject *
step_wait(PortalObject *self, PyThreadState *tstate, PyGreenlet *cur, PyObject *ret)
{
    while (self->msg_kind == GBL_MSG_NONE) {
        if (ret == NULL && self->job_arg != NULL) {
            return NULL; /* nothing was entered: the switch itself failed */
        }
        PyGreenlet *to = self->target;
        if (to == NULL || greenlet_is_dead(to)) {
            to = self->runner;
        }
        if (to == NULL || to == cur || greenlet_is_dead(to)) {
            return ret; /* the runner ended */
        }
        if (ret == NULL && gbl_is_being_killed(cur)) {
            PyObject *exc = gbl_fetch_exception();
            ret = step_switch(tstate, to, NULL, exc);
            Py_DECREF(exc);
            continue;
        }
        if (step_is_provider_request(self, to, ret)) {
            ret = step_await_for(self, tstate, to, ret);
            continue;
        }
        if (ret == NULL) {
            PyErr_Clear();
        }
        else {
            Py_DECREF(ret);
        }
        PyErr_SetString(PyExc_RuntimeError, GBL_FOREIGN_SWITCH_MESSAGE);
        PyObject *exc = gbl_fetch_exception();
        ret = step_switch(tstate, to, NULL, exc);
        Py_DECREF(exc);
    }
    return ret;
}

/* After a step that brought no message: the exception to raise. */
static void
step_failed(PortalObject *self, PyObject *ret, int resuming, PyGreenlet *target,
            PyObject *awaiting)
{
    if (ret == NULL && self->job_arg != NULL) {
        /* Nothing ran: put the parked greenlet back. */
        if (resuming) {
            self->resume = (PyGreenlet *)Py_NewRef(target);
            self->awaiting = Py_XNewRef(awaiting);
        }
        if (PyErr_ExceptionMatches(PyExc_GreenletError)) {
            PyObject *cause = gbl_fetch_exception();
            PyErr_SetString(PyExc_RuntimeError,
                            "a task's portal can only be stepped in the thread whose "
                            "event loop runs the task");
            PyObject *exc = gbl_fetch_exception();
            PyException_SetCause(exc, cause);
            PyException_SetContext(exc, Py_NewRef(cause));
            gbl_restore_exception(exc);
        }
        return;
    }
    /* The runner ended: the coroutine is lost with it. */
    if (self->runner != NULL && greenlet_is_dead(self->runner)) {
        Py_CLEAR(self->runner);
    }
    if (ret == NULL) {
        return;
    }
    if (PyExceptionInstance_Check(ret)) {
        gbl_restore_exception(Py_NewRef(ret));
    }
    else {
        PyErr_SetString(PyExc_RuntimeError,
                        "greenback_loop: the task's step was left by an unexpected "
                        "greenlet switch; the task cannot continue");
    }
    Py_DECREF(ret);
}

/* After a step that ended (the coroutine yielded, returned or raised): give
 * the runner back to the pool unless something outside the portal still
 * refers to it (a greenlet that sync code started with the runner as its
 * parent, say); a pinned runner stays with the portal, so that greenlet's
 * parent chain stays valid, until the coroutine finishes. */
static void
step_release_runner(PortalObject *self, ThreadStateObject *ts, int finished)
{
    PyGreenlet *runner = self->runner;
    if (ts == NULL) {
        Py_CLEAR(self->runner);
        return;
    }
    if (gbl_st.runner_refs == 0) {
        gbl_st.runner_refs = Py_REFCNT(runner); /* calibration, at import */
    }
    if (self->unmarked) {
        self->unmarked = 0;
        if (runner_mark(runner, 1) < 0) {
            PyErr_Clear(); /* not clean then: not pooled */
        }
    }
    if (Py_REFCNT(runner) <= gbl_st.runner_refs) {
        self->runner = NULL;
        runner_give_back(ts, runner);
    }
    else if (finished) {
        Py_CLEAR(self->runner);
    }
}

/* Turn the runner's provider mark off for a step made from a greenlet
 * other than the hub (off_hub), back on for a step from the hub (see
 * runner_mark). A failure leaves the mark off, where SQLAlchemy refuses. */
static void
step_mark_runner(PortalObject *self, int off_hub)
{
    if (self->runner == NULL) {
        return;
    }
    if (off_hub) {
        self->unmarked = 1;
        if (runner_mark(self->runner, 0) < 0) {
            PyErr_Clear();
        }
    }
    else if (runner_mark(self->runner, 1) < 0) {
        PyErr_Clear();
    }
    else {
        self->unmarked = 0;
    }
}

/* One step: send arg into the coroutine, or throw it in. */
static PySendResult
portal_step(PortalObject *self, int throw, PyObject *arg, PyObject **presult)
{
    *presult = NULL;
    if (gbl_state == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop's C core is not initialized");
        return PYGEN_ERROR;
    }
    if (self->stepper != NULL) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    if (self->detached) {
        PyErr_SetString(PyExc_RuntimeError,
                        "greenback_loop: this portal was detached from its coroutine");
        return PYGEN_ERROR;
    }
    ThreadStateObject *ts = gbl_thread_state();
    if (ts == NULL || gbl_switch_headroom() < 0) {
        return PYGEN_ERROR;
    }
    PyGreenlet *cur = PyGreenlet_GetCurrent();
    if (cur == NULL) {
        return PYGEN_ERROR;
    }
    /* Borrowed from here: a running greenlet is alive, and no reference to
     * it stays on its own stack while suspended, so dropping a greenlet
     * that hosts a loop mid-step kills and unwinds it as without portals. */
    Py_DECREF(cur);
    PyThreadState *tstate = PyThreadState_Get();

    PyGreenlet *target;        /* owned */
    PyObject *awaiting = NULL; /* owned, while resuming */
    PyObject *args;
    int resuming = self->resume != NULL;
    if (resuming) {
        target = self->resume;
        awaiting = self->awaiting;
        self->resume = NULL;
        self->awaiting = NULL;
        if (greenlet_is_dead(target)) {
            Py_DECREF(target);
            Py_XDECREF(awaiting);
            Py_CLEAR(self->runner);
            PyErr_SetString(PyExc_RuntimeError,
                            "greenback_loop: the greenlet this task was parked in await_() in "
                            "was killed from outside (greenlet.throw()?); the task cannot "
                            "continue");
            return PYGEN_ERROR;
        }
        args = step_args(self, 0);
    }
    else {
        int new_runner = 0;
        if (self->runner != NULL) {
            if (!PyGreenlet_STARTED(self->runner)) {
                /* A runner whose first switch failed (no memory): it has
                 * not run yet, so its first job still comes boxed. */
                new_runner = 1;
            }
            else if (!PyGreenlet_ACTIVE(self->runner)) {
                Py_CLEAR(self->runner);
            }
        }
        if (self->runner == NULL) {
            self->runner = runner_from_pool(ts);
            if (self->runner == NULL) {
                self->runner = runner_new(ts);
                if (self->runner == NULL) {
                    return PYGEN_ERROR;
                }
                new_runner = 1;
            }
        }
        target = (PyGreenlet *)Py_NewRef(self->runner);
        args = step_args(self, new_runner);
        self->job_context = Py_XNewRef(gbl_current_context(tstate));
    }
    if (args == NULL) {
        Py_CLEAR(self->job_context);
        if (resuming) {
            self->resume = target;
            self->awaiting = awaiting;
        }
        else {
            Py_DECREF(target);
        }
        return PYGEN_ERROR;
    }
    if (cur != ts->hub || self->unmarked) {
        step_mark_runner(self, cur != ts->hub);
    }
    self->owned = 1;
    self->job_arg = Py_NewRef(arg);
    self->job_args = args; /* the receiver drops them */
    self->job_throw = throw;
    self->target = target;
    self->stepper = cur;
    PortalObject *prev = ts->current;
    ts->current = self;
    Py_INCREF(self);

    PyObject *ret = step_switch(tstate, target, args, NULL);
    ret = step_wait(self, tstate, cur, ret);

    gbl_args_drop(&self->job_args); /* if nothing took the job */
    gbl_args_drop(&self->msg_args);
    ts = gbl_tls; /* NULL only if this thread's state went while parked */
    if (ts != NULL) {
        ts->current = prev;
    }
    self->stepper = NULL;
    self->target = NULL;
    int kind = self->msg_kind;
    PyObject *value = self->msg_value; /* owned from here */
    self->msg_kind = GBL_MSG_NONE;
    self->msg_value = NULL;

    if (kind == GBL_MSG_NONE) {
        step_failed(self, ret, resuming, target, awaiting);
        Py_CLEAR(self->job_arg);
        Py_CLEAR(self->job_context);
        Py_DECREF(target);
        Py_XDECREF(awaiting);
        Py_DECREF(self);
        return PYGEN_ERROR;
    }
    /* A message came; if the switch back raised anyway (a settrace
     * callback), the step's state is kept but that error is raised. */
    PyObject *switch_error = ret == NULL ? gbl_fetch_exception() : NULL;
    if (switch_error != NULL && gbl_redeliver_interrupt(switch_error)) {
        Py_CLEAR(switch_error);
    }
    Py_XDECREF(ret);
    Py_DECREF(target);
    Py_XDECREF(awaiting);

    PySendResult result;
    if (kind == GBL_MSG_SUSPEND) {
        self->resume = self->msg_resume;
        self->awaiting = self->msg_awaiting;
        self->msg_resume = NULL;
        self->msg_awaiting = NULL;
        result = PYGEN_NEXT;
    }
    else {
        step_release_runner(self, ts, kind != GBL_MSG_YIELD);
        result = kind == GBL_MSG_YIELD ? PYGEN_NEXT : kind == GBL_MSG_RETURN ? PYGEN_RETURN
                                                                             : PYGEN_ERROR;
    }
    Py_DECREF(self);
    if (switch_error != NULL) {
        Py_XDECREF(value);
        gbl_restore_exception(switch_error);
        return PYGEN_ERROR;
    }
    if (result == PYGEN_ERROR) {
        gbl_restore_exception(value);
        return PYGEN_ERROR;
    }
    *presult = value;
    return result;
}

/* -- construction and the GC --------------------------------------------------- */

static PortalObject *
portal_alloc(PyTypeObject *type, PyObject *coro)
{
    PortalObject *self = PyObject_GC_New(PortalObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->coro = Py_NewRef(coro);
    self->runner = NULL;
    self->resume = NULL;
    self->awaiting = NULL;
    self->stepper = NULL;
    self->target = NULL;
    self->job_arg = NULL;
    self->job_args = NULL;
    self->job_context = NULL;
    self->job_throw = 0;
    self->closing = 0;
    self->unmarked = 0;
    self->detached = 0;
    self->owned = 0;
    self->msg_kind = GBL_MSG_NONE;
    self->msg_value = NULL;
    self->msg_resume = NULL;
    self->msg_awaiting = NULL;
    self->msg_args = NULL;
    self->weakreflist = NULL;
    static unsigned long long portals_made = 0;
    self->serial = ++portals_made;
    PyObject_GC_Track(self);
    return self;
}

static PyObject *
portal_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *coro;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Portal() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Portal", 1, 1, &coro)) {
        return NULL;
    }
    if (gbl_state == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop's C core is not initialized");
        return NULL;
    }
    if (!PyCoro_CheckExact(coro) && !PyGen_CheckExact(coro)) {
        int ok = PyObject_IsInstance(coro, gbl_st.coroutine_abc);
        if (ok < 0) {
            return NULL;
        }
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "Portal() argument must be a coroutine, not %.100s",
                         Py_TYPE(coro)->tp_name);
            return NULL;
        }
    }
    return (PyObject *)portal_alloc(type, coro);
}

static int
portal_traverse(PortalObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->coro);
    Py_VISIT(self->runner);
    Py_VISIT(self->resume);
    Py_VISIT(self->awaiting);
    Py_VISIT(self->job_arg);
    Py_VISIT(self->job_args);
    Py_VISIT(self->job_context);
    Py_VISIT(self->msg_value);
    Py_VISIT(self->msg_resume);
    Py_VISIT(self->msg_awaiting);
    Py_VISIT(self->msg_args);
    return 0;
}

static int
portal_clear(PortalObject *self)
{
    Py_CLEAR(self->coro);
    Py_CLEAR(self->runner);
    Py_CLEAR(self->resume);
    Py_CLEAR(self->awaiting);
    Py_CLEAR(self->job_arg);
    Py_CLEAR(self->job_args);
    Py_CLEAR(self->job_context);
    Py_CLEAR(self->msg_value);
    Py_CLEAR(self->msg_resume);
    Py_CLEAR(self->msg_awaiting);
    Py_CLEAR(self->msg_args);
    return 0;
}

static PyObject *portal_close(PortalObject *self, PyObject *Py_UNUSED(ignored));

/* Whether the coroutine's frames depend on the portal's greenlets: parked
 * in await_, or run by a runner that something else pins (a child
 * greenlet started by sync code). Closing it must then unwind it there. */
static inline int
portal_holds_greenlets(PortalObject *self)
{
    return self->resume != NULL || self->runner != NULL;
}

/* Whether closing the coroutine runs its code: it holds greenlets, or it
 * is a coroutine (or generator) suspended at an await. close() then runs
 * as a step of the portal, in its runner, marked as closing: the code
 * never runs on the caller's stack (which may be another task's step, when
 * the collector or a dropped reference finalizes the portal) and cannot
 * suspend. */
static int
portal_close_runs_code(PortalObject *self)
{
    if (portal_holds_greenlets(self)) {
        return 1;
    }
    if (self->coro == NULL || self->detached) {
        return 0; /* cleared by the collector, or no longer the portal's */
    }
    getter get = PyCoro_CheckExact(self->coro)  ? gbl_st.coro_get_suspended
                 : PyGen_CheckExact(self->coro) ? gbl_st.gen_get_suspended
                                                : NULL;
    if (get == NULL) {
        return 0;
    }
    PyObject *suspended = get(self->coro, NULL); /* a bool: it cannot fail */
    if (suspended == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(suspended);
    return suspended == Py_True;
}

/* A portal dropped while its coroutine is suspended unwinds the coroutine
 * where its frames run (a runner, or the greenlet parked in await_), as a
 * closing step; without a portal the coroutine's own finalizer would. */
static void
portal_finalize(PortalObject *self)
{
    if (self->stepper != NULL || !self->owned || gbl_is_finalizing()) {
        return;
    }
    if (!portal_close_runs_code(self)) {
        return;
    }
    PyObject *exc = gbl_fetch_exception();
    PyObject *res = portal_close(self, NULL);
    if (res == NULL) {
        PyObject *err = gbl_fetch_exception();
        PyObject *cause = err ? PyException_GetCause(err) : NULL;
        int wrong_thread = cause != NULL && PyErr_GivenExceptionMatches(cause, PyExc_GreenletError);
        Py_XDECREF(cause);
        if (wrong_thread) {
            /* Collected in another thread: greenlet unwinds the greenlets
             * in their own thread when they are dropped. */
            Py_DECREF(err);
        }
        else if (err != NULL) {
            gbl_restore_exception(err);
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    else {
        Py_DECREF(res);
    }
    if (exc != NULL) {
        gbl_restore_exception(exc);
    }
}

static void
portal_dealloc(PortalObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (portal_close_runs_code(self) && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    portal_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* -- the coroutine protocol --------------------------------------------------------- */

static PySendResult
portal_am_send(PortalObject *self, PyObject *arg, PyObject **presult)
{
    return portal_step(self, 0, arg, presult);
}

/* A step as the send()/throw() methods report it: the yielded value, or
 * NULL with StopIteration(value) when the coroutine returned. */
static PyObject *
portal_step_method(PortalObject *self, int throw, PyObject *arg)
{
    PyObject *result;
    PySendResult r = portal_step(self, throw, arg, &result);
    if (r == PYGEN_RETURN) {
        gbl_set_stop_iteration(result);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
portal_send(PortalObject *self, PyObject *arg)
{
    return portal_step_method(self, 0, arg);
}

static PyObject *
portal_iternext(PortalObject *self)
{
    PyObject *result;
    PySendResult r = portal_step(self, 0, Py_None, &result);
    if (r == PYGEN_RETURN) {
        if (result != Py_None) {
            gbl_set_stop_iteration(result);
        }
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

/* throw()'s arguments made into one exception, the way coroutines do. */
static PyObject *
gbl_make_exception(PyObject *typ, PyObject *val, PyObject *tb)
{
    if (tb == Py_None) {
        tb = NULL;
    }
    else if (tb != NULL && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    PyObject *exc;
    if (PyExceptionClass_Check(typ)) {
        if (val != NULL && PyObject_TypeCheck(val, (PyTypeObject *)typ)) {
            exc = Py_NewRef(val);
        }
        else if (val == NULL || val == Py_None) {
            exc = PyObject_CallNoArgs(typ);
        }
        else if (PyTuple_Check(val)) {
            exc = PyObject_Call(typ, val, NULL);
        }
        else {
            exc = PyObject_CallOneArg(typ, val);
        }
        if (exc == NULL) {
            return NULL;
        }
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of BaseException, not %s",
                         typ, Py_TYPE(exc)->tp_name);
            Py_DECREF(exc);
            return NULL;
        }
    }
    else if (PyExceptionInstance_Check(typ)) {
        if (val != NULL && val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, "
                     "not %s",
                     Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != NULL && PyException_SetTraceback(exc, tb) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static PyObject *
portal_throw(PortalObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        return NULL;
    }
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at most 3 arguments, got %zd", nargs);
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (nargs > 1 &&
        PyErr_WarnEx(PyExc_DeprecationWarning,
                     "the (type, exc, tb) signature of throw() is deprecated, "
                     "use the single-arg signature instead.",
                     1) < 0)
    {
        return NULL;
    }
#endif
    PyObject *exc = gbl_make_exception(args[0], nargs > 1 ? args[1] : NULL,
                                       nargs > 2 ? args[2] : NULL);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *result = portal_step_method(self, 1, exc);
    Py_DECREF(exc);
    return result;
}

static PyObject *
portal_close(PortalObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->stepper != NULL) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (!portal_close_runs_code(self)) {
        if (self->coro == NULL || self->detached) {
            Py_RETURN_NONE;
        }
        return PyObject_CallMethodNoArgs(self->coro, gbl_st.str_close);
    }
    PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exit == NULL) {
        return NULL;
    }
    PyObject *result;
    self->closing = 1; /* (no close nests in another: the stepper check) */
    PySendResult r = portal_step(self, 1, exit, &result);
    self->closing = 0;
    Py_DECREF(exit);
    if (r == PYGEN_NEXT) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (r == PYGEN_RETURN) {
#if PY_VERSION_HEX >= 0x030D0000
        return result;
#else
        Py_DECREF(result);
        Py_RETURN_NONE;
#endif
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
portal_iter(PortalObject *self)
{
    return Py_NewRef(self);
}

/* As await on the coroutine itself: refused while it awaits something (a
 * task's coroutine between steps), here or parked in await_. */
static PyObject *
portal_await(PortalObject *self)
{
    int awaited = self->resume != NULL;
    if (!awaited && self->coro != NULL && PyCoro_CheckExact(self->coro)) {
        PyObject *yf = gbl_st.coro_get_await(self->coro, NULL);
        if (yf == NULL) {
            return NULL;
        }
        Py_DECREF(yf);
        awaited = yf != Py_None;
    }
    if (awaited) {
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        return NULL;
    }
    return Py_NewRef(self);
}

/* -- introspection, forwarded to the real coroutine ------------------------------------ */

/* Getters and setters whose closure is the attribute's name on the coroutine. */
static PyObject *
portal_get_forwarded(PortalObject *self, void *closure)
{
    return PyObject_GetAttrString(self->coro, (const char *)closure);
}

static int
portal_set_forwarded(PortalObject *self, PyObject *value, void *closure)
{
    return PyObject_SetAttrString(self->coro, (const char *)closure, value);
}

/* bool(coro.<name>), or when_parked while parked in await_ (the real
 * coroutine is then mid-send, but the task sees it suspended). */
static PyObject *
portal_forward_state(PortalObject *self, const char *name, int when_parked)
{
    if (self->resume != NULL) {
        return PyBool_FromLong(when_parked);
    }
    PyObject *state = PyObject_GetAttrString(self->coro, name);
    if (state == NULL) {
        return NULL;
    }
    int truth = PyObject_IsTrue(state);
    Py_DECREF(state);
    return truth < 0 ? NULL : PyBool_FromLong(truth);
}

static PyObject *
portal_get_cr_running(PortalObject *self, void *Py_UNUSED(closure))
{
    return portal_forward_state(self, "cr_running", 0);
}

static PyObject *
portal_get_cr_suspended(PortalObject *self, void *Py_UNUSED(closure))
{
    return portal_forward_state(self, "cr_suspended", 1);
}

#if GBL_HAS_CR_STATE
/* 3.15's cr_state: "CORO_SUSPENDED" while parked, else the real one's. */
static PyObject *
portal_get_cr_state(PortalObject *self, void *Py_UNUSED(closure))
{
    if (self->resume != NULL) {
        return PyUnicode_InternFromString("CORO_SUSPENDED");
    }
    return PyObject_GetAttrString(self->coro, "cr_state");
}
#endif

static PyObject *
portal_get_cr_await(PortalObject *self, void *Py_UNUSED(closure))
{
    if (self->resume != NULL) {
        return Py_NewRef(self->awaiting ? self->awaiting : Py_None);
    }
    return PyObject_GetAttrString(self->coro, "cr_await");
}

/* What Portal itself lacks is looked up on the real coroutine (except
 * private names), as the twin's __getattr__ does. */
static PyObject *
portal_getattro(PortalObject *self, PyObject *name)
{
    PyObject *result = PyObject_GenericGetAttr((PyObject *)self, name);
    if (result != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError) || !PyUnicode_Check(name) ||
        PyUnicode_READ_CHAR(name, 0) == '_')
    {
        return result;
    }
    PyErr_Clear();
    return PyObject_GetAttr(self->coro, name);
}

static PyObject *
portal_repr(PortalObject *self)
{
    return PyUnicode_FromFormat("<%s.Portal for %R>", "greenback_loop._cportal", self->coro);
}

static PyObject *
portal_holds_greenlets_meth(PortalObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(portal_holds_greenlets(self));
}

/* Give the coroutine back to whoever resumes it directly from now on (a
 * Trio task whose Task.coro was set back to it): the portal no longer steps
 * or closes it. Only between steps, and only while the coroutine's frames
 * depend on none of the portal's greenlets; returns whether it detached. */
/* The portal is now a task's coroutine (ensure_portal(), bestow_portal()):
 * closing the coroutine when the portal is dropped is its business even
 * before its first step, as for a portal that has stepped. */
static PyObject *
portal_own(PortalObject *self, PyObject *Py_UNUSED(ignored))
{
    self->owned = 1;
    Py_RETURN_NONE;
}

static PyObject *
portal_detach(PortalObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->stepper != NULL) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (portal_holds_greenlets(self)) {
        Py_RETURN_FALSE;
    }
    self->detached = 1;
    Py_RETURN_TRUE;
}

static PyMethodDef portal_methods[] = {
    {"send", (PyCFunction)portal_send, METH_O, "send(value) -> the next yielded value"},
    {"throw", (PyCFunction)(void (*)(void))portal_throw, METH_FASTCALL,
     "throw(exc) -> raise exc in the coroutine; the next yielded value"},
    {"close", (PyCFunction)portal_close, METH_NOARGS, "close() -> raise GeneratorExit inside"},
    {"_own", (PyCFunction)portal_own, METH_NOARGS,
     "Make the coroutine's closing the portal's: it is now a task's coroutine."},
    {"_detach", (PyCFunction)portal_detach, METH_NOARGS,
     "Stop stepping and closing the coroutine, between steps; whether it could."},
    {"_holds_greenlets", (PyCFunction)portal_holds_greenlets_meth, METH_NOARGS,
     "Whether the coroutine's frames live in the portal's greenlets (parked, or pinned)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef portal_getsets[] = {
    {"__name__", (getter)portal_get_forwarded, (setter)portal_set_forwarded, NULL, "__name__"},
    {"__qualname__", (getter)portal_get_forwarded, (setter)portal_set_forwarded, NULL,
     "__qualname__"},
    {"cr_code", (getter)portal_get_forwarded, NULL, NULL, "cr_code"},
    {"cr_frame", (getter)portal_get_forwarded, NULL, NULL, "cr_frame"},
    {"cr_origin", (getter)portal_get_forwarded, NULL, NULL, "cr_origin"},
    {"cr_running", (getter)portal_get_cr_running, NULL, NULL, NULL},
    {"cr_await", (getter)portal_get_cr_await, NULL, NULL, NULL},
    {"cr_suspended", (getter)portal_get_cr_suspended, NULL, NULL, NULL},
#if GBL_HAS_CR_STATE
    {"cr_state", (getter)portal_get_cr_state, NULL, NULL, NULL},
#endif
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef portal_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(PortalObject, weakreflist), READONLY, NULL},
    {"_serial", T_ULONGLONG, offsetof(PortalObject, serial), READONLY,
     "The portal's creation order in the process."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(portal_doc,
             "Portal(coro, /)\n--\n\n"
             "A coroutine wrapper whose steps can be suspended by await_().");

static PyType_Slot portal_slots[] = {
    {Py_tp_new, portal_new},
    {Py_tp_dealloc, portal_dealloc},
    {Py_tp_finalize, portal_finalize},
    {Py_tp_traverse, portal_traverse},
    {Py_tp_clear, portal_clear},
    {Py_tp_iter, portal_iter},
    {Py_tp_iternext, portal_iternext},
    {Py_tp_getattro, portal_getattro},
    {Py_tp_repr, portal_repr},
    {Py_tp_methods, portal_methods},
    {Py_tp_getset, portal_getsets},
    {Py_tp_members, portal_members},
    {Py_tp_doc, (void *)portal_doc},
    {Py_am_await, portal_await},
    {Py_am_send, portal_am_send},
    {0, NULL},
};

static PyType_Spec portal_spec = {
    .name = "greenback_loop._cportal.Portal",
    .basicsize = sizeof(PortalObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = portal_slots,
};
