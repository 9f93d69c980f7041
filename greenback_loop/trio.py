"""Trio programs whose every task has a portal.

One line changes::

    import greenback_loop.trio

    greenback_loop.trio.run(main, arg)        # was: trio.run(main, arg)

and sync code in any task of the run (the main task and every task below
it) can call :func:`greenback_loop.await_`, with no ``ensure_portal()``.
Trio's system tasks are left alone unless ``system_tasks=True``. The same
works for a guest run (:func:`start_guest_run`), and for any ``trio.run``
call the program makes itself, by passing a :class:`PortalInstrument`::

    trio.run(main, instruments=[greenback_loop.trio.PortalInstrument()])

anyio programs on the Trio backend pass it through ``backend_options``
(anyio 4.14 and later hand them to Trio), or start with :func:`run`, which
works with any anyio::

    anyio.run(main, backend="trio",
              backend_options={"instruments": [PortalInstrument()]})
    greenback_loop.trio.run(main)

greenback's own functions (``ensure_portal``, ``bestow_portal``,
``with_portal_run*``, ``portals_for_*``) work on Trio without any of this,
task by task, as greenback's do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import trio as _trio
except ImportError as exc:  # pragma: no cover - exercised without Trio
    raise ImportError("greenback_loop.trio needs Trio, which is not installed") from exc

from ._trio import PortalInstrument

__all__ = ["AutoPortalInstrument", "PortalInstrument", "run", "start_guest_run"]

T = TypeVar("T")


class AutoPortalInstrument(PortalInstrument):
    """greenback's name: a :class:`PortalInstrument` that gives *every* task
    of the run a portal, Trio's system tasks and the root task included (as
    greenback's ``AutoPortalInstrument`` passed to ``trio.run`` does)."""

    def __init__(self) -> None:
        super().__init__(system_tasks=True)


def _instruments(kwargs: dict[str, Any], system_tasks: bool) -> dict[str, Any]:
    instruments = list(kwargs.pop("instruments", ()))
    if not any(isinstance(i, PortalInstrument) for i in instruments):
        instruments.append(PortalInstrument(system_tasks=system_tasks))
    return {**kwargs, "instruments": instruments}


def run(
    async_fn: Callable[..., Awaitable[T]],
    *args: Any,
    system_tasks: bool = False,
    **trio_run_kwargs: Any,
) -> T:
    """``trio.run(async_fn, *args, **trio_run_kwargs)``, with a portal in
    the main task and every task below it (and in Trio's system tasks too
    if *system_tasks*), from each task's first step.

    Other instruments passed in ``instruments=`` are kept; a
    :class:`PortalInstrument` among them is used as it is.
    """
    return _trio.run(async_fn, *args, **_instruments(trio_run_kwargs, system_tasks))


def start_guest_run(
    async_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    system_tasks: bool = False,
    **kwargs: Any,
) -> None:
    """``trio.lowlevel.start_guest_run(async_fn, *args, **kwargs)`` with
    portals as :func:`run` gives them (``run_sync_soon_threadsafe=`` and
    ``done_callback=`` are required, as Trio's)."""
    _trio.lowlevel.start_guest_run(async_fn, *args, **_instruments(kwargs, system_tasks))
