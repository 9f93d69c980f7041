/* Retrofitting a portal onto an asyncio Task made without one.
 *
 * asyncio's C Task keeps its coroutine in a C field with no setter. To give
 * such a task a portal, greenback_loop swaps that field for a Portal around
 * the same coroutine. The field's offset is not public API, so it is found
 * once per process by probing (greenback_loop/_retrofit.py makes Tasks with
 * known coroutines and asks pointer_offsets() where each coroutine's pointer
 * sits), cross-checked against the offset CPython 3.14+ publishes for
 * out-of-process debuggers when the symbol is visible, and recorded by
 * set_task_layout(). swap_task_coro() then writes only after reading back the
 * coroutine the caller saw through get_coro() at that offset, so a wrong
 * offset can never overwrite an unrelated field.
 *
 * A running step of the task holds the old coroutine by a borrowed pointer
 * (Task.__step reads the field once); the portal holds a strong reference to
 * it, so the swap is safe mid-step. */

#if PY_VERSION_HEX >= 0x030E0000 && !defined(_WIN32)
#include <dlfcn.h>
#define GBL_HAVE_ASYNCIO_DEBUG 1
#else
#define GBL_HAVE_ASYNCIO_DEBUG 0
#endif

static PyTypeObject *gbl_ctask_type = NULL; /* strong, once set */
static Py_ssize_t gbl_task_coro_offset = 0; /* 0 until set */
/* What a C Task hands call_soon to schedule a step, and where in it the
 * task is (NULL / 0: unknown, and call_soon gives no portals to C Tasks). */
static PyTypeObject *gbl_step_wrapper_type = NULL; /* strong, once set */
static Py_ssize_t gbl_step_wrapper_task_offset = 0;

/* The words of obj's fixed-size part, after the object header, at which
 * a pointer to referent is stored. Reads stay inside tp_basicsize. */
static PyObject *
gbl_pointer_offsets(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pointer_offsets(obj, referent) takes 2 arguments");
        return NULL;
    }
    PyTypeObject *tp = Py_TYPE(args[0]);
    if (tp->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "pointer_offsets() needs a fixed-size object, not %s",
                     tp->tp_name);
        return NULL;
    }
    PyObject *found = PyList_New(0);
    if (found == NULL) {
        return NULL;
    }
    const char *base = (const char *)args[0];
    for (Py_ssize_t off = (Py_ssize_t)sizeof(PyObject);
         off + (Py_ssize_t)sizeof(PyObject *) <= tp->tp_basicsize; off += sizeof(PyObject *))
    {
        PyObject *word;
        memcpy(&word, base + off, sizeof(word));
        if (word == args[1]) {
            PyObject *n = PyLong_FromSsize_t(off);
            if (n == NULL || PyList_Append(found, n) < 0) {
                Py_XDECREF(n);
                Py_DECREF(found);
                return NULL;
            }
            Py_DECREF(n);
        }
    }
    return found;
}

/* The coroutine offset and size of asyncio's TaskObj as CPython publishes
 * them for debuggers (the _AsyncioDebug symbol of the _asyncio module, 3.14+),
 * or 0 when they cannot be found. */
static int
asyncio_debug_offsets(uint64_t *size, uint64_t *coro)
{
#if GBL_HAVE_ASYNCIO_DEBUG
    void *sym = NULL;
    PyObject *mod = PyImport_ImportModule("_asyncio");
    if (mod == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *file = PyObject_GetAttrString(mod, "__file__");
    Py_DECREF(mod);
    if (file == NULL) {
        PyErr_Clear(); /* built in: look in the process */
        sym = dlsym(RTLD_DEFAULT, "_AsyncioDebug");
    }
    else {
        const char *path = PyUnicode_Check(file) ? PyUnicode_AsUTF8(file) : NULL;
        if (path == NULL) {
            PyErr_Clear();
        }
        else {
            void *handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
            if (handle != NULL) {
                sym = dlsym(handle, "_AsyncioDebug");
                dlclose(handle);
            }
        }
        Py_DECREF(file);
    }
    if (sym == NULL) {
        return 0;
    }
    /* struct _asyncio_task_object { size, task_name, task_awaited_by,
     * task_is_task, task_awaited_by_is_set, task_coro, task_node } opens
     * the published struct (3.14). */
    const uint64_t *fields = (const uint64_t *)sym;
    *size = fields[0];
    *coro = fields[5];
    return 1;
#else
    (void)size;
    (void)coro;
    return 0;
#endif
}

static PyObject *
gbl_asyncio_debug_offsets(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    uint64_t size, coro;
    if (!asyncio_debug_offsets(&size, &coro)) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("{sKsK}", "size", (unsigned long long)size, "task_coro",
                         (unsigned long long)coro);
}

/* Whether off is a pointer-aligned word inside tp's fixed-size part, after
 * the object header; sets RuntimeError naming what when not. */
static int
slot_offset_ok(PyTypeObject *tp, Py_ssize_t off, const char *what)
{
    if (tp->tp_itemsize != 0 || off < (Py_ssize_t)sizeof(PyObject) ||
        off % (Py_ssize_t)sizeof(PyObject *) != 0 ||
        off + (Py_ssize_t)sizeof(PyObject *) > tp->tp_basicsize)
    {
        PyErr_Format(PyExc_RuntimeError,
                     "greenback_loop: offset %zd cannot hold the %s of a %s "
                     "(its size is %zd bytes)",
                     off, what, tp->tp_name, tp->tp_basicsize);
        return 0;
    }
    return 1;
}

static PyObject *
gbl_set_task_layout(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "set_task_layout(task_type, coro_offset, step_type, step_task_offset)");
        return NULL;
    }
    PyTypeObject *wtp = (PyTypeObject *)args[2];
    Py_ssize_t woff = PyLong_AsSsize_t(args[3]);
    if (woff == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!slot_offset_ok(wtp, woff, "task")) {
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)args[0];
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!slot_offset_ok(tp, off, "coroutine")) {
        return NULL;
    }
    uint64_t dsize, dcoro;
    if (asyncio_debug_offsets(&dsize, &dcoro) && dsize == (uint64_t)tp->tp_basicsize &&
        dcoro != (uint64_t)off)
    {
        PyErr_Format(PyExc_RuntimeError,
                     "greenback_loop: the probed coroutine offset of %s (%zd) differs "
                     "from the one CPython publishes for debuggers (%llu)",
                     tp->tp_name, off, (unsigned long long)dcoro);
        return NULL;
    }
    if (gbl_ctask_type != NULL) {
        if (gbl_ctask_type != tp || gbl_task_coro_offset != off || gbl_step_wrapper_type != wtp ||
            gbl_step_wrapper_task_offset != woff)
        {
            PyErr_SetString(PyExc_RuntimeError, "greenback_loop: the Task layout is already set");
            return NULL;
        }
        Py_RETURN_NONE;
    }
    gbl_ctask_type = (PyTypeObject *)Py_NewRef(tp);
    gbl_task_coro_offset = off;
    gbl_step_wrapper_type = (PyTypeObject *)Py_NewRef(wtp);
    gbl_step_wrapper_task_offset = woff;
    Py_RETURN_NONE;
}

