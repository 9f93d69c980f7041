"""greenback_loop.await_() does what ``await`` does, from synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import sys
import traceback
import types
import warnings
from collections.abc import Generator
from typing import Any

import greenlet
import pytest

import greenback_loop
from greenback_loop import _impl

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def test_value_and_order_of_effects() -> None:
    log: list[str] = []

    async def step(name: str) -> str:
        log.append(f"{name} start")
        await asyncio.sleep(0)
        log.append(f"{name} end")
        return name

    def sync_layer() -> list[str]:
        return [greenback_loop.await_(step("a")), greenback_loop.await_(step("b"))]

    assert sync_layer() == ["a", "b"]
    assert log == ["a start", "a end", "b start", "b end"]


async def test_other_tasks_run_while_parked() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def other() -> None:
        order.append("other ran")
        gate.set()

    def sync_wait() -> None:
        asyncio.get_running_loop().create_task(other())
        greenback_loop.await_(gate.wait())
        order.append("sync resumed")

    sync_wait()
    assert order == ["other ran", "sync resumed"]


async def test_awaitables_of_every_kind() -> None:
    loop = asyncio.get_running_loop()

    class Custom:
        def __await__(self) -> Generator[Any, None, str]:
            yield from asyncio.sleep(0).__await__()
            return "custom"

    @types.coroutine
    def generator_based() -> Generator[Any, None, str]:
        yield from asyncio.sleep(0).__await__()
        return "generator-based"

    fut: asyncio.Future[str] = loop.create_future()
    loop.call_soon(fut.set_result, "future")
    done: asyncio.Future[str] = loop.create_future()
    done.set_result("done future")
    task = asyncio.create_task(add_later(1, 2))

    def sync_layer() -> list[Any]:
        return [
            greenback_loop.await_(add_later(2, 3)),
            greenback_loop.await_(Custom()),
            greenback_loop.await_(generator_based()),
            greenback_loop.await_(fut),
            greenback_loop.await_(done),
            greenback_loop.await_(task),
            greenback_loop.await_(asyncio.sleep(0, "sleep result")),
        ]

    assert sync_layer() == [
        5,
        "custom",
        "generator-based",
        "future",
        "done future",
        3,
        "sleep result",
    ]


async def test_non_suspending_awaitables() -> None:
    async def immediate(x: int) -> int:
        return x

    def sync_layer() -> int:
        return sum(greenback_loop.await_(immediate(i)) for i in range(100))

    assert sync_layer() == 4950


async def test_not_awaitable_raises_type_error() -> None:
    def sync_layer(obj: Any) -> Any:
        return greenback_loop.await_(obj)

    with pytest.raises(TypeError, match="can't be awaited|can't be used in 'await'"):
        sync_layer(42)

    class BadAwait:
        def __await__(self) -> int:
            return 1

    # (3.15 words both: "T.__await__() must return an iterator, not U")
    with pytest.raises(TypeError, match="non-iterator|must return an iterator, not int"):
        sync_layer(BadAwait())

    class CoroAwait:
        def __await__(self) -> Any:
            self.coro = add_later(1, 1)
            return self.coro

    bad = CoroAwait()
    with pytest.raises(TypeError, match="returned a coroutine|must return an iterator, not coro"):
        sync_layer(bad)
    bad.coro.close()


async def test_reusing_an_awaited_coroutine_raises() -> None:
    coro = add_later(1, 1)

    def sync_layer() -> None:
        assert greenback_loop.await_(coro) == 2
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            greenback_loop.await_(coro)

    sync_layer()


class Boom(Exception):
    pass


def user_frames(exc: BaseException | None) -> list[str]:
    """Names of the traceback's frames outside greenback_loop, and await_'s
    entry, which both cores show as greenback's await_ does (the pure-Python
    core shows frames of its own besides)."""
    assert exc is not None
    return [
        frame.name
        for frame in traceback.extract_tb(exc.__traceback__)
        if "greenback_loop" not in frame.filename or frame.name == "await_"
    ]


async def fail_later() -> None:
    await asyncio.sleep(0)
    raise Boom("from async")


def sync_middle() -> None:
    greenback_loop.await_(fail_later())


async def test_exception_and_traceback_through_sync_frames() -> None:
    def sync_top() -> None:
        sync_middle()

    with pytest.raises(Boom, match="from async") as info:
        sync_top()
    assert user_frames(info.value) == [
        "test_exception_and_traceback_through_sync_frames",
        "sync_top",
        "sync_middle",
        "await_",
        "fail_later",
    ]


async def test_exception_escapes_the_task() -> None:
    async def task_body() -> None:
        sync_middle()

    task = asyncio.create_task(task_body())
    with pytest.raises(Boom):
        await task
    assert user_frames(task.exception())[-4:] == [
        "task_body",
        "sync_middle",
        "await_",
        "fail_later",
    ]


async def test_exception_handled_in_sync_code() -> None:
    def sync_layer() -> str:
        try:
            greenback_loop.await_(fail_later())
        except Boom as exc:
            return f"handled {exc}"
        return "not raised"

    assert sync_layer() == "handled from async"


async def test_throw_into_custom_awaitable_iterator() -> None:
    """An exception thrown into the step reaches the awaitable's iterator."""
    seen: list[str] = []

    class Catcher:
        def __await__(self) -> Generator[Any, None, str]:
            try:
                yield from asyncio.sleep(10).__await__()
            except asyncio.CancelledError:
                seen.append("cancel seen by iterator")
                return "recovered"
            return "slept"

    def sync_layer() -> str:
        return greenback_loop.await_(Catcher())

    async def body() -> str:
        return sync_layer()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "recovered"
    assert seen == ["cancel seen by iterator"]


