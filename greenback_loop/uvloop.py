"""A drop-in for the ``uvloop`` module whose loops give every task a portal.

A uvloop user changes one import::

    import greenback_loop.uvloop as uvloop

    uvloop.run(main())

and every task of the run can use :func:`greenback_loop.await_`. The module
has uvloop's names: :func:`run`, :func:`new_event_loop`, :class:`Loop`, and,
on Python versions where the installed uvloop still has them,
``EventLoopPolicy`` and ``install``.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import uvloop as _uvloop
except ImportError as exc:  # pragma: no cover - exercised without uvloop
    raise ImportError(
        "greenback_loop.uvloop needs uvloop, which is not installed: "
        "pip install 'greenback_loop[uvloop]'"
    ) from exc

from ._loop import PortalLoopMixin, uvloop_loop_class

__all__ = ["Loop", "new_event_loop", "run"]

T = TypeVar("T")

if TYPE_CHECKING:

    class Loop(PortalLoopMixin, _uvloop.Loop):  # type: ignore[misc]
        """uvloop's event loop, with a portal in every task."""

else:
    Loop = uvloop_loop_class()  # defined with the other loops, in _loop


def new_event_loop() -> Loop:
    """Return a new uvloop event loop whose every task has a portal."""
    return Loop()


def run(
    main: Coroutine[Any, Any, T],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = new_event_loop,
    debug: bool | None = None,
    **run_kwargs: Any,
) -> T:
    """Run *main* on a uvloop loop with portals, like ``uvloop.run()``.

    Bad arguments raise what ``uvloop.run()`` raises, with its messages.

    Raises:
        RuntimeError: called while an event loop is running in this thread.
        TypeError: *main* cannot be awaited, or *loop_factory* made a loop
            that is not a greenback_loop uvloop loop.
    """

    async def wrapper() -> T:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, Loop):
            close = getattr(main, "close", None)
            if close is not None:
                close()  # spare a "never awaited" warning on top of the error
            if isinstance(loop, _uvloop.Loop):
                raise TypeError(
                    "greenback_loop.uvloop.run() needs a loop_factory that returns "
                    "greenback_loop.uvloop.Loop instances: the tasks of a plain "
                    "uvloop.Loop have no portals"
                )
            raise TypeError("uvloop.run() uses a non-uvloop event loop")  # as uvloop says
        return await main

    if asyncio._get_running_loop() is not None:
        # asyncio.run()'s words, which uvloop.run() raises too
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    coro = wrapper()
    try:
        # what uvloop.run() calls, so that bad arguments fail the same way
        if sys.version_info >= (3, 12):
            return asyncio.run(coro, loop_factory=loop_factory, debug=debug, **run_kwargs)
        with asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
            return runner.run(coro)
    finally:
        coro.close()  # a no-op, unless the arguments were refused before it ran


_deprecated_names = ("install", "EventLoopPolicy")
# uvloop lists these in __all__ while it has them. Asking with hasattr() would
# make uvloop >= 0.21 build its policy class, which warns on Python 3.14.
_uvloop_has_policy = sys.version_info < (3, 16) and all(
    n in getattr(_uvloop, "__all__", ()) for n in _deprecated_names
)
if _uvloop_has_policy:
    __all__ += list(_deprecated_names)


def __getattr__(name: str) -> Any:
    if name not in _deprecated_names:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _uvloop_has_policy:
        raise AttributeError(
            f"module {__name__!r} has no attribute {name!r}: asyncio event "
            "loop policies are gone; use greenback_loop.uvloop.run() instead"
        )
    from ._loop import policy_class

    base = policy_class()

    class EventLoopPolicy(base):  # type: ignore[misc,valid-type]
        """uvloop's event loop policy, with a portal in every task.

        Deprecated like asyncio's policies; prefer
        :func:`greenback_loop.uvloop.run`.
        """

        def __init__(self) -> None:
            super().__init__(uvloop=True)

    EventLoopPolicy.__module__ = __name__

    def install() -> None:
        """Install :class:`EventLoopPolicy` as asyncio's event loop policy,
        like ``uvloop.install()`` (deprecated there too)."""
        if sys.version_info >= (3, 12):
            warnings.warn(
                "greenback_loop.uvloop.install() is deprecated in favor of "
                "greenback_loop.uvloop.run(), like uvloop.install().",
                DeprecationWarning,
                stacklevel=2,
            )
        asyncio.set_event_loop_policy(EventLoopPolicy())

    globals()["EventLoopPolicy"] = EventLoopPolicy
    globals()["install"] = install
    return globals()[name]
