"""Error messages shared by the C core and its pure-Python twin.

Both implementations call :func:`await_outside_portal` on the (cold) path
where ``await_()`` cannot find a portal, so the diagnosis and its wording live
in one place. A leaf module: it imports nothing from the package (the C core
imports it on first use), and tells a greenback_loop event loop by the
:class:`PortalLoop` marker class that every such loop class derives from.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from typing import Any

_RUN_HINT = (
    "Run the program with greenback_loop.run(main()) (or, on Python 3.12+, "
    "asyncio.run(main(), loop_factory=greenback_loop.new_event_loop)), "
    "or wrap the synchronous call in "
    "'await greenback_loop.with_portal_run_sync(fn, *args)'."
)


class PortalLoop:
    """Marker base class of every event loop class whose tasks all get a
    portal (see ``greenback_loop._loop.PortalLoopMixin``)."""

    __slots__ = ()


def await_outside_portal(aw: object, nested: bool) -> RuntimeError:
    """What ``await_(aw)`` raises outside a portal.

    A native coroutine that never started is closed first, sparing the caller
    a "never awaited" warning on top. Anything else is left alone: a started
    coroutine may be another task's to finish, and a portal or another
    awaitable object is its owner's to close.
    """
    if type(aw) is types.CoroutineType and inspect.getcoroutinestate(aw) == inspect.CORO_CREATED:
        aw.close()
    return no_portal_error(nested)


def no_portal_error(nested: bool) -> RuntimeError:
    """Build the RuntimeError raised by ``await_()`` outside any portal.

    *nested* is true when a portal step is running in this thread but the
    calling greenlet does not descend from the greenlet running it.
    """
    loop = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    if task is None:
        current = trio_task()
        if current is not None:
            return _trio_no_portal(current, nested)
    if loop is None:
        # as greenback's, an AsyncLibraryNotFoundError when sniffio is in use
        sniffio = sys.modules.get("sniffio")
        cls = getattr(sniffio, "AsyncLibraryNotFoundError", RuntimeError)
        return cls(
            "greenback_loop.await_() was called with no event loop running in "
            "this thread. It can only be used by synchronous code that runs "
            "inside an async task (asyncio or Trio). From another thread, use "
            "asyncio.run_coroutine_threadsafe(coro, loop).result() (or "
            "trio.from_thread.run()) instead."
        )
    if task is None:
        return RuntimeError(
            "greenback_loop.await_() was called outside of any task (from an "
            "event loop callback?). It can only be used by synchronous code "
            "that runs inside a task; schedule the work with "
            "loop.create_task() instead."
        )
    if nested:
        return _nested_error()
    if is_portal(task.get_coro()):
        return RuntimeError(
            f"greenback_loop.await_() was called in task {task.get_name()!r} in the "
            "same step that gave it a portal (bestow_portal() on the current task): "
            "you must yield to the event loop (try 'await asyncio.sleep(0)') before "
            "using the portal, or use 'await greenback_loop.ensure_portal()', which "
            "does that."
        )
    if isinstance(loop, PortalLoop):
        return RuntimeError(
            f"greenback_loop.await_() was called in task {task.get_name()!r}, which has "
            "no portal: it was built with asyncio.Task() directly (eagerly started, or "
            "with the pure-Python core, which cannot replace a C Task's coroutine). "
            "Create it with asyncio.create_task() or loop.create_task(), or call "
            "'await greenback_loop.ensure_portal()' in it first."
        )
    where = (
        f"greenback_loop.await_() was called in task {task.get_name()!r}, which has "
        f"no portal: its event loop ({type(loop).__module__}.{type(loop).__qualname__}) "
        "is not a greenback_loop event loop. "
    )
    if _twin_meets_c_task(task):
        return RuntimeError(
            where + "It is asyncio's C Task, which this process's pure-Python core "
            "cannot give a portal to (GREENBACK_LOOP_NO_EXTENSIONS=1, or not CPython), "
            "so ensure_portal() would refuse too. " + _RUN_HINT
        )
    return RuntimeError(
        where + "You must create a greenback portal for this task first: "
        "'await greenback_loop.ensure_portal()' in the task "
        "(greenback.ensure_portal() in code written for greenback). " + _RUN_HINT
    )


def _nested_error() -> RuntimeError:
    return RuntimeError(
        "greenback_loop.await_() was called from a greenlet that does not "
        "descend from the greenlet running the current task's step. Start "
        "nested greenlets from code running inside the task, so that their "
        "parent chain leads back to it."
    )


def trio_task() -> Any:
    """The Trio task running in this thread, or None (also when Trio was
    never imported: this imports nothing)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        return trio.lowlevel.current_task()
    except RuntimeError:
        return None