async def test_nested_await_() -> None:
    """sync -> await_ -> async -> sync -> await_ -> async."""

    async def inner(depth: int) -> int:
        await asyncio.sleep(0)
        if depth == 0:
            return 0
        return sync_level(depth - 1) + 1

    def sync_level(depth: int) -> int:
        return greenback_loop.await_(inner(depth))

    assert sync_level(20) == 20


async def test_deep_sync_recursion() -> None:
    depth = min(sys.getrecursionlimit() - 200, 800)

    def recurse(n: int) -> int:
        if n == 0:
            return greenback_loop.await_(add_later(0, 1))
        return recurse(n - 1) + 1

    assert recurse(depth) == depth + 1


async def test_await_from_nested_greenlet() -> None:
    """greenback_loop.await_() works from a greenlet started by sync code (SQLAlchemy does)."""

    def in_greenlet() -> int:
        return greenback_loop.await_(add_later(40, 2))

    def sync_layer() -> int:
        return greenlet.greenlet(in_greenlet).switch()  # type: ignore[no-any-return]

    assert sync_layer() == 42


async def greenlet_spawn(fn: Any, *args: Any) -> Any:
    """SQLAlchemy's bridge, in miniature: run *fn* in a child greenlet that
    hands awaitables back to this coroutine, which awaits them."""
    driver = greenlet.getcurrent()
    child = greenlet.greenlet(fn, driver)
    child.gr_context = driver.gr_context
    result = child.switch(*args)
    while not child.dead:
        try:
            value = await result
        except BaseException as exc:
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result


def await_only(aw: Any) -> Any:
    return greenlet.getcurrent().parent.switch(aw)


async def test_sqlalchemy_style_bridge_across_steps() -> None:
    """A greenlet whose parent is the task's greenlet outlives steps, while
    other tasks run in between: its parent chain must stay valid."""

    def db_work(n: int) -> int:
        total = 0
        for i in range(5):
            total += await_only(add_later(n, i))  # suspends the whole task
            total += greenback_loop.await_(add_later(0, 1))  # greenback_loop from the same greenlet
        return total

    async def worker(n: int) -> int:
        return await greenlet_spawn(db_work, n)

    results = await asyncio.gather(*(worker(n) for n in range(20)))
    assert results == [5 * n + 10 + 5 for n in range(20)]


async def test_task_holding_its_greenlet_across_awaits() -> None:
    """Code that keeps greenlet.getcurrent() across an await and switches
    back into it later must find the same greenlet running the task."""

    async def body(n: int) -> bool:
        me = greenlet.getcurrent()
        await asyncio.sleep(0)
        return greenlet.getcurrent() is me

    assert all(await asyncio.gather(*(body(n) for n in range(10))))


