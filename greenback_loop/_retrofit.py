"""Giving a portal to an asyncio Task that was created without one.

A task's portal is its coroutine: ``Portal(coro)`` in place of ``coro``. On
greenback_loop's loops ``create_task`` puts it there before the task exists;
for any other task (plain asyncio or uvloop, ``asyncio.Task(...)`` built
directly) the coroutine is swapped after the fact, taking effect from the
task's next step:

* asyncio's pure-Python Task (``asyncio.tasks._PyTask``, PyPy, programs that
  swap Task classes) keeps it in an attribute: both cores set it.
* asyncio's C Task keeps it in a C field with no setter. The C core swaps it
  in place (``_cportal.swap_task_coro``), at an offset probed once per
  process on Tasks built with known coroutines, cross-checked on 3.14+ with
  the offset CPython publishes for debuggers, and verified on every swap by
  reading the old coroutine back first and ``get_coro()`` after.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import threading
import types
import weakref
from typing import Any

from . import _impl
from ._errors import is_portal

_PyTask: type = asyncio.tasks._PyTask  # type: ignore[attr-defined]
_CTask: type | None = getattr(asyncio.tasks, "_CTask", None)

#: Tasks inside with_portal_run()/with_portal_run_sync() right now, with how
#: many such calls are active in each.
portal_run_tasks: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def task_has_portal(task: Any) -> bool:
    """Whether *task* (an asyncio Task, not running now) will be able to
    use ``await_`` when it runs: its coroutine is a portal and it is not
    done, or it is inside with_portal_run()."""
    if task in portal_run_tasks:
        return True
    return not task.done() and type(task.get_coro()) is _impl.core.Portal


_ASYNC_CODE = (
    inspect.CO_COROUTINE
    | inspect.CO_ITERABLE_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_GENERATOR
)


def awaited_directly_by(coro: Any) -> bool:
    """Whether the caller runs in *coro*'s own await chain: every frame
    between the caller and *coro*'s frame is a coroutine's (or generator's),
    none a plain function's. False when the caller runs under sync code
    that awaits it (await_), or in another greenlet."""
    target = getattr(coro, "cr_frame", None)
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame is target:
            return True
        if not frame.f_code.co_flags & _ASYNC_CODE:
            return False
        frame = frame.f_back
    return False


def refuse_greenback_shim(task_name: str, coro: Any, what: str) -> None:
    """Raise a RuntimeError if *coro* is the greenback package's own portal
    (its shim, installed by greenback's ensure_portal() or bestow_portal()
    before greenback_loop hooked greenback): a portal of ours around it
    would have greenback's greenlets switch past our steps."""
    impl = sys.modules.get("greenback._impl")
    shim = getattr(impl, "greenback_shim", None)
    if shim is None or getattr(coro, "cr_code", None) is not getattr(shim, "__code__", None):
        return
    raise RuntimeError(
        f"{what}: task {task_name!r} already has a portal of the greenback package's own "
        "(greenback.ensure_portal() or bestow_portal() gave it one), and greenback_loop "
        "cannot put its portal around greenback's. Use greenback.await_() in this task, or "
        "give it greenback_loop's portal first (greenback's functions then use that one)."
    )


def trio_task_has_portal(task: Any) -> bool:
    """The same for a Trio task (not running now): its coroutine is a
    portal and has not finished, or it is inside with_portal_run()."""
    if task in portal_run_tasks:
        return True
    coro = task.coro
    return is_portal(coro) and coro.cr_frame is not None


_layout_lock = threading.Lock()
#: None until probed; then "" when the C core knows the C Task's layout, or
#: why it could not learn it.
_layout_error: str | None = None


class _ProbeLoop:
    """Just enough of an event loop for a C Task to be built on it."""

    def __init__(self) -> None:
        self.scheduled: list[Any] = []

    def get_debug(self) -> bool:
        return False

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> None:
        self.scheduled.append(callback)

    def call_exception_handler(self, context: Any) -> None:  # pragma: no cover
        return None


async def _probe() -> None:  # pragma: no cover - never runs
    pass


def _only(found: list[int], what: str) -> int:
    if len(found) != 1:
        raise LookupError(f"{what} is not held in exactly one place (found at {found})")
    return found[0]


def _probe_layout(ctask: type) -> None:
    """Find where *ctask* keeps its coroutine, and where the step callback it
    schedules keeps the task, and tell the C core."""
    c = _impl.core
    seen: set[tuple[int, type, int]] = set()
    for _ in range(2):
        loop = _ProbeLoop()
        coro = _probe()
        try:
            task = ctask(
                coro, loop=loop, name="greenback_loop-probe", context=contextvars.Context()
            )
            task._log_destroy_pending = False
            if task.get_coro() is not coro or len(loop.scheduled) != 1:
                raise LookupError("the Task did not keep its coroutine or schedule one step")
            step = loop.scheduled.pop()
            seen.add(
                (
                    _only(c.pointer_offsets(task, coro), "the coroutine"),
                    type(step),
                    _only(c.pointer_offsets(step, task), "the step's task"),
                )
            )
            del task, step
        finally:
            coro.close()
    if len(seen) != 1:  # pragma: no cover - defensive
        raise LookupError(f"the layout differs between two Tasks: {seen}")
    ((offset, step_type, step_offset),) = seen
    c.set_task_layout(ctask, offset, step_type, step_offset)


def layout_known() -> bool:
    """Whether the C core knows where a C Task keeps its coroutine (probing
    it the first time it is asked, with the C core)."""
    global _layout_error
    if _layout_error is None:
        with _layout_lock:
            if _layout_error is None:
                if _impl.implementation != "c" or _CTask is None:
                    _layout_error = "no C core" if _CTask is not None else "no C Task"
                else:
                    try:
                        _probe_layout(_CTask)
                        _layout_error = ""
                    except (LookupError, RuntimeError) as exc:
                        _layout_error = str(exc)
    return _layout_error == ""


def _swap_c(task: Any, coro: Any, portal: Any) -> None:
    if _impl.implementation != "c":
        raise RuntimeError(
            "greenback_loop cannot give a portal to this task: it is asyncio's C Task, "
            "whose coroutine only the C core can replace, and this process runs the "
            "pure-Python core (GREENBACK_LOOP_NO_EXTENSIONS=1, or not CPython). Run the "
            "program on a greenback_loop event loop instead, whose tasks all have portals."
        )
    if not layout_known():
        raise RuntimeError(
            "greenback_loop cannot give a portal to an existing asyncio Task on this "
            f"Python ({_layout_error}). Run the program on a greenback_loop event loop "
            "instead, whose tasks all have portals."
        )
    _impl.core.swap_task_coro(task, coro, portal)
    if task.get_coro() is not portal:  # pragma: no cover - defensive
        _impl.core.swap_task_coro(task, portal, coro)
        raise RuntimeError(
            "greenback_loop: a C Task's coroutine could not be replaced (get_coro() did "
            "not read it back); its portal was not installed"
        )


def is_task(obj: object) -> bool:
    """Whether *obj* is an asyncio Task (C or pure-Python, or a subclass)."""
    return isinstance(obj, asyncio.Task) or isinstance(obj, _PyTask)


#: On 3.12 the C Task's get_coro() crashes the interpreter for an eager task
#: that finished in its first step (it has dropped its coroutine, and
#: get_coro() returns the NULL): a done C Task is not asked there.
_DONE_C_TASK_GET_CORO_CRASHES = sys.version_info[:2] == (3, 12)


def give_portal(task: Any, what: str) -> bool:
    """Make *task*'s coroutine a portal around it, from its next step on.

    Returns whether a portal was installed now (False: it had one, or it is
    done and will never step again).

    Raises:
        RuntimeError: the task cannot safely be given one, and why.
    """
    Portal = _impl.core.Portal
    if _DONE_C_TASK_GET_CORO_CRASHES and task.done() and not isinstance(task, _PyTask):
        return False  # done: it never steps again (its get_coro() may crash)
    coro = task.get_coro()
    if type(coro) is Portal or is_portal(coro):
        return False
    name = task.get_name()
    if coro is None:
        raise RuntimeError(
            f"{what}: task {name!r} has no coroutine left to give a portal to (an eager "
            "task that finished in its first step drops it)"
        )
    if task.done():
        return False
    refuse_greenback_shim(name, coro, what)
    loop = task.get_loop()
    if loop.is_running() and loop is not asyncio._get_running_loop():
        raise RuntimeError(
            f"{what}: task {name!r} belongs to an event loop running in another thread; "
            "give it a portal from that thread (loop.call_soon_threadsafe), where its "
            "steps run"
        )
    portal = Portal(coro)
    set_task_coro(task, coro, portal, what)
    portal._own()  # the task's coroutine now: closing it is the portal's
    return True


def set_task_coro(task: Any, old: Any, new: Any, what: str) -> None:
    """Make *new* the coroutine of *task* (whose coroutine is *old*), from
    its next step on.

    Raises:
        RuntimeError: the task keeps its coroutine where greenback_loop
            cannot replace it, and why.
    """
    if isinstance(task, _PyTask):
        task._coro = new  # type: ignore[attr-defined]
    elif _CTask is not None and isinstance(task, _CTask):
        _swap_c(task, old, new)
    else:
        raise RuntimeError(
            f"{what}: task {task.get_name()!r} is a "
            f"{type(task).__module__}.{type(task).__qualname__}, neither asyncio's C Task "
            "nor its pure-Python Task, so greenback_loop does not know where it keeps its "
            "coroutine"
        )


def portal_for_new_task(task: Any) -> None:
    """The hook of greenback_loop loops' ``call_soon``: *task* is scheduling
    a step without a portal (it was built with ``asyncio.Task()`` directly);
    give it one. A task that cannot be given one is left as it is: its
    ``await_`` calls then say why."""
    try:
        give_portal(task, "a greenback_loop event loop")
    except (RuntimeError, TypeError):
        pass
