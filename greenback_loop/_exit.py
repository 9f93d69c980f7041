"""At interpreter exit, unwind the tasks still parked in ``await_``.

Without portals, a task left pending when the program ends has its
coroutine closed as the interpreter tears down, so its ``finally`` blocks
run. A portal task parked in ``await_`` keeps those frames in a suspended
greenlet, which cannot be resumed once finalization has begun. So, as the
last ``atexit`` handler (registered when the core is loaded, it runs after
the program's own), every portal of this thread whose coroutine's
frames live in its greenlets (parked, or run by a runner that a child
greenlet pins) gets closed: ``GeneratorExit`` unwinds its synchronous frames and
then its coroutine, as the teardown would without portals. Portals of other
threads' loops are left alone (their greenlets can only run there), and so
are Trio tasks' portals: a Trio run leaves no task parked when it returns,
so those are the tasks of a guest run its host abandoned, which plain Trio
never unwinds either.
"""

from __future__ import annotations

import gc
import sys
import traceback
from typing import Any


def close_parked(portal_type: type) -> None:
    """Close every portal of type *portal_type* parked in this thread, the
    oldest first, as plain asyncio's teardown closes such tasks."""
    try:
        objects = gc.get_objects()
        trio = sys.modules.get("trio")
        task_type = getattr(getattr(trio, "lowlevel", None), "Task", None)
        trio_coros: set[int] = set()
        if task_type is not None:
            for obj in objects:
                if type(obj) is task_type:
                    # the task's coroutine and what it awaits, down the
                    # chain (with_portal_run()'s portal is awaited there)
                    coro = obj.coro
                    while coro is not None and id(coro) not in trio_coros:
                        trio_coros.add(id(coro))
                        coro = getattr(coro, "cr_await", None)
        parked = [
            obj
            for obj in objects
            if type(obj) is portal_type and id(obj) not in trio_coros and obj._holds_greenlets()  # type: ignore[attr-defined]
        ]
    except MemoryError:
        print(
            "greenback_loop: out of memory at exit; tasks parked in await_() were not unwound",
            file=sys.stderr,
        )
        return
    finally:
        objects = []
    parked.sort(key=lambda portal: portal._serial)  # type: ignore[attr-defined]
    for portal in parked:
        _close_quietly(portal)


def _close_quietly(portal: Any) -> None:
    try:
        portal.close()
    except BaseException as exc:
        if _not_ours_to_close(exc):
            return
        # As the teardown reports a coroutine whose close fails.
        print(f"Exception ignored while closing {portal!r} at exit:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _not_ours_to_close(exc: BaseException) -> bool:
    """Whether close() refused: mid-step, a portal of another thread, or one
    whose greenlets already went with their thread."""
    text = str(exc)
    return (isinstance(exc, ValueError) and text == "coroutine already executing") or (
        isinstance(exc, RuntimeError)
        and text.startswith(
            (
                "a task's portal can only be stepped",
                "greenback_loop: the greenlet this task was parked in",
            )
        )
    )
