/* portal_create_task(base, wrap): the create_task of greenback_loop's loops
 * (and, with another vectorcall, their call_soon: see task.c).
 *
 * Calling it as a method, loop.create_task(coro, ...), wraps coro in a portal
 * and calls base(loop, portal, ...) with the caller's other arguments
 * untouched. The common case, a native coroutine, is done here; anything
 * else goes through wrap(coro) (Python) first. Mirrors portal_create_task in
 * _portal_py.py; spawning a task is hot enough to skip a Python frame. */

typedef struct {
    PyObject_HEAD
    PyObject *base; /* the base loop class's create_task */
    PyObject *wrap; /* wrap(coro) -> what to hand to base (call_soon: the hook) */
    PyObject *extra; /* call_soon: the pure-Python Task class; NULL otherwise */
    vectorcallfunc vectorcall;
} CreateTaskObject;

static PyObject *
create_task_vectorcall(CreateTaskObject *self, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    /* where the coroutine is: second positional (after the loop), or coro= */
    Py_ssize_t at = nargs >= 2 ? 1 : -1;
    for (Py_ssize_t i = nargs; at < 0 && i < total; i++) {
        if (PyUnicode_Check(PyTuple_GET_ITEM(kwnames, i - nargs)) &&
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i - nargs), "coro") == 0)
        {
            at = i;
        }
    }
    if (at < 0 || gbl_state == NULL) {
        /* no coroutine argument: let the base class report it */
        return PyObject_Vectorcall(self->base, args, nargs, kwnames);
    }
    PyObject *wrapped;
    if (PyCoro_CheckExact(args[at])) {
        wrapped = (PyObject *)portal_alloc(gbl_st.portal_type, args[at]);
    }
    else {
        wrapped = PyObject_CallOneArg(self->wrap, args[at]);
    }
    if (wrapped == NULL) {
        return NULL;
    }
    PyObject *small[8];
    PyObject **argv = small;
    if (total > (Py_ssize_t)Py_ARRAY_LENGTH(small)) {
        argv = PyMem_New(PyObject *, total);
        if (argv == NULL) {
            Py_DECREF(wrapped);
            return PyErr_NoMemory();
        }
    }
    memcpy(argv, args, total * sizeof(PyObject *));
    argv[at] = wrapped;
    PyObject *result = PyObject_Vectorcall(self->base, argv, nargs, kwnames);
    if (argv != small) {
        PyMem_Free(argv);
    }
    Py_DECREF(wrapped);
    return result;
}

static PyObject *
create_task_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static int
create_task_traverse(CreateTaskObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->base);
    Py_VISIT(self->wrap);
    Py_VISIT(self->extra);
    return 0;
}

static int
create_task_clear(CreateTaskObject *self)
{
    Py_CLEAR(self->base);
    Py_CLEAR(self->wrap);
    Py_CLEAR(self->extra);
    return 0;
}

static void
create_task_dealloc(CreateTaskObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    create_task_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* __doc__, __name__, __qualname__ are the base's (closure: the name). */
static PyObject *
create_task_get_forwarded(CreateTaskObject *self, void *closure)
{
    return PyObject_GetAttrString(self->base, (const char *)closure);
}

static PyObject *
create_task_repr(CreateTaskObject *self)
{
    return PyUnicode_FromFormat("<greenback_loop %s over %R>",
                                self->extra == NULL ? "create_task" : "call_soon", self->base);
}

static PyMemberDef create_task_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CreateTaskObject, vectorcall), READONLY, NULL},
    {"__wrapped__", T_OBJECT, offsetof(CreateTaskObject, base), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef create_task_getsets[] = {
    {"__doc__", (getter)create_task_get_forwarded, NULL, NULL, "__doc__"},
    {"__name__", (getter)create_task_get_forwarded, NULL, NULL, "__name__"},
    {"__qualname__", (getter)create_task_get_forwarded, NULL, NULL, "__qualname__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot create_task_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, create_task_get},
    {Py_tp_traverse, create_task_traverse},
    {Py_tp_clear, create_task_clear},
    {Py_tp_dealloc, create_task_dealloc},
    {Py_tp_repr, create_task_repr},
    {Py_tp_members, create_task_members},
    {Py_tp_getset, create_task_getsets},
    {0, NULL},
};

static PyType_Spec create_task_spec = {
    .name = "greenback_loop._cportal._CreateTask",
    .basicsize = sizeof(CreateTaskObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = create_task_slots,
};

/* A new create_task (extra NULL) or call_soon (extra: the pure-Python Task
 * class) callable over base, calling through vectorcall. */
static PyObject *
create_task_new(PyObject *base, PyObject *wrap, PyObject *extra, vectorcallfunc vectorcall)
{
    CreateTaskObject *self = PyObject_GC_New(CreateTaskObject, gbl_st.create_task_type);
    if (self == NULL) {
        return NULL;
    }
    self->base = Py_NewRef(base);
    self->wrap = Py_NewRef(wrap);
    self->extra = Py_XNewRef(extra);
    self->vectorcall = vectorcall;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

PyDoc_STRVAR(gbl_portal_create_task_doc,
             "portal_create_task($module, base, wrap, /)\n--\n\n"
             "A create_task method for a loop class: wraps the coroutine in a portal\n"
             "(native coroutines here, anything else through wrap(coro)) and calls\n"
             "base(loop, portal, ...) with the other arguments untouched.");

static PyObject *
gbl_portal_create_task(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "portal_create_task(base, wrap) takes two callables");
        return NULL;
    }
    return create_task_new(args[0], args[1], NULL, (vectorcallfunc)create_task_vectorcall);
}
