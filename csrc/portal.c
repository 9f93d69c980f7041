/* The Portal type: a coroutine wrapper whose steps run in runner greenlets.
 * Mirrors Portal in _portal_py.py: same behaviour, names and messages. */

static int
greenlet_is_dead(PyGreenlet *g)
{
    return PyGreenlet_STARTED(g) && !PyGreenlet_ACTIVE(g);
}

/* Between steps every runner's parent is its thread's hub (the main
 * greenlet), so a step only reparents when it runs in some other greenlet
 * (an eager task's first step inside another task's step, a loop run inside
 * a greenlet). The parent matters only if the runner ends: control goes there. */
static inline int
runner_reparent(PyGreenlet *runner, PyGreenlet *parent, PyGreenlet *hub)
{
    return parent == hub ? 0 : PyGreenlet_SetParent(runner, parent);
}

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

/* One step: send arg into the coroutine, or throw it in. */
static PySendResult
portal_step(PortalObject *self, int throw, PyObject *arg, PyObject **presult)
{
    gbl_module_state *st = gbl_state;
    *presult = NULL;
    if (st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop's C core has been unloaded");
        return PYGEN_ERROR;
    }
    if (self->stepper != NULL) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    ThreadStateObject *ts = gbl_thread_state();
    if (ts == NULL) {
        return PYGEN_ERROR;
    }
    PyGreenlet *runner = self->runner; /* borrowed from self */
    PyGreenlet *target;                /* owned */
    PyObject *awaiting = NULL;         /* owned, while resuming */
    int resuming = self->resume != NULL;
    if (resuming) {
        target = self->resume;
        awaiting = self->awaiting;
        self->resume = NULL;
        self->awaiting = NULL;
    }
    else {
        if (runner == NULL) {
            runner = runner_take(ts);
            if (runner == NULL) {
                return PYGEN_ERROR;
            }
            self->runner = runner;
        }
        target = (PyGreenlet *)Py_NewRef(runner);
        ts->job_coro = Py_NewRef(self->coro);
        ts->job_context = Py_XNewRef(gbl_current_context(PyThreadState_Get()));
    }
    ts->job_throw = throw;
    ts->job_arg = Py_NewRef(arg);
    ts->job_portal = self;

    PyGreenlet *cur = PyGreenlet_GetCurrent();
    if (cur == NULL || runner_reparent(runner, cur, ts->hub) < 0) {
        Py_XDECREF(cur);
        thread_state_clear_job(ts);
        if (resuming) {
            self->resume = target;
            self->awaiting = awaiting;
        }
        else {
            Py_DECREF(target);
        }
        return PYGEN_ERROR;
    }

    PortalObject *prev = ts->current;
    ts->current = self;
    self->stepper = cur;
    Py_INCREF(self);
    PyThreadState *tstate = PyThreadState_Get();
    gbl_frame_link frames = gbl_unlink_frames(tstate);
    PyObject *ret = PyGreenlet_Switch(target, NULL, NULL);
    gbl_relink_frames(tstate, frames);
    ts = gbl_tls;
    ts->current = prev;
    self->stepper = NULL;
    if (cur != ts->hub && !greenlet_is_dead(runner) &&
        PyGreenlet_SetParent(runner, ts->hub) < 0)
    {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_DECREF(cur);

    if (ret == NULL) {
        thread_state_clear_job(ts);
        thread_state_clear_msg(ts);
        if (greenlet_is_dead(runner)) {
            Py_CLEAR(self->runner);
        }
        else if (resuming && self->resume == NULL && PyErr_ExceptionMatches(PyExc_GreenletError)) {
            /* Nothing ran: the parked greenlet belongs to another thread. */
            self->resume = target;
            self->awaiting = awaiting;
            target = NULL;
            awaiting = NULL;
            PyObject *cause = gbl_fetch_exception();
            PyErr_SetString(PyExc_RuntimeError,
                            "a task's portal can only be stepped in the thread whose "
                            "event loop runs the task");
            PyObject *exc = gbl_fetch_exception();
            PyException_SetCause(exc, cause);
            PyException_SetContext(exc, Py_NewRef(cause));
            gbl_restore_exception(exc);
        }
        Py_XDECREF(target);
        Py_XDECREF(awaiting);
        Py_DECREF(self);
        return PYGEN_ERROR;
    }
    Py_DECREF(target);
    Py_XDECREF(awaiting);

    if (ts->msg_kind != GBL_MSG_NONE && ts->msg_portal != self) {
        /* A message for another portal: a foreign switch brought it here. */
        thread_state_clear_msg(ts);
    }
    thread_state_clear_job(ts); /* a job nobody took (foreign switch) */
    int kind = ts->msg_kind;
    PyObject *value = ts->msg_value; /* owned from here */
    ts->msg_kind = GBL_MSG_NONE;
    ts->msg_value = NULL;
    ts->msg_portal = NULL;

    if (kind == GBL_MSG_NONE) {
        /* No message: the runner ended (the coroutine raised GreenletExit,
         * which ends a greenlet and comes back as its result), or a foreign
         * greenlet switched here. */
        if (greenlet_is_dead(runner)) {
            Py_CLEAR(self->runner);
            if (PyExceptionInstance_Check(ret)) {
                gbl_restore_exception(ret);
                Py_DECREF(self);
                return PYGEN_ERROR;
            }
        }
        Py_DECREF(ret);
        PyErr_SetString(PyExc_RuntimeError,
                        "greenback_loop: the task's step was left by an unexpected "
                        "greenlet switch; the task cannot continue");
        Py_DECREF(self);
        return PYGEN_ERROR;
    }
    Py_DECREF(ret);

    if (kind == GBL_MSG_SUSPEND) {
        self->resume = ts->msg_resume;
        self->awaiting = ts->msg_awaiting;
        ts->msg_resume = NULL;
        ts->msg_awaiting = NULL;
        Py_DECREF(self);
        *presult = value;
        return PYGEN_NEXT;
    }

    /* The step ended: release the runner unless something else holds it. */
    if (st->runner_refs == 0) {
        st->runner_refs = Py_REFCNT(runner); /* calibration, at import */
    }
    if (Py_REFCNT(runner) <= st->runner_refs) {
        self->runner = NULL;
        runner_give_back(ts, runner);
    }
    else if (kind != GBL_MSG_YIELD) {
        Py_CLEAR(self->runner); /* finished: let the pinned runner go */
    }
    Py_DECREF(self);
    if (kind == GBL_MSG_YIELD) {
        *presult = value;
        return PYGEN_NEXT;
    }
    if (kind == GBL_MSG_RETURN) {
        *presult = value;
        return PYGEN_RETURN;
    }
    gbl_restore_exception(value);
    return PYGEN_ERROR;
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
    self->weakreflist = NULL;
    self->stepper = NULL;
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
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop's C core has been unloaded");
        return NULL;
    }
    if (!PyCoro_CheckExact(coro) && !PyGen_CheckExact(coro)) {
        int ok = PyObject_IsInstance(coro, (PyObject *)gbl_state->coroutine_abc);
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
    return 0;
}

static int
portal_clear(PortalObject *self)
{
    Py_CLEAR(self->coro);
    Py_CLEAR(self->runner);
    Py_CLEAR(self->resume);
    Py_CLEAR(self->awaiting);
    return 0;
}

static PyObject *portal_close(PortalObject *self, PyObject *Py_UNUSED(ignored));

/* A portal dropped while parked in await_ unwinds the parked stack. */
static void
portal_finalize(PortalObject *self)
{
    if (self->resume == NULL || gbl_is_finalizing()) {
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
            /* Collected in another thread: greenlet unwinds the runner in
             * its own thread. */
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
    /* Only a portal parked in await_ has anything to finalize. */
    if (self->resume != NULL && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
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
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument and at most 3, got %zd",
                     nargs);
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
    if (self->resume == NULL) {
        if (self->stepper != NULL) {
            PyErr_SetString(PyExc_ValueError, "coroutine already executing");
            return NULL;
        }
        return PyObject_CallMethod(self->coro, "close", NULL);
    }
    PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exit == NULL) {
        return NULL;
    }
    PyObject *result;
    PySendResult r = portal_step(self, 1, exit, &result);
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
portal_await(PortalObject *self)
{
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

static PyMethodDef portal_methods[] = {
    {"send", (PyCFunction)portal_send, METH_O, "send(value) -> the next yielded value"},
    {"throw", (PyCFunction)(void (*)(void))portal_throw, METH_FASTCALL,
     "throw(exc) -> raise exc in the coroutine; the next yielded value"},
    {"close", (PyCFunction)portal_close, METH_NOARGS, "close() -> raise GeneratorExit inside"},
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
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(portal_doc,
             "Portal(coro)\n--\n\n"
             "A coroutine wrapper whose steps can be suspended by await_().");

static PyType_Slot portal_slots[] = {
    {Py_tp_new, portal_new},
    {Py_tp_dealloc, portal_dealloc},
    {Py_tp_finalize, portal_finalize},
    {Py_tp_traverse, portal_traverse},
    {Py_tp_clear, portal_clear},
    {Py_tp_iter, portal_await},
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
