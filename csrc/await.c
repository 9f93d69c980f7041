/* await_(): drive an awaitable from synchronous code inside a portal step.
 * Mirrors await_, in_portal and _awaitable_iter in _portal_py.py. */

/* Raise the RuntimeError for await_() outside a portal (built by
 * greenback_loop._errors, which also closes aw if it is a coroutine). */
static PyObject *
gbl_outside_portal(PyObject *aw, int nested)
{
    PyObject *errors = gbl_errors_module();
    if (errors == NULL) {
        return NULL;
    }
    PyObject *exc = PyObject_CallMethod(errors, "await_outside_portal", "OO", aw,
                                        nested ? Py_True : Py_False);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Whether g is the portal's runner or descends from it: 1, 0, or -1. */
static int
gbl_descends_from(PyGreenlet *g, PyGreenlet *runner)
{
    if (g == runner) {
        return 1;
    }
    PyGreenlet *p = PyGreenlet_GetParent(g);
    while (p != NULL) {
        if (p == runner) {
            Py_DECREF(p);
            return 1;
        }
        Py_SETREF(p, PyGreenlet_GetParent(p));
    }
    return PyErr_Occurred() ? -1 : 0;
}

/* Whether the frame of coroutine coro runs on this greenlet's stack: 1, 0,
 * or -1 with an exception. */
static int
gbl_on_this_stack(PyObject *coro)
{
    PyObject *frame = PyObject_GetAttrString(coro, "cr_frame");
    if (frame == NULL) {
        return -1;
    }
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    int found = 0;
    while (f != NULL && !found) {
        found = (PyObject *)f == frame;
        Py_SETREF(f, PyFrame_GetBack(f));
    }
    Py_XDECREF(f);
    Py_DECREF(frame);
    return found;
}

/* What ``await aw`` would iterate over (new reference), with await's errors. */
static PyObject *
gbl_awaitable_iter(PyObject *aw)
{
    if (PyCoro_CheckExact(aw)) {
        /* as await: a coroutine suspended in an await has an awaiter; so
         * has one running on the stack of a greenlet parked in await_ */
        PyObject *yf = gbl_st.coro_get_await(aw, NULL);
        if (yf == NULL) {
            return NULL;
        }
        Py_DECREF(yf);
        int awaited = yf != Py_None;
        if (!awaited) {
            PyObject *running = gbl_st.coro_get_running(aw, NULL);
            if (running == NULL) {
                return NULL;
            }
            Py_DECREF(running);
            if (running == Py_True) {
                awaited = gbl_on_this_stack(aw);
                if (awaited < 0) {
                    return NULL;
                }
                awaited = !awaited;
            }
        }
        if (awaited) {
            PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
            return NULL;
        }
        return Py_NewRef(aw);
    }
    if (gbl_is_iterable_coroutine(aw)) {
        return Py_NewRef(aw);
    }
    PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, GBL_NOT_AWAITABLE_FORMAT, Py_TYPE(aw)->tp_name);
        return NULL;
    }
    PyObject *it = am->am_await(aw);
    if (it == NULL) {
        return NULL;
    }
    int coroutine = PyCoro_CheckExact(it) || gbl_is_iterable_coroutine(it);
    if (coroutine || !PyIter_Check(it)) {
#if PY_VERSION_HEX >= 0x030F0000
        PyErr_Format(PyExc_TypeError, "%T.__await__() must return an iterator, not %T", aw, it);
#else
        if (coroutine) {
            PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
        }
        else {
            PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                         Py_TYPE(it)->tp_name);
        }
#endif
        Py_DECREF(it);
        return NULL;
    }
    return it;
}

/* yield from's handling of an exception thrown into the delegator: the
 * next yielded value (new reference), or NULL with an exception set. */
