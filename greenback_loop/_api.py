"""greenback 1.x's portal functions and ``decorate_as_sync``, on top of the
portal core and the loops."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar, overload

from . import _impl
from ._errors import trio_task
from ._greenback import ensure_hooked
from ._loop import is_portal_loop
from ._retrofit import (
    awaited_directly_by,
    give_portal,
    is_task,
    portal_run_tasks,
    set_task_coro,
    task_has_portal,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
AF = TypeVar("AF", bound=Callable[..., Awaitable[Any]])


def _is_trio_task(obj: object) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(obj, trio.lowlevel.Task)


def _current_task(what: str) -> Any:
    """The asyncio or Trio task running in this thread (a Trio guest run's
    steps run in its asyncio host's callbacks, outside any asyncio task)."""
    loop = asyncio._get_running_loop()
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    task = trio_task()
    if task is not None:
        return task
    why = "no event loop is running in this thread" if loop is None else "no task is running"
    raise RuntimeError(f"{what} must be called from an asyncio or Trio task: {why}")


async def ensure_portal() -> None:
    """Make sure the current task can use :func:`await_`, then yield to the
    event loop once (like greenback's, it is a checkpoint: cancellation can
    land in it).

    On a greenback_loop event loop every task already has a portal. Any
    other asyncio task (plain asyncio or uvloop, or one made with
    ``asyncio.Task()``), and any Trio task, is given one, which is active
    from the yield on.

    Raises:
        RuntimeError: not called from an asyncio or Trio task, or the task
            cannot be given a portal (the message says why).
    """
    task = _current_task("ensure_portal()")
    ensure_hooked()
    if not is_task(task):
        from . import _trio

        if not (_impl.core.in_portal() or _trio.task_has_portal(task)):
            _trio.give_portal(task, "ensure_portal()", check_run=False)
        await _trio.checkpoint()
        return
    if not (_impl.core.in_portal() or task_has_portal(task)):
        give_portal(task, "ensure_portal()")
    await asyncio.sleep(0)


def bestow_portal(task: Any) -> None:
    """Make sure *task* (an asyncio or Trio task) can use :func:`await_`,
    like :func:`ensure_portal` called from within *task*, but without
    yielding: the portal is active from the task's next step (so, for the
    current task, after its next ``await`` that yields to the event loop).

    Raises:
        TypeError: *task* is neither an asyncio task nor a Trio task.
        RuntimeError: *task* cannot be given a portal (the message says why).
    """
    if is_task(task):
        ensure_hooked()
        if not task_has_portal(task):
            give_portal(task, "bestow_portal()")
        return
    if _is_trio_task(task):
        from . import _trio

        ensure_hooked()
        if not _trio.task_has_portal(task):
            _trio.give_portal(task, "bestow_portal()")
        return
    raise TypeError(
        f"bestow_portal() needs an asyncio.Task or a trio.lowlevel.Task, not {type(task).__name__}"
    )


def has_portal(task: Any = None) -> bool:
    """Return whether *task* (an asyncio or Trio task; by default the
    current task) can use :func:`await_`."""
    if task is None:
        return bool(_impl.core.in_portal())
    if is_task(task):
        loop = asyncio._get_running_loop()
        if loop is not None and task is asyncio.current_task(loop):
            return bool(_impl.core.in_portal())
        return task_has_portal(task)
    if _is_trio_task(task):
        from . import _trio

        if task is trio_task():
            return bool(_impl.core.in_portal())
        return _trio.task_has_portal(task)
    raise TypeError(
        f"has_portal() needs an asyncio.Task or a trio.lowlevel.Task, not {type(task).__name__}"
    )


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
def _tree_portals(what: str) -> Iterator[None]:
    """Portals for the tasks created below this call while it is active:
    on Trio, those spawned into nurseries the current task opens meanwhile
    (an instrument); on an asyncio loop other than ours, those created in
    this context (a task factory); on our loops, nothing to do."""
    ensure_hooked()  # greenback's own functions, if installed, see the tree's portals
    loop = asyncio._get_running_loop()
    if loop is None or asyncio.current_task(loop) is None:
        current = trio_task()
        if current is not None:
            from . import _trio

            with _trio.tree_portals(current):
                yield
            return
    if loop is None:
        raise RuntimeError(
            f"{what} must be called from an asyncio or Trio task: no event loop is "
            "running in this thread"
        )
    if is_portal_loop(loop):
        yield
        return
    factory = loop.get_task_factory()
    if not isinstance(factory, _TreeTaskFactory):
        factory = _TreeTaskFactory(loop, factory)
        loop.set_task_factory(factory)
    factory.users += 1
    tree = _Tree()
    token = _tree.set(tree)
    try:
        yield
    finally:
        tree.active = False
        _tree.reset(token)
        factory.users -= 1
        if not factory.users and loop.get_task_factory() is factory:
            loop.set_task_factory(factory.previous)  # type: ignore[union-attr]


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

    As greenback's: entering it is a schedule point (the current task is
    given a portal if it has none, and yields once), and a portal given
    there is taken back at the exit, which then yields once more. Under
    Trio neither is a cancellation point; under asyncio a cancellation can
    land in them, as in any ``await asyncio.sleep(0)``. On a greenback_loop
    event loop every task has a portal already, and it stays.
    """
    with _tree_portals("portals_for_tree()"):
        task = _current_task("portals_for_tree()")
        given = None if _impl.core.in_portal() else _give_for_block(task)
        try:
            if is_task(task):
                await asyncio.sleep(0)
            else:
                await _trio_shielded_checkpoint()
            yield
        finally:
            if given is not None:
                await _give_back(task, *given)
            elif not is_task(task):
                await _trio_shielded_checkpoint()


async def _trio_shielded_checkpoint() -> None:
    from . import _trio

    await _trio.cancel_shielded_checkpoint()


def _give_for_block(task: Any) -> tuple[Any, Any] | None:
    """Give *task* a portal for a portals_for_tree() block: (its coroutine,
    the portal) if one was installed now, else None."""
    if is_task(task):
        coro = task.get_coro()
        if task_has_portal(task) or not give_portal(task, "portals_for_tree()"):
            return None
        return coro, task.get_coro()
    from . import _trio

    coro = task.coro
    if not _trio.give_portal(task, "portals_for_tree()", check_run=False):
        return None
    return coro, task.coro


async def _give_back(task: Any, coro: Any, portal: Any) -> None:
    """Take back the portal given by _give_for_block(): from the task's
    next step its loop resumes *coro* directly. If the coroutine's frames
    still depend on the portal's greenlets (sync code in it started a
    greenlet that is still alive), or if the block is left from sync code
    (an await_ of its __aexit__), the portal stays."""
    if not is_task(task):
        from . import _trio

        await _trio.give_back(task, coro, portal)
        return
    if task.get_coro() is not portal:
        return
    if not awaited_directly_by(coro):
        # left from sync code through await_ (its greenlet holds the
        # coroutine's frames): the portal stays
        await asyncio.sleep(0)
        return
    # This step runs in the portal, which `portal` keeps alive until it ends.
    set_task_coro(task, portal, coro, "portals_for_tree()")
    try:
        await asyncio.sleep(0)  # the step through the portal ends here
    finally:
        detached = portal._detach()
        if not detached:
            set_task_coro(task, coro, portal, "portals_for_tree()")
    if not detached:
        await asyncio.sleep(0)  # back in the portal from the next step on


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