def _trio_no_portal(task: Any, nested: bool) -> RuntimeError:
    if nested:
        return _nested_error()
    if is_portal(task.coro):
        return RuntimeError(
            f"greenback_loop.await_() was called in Trio task {task.name!r} in a step "
            "that started before it was given its portal (bestow_portal()): you must "
            "yield to the event loop (try 'await trio.sleep(0)') before using the "
            "portal, or use 'await greenback_loop.ensure_portal()', which does that."
        )
    return RuntimeError(
        f"greenback_loop.await_() was called in Trio task {task.name!r}, which has no "
        "portal. You must create a greenback portal for this task first: 'await "
        "greenback_loop.ensure_portal()' in the task (greenback.ensure_portal() in "
        "code written for greenback), or run the program with "
        "greenback_loop.trio.run(main), whose tasks all have one (Trio's system tasks, "
        "such as async generator finalizers and trio.from_thread calls from threads "
        "Trio did not start, only with system_tasks=True)."
    )


def _twin_meets_c_task(task: object) -> bool:
    """Whether the pure-Python core is in use and *task* is a C Task, whose
    coroutine only the C core can replace."""
    impl = sys.modules.get("greenback_loop._impl")  # imported by now; not imported here
    ctask = getattr(asyncio.tasks, "_CTask", None)
    return (
        getattr(impl, "implementation", None) == "python"
        and ctask is not None
        and isinstance(task, ctask)
    )


def is_portal(coro: object) -> bool:
    """Whether *coro* is a portal of either core (not importing either)."""
    t = type(coro)
    return t.__qualname__ == "Portal" and t.__module__ in (
        "greenback_loop._cportal",
        "greenback_loop._portal_py",
    )


def redeliver_interrupt(exc: BaseException) -> bool:
    """Whether *exc*, a KeyboardInterrupt that landed in a core's bookkeeping
    right after a step's switch back (a signal handler runs at whatever
    bytecode is next), was handed to the running event loop to raise from a
    callback of its own: it then stops the loop as a Ctrl-C landing in the
    loop's code does, and the step keeps what it brought (a yielded value is
    not lost). Under Trio it goes through Trio's own Ctrl-C path instead (see
    _redeliver_to_trio). Without either it cannot be, and the step raises it."""
    if type(exc) is not KeyboardInterrupt:
        return False
    if trio_task() is not None and _redeliver_to_trio():
        return True
    loop = asyncio._get_running_loop()  # (a Trio guest run's host loop, too)
    if loop is None:
        return False
    loop.call_soon(_raise, exc)
    return True


def _raise(exc: BaseException) -> None:
    raise exc


def _redeliver_to_trio() -> bool:
    """Under Trio, a Ctrl-C goes through Trio's SIGINT handler, which defers
    it from Trio's own (protected) code to the main task's next checkpoint:
    raise the signal so that the interrupt takes that path. Only where
    Trio's handler is the one installed (the main thread, and no handler of
    the program's own in its place)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGINT)
    if not getattr(handler, "__module__", "").startswith("trio."):
        return False
    signal.raise_signal(signal.SIGINT)
    return True
