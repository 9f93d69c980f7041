"""greenback 1.x's portal functions and ``decorate_as_sync``, on top of the
portal core and the loops."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar, overload

from . import _impl
from ._errors import no_retrofit_error
from ._loop import is_portal_loop

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
AF = TypeVar("AF", bound=Callable[..., Awaitable[Any]])

# Tasks that are inside with_portal_run()/with_portal_run_sync() right now,
# with how many such calls are active in each.
_portal_run_tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()


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


def _task_has_portal(task: asyncio.Task[Any]) -> bool:
    return type(task.get_coro()) is _impl.core.Portal or task in _portal_run_tasks


async def ensure_portal() -> None:
    """Make sure the current task can use :func:`await_`.

    On a greenback_loop event loop every task already has a portal and this
    is a no-op (greenback's ``ensure_portal`` also yields to the event loop;
    this one does not need to). A task without a portal (on a plain asyncio
    or uvloop loop, or made with ``asyncio.Task()`` directly) cannot be given
    one yet.

    Raises:
        RuntimeError: not called from an asyncio task, or the task has no
            portal and cannot be given one.
    """
    task = _current_task("ensure_portal()")
    if _task_has_portal(task) or _impl.core.in_portal():
        return
    raise no_retrofit_error("ensure_portal()", task.get_loop())


def bestow_portal(task: asyncio.Task[Any]) -> None:
    """Make sure *task* can use :func:`await_`, like :func:`ensure_portal`
    called from within *task*.

    Raises:
        TypeError: *task* is not an asyncio task.
        RuntimeError: *task* has no portal and cannot be given one.
    """
    if not isinstance(task, asyncio.Task):
        raise TypeError(f"bestow_portal() needs an asyncio.Task, not {type(task).__name__}")
    if _task_has_portal(task):
        return
    raise no_retrofit_error("bestow_portal()", task.get_loop())


def has_portal(task: asyncio.Task[Any] | None = None) -> bool:
    """Return whether *task* (by default the current task) can use
    :func:`await_`."""
    try:
        current = asyncio.current_task()
    except RuntimeError:
        current = None
    if task is None or task is current:
        return bool(_impl.core.in_portal())
    return _task_has_portal(task)


async def _adapt(aw: Awaitable[T]) -> T:
    return await aw


async def _call_sync(fn: Callable[..., T], args: tuple[Any, ...], kwds: dict[str, Any]) -> T:
    return fn(*args, **kwds)


async def _in_new_portal(coro: Coroutine[Any, Any, T]) -> T:
    task = _current_task("with_portal_run()")
    _portal_run_tasks[task] = _portal_run_tasks.get(task, 0) + 1
    try:
        return await _impl.core.Portal(coro)  # type: ignore[no-any-return]
    finally:
        left = _portal_run_tasks[task] - 1
        if left:
            _portal_run_tasks[task] = left
        else:
            del _portal_run_tasks[task]


async def with_portal_run(async_fn: Callable[..., Awaitable[T]], *args: Any, **kwds: Any) -> T:
    """Run ``await async_fn(*args, **kwds)`` so that it can use :func:`await_`.

    If the caller can already use :func:`await_` (always, on a greenback_loop
    event loop), this just awaits ``async_fn(*args, **kwds)``. Otherwise a
    portal is created for the duration of the call; this works on any asyncio
    event loop. No checkpoint is added beyond those inside *async_fn*.
    """
    if _impl.core.in_portal():
        return await async_fn(*args, **kwds)
    aw = async_fn(*args, **kwds)
    coro = aw if asyncio.iscoroutine(aw) else _adapt(aw)
    return await _in_new_portal(coro)


async def with_portal_run_sync(sync_fn: Callable[..., T], *args: Any, **kwds: Any) -> T:
    """Run ``sync_fn(*args, **kwds)`` so that it can use :func:`await_`, and
    return its result.

    Like :func:`with_portal_run`, this works on any asyncio event loop and
    adds no checkpoint beyond the ``await_`` calls inside *sync_fn*.
    """
    if _impl.core.in_portal():
        return sync_fn(*args, **kwds)
    return await _in_new_portal(_call_sync(sync_fn, args, kwds))


def _require_tree_portals(what: str) -> None:
    loop = asyncio.get_running_loop()
    if not is_portal_loop(loop):
        raise RuntimeError(
            f"{what} needs a greenback_loop event loop (or Trio, with "
            "greenback): on "
            f"{type(loop).__module__}.{type(loop).__qualname__} the tasks it "
            "spawns would not get portals. Run the program with "
            "greenback_loop.run(main()) or "
            "asyncio.run(main(), loop_factory=greenback_loop.new_event_loop)."
        )


async def with_portal_run_tree(async_fn: Callable[..., Awaitable[T]], *args: Any, **kwds: Any) -> T:
    """Run ``await async_fn(*args, **kwds)`` with :func:`await_` available to
    it and to every task it spawns, recursively.

    On a greenback_loop event loop every task has a portal, so this amounts
    to :func:`with_portal_run`. (greenback offers this function under Trio.)

    Raises:
        RuntimeError: the running loop is not a greenback_loop event loop.
    """
    _require_tree_portals("with_portal_run_tree()")
    return await with_portal_run(async_fn, *args, **kwds)


@contextmanager
def portals_for_children() -> Iterator[None]:
    """Context manager under which tasks spawned by the current task get
    portals: on a greenback_loop event loop they all do already.

    Raises:
        RuntimeError: the running loop is not a greenback_loop event loop.
    """
    _require_tree_portals("portals_for_children()")
    yield


@asynccontextmanager
async def portals_for_tree() -> AsyncIterator[None]:
    """Async context manager under which the current task and the tasks it
    spawns can use :func:`await_`: on a greenback_loop event loop they all
    can already.

    Raises:
        RuntimeError: the running loop is not a greenback_loop event loop.
    """
    _require_tree_portals("portals_for_tree()")
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
