"""greenback 1.x's portal functions and ``decorate_as_sync``, on top of the
portal core and the loops."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar, overload

from . import _impl
from ._greenback import ensure_hooked
from ._loop import is_portal_loop
from ._retrofit import give_portal, is_task, portal_run_tasks, task_has_portal

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
AF = TypeVar("AF", bound=Callable[..., Awaitable[Any]])


def _current_task(what: str) -> asyncio.Task[Any]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} must be called from an asyncio task: no event loop is running in this thread"
        ) from None
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError(f"{what} must be called from an asyncio task: no task is running")
    return task


async def ensure_portal() -> None:
    """Make sure the current task can use :func:`await_`, then yield to the
    event loop once (like greenback's, it is a checkpoint: cancellation can
    land in it).

    On a greenback_loop event loop every task already has a portal. Any
    other asyncio task (plain asyncio or uvloop, or one made with
    ``asyncio.Task()``) is given one, which is active from the yield on.

    Raises:
        RuntimeError: not called from an asyncio task, or the task cannot be
            given a portal (the message says why).
    """
    task = _current_task("ensure_portal()")
    ensure_hooked()
    if not (_impl.core.in_portal() or task_has_portal(task)):
        give_portal(task, "ensure_portal()")
    await asyncio.sleep(0)


def bestow_portal(task: asyncio.Task[Any]) -> None:
    """Make sure *task* can use :func:`await_`, like :func:`ensure_portal`
    called from within *task*, but without yielding: the portal is active
    from the task's next step (so, for the current task, after its next
    ``await`` that yields to the event loop).

    Raises:
        TypeError: *task* is not an asyncio task.
        RuntimeError: *task* cannot be given a portal (the message says why).
    """
    if not is_task(task):
        raise TypeError(f"bestow_portal() needs an asyncio.Task, not {type(task).__name__}")
    ensure_hooked()
    if not task_has_portal(task):
        give_portal(task, "bestow_portal()")


def has_portal(task: asyncio.Task[Any] | None = None) -> bool:
    """Return whether *task* (by default the current task) can use
    :func:`await_`."""
    try:
        current = asyncio.current_task()
    except RuntimeError:
        current = None
    if task is None or task is current:
        return bool(_impl.core.in_portal())
    return task_has_portal(task)


async def _adapt(aw: Awaitable[T]) -> T:
    return await aw


async def _call_sync(fn: Callable[..., T], args: tuple[Any, ...], kwds: dict[str, Any]) -> T:
    return fn(*args, **kwds)


async def _in_new_portal(task: Any, coro: Coroutine[Any, Any, T]) -> T:
    ensure_hooked()
    portal_run_tasks[task] = portal_run_tasks.get(task, 0) + 1
    try:
        return await _impl.core.Portal(coro)  # type: ignore[no-any-return]
    finally:
        left = portal_run_tasks[task] - 1
        if left:
            portal_run_tasks[task] = left
        else:
            del portal_run_tasks[task]


async def with_portal_run(async_fn: Callable[..., Awaitable[T]], *args: Any, **kwds: Any) -> T:
    """Run ``await async_fn(*args, **kwds)`` so that it can use :func:`await_`.

    If the caller can already use :func:`await_` (always, on a greenback_loop
    event loop), this just awaits ``async_fn(*args, **kwds)``. Otherwise a
    portal is created for the duration of the call; this works on any asyncio
    event loop. No checkpoint is added beyond those inside *async_fn*.
    """
    if _impl.core.in_portal():
        return await async_fn(*args, **kwds)
    task = _current_task("with_portal_run()")
    aw = async_fn(*args, **kwds)
    coro = aw if asyncio.iscoroutine(aw) else _adapt(aw)
    return await _in_new_portal(task, coro)


async def with_portal_run_sync(sync_fn: Callable[..., T], *args: Any, **kwds: Any) -> T:
    """Run ``sync_fn(*args, **kwds)`` so that it can use :func:`await_`, and
    return its result.

    Like :func:`with_portal_run`, this works on any asyncio event loop and
    adds no checkpoint beyond the ``await_`` calls inside *sync_fn*.
    """
    if _impl.core.in_portal():
        return sync_fn(*args, **kwds)
    task = _current_task("with_portal_run_sync()")
    return await _in_new_portal(task, _call_sync(sync_fn, args, kwds))


class _Tree:
    """One with_portal_run_tree()/portals_for_children() call: tasks created
    in its context while it is active get portals."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