async def test_contextvars_both_ways() -> None:
    async def read_and_write() -> str:
        seen = var.get()
        var.set("set by async")
        await asyncio.sleep(0)
        return seen

    def sync_layer() -> tuple[str, str, str]:
        var.set("set by sync")
        seen_by_async = greenback_loop.await_(read_and_write())
        return seen_by_async, var.get(), contextvars.copy_context()[var]

    async def body() -> tuple[tuple[str, str, str], str]:
        var.set("set by task")
        result = sync_layer()
        return result, var.get()

    result, after = await asyncio.create_task(body())
    assert result == ("set by sync", "set by async", "set by async")
    assert after == "set by async"
    assert var.get() == "unset"  # the task ran in its own context


async def test_contextvars_isolated_between_tasks() -> None:
    async def body(n: int) -> list[str]:
        var.set(f"task {n}")
        seen = []
        for _ in range(3):
            greenback_loop.await_(asyncio.sleep(0))
            seen.append(var.get())
        return seen

    results = await asyncio.gather(*(body(n) for n in range(5)))
    assert results == [[f"task {n}"] * 3 for n in range(5)]


async def test_current_task_in_sync_code() -> None:
    def sync_layer() -> tuple[asyncio.Task[Any] | None, asyncio.Task[Any] | None]:
        before = asyncio.current_task()
        greenback_loop.await_(asyncio.sleep(0))
        return before, asyncio.current_task()

    async def body() -> tuple[Any, Any, Any]:
        return asyncio.current_task(), *sync_layer()

    task = asyncio.create_task(body())
    me, before, after = await task
    assert me is before is after is task


async def test_tasks_created_from_sync_code() -> None:
    def sync_layer() -> list[int]:
        tasks = [asyncio.get_running_loop().create_task(add_later(i, i)) for i in range(5)]
        return [greenback_loop.await_(t) for t in tasks]

    assert sync_layer() == [0, 2, 4, 6, 8]


async def test_async_generator_in_sync_code() -> None:
    async def agen() -> Any:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    def sync_layer() -> list[int]:
        it = agen()
        out = []
        try:
            while True:
                out.append(greenback_loop.await_(it.__anext__()))
        except StopAsyncIteration:
            pass
        return out

    assert sync_layer() == [0, 1, 2]


async def test_many_concurrent_parked_tasks() -> None:
    n = 20_000
    gate = asyncio.Event()
    parked = 0

    def sync_wait(i: int) -> int:
        nonlocal parked
        parked += 1
        greenback_loop.await_(gate.wait())
        return i

    async def body(i: int) -> int:
        return sync_wait(i)

    tasks = [asyncio.create_task(body(i)) for i in range(n)]
    while parked < n:
        await asyncio.sleep(0)
    gate.set()
    assert sum(await asyncio.gather(*tasks)) == n * (n - 1) // 2


class _AwaitReturnsInt:
    def __await__(self) -> int:
        return 5


@pytest.mark.parametrize(
    "obj", [1, None, "text", _AwaitReturnsInt()], ids=["int", "None", "str", "bad-await"]
)
async def test_not_awaitable_error_is_the_one_await_gives(obj: Any) -> None:
    """Type and wording of the error are exactly plain ``await``'s, on every
    Python version."""

    async def plain() -> None:
        await obj

    with pytest.raises(TypeError) as expected:
        await plain()
    with pytest.raises(TypeError) as got:
        greenback_loop.await_(obj)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    "args",
    [(), (ValueError, ValueError(), None, None), (1,), (ValueError, ValueError(), "tb")],
    ids=["none", "four", "not-exception", "bad-tb"],
)
def test_portal_throw_argument_errors_are_the_coroutines(args: tuple[Any, ...]) -> None:
    async def body() -> None:
        await asyncio.sleep(0)

    messages = []
    for make in (body, lambda: _impl.core.Portal(body())):
        coro = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(TypeError) as info:
                coro.throw(*args)
        messages.append(str(info.value))
        coro.close()
    assert messages[0] == messages[1]


# -- where a task cannot be suspended ------------------------------------------


def _others_ran_during(sync_code: Any) -> bool:
    """Run sync_code() and tell whether any other callback of the loop ran
    meanwhile (between two awaits nothing else runs, as on plain asyncio)."""
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    sync_code()
    return bool(ran)


