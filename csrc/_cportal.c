/* greenback_loop._cportal: the C core (portal, runner pool, await_).
 *
 * One translation unit: greenlet.h keeps greenlet's C API table in a static
 * variable, so every part that calls greenlet must be compiled here. */

#include "cportal.h"

#include "runner.c"
#include "portal.c"
#include "await.c"
#include "create_task.c"
#include "task.c"

#ifdef GBL_DEBUG_BUILD
static PyObject *
gbl_debug_runners_created(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(gbl_runners_created);
}

/* -- the floor: a bare greenlet switch round trip, from C ------------------- */

static PyGreenlet *bounce_home = NULL; /* borrowed, during the measurement */

static PyObject *
bounce_run(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    for (;;) {
        PyObject *r = PyGreenlet_Switch(bounce_home, NULL, NULL);
        if (r == NULL) {
            return NULL; /* killed */
        }
        Py_DECREF(r);
    }
}

static PyMethodDef bounce_def = {"_bounce", bounce_run, METH_NOARGS, NULL};

static PyObject *
gbl_debug_switch_roundtrip(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n <= 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "n must be positive");
        }
        return NULL;
    }
    PyObject *run = PyCFunction_NewEx(&bounce_def, NULL, NULL);
    if (run == NULL) {
        return NULL;
    }
    PyGreenlet *g = PyGreenlet_New(run, NULL);
    Py_DECREF(run);
    if (g == NULL) {
        return NULL;
    }
    bounce_home = PyGreenlet_GetCurrent();
    PyObject *r = PyGreenlet_Switch(g, NULL, NULL); /* start it */
    int64_t t0 = gbl_perf_counter_ns();
    for (Py_ssize_t i = 0; r != NULL && i < n; i++) {
        Py_DECREF(r);
        r = PyGreenlet_Switch(g, NULL, NULL);
    }
    int64_t t1 = gbl_perf_counter_ns();
    Py_XDECREF(r);
    Py_DECREF(g); /* kills it */
    Py_CLEAR(bounce_home);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyFloat_FromDouble((double)(t1 - t0) / (double)n);
}
#endif /* GBL_DEBUG_BUILD */

static PyMethodDef module_methods[] = {
    {"await_", gbl_await, METH_O, gbl_await_doc},
    {"portal_create_task", (PyCFunction)(void (*)(void))gbl_portal_create_task, METH_FASTCALL,
     gbl_portal_create_task_doc},
    {"in_portal", gbl_in_portal, METH_NOARGS,
     "in_portal($module, /)\n--\n\nWhether await_() can suspend from the calling greenlet."},
    {"portal_call_soon", (PyCFunction)(void (*)(void))gbl_portal_call_soon, METH_FASTCALL,
     gbl_portal_call_soon_doc},
    {"pointer_offsets", (PyCFunction)(void (*)(void))gbl_pointer_offsets, METH_FASTCALL,
     "pointer_offsets($module, obj, referent, /)\n--\n\n"
     "Offsets in obj's fixed-size part at which a pointer to referent is stored."},
    {"asyncio_debug_offsets", gbl_asyncio_debug_offsets, METH_NOARGS,
     "asyncio_debug_offsets($module, /)\n--\n\n"
     "The Task size and coroutine offset CPython publishes for debuggers, or None."},
    {"set_task_layout", (PyCFunction)(void (*)(void))gbl_set_task_layout, METH_FASTCALL,
     "set_task_layout($module, task_type, coro_offset, step_type, step_offset, /)\n--\n\n"
     "Record where a C Task keeps its coroutine (once per process)."},
    {"swap_task_coro", (PyCFunction)(void (*)(void))gbl_swap_task_coro, METH_FASTCALL,
     "swap_task_coro($module, task, old, new, /)\n--\n\n"
     "Replace a C Task's coroutine old (checked in place) with new."},
#ifdef GBL_DEBUG_BUILD
    {"_debug_runners_created", gbl_debug_runners_created, METH_NOARGS,
     "How many runner greenlets this process has created (for tests)."},
    {"_debug_switch_roundtrip", gbl_debug_switch_roundtrip, METH_O,
     "_debug_switch_roundtrip($module, n, /)\n--\n\n"
     "Nanoseconds per bare greenlet switch round trip made from C, over n\n"
     "round trips: the floor of a portal step's cost (for benchmarks)."},
#endif
    {NULL, NULL, 0, NULL},
};