static PyObject *
gbl_swap_task_coro(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "swap_task_coro(task, old, new) takes 3 arguments");
        return NULL;
    }
    PyObject *task = args[0], *old = args[1], *new = args[2];
    if (gbl_ctask_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenback_loop: the Task layout is not known yet");
        return NULL;
    }
    if (!PyObject_TypeCheck(task, gbl_ctask_type)) {
        PyErr_Format(PyExc_TypeError, "swap_task_coro() needs a %s, not %s",
                     gbl_ctask_type->tp_name, Py_TYPE(task)->tp_name);
        return NULL;
    }
    PyObject **slot = (PyObject **)((char *)task + gbl_task_coro_offset);
    if (*slot != old) {
        PyErr_SetString(PyExc_RuntimeError,
                        "greenback_loop: the task's coroutine is not where it was probed "
                        "(or changed meanwhile); its portal was not installed");
        return NULL;
    }
    *slot = Py_NewRef(new);
    Py_DECREF(old);
    Py_RETURN_NONE;
}

/* -- call_soon: a portal for every task, even one built with asyncio.Task() --
 *
 * A Task schedules its first step with loop.call_soon(step, context=...) from
 * its constructor. The call_soon of greenback_loop's loops looks at the
 * callback: a C Task's step wrapper whose task's coroutine is no portal, or
 * a bound method of a pure-Python Task, is handed to hook(task) (Python,
 * which gives the task a portal) before the base call_soon schedules it.
 * Anything else costs a type comparison. */

static PyObject *
call_soon_vectorcall(CreateTaskObject *self, PyObject *const *args, size_t nargsf,
                     PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs >= 2) {
        PyObject *cb = args[1], *task = NULL;
        if (Py_TYPE(cb) == gbl_step_wrapper_type) {
            PyObject *t;
            memcpy(&t, (const char *)cb + gbl_step_wrapper_task_offset, sizeof(t));
            if (t != NULL && PyObject_TypeCheck(t, gbl_ctask_type)) {
                PyObject *coro;
                memcpy(&coro, (const char *)t + gbl_task_coro_offset, sizeof(coro));
                if (coro != NULL && Py_TYPE(coro) != gbl_st.portal_type) {
                    task = t;
                }
            }
        }
        else if (PyMethod_Check(cb) &&
                 PyObject_TypeCheck(PyMethod_GET_SELF(cb), (PyTypeObject *)self->extra))
        {
            task = PyMethod_GET_SELF(cb);
        }
        if (task != NULL) {
            PyObject *r = PyObject_CallOneArg(self->wrap, task);
            if (r == NULL) {
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    return PyObject_Vectorcall(self->base, args, nargsf, kwnames);
}

PyDoc_STRVAR(gbl_portal_call_soon_doc,
             "portal_call_soon($module, base, hook, pytask_type, /)\n--\n\n"
             "A call_soon method for a loop class: a task scheduling a step without a\n"
             "portal is handed to hook(task) first, then base(loop, ...) is called.");

static PyObject *
gbl_portal_call_soon(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) ||
        !PyType_Check(args[2]))
    {
        PyErr_SetString(PyExc_TypeError,
                        "portal_call_soon(base, hook, pytask_type) takes two callables and a type");
        return NULL;
    }
    return create_task_new(args[0], args[1], args[2], (vectorcallfunc)call_soon_vectorcall);
}