static PyObject *
gbl_throw_into(PyObject *it, PyObject *exc)
{
    gbl_globals *st = &gbl_st;
    PyObject *meth;
    if (PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
        if (gbl_get_optional_attr(it, st->str_close, &meth) < 0) {
            return NULL;
        }
        if (meth != NULL) {
            PyObject *r = PyObject_CallNoArgs(meth);
            Py_DECREF(meth);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
        gbl_restore_exception(Py_NewRef(exc));
        return NULL;
    }
    if (gbl_get_optional_attr(it, st->str_throw, &meth) < 0) {
        return NULL;
    }
    if (meth == NULL) {
        gbl_restore_exception(Py_NewRef(exc));
        return NULL;
    }
    PyObject *r = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    return r;
}

/* Give exc, about to be thrown into a parked await_, the exception being
 * handled there as its __context__, as a coroutine thrown into does. */
static PyObject *
gbl_chain_handled(PyObject *exc)
{
    PyObject *handled = PyErr_GetHandledException();
    if (handled == NULL) {
        return exc;
    }
    int chain = handled != Py_None && handled != exc;
    Py_DECREF(handled);
    if (!chain) {
        return exc;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); /* chains, avoiding cycles */
    Py_DECREF(exc);
    return gbl_fetch_exception();
}

PyDoc_STRVAR(gbl_await_doc,
             "await_($module, aw, /)\n--\n\n"
             "Await *aw* from synchronous code running inside a portal.\n\n"
             "``await_(aw)`` does what ``await aw`` does, but in a plain function: the\n"
             "function must run (at any depth) inside a task that has a portal, which\n"
             "every task of a greenback_loop event loop has.\n\n"
             "Raises:\n"
             "    RuntimeError: there is no portal to suspend: no running event loop in\n"
             "        this thread, no current task, or a task without a portal; or *aw*\n"
             "        must suspend where the task cannot be: while its coroutine is being\n"
             "        closed, or in code the garbage collector runs.\n"
             "    TypeError: *aw* is not awaitable.\n");

#define GBL_CLOSING_MESSAGE                                                            \
    "greenback_loop.await_() cannot suspend while the task's coroutine is being closed " \
    "(close(), or its finalizer): like await in a closing coroutine"

#define GBL_IN_SWITCH_MESSAGE                                                               \
    "greenback_loop.await_() cannot suspend while the greenlet is being switched into "     \
    "(a greenlet.settrace callback runs there): the step resuming it has not handed it "    \
    "its job yet"

#define GBL_IN_GC_MESSAGE                                                                   \
    "greenback_loop.await_() cannot suspend in code the garbage collector runs (a "         \
    "finalizer, __del__ or weakref callback): it would suspend the task whose step the "   \
    "collection runs in, where that task never awaited"

/* Park the greenlet `me` in portal p's step: hand the step the value the
 * awaitable yielded (the reference is stolen) and wait to be resumed. The
 * reference to p is stolen too: the parked stack keeps nothing of the task.
 * Returns the portal whose step resumes `me` (owned) with its job in
 * *pthrow and *parg (owned), or NULL with *parg the exception to throw
 * into the awaitable when no step can take this greenlet any more. */
static PortalObject *
gbl_park(PortalObject *p, PyGreenlet *me, PyObject *aw, PyObject *value, int *pthrow,
         PyObject **parg)
{
    gbl_args_drop(&p->msg_args);
    PyObject *args = gbl_switch_headroom() < 0 ? NULL : gbl_args_take(p);
    if (args == NULL) {
        Py_DECREF(value);
        Py_DECREF(p);
        Py_DECREF(me);
        *pthrow = 1;
        *parg = gbl_fetch_exception();
        return NULL;
    }
    p->msg_kind = GBL_MSG_SUSPEND;
    p->msg_value = value;
    p->msg_resume = me; /* the portal owns the parked greenlet */
    p->msg_awaiting = Py_NewRef(aw);
    p->msg_args = args;
    PyGreenlet *stepper = p->stepper; /* suspended in portal_step, which holds p */
    Py_DECREF(p);
    PyObject *ret = PyGreenlet_Switch(stepper, args, NULL);
    for (;;) {
        ThreadStateObject *ts = gbl_tls;
        if (gbl_is_job_for(ret, me)) {
            p = (PortalObject *)ret;
            gbl_args_drop(&p->job_args);
            *pthrow = p->job_throw;
            *parg = p->job_arg;
            p->job_arg = NULL;
            return p;
        }
        if (ret == NULL && (p = gbl_step_entering(ts, me)) != NULL) {
            /* the step's switch raised (a settrace callback): throw that,
             * unless it is an interrupt the loop raises instead */
            Py_INCREF(p);
            gbl_args_drop(&p->job_args);
            PyObject *exc = gbl_fetch_exception();
            if (gbl_redeliver_interrupt(exc)) {
                Py_DECREF(exc);
                *pthrow = p->job_throw;
                *parg = p->job_arg;
                p->job_arg = NULL;
                return p;
            }
            Py_CLEAR(p->job_arg);
            *pthrow = 1;
            *parg = exc;
            return p;
        }
        if (ts == NULL || (ret == NULL && gbl_is_being_killed(me))) {
            /* killed (or the thread is exiting): unwind */
            if (ret != NULL) {
                Py_DECREF(ret);
                PyErr_SetString(PyExc_GreenletExit, "greenback_loop: the thread is exiting");
            }
            *pthrow = 1;
            *parg = gbl_fetch_exception();
            return NULL;
        }
        ret = gbl_bounce(ts, me, ret);
    }
}

static PyObject *
gbl_await_impl(PyObject *aw)
{
    ThreadStateObject *ts = gbl_tls;
    PortalObject *p = ts != NULL ? ts->current : NULL;
    if (p == NULL) {
        return gbl_outside_portal(aw, 0);
    }
    PyGreenlet *me = PyGreenlet_GetCurrent();
    if (me == NULL) {
        return NULL;
    }
    if (me != p->runner) {
        int found = gbl_descends_from(me, p->runner);
        if (found <= 0) {
            Py_DECREF(me);
            return found < 0 ? NULL : gbl_outside_portal(aw, 1);
        }
    }
    /* `me` (owned) is handed to the portal at the first suspension; later
     * ones look this greenlet up again, so this frame holds no reference
     * to its own greenlet while parked. The portal is held only while this
     * greenlet runs in one of its steps. */
    PyObject *it = gbl_awaitable_iter(aw);
    if (it == NULL) {
        Py_DECREF(me);
        return NULL;
    }
    p = NULL;
    int throw = 0;
    PyObject *arg = Py_NewRef(Py_None);
    for (;;) {
        PyObject *value;
        if (throw) {
            value = gbl_throw_into(it, arg);
            Py_DECREF(arg);
            if (value == NULL) {
                Py_DECREF(it);
                Py_XDECREF(me);
                Py_XDECREF(p);
                if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
                    return gbl_fetch_stop_iteration_value();
                }
                return NULL;
            }
        }
        else {
            PySendResult r = PyIter_Send(it, arg, &value);
            Py_DECREF(arg);
            if (r != PYGEN_NEXT) {
                Py_DECREF(it);
                Py_XDECREF(me);
                Py_XDECREF(p);
                return value; /* the result, or NULL with the exception */
            }
        }
        /* aw waits: suspend the step this greenlet runs in. */
        ts = gbl_tls; /* NULL once the thread is exiting */
        PortalObject *current = ts != NULL ? ts->current : NULL;
        if (p == NULL) {
            p = (PortalObject *)Py_XNewRef(current);
        }
        if (me == NULL) {
            me = PyGreenlet_GetCurrent();
            if (me == NULL) {
                Py_DECREF(value);
                Py_DECREF(it);
                Py_XDECREF(p);
                return NULL;
            }
        }
        const char *refusal = NULL;
        if (p == NULL || p != current || p->stepper == NULL) {
            /* no step of ours to suspend (killed while parked, or resumed
             * from outside) */
            refusal = GBL_FOREIGN_SWITCH_MESSAGE;
        }
        else if (p->closing) {
            refusal = GBL_CLOSING_MESSAGE;
        }
        else if (gbl_suspends_collection(ts, p)) {
            refusal = GBL_IN_GC_MESSAGE;
        }
        else if (gbl_step_entering(ts, me) != NULL) {
            refusal = GBL_IN_SWITCH_MESSAGE;
        }
        if (refusal != NULL) {
            /* close aw, and raise */
            Py_DECREF(value);
            Py_CLEAR(p);
            PyErr_SetString(PyExc_RuntimeError, refusal);
            PyObject *err = gbl_fetch_exception();
            PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
            PyObject *r = exit != NULL ? gbl_throw_into(it, exit) : NULL;
            Py_XDECREF(exit);
            Py_XDECREF(r);
            PyErr_Clear();
            Py_DECREF(it);
            Py_DECREF(me);
            gbl_restore_exception(err);
            return NULL;
        }
        p = gbl_park(p, me, aw, value, &throw, &arg);
        me = NULL;
        if (throw) {
            arg = gbl_chain_handled(arg);
        }
    }
}

