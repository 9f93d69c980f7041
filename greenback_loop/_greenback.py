"""The real greenback package, inside greenback_loop's portals.

greenback (1.2 and 1.3) keeps its portals in one module-level mapping,
``greenback._impl.task_portals``, from task to the greenlet its ``await_``
switches to, and reads it at call time in every function (``await_``,
``has_portal``, ``ensure_portal``, ``bestow_portal``, ``with_portal_run*``).
The narrowest way in is to replace that mapping with one that also answers
for greenback_loop's portals:

* ``task in task_portals`` is true for a task with a greenback_loop portal,
  so greenback installs no shim of its own over ours;
* ``task_portals.get(task)`` for the task running now, inside its portal,
  is a *bridge*: greenback's ``await_`` calls ``bridge.switch((value,
  greenlet))`` for each value its awaitable yields, expecting an outcome
  back; the bridge suspends the step with greenback_loop's own ``await_``
  (from the same greenlet, so any number of tasks can be parked in
  greenback's ``await_`` at once, and its calls mix with ours);
* everything greenback stores itself (its own shims, on loops and tasks
  without our portals, and on Trio) is kept in a WeakKeyDictionary as before.

It is installed by itself, once, when the first greenback_loop loop is made
or the first task is given a portal, if greenback is installed. A greenback
whose version or internals differ from what this was written for gets, in
place of the mapping, one that raises a RuntimeError saying so on every
access: greenback then fails loudly, and never misbehaves.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import types
import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any

from . import _impl
from ._errors import is_portal, trio_task
from ._retrofit import is_task, task_has_portal, trio_task_has_portal

#: greenback versions whose internals this module was written for.
KNOWN_VERSIONS = ("1.2.", "1.3.")
#: greenback's functions that must read the mapping by its global name.
READERS = (
    "await_",
    "has_portal",
    "bestow_portal",
    "ensure_portal",
    "with_portal_run",
    "with_portal_run_sync",
)

_lock = threading.Lock()
_done = False


@types.coroutine
def _yield_once(value: Any) -> Any:
    return (yield value)


class _Bridge:
    """What greenback's ``await_`` switches to in a greenback_loop portal."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def switch(self, request: Any) -> Any:
        value, _greenlet = request
        try:
            return self.outcome.Value(_impl.core.await_(_yield_once(value)))
        except BaseException as exc:
            return self.outcome.Error(exc)


def _trio_current(task: Any) -> tuple[Any, bool] | None:
    """For a Trio task: (the running Trio task, whether it is *task*);
    None when *task* is no Trio task."""
    trio = sys.modules.get("trio")
    if trio is None or not isinstance(task, trio.lowlevel.Task):
        return None
    current = trio_task()
    return current, current is task


class PortalMap(MutableMapping[Any, Any]):
    """greenback's ``task_portals``, answering for greenback_loop's portals
    too (see the module docstring)."""

    def __init__(self, own: Any, bridge: _Bridge) -> None:
        self.own: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary(own)
        self.bridge = bridge

    def _ours(self, task: Any) -> Any:
        """The bridge, None (a portal, not usable from here right now), or
        KeyError: *task* has no greenback_loop portal."""
        if is_task(task):
            current = asyncio.current_task() if asyncio._get_running_loop() else None
            if current is not None and task is current:
                if _impl.core.in_portal():
                    return self.bridge
                if type(task.get_coro()) is _impl.core.Portal:
                    return None  # bestowed: usable from the next step on
            elif task_has_portal(task):
                return None
        elif (found := _trio_current(task)) is not None:
            if found[1]:  # the running task
                if _impl.core.in_portal():
                    return self.bridge
                if is_portal(task.coro):
                    return None  # bestowed: usable from the next step on
            elif trio_task_has_portal(task):
                return None
        raise KeyError(task)

    def __getitem__(self, task: Any) -> Any:
        try:
            return self.own[task]
        except KeyError:
            return self._ours(task)

    def __contains__(self, task: object) -> bool:
        if task in self.own:
            return True
        try:
            self._ours(task)
        except KeyError:
            return False
        return True

    def __setitem__(self, task: Any, value: Any) -> None:
        self.own[task] = value

    def __delitem__(self, task: Any) -> None:
        del self.own[task]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.own)

    def __len__(self) -> int:
        return len(self.own)


class RefusingMap(MutableMapping[Any, Any]):
    """In place of the mapping of a greenback this module does not know."""

    def __init__(self, why: str) -> None:
        self.why = why

    def _refuse(self, *args: Any) -> Any:
        raise RuntimeError(self.why)

    __getitem__ = __setitem__ = __delitem__ = __contains__ = _refuse
    __iter__ = __len__ = _refuse


def _check(greenback: Any, impl: Any) -> str | None:
    """Why this greenback cannot be hooked, or None."""
    version = getattr(greenback, "__version__", "?")
    if not str(version).startswith(KNOWN_VERSIONS):
        return f"greenback {version} is not one greenback_loop knows (1.2.x, 1.3.x)"
    if impl is None or not isinstance(
        getattr(impl, "task_portals", None), weakref.WeakKeyDictionary
    ):
        return f"greenback {version} keeps no task_portals mapping where expected"
    for name in READERS:
        fn = getattr(impl, name, None)
        code = getattr(fn, "__code__", None)
        if code is None or "task_portals" not in code.co_names:
            return f"greenback {version}'s {name}() does not read task_portals as expected"
    return None


def hook(greenback: Any) -> None:
    """Make *greenback* (the imported package) recognise our portals."""
    impl: Any = getattr(greenback, "_impl", None)
    if isinstance(getattr(impl, "task_portals", None), PortalMap | RefusingMap):
        return
    why = _check(greenback, impl)
    if why is not None:
        if impl is None:
            raise RuntimeError(f"{why}, and has no greenback._impl to refuse from")
        impl.task_portals = RefusingMap(
            f"{why}: greenback's portal functions cannot run beside greenback_loop's "
            "portals without misbehaving, so they refuse. Use greenback_loop's own "
            "functions (import greenback_loop as greenback), or a greenback version "
            "greenback_loop supports."
        )
        return
    import outcome

    impl.task_portals = PortalMap(impl.task_portals, _Bridge(outcome))


def ensure_hooked() -> None:
    """Hook greenback, once per process, if it is installed (importing it)."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        _done = True
        greenback = sys.modules.get("greenback")
        if greenback is None:
            try:
                if importlib.util.find_spec("greenback") is None:
                    return
            except (ImportError, ValueError):
                return
            import greenback
        if getattr(greenback, "await_", None) is _impl.core.await_:
            return  # a stand-in re-exporting greenback_loop (tests/conformance)
        hook(greenback)