_tree: contextvars.ContextVar[_Tree | None] = contextvars.ContextVar(
    "greenback_loop_tree", default=None
)


class _TreeTaskFactory:
    """The task factory installed on a plain loop while tree portals are
    active there: it wraps the coroutine of every task created in an active
    tree's context in a portal, then creates the task as the factory it
    replaced (or the loop itself) would."""

    __slots__ = ("loop", "previous", "users")

    def __init__(self, loop: asyncio.AbstractEventLoop, previous: Any) -> None:
        self.loop = loop
        self.previous = previous
        self.users = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        ctx = kwargs.get("context")
        tree = ctx.get(_tree) if ctx is not None else _tree.get()
        if tree is not None and tree.active:
            coro = _impl.core.Portal(coro) if asyncio.iscoroutine(coro) else coro
        if self.previous is not None:
            return self.previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)


@contextmanager
def _tree_portals(what: str) -> Iterator[bool]:
    """Portals for the tasks created in this context while active; yields
    whether the loop is a greenback_loop loop (then nothing needs doing)."""
    loop = _running_loop(what)
    ensure_hooked()  # greenback's own functions, if installed, see the tree's portals
    if is_portal_loop(loop):
        yield True
        return
    factory = loop.get_task_factory()
    if not isinstance(factory, _TreeTaskFactory):
        factory = _TreeTaskFactory(loop, factory)
        loop.set_task_factory(factory)
    factory.users += 1
    tree = _Tree()
    token = _tree.set(tree)
    try:
        yield False
    finally:
        tree.active = False
        _tree.reset(token)
        factory.users -= 1
        if not factory.users and loop.get_task_factory() is factory:
            loop.set_task_factory(factory.previous)  # type: ignore[union-attr]


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} must be called from an asyncio task: no event loop is running in this thread"
        ) from None


async def with_portal_run_tree(async_fn: Callable[..., Awaitable[T]], *args: Any, **kwds: Any) -> T:
    """Run ``await async_fn(*args, **kwds)`` with :func:`await_` available to
    it and to every task created under it (in its context, recursively)
    until it returns.

    On a greenback_loop event loop every task has a portal, so this amounts
    to :func:`with_portal_run`. On any other asyncio loop, the tasks created
    in the call's context (``create_task``, ``TaskGroup``, ``gather``, ...)
    get portals through a task factory installed for the call's duration,
    over the loop's own. (greenback offers this function under Trio only.)
    No checkpoint is added beyond those inside *async_fn*.
    """
    with _tree_portals("with_portal_run_tree()"):
        return await with_portal_run(async_fn, *args, **kwds)


@contextmanager
def portals_for_children() -> Iterator[None]:
    """Context manager under which the tasks created by the current task
    (and theirs, recursively) get portals; the current task does not.

    On a greenback_loop event loop they all have one already; on any other
    asyncio loop a task factory gives them theirs while the block runs.
    """
    with _tree_portals("portals_for_children()"):
        yield


@asynccontextmanager
async def portals_for_tree() -> AsyncIterator[None]:
    """Async context manager under which the current task and the tasks it
    creates (recursively) can use :func:`await_`.

    Entering it is a checkpoint, as greenback's: the current task is given
    a portal (see :func:`ensure_portal`) and yields once. Unlike greenback's,
    the task keeps its portal after the block.
    """
    with _tree_portals("portals_for_tree()"):
        await ensure_portal()
        yield


@overload
def decorate_as_sync(decorator: Callable[[F], F]) -> Callable[[AF], AF]: ...
@overload
def decorate_as_sync(
    decorator: Callable[..., Any],
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]: ...


def decorate_as_sync(decorator: Any) -> Any:
    """Adapt a decorator written for synchronous functions so it can decorate
    an async function.

    The async function is wrapped in a sync one (which runs it with
    :func:`await_`), that is decorated, and the result is called through
    :func:`with_portal_run_sync` by the async function returned::

        @greenback_loop.decorate_as_sync(functools.lru_cache(maxsize=64))
        async def lookup(key): ...

    caches results, where ``lru_cache`` alone would cache coroutine objects.
    """

    def decorate(async_fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(async_fn)
        def as_sync(*args: Any, **kwds: Any) -> Any:
            return _impl.core.await_(async_fn(*args, **kwds))

        decorated = decorator(as_sync)

        @functools.wraps(decorated)
        async def as_async(*args: Any, **kwds: Any) -> Any:
            return await with_portal_run_sync(decorated, *args, **kwds)

        return as_async

    return decorate