async def test_code_the_collector_runs_cannot_suspend_the_task() -> None:
    """A __del__ the collector runs inside a task's synchronous code gets a
    RuntimeError from await_ instead of suspending that task there; the
    sync code stays atomic, as it is on plain asyncio."""
    errors: list[str] = []

    class Cyclic:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            try:
                greenback_loop.await_(asyncio.sleep(0))
                errors.append("suspended")
            except RuntimeError as exc:
                errors.append(str(exc))

    def sync_code() -> None:
        Cyclic()
        gc.collect()

    assert not _others_ran_during(sync_code)
    assert len(errors) == 1 and "garbage collector" in errors[0], errors
    # outside a collection, the same task may suspend again
    assert greenback_loop.await_(add_later(1, 2)) == 3


@pytest.mark.parametrize("swallow", [False, True], ids=["finally", "swallows-exit"])
async def test_dropped_suspended_coroutine_unwinds_in_its_own_step(swallow: bool) -> None:
    """A portal dropped while its coroutine is suspended at a plain await is
    closed as a step of its own: the cleanup runs, cannot suspend (the
    RuntimeError comes at its await_, even after the coroutine swallowed
    the GeneratorExit), and does not suspend the task whose code dropped
    it."""
    events: list[str] = []
    fut = asyncio.get_running_loop().create_future()

    def cleanup() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(0))
            events.append("suspended")
        except RuntimeError as exc:
            events.append("being closed" if "being closed" in str(exc) else str(exc))

    async def victim() -> None:
        if swallow:
            try:
                await fut
            except GeneratorExit:
                pass
            cleanup()
            return
        try:
            await fut
        finally:
            cleanup()

    def sync_code() -> None:
        portal = _impl.core.Portal(victim())
        assert portal.send(None) is fut
        del portal  # the last reference: finalized here

    assert not _others_ran_during(sync_code)
    assert events == ["being closed"]
    fut.cancel()


async def test_sync_generator_closed_by_the_task_may_await() -> None:
    """Closing a generator is a call the task makes: the generator's
    cleanup may use await_ (break + close(), contextlib.closing)."""
    log: list[str] = []

    def rows() -> Generator[int, None, None]:
        try:
            yield from range(10)
        finally:
            log.append(f"cleanup {greenback_loop.await_(add_later(1, 1))}")

    g = rows()
    for r in g:
        if r == 2:
            break
    g.close()
    with contextlib.closing(rows()) as g2:
        next(g2)
    assert log == ["cleanup 2", "cleanup 2"]


async def test_coroutine_awaited_elsewhere_is_refused_as_await_refuses_it() -> None:
    """await_ of a coroutine another task is awaiting raises "coroutine is
    being awaited already", whether that task waits in an await, inside
    await_, or is the task's own coroutine (its portal), and so does await
    (but for the coroutine parked in await_: CPython's await sees it running
    and says "coroutine already executing", docs/limits.rst). Nothing is
    stepped outside its task."""
    ev = asyncio.Event()

    async def inner() -> str:
        await ev.wait()
        return "inner"

    async def parked_inner() -> str:
        greenback_loop.await_(ev.wait())
        return "parked inner"

    async def awaits(c: Any) -> str:
        return await c  # type: ignore[no-any-return]

    c1, c2 = inner(), parked_inner()
    tasks = [asyncio.create_task(awaits(c1)), asyncio.create_task(awaits(c2))]
    tasks.append(asyncio.create_task(inner()))
    await asyncio.sleep(0)
    for what in (c1, c2, tasks[2].get_coro()):
        with pytest.raises(RuntimeError, match="coroutine is being awaited already"):
            greenback_loop.await_(what)
        if what is c2:
            continue

        async def plain_await(w: Any = what) -> None:
            await w

        with pytest.raises(RuntimeError, match="coroutine is being awaited already"):
            await plain_await()
    ev.set()
    assert await asyncio.gather(*tasks) == ["inner", "parked inner", "inner"]


async def test_await_is_none_error_is_the_one_await_gives() -> None:
    class AwaitIsNone:
        __await__ = None

    async def plain() -> None:
        await AwaitIsNone()  # type: ignore[misc]

    with pytest.raises(TypeError) as expected:
        await plain()
    with pytest.raises(TypeError) as got:
        greenback_loop.await_(AwaitIsNone())  # type: ignore[arg-type]
    assert str(got.value) == str(expected.value)
