"""Event loops whose every task gets a portal, ``run()`` and the policy."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Coroutine
from functools import partial
from typing import Any, TypeVar

from . import _impl
from ._errors import PortalLoop
from ._greenback import ensure_hooked
from ._retrofit import _PyTask, layout_known, portal_for_new_task

T = TypeVar("T")

if sys.platform == "win32":  # pragma: no cover
    _BaseEventLoop: type[asyncio.AbstractEventLoop] = asyncio.ProactorEventLoop
else:
    _BaseEventLoop = asyncio.SelectorEventLoop

_iscoroutine = asyncio.iscoroutine
_CoroutineType = types.CoroutineType
_Portal = _impl.core.Portal
_portal_create_task = _impl.core.portal_create_task
_portal_call_soon = _impl.core.portal_call_soon


def wrap(coro: Any) -> Any:
    """Give *coro* a portal, unless it has one or is no coroutine (then the
    base ``create_task`` reports it as usual)."""
    if type(coro) is _CoroutineType or (type(coro) is not _Portal and _iscoroutine(coro)):
        return _Portal(coro)
    return coro


def install_create_task(cls: type, base: type) -> None:
    """Give *cls* the core's ``create_task`` and ``call_soon`` over those of
    *base* (in C with the C core: spawning a task is hot). ``call_soon``
    gives a portal to a task built with ``asyncio.Task(coro, loop=loop)``
    directly, when it schedules its first step."""
    cls.create_task = _portal_create_task(base.create_task, wrap)  # type: ignore[attr-defined]
    cls.call_soon = _portal_call_soon(base.call_soon, portal_for_new_task, _PyTask)  # type: ignore[attr-defined]


class PortalLoopMixin(PortalLoop):
    """Mixin for an event loop class whose every task gets a portal: its
    ``create_task`` wraps the coroutine, then calls the next class's
    ``create_task``. greenback_loop's own loops install a faster one bound to
    their base class (see :func:`install_create_task`)."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        layout_known()  # so that call_soon knows a C Task's step when it sees one
        ensure_hooked()  # greenback's own functions, if installed, see our portals
        super().__init__(*args, **kwargs)

    def create_task(self, coro: Any, *args: Any, **kwargs: Any) -> Any:
        return super().create_task(wrap(coro), *args, **kwargs)  # type: ignore[misc]

    def call_soon(self, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if type(callback) is types.MethodType and isinstance(callback.__self__, _PyTask):
            portal_for_new_task(callback.__self__)
        return super().call_soon(callback, *args, **kwargs)  # type: ignore[misc]


class EventLoop(PortalLoopMixin, _BaseEventLoop):  # type: ignore[misc]
    """asyncio's default event loop class, with a portal in every task."""


install_create_task(EventLoop, _BaseEventLoop)


_uvloop_lock = threading.Lock()
_uvloop_class: type | None = None


def uvloop_loop_class() -> type:
    """Build :class:`greenback_loop.uvloop.Loop` on first use: uvloop is
    optional, and imported only when a uvloop-based loop is asked for.

    Raises:
        ImportError: uvloop is not installed.
    """
    global _uvloop_class
    with _uvloop_lock:
        if _uvloop_class is None:
            try:
                import uvloop
            except ImportError as exc:
                raise ImportError(
                    "greenback_loop's uvloop loops need uvloop, which is not installed: "
                    "pip install 'greenback_loop[uvloop]'"
                ) from exc

            class Loop(PortalLoopMixin, uvloop.Loop):  # type: ignore[misc]
                """uvloop's event loop, with a portal in every task."""

            Loop.__module__ = "greenback_loop.uvloop"
            Loop.__qualname__ = "Loop"
            install_create_task(Loop, uvloop.Loop)
            _uvloop_class = Loop
    return _uvloop_class


def is_portal_loop(loop: object) -> bool:
    """Whether *loop* gives every task it creates a portal."""
    return isinstance(loop, PortalLoop)


def new_event_loop(*, uvloop: bool = False) -> asyncio.AbstractEventLoop:
    """Return a new event loop whose every task has a portal.

    With ``uvloop=True`` the loop is a :class:`greenback_loop.uvloop.Loop`
    (requires uvloop: ``pip install greenback_loop[uvloop]``), otherwise a
    :class:`greenback_loop.EventLoop`.

    Use it as ``asyncio.Runner(loop_factory=greenback_loop.new_event_loop)``
    or, on Python 3.12+, as
    ``asyncio.run(main(), loop_factory=greenback_loop.new_event_loop)``.
    """
    if uvloop:
        return uvloop_loop_class()()  # type: ignore[no-any-return]
    return EventLoop()


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, uvloop: bool = False) -> T:
    """Run the coroutine *main* on a new greenback_loop event loop and return
    its result, like :func:`asyncio.run`.

    Every task of the run, *main* included, has a portal, so synchronous code
    called from any of them can use :func:`greenback_loop.await_`. Leftover
    tasks are cancelled and allowed to unwind, async generators and the
    default executor are shut down, and the loop is closed.

    Raises:
        RuntimeError: called while an event loop is running in this thread.
        ValueError: *main* is not a coroutine (as :func:`asyncio.run`).
        ImportError: ``uvloop=True`` but uvloop is not installed.
    """
    if _running_loop() is not None:
        raise RuntimeError("greenback_loop.run() cannot be called from a running event loop")
    factory = partial(new_event_loop, uvloop=uvloop)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- the policy (deprecated by asyncio from 3.14, removed in 3.16) -----------