/* -- calibration ------------------------------------------------------------ */

static PyGreenlet *kill_probe_self = NULL; /* a tag, during the measurement */

static PyObject *
kill_probe_run(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyGreenlet *me = PyGreenlet_GetCurrent();
    if (me == NULL) {
        return NULL;
    }
    Py_DECREF(me);
    kill_probe_self = me;
    PyObject *parent = (PyObject *)PyGreenlet_GetParent(me);
    if (parent == NULL) {
        return NULL;
    }
    PyObject *r = PyGreenlet_Switch((PyGreenlet *)parent, NULL, NULL);
    Py_DECREF(parent);
    if (r == NULL && PyErr_ExceptionMatches(PyExc_GreenletExit)) {
        gbl_st.killed_refs = Py_REFCNT(me); /* being killed: measure */
    }
    return r;
}

static PyMethodDef kill_probe_def = {"_kill_probe", kill_probe_run, METH_NOARGS, NULL};

/* Measure the references greenlet holds to a greenlet it kills because
 * its last reference went away: start a greenlet, drop it. */
static int
calibrate_kill(void)
{
    PyObject *run = PyCFunction_NewEx(&kill_probe_def, NULL, NULL);
    if (run == NULL) {
        return -1;
    }
    PyGreenlet *g = PyGreenlet_New(run, NULL);
    Py_DECREF(run);
    if (g == NULL) {
        return -1;
    }
    PyObject *r = PyGreenlet_Switch(g, NULL, NULL);
    Py_XDECREF(r);
    gbl_st.killed_refs = 0;
    Py_DECREF(g); /* kills it */
    if (PyErr_Occurred()) {
        return -1;
    }
    if (gbl_st.killed_refs <= 0) {
        PyErr_SetString(PyExc_ImportError, "greenback_loop._cportal: calibration failed");
        return -1;
    }
    return 0;
}

/* Measure the references an unshared idle runner has at the check in
 * portal_step: step a one-item iterator once through a fresh runner. */
static int
calibrate(void)
{
    PyObject *items = Py_BuildValue("[O]", Py_None);
    if (items == NULL) {
        return -1;
    }
    PyObject *probe = PyObject_GetIter(items);
    Py_DECREF(items);
    if (probe == NULL) {
        return -1;
    }
    PortalObject *portal = portal_alloc(gbl_st.portal_type, probe);
    Py_DECREF(probe);
    if (portal == NULL) {
        return -1;
    }
    gbl_st.runner_refs = 0;
    PyObject *result;
    PySendResult r = portal_step(portal, 0, Py_None, &result);
    Py_DECREF(portal);
    if (r != PYGEN_NEXT) {
        if (r == PYGEN_RETURN) {
            Py_DECREF(result);
            PyErr_SetString(PyExc_ImportError, "greenback_loop._cportal: calibration failed");
        }
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* The C getter of a built-in type's attribute, found once: await_ asks
 * cr_await whether a coroutine already has an awaiter, as await does;
 * close() asks cr_suspended / gi_suspended whether closing runs code. */
static int
find_getter(PyTypeObject *type, const char *name, getter *out)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) {
        return -1;
    }
    int ok = PyObject_TypeCheck(descr, &PyGetSetDescr_Type) &&
             ((PyGetSetDescrObject *)descr)->d_getset->get != NULL;
    if (ok) {
        /* the getset table is static in CPython: the pointer outlives descr */
        *out = ((PyGetSetDescrObject *)descr)->d_getset->get;
    }
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_ImportError,
                     "greenback_loop._cportal: %s.%s is not a getset descriptor", type->tp_name,
                     name);
        return -1;
    }
    return 0;
}

/* Set up gbl_st. Its references are kept for the life of the process:
 * nothing that runs during interpreter shutdown (a portal's finalizer, a
 * runner unwinding) can meet them cleared. */