/* A traceback entry "await_" for the exception leaving await_, as a Python
 * await_ (greenback's, the twin's) leaves one: tracebacks show where the
 * synchronous code awaited, between its frame and the awaited code's. Only
 * on the error path; a failure to add it leaves the exception as it was. */
static void
gbl_add_await_entry(void)
{
    PyObject *exc = gbl_fetch_exception();
    if (gbl_st.await_code == NULL) {
        gbl_st.await_code = (PyObject *)PyCode_NewEmpty("<greenback_loop._cportal>", "await_", 1);
    }
    if (gbl_st.await_globals == NULL) {
        gbl_st.await_globals = Py_BuildValue("{ss}", "__name__", "greenback_loop._cportal");
    }
    PyFrameObject *frame = NULL;
    if (gbl_st.await_code != NULL && gbl_st.await_globals != NULL) {
        frame = PyFrame_New(PyThreadState_Get(), (PyCodeObject *)gbl_st.await_code,
                            gbl_st.await_globals, NULL);
    }
    PyErr_Clear();
    gbl_restore_exception(exc);
    if (frame != NULL) {
        (void)PyTraceBack_Here(frame); /* on failure, the exception stays set */
        Py_DECREF(frame);
    }
}

static PyObject *
gbl_await(PyObject *Py_UNUSED(module), PyObject *aw)
{
    PyObject *result = gbl_await_impl(aw);
    if (result == NULL && PyErr_Occurred()) {
        gbl_add_await_entry();
    }
    return result;
}

static PyObject *
gbl_in_portal(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    ThreadStateObject *ts = gbl_tls;
    PortalObject *portal = ts != NULL ? ts->current : NULL;
    if (portal == NULL || portal->runner == NULL || portal->stepper == NULL) {
        Py_RETURN_FALSE;
    }
    PyGreenlet *cur = PyGreenlet_GetCurrent();
    if (cur == NULL) {
        return NULL;
    }
    int found = gbl_descends_from(cur, portal->runner);
    Py_DECREF(cur);
    if (found < 0) {
        return NULL;
    }
    return PyBool_FromLong(found);
}