_policy_lock = threading.Lock()
_policy_class: type | None = None


def policy_class() -> type:
    """Build ``GreenbackPolicy`` on first use, so importing greenback_loop
    touches none of asyncio's deprecated policy names."""
    global _policy_class
    if sys.version_info >= (3, 16):  # pragma: no cover
        raise AttributeError(
            "greenback_loop.GreenbackPolicy is not available: asyncio removed "
            "event loop policies in Python 3.16. Use greenback_loop.run(), or "
            "asyncio.run(main(), loop_factory=greenback_loop.new_event_loop)."
        )
    with _policy_lock:
        if _policy_class is None:
            _policy_class = _make_policy_class()
    return _policy_class


def _default_policy_class() -> type:
    """The platform's default policy class (the Unix one keeps the child
    watchers that 3.11's subprocesses need), looked up without the
    deprecation warning that its public name gives on 3.14+."""
    if sys.platform == "win32":  # pragma: no cover
        from asyncio import windows_events as platform_events
    else:
        from asyncio import unix_events as platform_events
    names = vars(platform_events)
    base = names.get("_DefaultEventLoopPolicy") or names.get("DefaultEventLoopPolicy")
    if not isinstance(base, type):  # pragma: no cover - a future asyncio
        raise AttributeError(
            f"asyncio.{platform_events.__name__.rpartition('.')[2]} has no default "
            "event loop policy class: use greenback_loop.run() or "
            "asyncio.run(main(), loop_factory=greenback_loop.new_event_loop)."
        )
    return base


def _make_policy_class() -> type:
    base = _default_policy_class()

    class GreenbackPolicy(base):  # type: ignore[misc,valid-type]
        """asyncio's default event loop policy for the platform (child
        watchers included, on Unix before 3.14), whose loops give every task a
        portal.

        For programs that still set a policy::

            asyncio.set_event_loop_policy(greenback_loop.GreenbackPolicy())
            asyncio.run(main())

        ``GreenbackPolicy(uvloop=True)`` makes uvloop-based loops. Policies
        are deprecated from Python 3.14 (asyncio warns on
        ``set_event_loop_policy``) and gone in 3.16: prefer
        :func:`greenback_loop.run` or ``loop_factory=``.
        """

        def __init__(self, *, uvloop: bool = False) -> None:
            super().__init__()
            self._uvloop = bool(uvloop)

        def _loop_factory(self) -> asyncio.AbstractEventLoop:
            return new_event_loop(uvloop=self._uvloop)

        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return new_event_loop(uvloop=self._uvloop)

    GreenbackPolicy.__module__ = "greenback_loop"
    return GreenbackPolicy
