/* await_(): drive an awaitable from synchronous code inside a portal step.
 * Mirrors await_, in_portal and _awaitable_iter in _portal_py.py. */

/* Raise the RuntimeError for await_() outside a portal (built by
 * greenback_loop._errors, which also closes aw if it is a coroutine). */
static PyObject *
gbl_outside_portal(PyObject *aw, int nested)
{
    gbl_module_state *st = gbl_state;
    if (st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop's C core has been unloaded");
        return NULL;
    }
    if (st->errors_module == NULL) {
        st->errors_module = PyImport_ImportModule("greenback_loop._errors");
        if (st->errors_module == NULL) {
            return NULL;
        }
    }
    PyObject *exc = PyObject_CallMethod(st->errors_module, "await_outside_portal", "OO", aw,
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

/* What ``await aw`` would iterate over (new reference), with await's errors. */
static PyObject *
gbl_awaitable_iter(PyObject *aw)
{
    if (PyCoro_CheckExact(aw) || gbl_is_iterable_coroutine(aw)) {
        return Py_NewRef(aw);
    }
    PyAsyncMethods *am = Py_TYPE(aw)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "'%.100s' object can't be awaited", Py_TYPE(aw)->tp_name);
        return NULL;
    }
    PyObject *it = am->am_await(aw);
    if (it == NULL) {
        return NULL;
    }
    if (PyCoro_CheckExact(it) || gbl_is_iterable_coroutine(it)) {
        PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
        Py_DECREF(it);
        return NULL;
    }
    if (!PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
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
    gbl_module_state *st = gbl_state;
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

PyDoc_STRVAR(gbl_await_doc,
             "await_(aw)\n--\n\n"
             "Await *aw* from synchronous code running inside a portal.\n\n"
             "``await_(aw)`` does what ``await aw`` does, but in a plain function: the\n"
             "function must run (at any depth) inside a task that has a portal, which\n"
             "every task of a greenback_loop event loop has.\n\n"
             "Raises:\n"
             "    RuntimeError: there is no portal to suspend: no running event loop in\n"
             "        this thread, no current task, or a task without a portal.\n"
             "    TypeError: *aw* is not awaitable.\n");

static PyObject *
gbl_await(PyObject *Py_UNUSED(module), PyObject *aw)
{
    ThreadStateObject *ts = gbl_tls;
    PortalObject *portal = ts != NULL ? ts->current : NULL;
    if (portal == NULL) {
        return gbl_outside_portal(aw, 0);
    }
    PortalObject *mine = portal; /* a tag: compared, never dereferenced after a switch */
    PyGreenlet *cur = PyGreenlet_GetCurrent();
    if (cur == NULL) {
        return NULL;
    }
    if (cur != portal->runner) {
        int found = gbl_descends_from(cur, portal->runner);
        if (found <= 0) {
            Py_DECREF(cur);
            return found < 0 ? NULL : gbl_outside_portal(aw, 1);
        }
    }
    portal = NULL;
    /* `cur` (owned) is this greenlet, saved for a second lookup: the first
     * suspension hands it over as the greenlet to resume, and later ones,
     * after a resume, look it up again. So this frame holds no reference
     * to its greenlet while parked, where the garbage collector could not
     * see it. */

    PyObject *it = gbl_awaitable_iter(aw);
    if (it == NULL) {
        Py_DECREF(cur);
        return NULL;
    }
    int throw = 0;
    PyObject *arg = Py_NewRef(Py_None);
    for (;;) {
        PyObject *value;
        if (throw) {
            value = gbl_throw_into(it, arg);
            Py_DECREF(arg);
            if (value == NULL) {
                Py_DECREF(it);
                Py_XDECREF(cur);
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
                Py_XDECREF(cur);
                return value; /* the result, or NULL with the exception */
            }
        }
        /* aw waits: hand the yielded value to the greenlet doing the step. */
        ts = gbl_tls;
        if (ts->current != mine) {
            /* We run outside our portal's step (a foreign switch resumed
             * us): there is no step to suspend; tell aw, and the caller. */
            Py_DECREF(value);
            gbl_set_foreign_switch_error();
            throw = 1;
            arg = gbl_fetch_exception();
            continue;
        }
        PyGreenlet *me = cur != NULL ? cur : PyGreenlet_GetCurrent();
        cur = NULL;
        if (me == NULL) {
            Py_DECREF(value);
            Py_DECREF(it);
            return NULL;
        }
        ts->msg_kind = GBL_MSG_SUSPEND;
        ts->msg_value = value;
        ts->msg_resume = me;
        ts->msg_awaiting = Py_NewRef(aw);
        ts->msg_portal = mine;
        /* Borrowed: portal_step holds the stepping greenlet until it is
         * resumed; holding it here would keep it while parked. */
        PyObject *ret = PyGreenlet_Switch(mine->stepper, NULL, NULL);
        ts = gbl_tls;
        if (ret == NULL) {
            /* killed (GreenletExit), thrown into with greenlet.throw, or the
             * switch failed before it happened */
            if (ts->msg_kind == GBL_MSG_SUSPEND && ts->msg_resume == me) {
                thread_state_clear_msg(ts);
            }
            throw = 1;
            arg = gbl_fetch_exception();
        }
        else if (ts->current != mine || ts->job_arg == NULL) {
            /* woken by a foreign switch, not by our portal's step */
            Py_DECREF(ret);
            gbl_set_foreign_switch_error();
            throw = 1;
            arg = gbl_fetch_exception();
        }
        else {
            Py_DECREF(ret);
            throw = ts->job_throw;
            arg = ts->job_arg;
            ts->job_arg = NULL;
            ts->job_portal = NULL;
        }
    }
}

static PyObject *
gbl_in_portal(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    ThreadStateObject *ts = gbl_tls;
    PortalObject *portal = ts != NULL ? ts->current : NULL;
    if (portal == NULL || portal->runner == NULL) {
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
