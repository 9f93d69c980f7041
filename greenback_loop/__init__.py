"""greenback_loop: call async code from synchronous code in a running asyncio
program, in every task, with no setup per task.

>>> import asyncio, greenback_loop
>>> def legacy(n):                           # sync code, deep in a stack
...     return greenback_loop.await_(asyncio.sleep(0, n * 2))
>>> async def main():
...     return legacy(21)
>>> greenback_loop.run(main())
42

The API is a superset of greenback 1.x, on asyncio and Trio: code written
for greenback keeps working with ``import greenback_loop as greenback``
(docs/migrating.rst lists what differs).
"""

from __future__ import annotations

from typing import Any

from . import _impl
from ._api import (
    bestow_portal,
    decorate_as_sync,
    ensure_portal,
    has_portal,
    portals_for_children,
    portals_for_tree,
    with_portal_run,
    with_portal_run_sync,
    with_portal_run_tree,
)
from ._loop import EventLoop, new_event_loop, run
from ._util import async_context, async_iter, autoawait

__version__ = "0.1.0.dev0"

#: Which portal core is in use: ``"c"`` or ``"python"``.
implementation: str = _impl.implementation

#: Await an awaitable from synchronous code running in a task with a portal.
await_ = _impl.core.await_

__all__ = [
    "EventLoop",
    "GreenbackPolicy",
    "async_context",
    "async_iter",
    "autoawait",
    "await_",
    "bestow_portal",
    "decorate_as_sync",
    "ensure_portal",
    "has_portal",
    "implementation",
    "new_event_loop",
    "portals_for_children",
    "portals_for_tree",
    "run",
    "with_portal_run",
    "with_portal_run_sync",
    "with_portal_run_tree",
]


def __getattr__(name: str) -> Any:
    if name == "GreenbackPolicy":
        from ._loop import policy_class

        return policy_class()
    if name == "AutoPortalInstrument":  # greenback's name; needs Trio
        from .trio import AutoPortalInstrument

        return AutoPortalInstrument
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