static int
module_exec(PyObject *module)
{
    if (gbl_state != NULL) {
        PyErr_SetString(PyExc_ImportError,
                        "greenback_loop._cportal cannot be loaded twice in one process");
        return -1;
    }
    gbl_globals *st = &gbl_st;

    PyGreenlet_Import();
    if (_PyGreenlet_API == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError, "greenlet's C API (greenlet._C_API) is missing");
        }
        return -1;
    }
    if (find_getter(&PyCoro_Type, "cr_await", &st->coro_get_await) < 0 ||
        find_getter(&PyCoro_Type, "cr_suspended", &st->coro_get_suspended) < 0 ||
        find_getter(&PyCoro_Type, "cr_running", &st->coro_get_running) < 0 ||
        find_getter(&PyGen_Type, "gi_suspended", &st->gen_get_suspended) < 0)
    {
        return -1;
    }

#define INTERN(field, text)                                   \
    do {                                                      \
        if (st->field == NULL) {                              \
            st->field = PyUnicode_InternFromString(text);     \
            if (st->field == NULL) {                          \
                return -1;                                    \
            }                                                 \
        }                                                     \
    } while (0)
    INTERN(str_throw, "throw");
    INTERN(str_close, "close");
    INTERN(str_provider, "__sqlalchemy_greenlet_provider__");
    INTERN(thread_dict_key, "greenback_loop._cportal.thread_state");
#undef INTERN

    if (st->portal_type == NULL) {
        st->portal_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &portal_spec, NULL);
        if (st->portal_type == NULL) {
            return -1;
        }
    }
    if (st->thread_state_type == NULL) {
        st->thread_state_type =
            (PyTypeObject *)PyType_FromModuleAndSpec(module, &thread_state_spec, NULL);
        if (st->thread_state_type == NULL) {
            return -1;
        }
    }
    if (st->create_task_type == NULL) {
        st->create_task_type =
            (PyTypeObject *)PyType_FromModuleAndSpec(module, &create_task_spec, NULL);
        if (st->create_task_type == NULL) {
            return -1;
        }
    }
    if (st->await_func == NULL) {
        st->await_func = PyObject_GetAttrString(module, "await_");
        if (st->await_func == NULL) {
            return -1;
        }
    }
    if (st->runner_run == NULL) {
        st->runner_run = PyCFunction_NewEx(&runner_run_def, NULL, NULL);
        if (st->runner_run == NULL) {
            return -1;
        }
    }
#if GBL_PRIME_FRAME_STACK
    if (st->frame_primer == NULL) {
        PyObject *ns = Py_BuildValue("{sO}", "__builtins__", PyEval_GetBuiltins());
        if (ns == NULL) {
            return -1;
        }
        PyObject *r = PyRun_String("def _prime_frame_stack():\n    pass\n", Py_file_input, ns, ns);
        Py_XDECREF(r);
        st->frame_primer = r == NULL ? NULL : PyDict_GetItemString(ns, "_prime_frame_stack");
        Py_XINCREF(st->frame_primer);
        Py_DECREF(ns);
        if (st->frame_primer == NULL) {
            return -1;
        }
    }
#endif
    if (st->gc_callback == NULL) {
        st->gc_callback = PyCFunction_NewEx(&gbl_gc_callback_def, NULL, NULL);
        if (st->gc_callback == NULL) {
            return -1;
        }
    }
    if (gbl_watch_collections() < 0) {
        return -1;
    }
    if (st->spare_args == NULL) {
        st->spare_args = PyTuple_Pack(1, Py_None);
        if (st->spare_args == NULL) {
            return -1;
        }
    }
    if (PyModule_AddType(module, st->portal_type) < 0) {
        return -1;
    }

    if (st->coroutine_abc == NULL) {
        st->coroutine_abc = gbl_import_attr("collections.abc", "Coroutine");
        if (st->coroutine_abc == NULL) {
            return -1;
        }
    }
    PyObject *reg = PyObject_CallMethod(st->coroutine_abc, "register", "O", st->portal_type);
    if (reg == NULL) {
        return -1;
    }
    Py_DECREF(reg);

    gbl_state = st;
    gbl_refresh_memory_limit();
    if (calibrate_kill() < 0 || calibrate() < 0) {
        gbl_state = NULL;
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenback_loop._cportal",
    .m_doc = "greenback_loop's C core: the portal, the runner pool and await_().",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__cportal(void)
{
    return PyModuleDef_Init(&module_def);
}
