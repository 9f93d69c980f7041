/* Per-thread state, the runner pool and the runner greenlets' body.
 * Mirrors _ThreadState, _runner_main and _new_runner in _portal_py.py. */

/* The module's state, for the hot paths that have no module at hand.
 * One module instance per process: the module refuses subinterpreters. */
static gbl_module_state *gbl_state = NULL;

/* This thread's ThreadStateObject (owned by the thread's dict). The
 * initial-exec model makes each access one load instead of a call to
 * __tls_get_addr; it needs 8 bytes of glibc's static TLS surplus. */
#if defined(__GNUC__) && defined(__ELF__)
#define GBL_TLS_MODEL __attribute__((tls_model("initial-exec")))
#else
#define GBL_TLS_MODEL
#endif
static _Thread_local ThreadStateObject *gbl_tls GBL_TLS_MODEL = NULL;

static unsigned long gbl_runners_created = 0;

/* -- ThreadState ----------------------------------------------------------- */

static int
thread_state_traverse(ThreadStateObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->hub);
    Py_VISIT(self->job_coro);
    Py_VISIT(self->job_arg);
    Py_VISIT(self->job_context);
    Py_VISIT(self->msg_value);
    Py_VISIT(self->msg_resume);
    Py_VISIT(self->msg_awaiting);
    for (int i = 0; i < self->npool; i++) {
        Py_VISIT(self->pool[i]);
    }
    return 0;
}

static int
thread_state_clear(ThreadStateObject *self)
{
    self->current = NULL;
    Py_CLEAR(self->hub);
    Py_CLEAR(self->job_coro);
    Py_CLEAR(self->job_arg);
    Py_CLEAR(self->job_context);
    Py_CLEAR(self->msg_value);
    Py_CLEAR(self->msg_resume);
    Py_CLEAR(self->msg_awaiting);
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
    gbl_module_state *st = gbl_state;
    PyObject *dict = PyThreadState_GetDict();
    if (dict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop: no thread state dict");
        return NULL;
    }
    ThreadStateObject *ts = PyObject_GC_New(ThreadStateObject, st->thread_state_type);
    if (ts == NULL) {
        return NULL;
    }
    ts->current = NULL;
    ts->hub = NULL;
    ts->job_coro = ts->job_arg = ts->job_context = NULL;
    ts->job_portal = ts->msg_portal = NULL;
    ts->job_throw = 0;
    ts->msg_kind = GBL_MSG_NONE;
    ts->msg_value = ts->msg_awaiting = NULL;
    ts->msg_resume = NULL;
    ts->npool = 0;
    ts->owner_thread = PyThread_get_thread_ident();
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
    if (PyDict_SetItem(dict, st->thread_dict_key, (PyObject *)ts) < 0) {
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

static void
thread_state_clear_job(ThreadStateObject *ts)
{
    Py_CLEAR(ts->job_coro);
    Py_CLEAR(ts->job_arg);
    Py_CLEAR(ts->job_context);
    ts->job_portal = NULL;
    ts->job_throw = 0;
}

static void
thread_state_clear_msg(ThreadStateObject *ts)
{
    ts->msg_kind = GBL_MSG_NONE;
    ts->msg_portal = NULL;
    Py_CLEAR(ts->msg_value);
    Py_CLEAR(ts->msg_resume);
    Py_CLEAR(ts->msg_awaiting);
}

/* Raised where a runner or a parked greenlet finds it was switched into by
 * something other than its portal's step (a greenlet.switch() or throw()
 * from outside): nothing can be delivered from there. */
static void
gbl_set_foreign_switch_error(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "greenback_loop: a task's greenlet was switched into from outside its "
                    "portal's step (greenlet.switch() or throw() on it?); the task cannot "
                    "continue");
}

/* -- runners ------------------------------------------------------------------ */

/* A runner from the pool or a new one (new reference), or NULL. */
static PyGreenlet *
runner_take(ThreadStateObject *ts)
{
    if (ts->npool > 0) {
        ts->npool--;
        PyGreenlet *runner = ts->pool[ts->npool];
        ts->pool[ts->npool] = NULL;
        return runner;
    }
    gbl_runners_created++;
    return PyGreenlet_New(gbl_state->runner_run, NULL);
}

/* Keep an idle runner (the reference is stolen). */
static void
runner_give_back(ThreadStateObject *ts, PyGreenlet *runner)
{
    if (ts->npool < GBL_POOL_MAX) {
        ts->pool[ts->npool++] = runner;
    }
    else {
        Py_DECREF(runner);
    }
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

/* The body of every runner greenlet: run one step per job, forever.
 * The job and the resulting message go through the thread state, so no
 * frame of a suspended runner keeps either alive. */
static PyObject *
runner_run(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    gbl_module_state *st = gbl_state;
    for (;;) {
        ThreadStateObject *ts = gbl_tls;
        PyObject *coro = ts->job_coro;
        if (coro == NULL) {
            gbl_set_foreign_switch_error();
            return NULL; /* no job: switched into from outside; end */
        }
        PyObject *arg = ts->job_arg;
        int throw = ts->job_throw;
        PortalObject *mine = ts->job_portal;
        PyThreadState *tstate = PyThreadState_Get();
        /* Run the step in the task's context: the very object, not a copy,
         * so the step's writes land in it. */
        Py_XDECREF(gbl_swap_context(tstate, ts->job_context));
        ts->job_coro = ts->job_arg = ts->job_context = NULL;
        ts->job_portal = NULL;

        int kind;
        PyObject *value = NULL;
        if (throw) {
            value = PyObject_CallMethodOneArg(coro, st->str_throw, arg);
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
            if (PyErr_ExceptionMatches(PyExc_GreenletExit)) {
                /* The runner is being killed: end it. */
                Py_DECREF(coro);
                Py_DECREF(arg);
                return NULL;
            }
            value = gbl_fetch_exception();
        }
        /* No exception is set from here: the decrefs may run code. */
        Py_DECREF(coro);
        Py_DECREF(arg);
        /* Between steps, the runner holds no context (nothing of the task). */
        Py_XDECREF(gbl_swap_context(tstate, NULL));
        ts = gbl_tls;
        if (ts->current != mine) {
            /* The step did not come from our portal (a foreign switch woke a
             * parked greenlet of this runner): nowhere to deliver. */
            Py_XDECREF(value);
            gbl_set_foreign_switch_error();
            return NULL;
        }
        ts->msg_kind = kind;
        ts->msg_value = value;
        ts->msg_portal = mine;

        /* Back to the greenlet doing the step (borrowed: it is suspended in
         * portal_step, which holds it). */
        PyObject *ret = PyGreenlet_Switch(mine->stepper, NULL, NULL);
        if (ret == NULL) {
            return NULL; /* killed while idle, or thrown into */
        }
        Py_DECREF(ret);
    }
}

static PyMethodDef runner_run_def = {
    "_runner_run", runner_run, METH_NOARGS, "Body of a portal runner greenlet."};
