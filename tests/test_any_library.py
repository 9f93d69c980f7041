"""await_ behaves like await on every library: asyncio, uvloop and Trio.

Each test is written once against anyio's primitives and runs on the three
backends with portals in every task (greenback_loop's loops through anyio's
``loop_factory`` option, Trio through greenback_loop.trio.run),
comparing ``await_(x)`` from sync code with ``await x`` in the same program
where the reference is plain await. The core axis comes from the process
(the twin rerun covers the pure-Python core).
"""

from __future__ import annotations

import contextvars
import gc
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import greenlet
import pytest

import greenback_loop
import greenback_loop.trio
from greenback_loop import await_

LIBRARIES = ("asyncio", "uvloop", "trio")


@pytest.fixture(params=LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def run(library: str) -> Callable[..., Any]:
    """``run(async_fn, *args)`` on *library*, every task with a portal."""

    def run(async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if library == "trio":
            # anyio's primitives run under trio.run as they are (anyio's own
            # run passes instruments to Trio from 4.14 on: test_trio.py)
            return greenback_loop.trio.run(async_fn, *args)
        factory = (
            greenback_loop.new_event_loop
            if library == "asyncio"
            else lambda: greenback_loop.new_event_loop(uvloop=True)
        )
        return anyio.run(
            async_fn, *args, backend="asyncio", backend_options={"loop_factory": factory}
        )

    return run


async def add_later(a: int, b: int) -> int:
    await anyio.sleep(0)
    return a + b


class Boom(Exception):
    pass


async def fail_later() -> None:
    await anyio.sleep(0)
    raise Boom("from async")


def user_frames(exc: BaseException) -> list[str]:
    return [
        f.name
        for f in traceback.extract_tb(exc.__traceback__)
        if "greenback_loop" not in f.filename or f.name == "await_"
    ]


def test_value_and_other_tasks_run_while_parked(run: Any) -> None:
    async def main() -> tuple[int, list[str]]:
        log: list[str] = []
        event = anyio.Event()

        async def other() -> None:
            log.append("other ran")
            event.set()

        def sync_layer() -> int:
            log.append("before")
            await_(event.wait())  # only the other task can end this wait
            value = await_(add_later(2, 3))
            log.append("after")
            return value

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            value = sync_layer()
        return value, log

    value, log = run(main)
    assert value == 5 and log == ["before", "other ran", "after"]


def test_exception_and_traceback_through_sync_frames(run: Any) -> None:
    def sync_middle() -> None:
        await_(fail_later())

    async def main() -> list[str]:
        try:
            sync_middle()
        except Boom as exc:
            return user_frames(exc)
        return []

    assert run(main) == ["main", "sync_middle", "await_", "fail_later"]


def test_exception_context_inside_an_except_block_is_awaits(run: Any) -> None:
    """An exception raised at await_ inside an except block carries the
    handled exception as its __context__, as at an await there."""

    async def main() -> tuple[Any, Any]:
        contexts = []
        for use_await_ in (False, True):
            try:
                raise KeyError("handled")
            except KeyError:
                try:
                    if use_await_:
                        await_(fail_later())
                    else:
                        await fail_later()
                except Boom as exc:
                    contexts.append(repr(exc.__context__))
        return contexts[0], contexts[1]

    plain, ours = run(main)
    assert plain == ours == repr(KeyError("handled"))


def test_nested_await_and_deep_sync_recursion(run: Any) -> None:
    async def inner(depth: int) -> int:
        await anyio.sleep(0)
        return 0 if depth == 0 else sync_level(depth - 1) + 1

    def sync_level(depth: int) -> int:
        return await_(inner(depth))

    def deep(n: int) -> int:
        return await_(add_later(n, 0)) if n == 0 else deep(n - 1) + 1

    async def main() -> tuple[int, int]:
        return sync_level(20), deep(min(sys.getrecursionlimit() - 200, 500))

    assert run(main) == (20, min(sys.getrecursionlimit() - 200, 500))


def test_await_from_a_greenlet_started_in_sync_code(run: Any) -> None:
    async def main() -> int:
        def in_child() -> int:
            return await_(add_later(20, 1))

        return greenlet.greenlet(in_child).switch() * 2  # type: ignore[no-any-return]

    assert run(main) == 42


def test_contextvars_both_ways_and_isolated(run: Any) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def sets(value: str) -> str:
        before = var.get()
        await anyio.sleep(0)
        var.set(value)
        return before

    async def main() -> tuple[str, str, list[str]]:
        var.set("outer")
        seen = await_(sets("inner"))
        after = var.get()
        results: list[str] = []

        async def task(name: str) -> None:
            var.set(name)
            await_(anyio.sleep(0.001))
            results.append(f"{name}={var.get()}")

        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(task, name)
        return seen, after, sorted(results)

    assert run(main) == ("outer", "inner", ["a=a", "b=b", "c=c"])


def test_cancellation_surfaces_at_the_call(run: Any) -> None:
    async def main() -> tuple[bool, list[str]]:
        events: list[str] = []

        def blocking() -> None:
            try:
                await_(anyio.sleep(10))
            except anyio.get_cancelled_exc_class():
                events.append("cancelled at await_")
                raise
            finally:
                events.append("finally")

        with anyio.move_on_after(0.01) as scope:
            blocking()
        return scope.cancelled_caught, events

    assert run(main) == (True, ["cancelled at await_", "finally"])


def test_task_group_cancels_siblings_parked_in_sync_code(run: Any) -> None:
    async def main() -> tuple[int, str]:
        unwound = 0

        async def parked() -> None:
            nonlocal unwound
            try:
                await_(anyio.sleep(10))
            finally:
                unwound += 1

        async def fails() -> None:
            await anyio.sleep(0.01)
            raise Boom("sibling")

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(parked)
                tg.start_soon(fails)
        except BaseException as exc:  # an ExceptionGroup on both backends
            return unwound, type(exc).__name__
        return unwound, "nothing raised"

    unwound, name = run(main)
    assert unwound == 50 and "ExceptionGroup" in name


def test_many_concurrent_parked_tasks(run: Any) -> None:
    async def main() -> int:
        event = anyio.Event()
        done = 0

        async def parked() -> None:
            nonlocal done
            await_(event.wait())
            done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(parked)
            await anyio.sleep(0.01)
            assert done == 0
            event.set()
        return done

    assert run(main) == 1000


class _AwaitReturnsInt:
    def __await__(self) -> int:
        return 5


@pytest.mark.parametrize("obj", [1, None, _AwaitReturnsInt()], ids=["int", "None", "bad-await"])
def test_not_awaitable_error_is_the_one_await_gives(run: Any, obj: Any) -> None:
    async def main() -> tuple[str, str]:
        try:
            await obj
        except TypeError as exc:
            expected = str(exc)
        with pytest.raises(TypeError) as got:
            await_(obj)
        return expected, str(got.value)

    expected, got = run(main)
    assert got == expected


def test_reusing_an_awaited_coroutine_raises_as_await(run: Any) -> None:
    async def main() -> tuple[str, str]:
        coro = add_later(1, 1)
        assert await_(coro) == 2
        with pytest.raises(RuntimeError) as ours:
            await_(coro)
        coro2 = add_later(1, 1)
        await coro2
        with pytest.raises(RuntimeError) as plain:
            await coro2
        return str(plain.value), str(ours.value)

    plain, ours = run(main)
    assert ours == plain


def test_coroutine_awaited_by_another_task_is_refused(run: Any) -> None:
    async def main() -> list[str]:
        event = anyio.Event()

        async def inner() -> str:
            await event.wait()
            return "inner"

        shared = inner()
        results: list[str] = []

        async def awaits() -> None:
            results.append(await shared)

        async with anyio.create_task_group() as tg:
            tg.start_soon(awaits)
            await anyio.sleep(0.01)
            with pytest.raises(RuntimeError, match="coroutine is being awaited already"):
                await_(shared)
            event.set()
        return results

    assert run(main) == ["inner"]


def test_async_generator_and_context_manager_in_sync_code(run: Any) -> None:
    async def agen() -> Any:
        for i in range(3):
            await anyio.sleep(0)
            yield i

    async def main() -> tuple[list[int], list[int]]:
        gen = agen()
        via_await_ = []
        while True:
            try:
                via_await_.append(await_(gen.__anext__()))
            except StopAsyncIteration:
                break
        return via_await_, list(greenback_loop.async_iter(agen()))

    assert run(main) == ([0, 1, 2], [0, 1, 2])


def test_code_the_collector_runs_cannot_suspend_the_task(run: Any) -> None:
    """A __del__ the collector runs inside a task's sync code gets a
    RuntimeError from await_ instead of suspending that task there."""

    async def main() -> tuple[list[str], int]:
        errors: list[str] = []

        class Cyclic:
            def __init__(self) -> None:
                self.me = self

            def __del__(self) -> None:
                try:
                    await_(anyio.sleep(0))
                    errors.append("suspended")
                except RuntimeError as exc:
                    errors.append(str(exc))

        Cyclic()
        gc.collect()
        return errors, await_(add_later(1, 2))

    errors, value = run(main)
    assert len(errors) == 1 and "garbage collector" in errors[0], errors
    assert value == 3


def test_to_thread_and_back_from_sync_code(run: Any) -> None:
    """Sync code in a task hands work to a thread, which calls back into
    the event loop; both hops are awaited with await_."""

    async def double(x: int) -> int:
        await anyio.sleep(0)
        return x * 2

    def in_thread(x: int) -> int:
        return anyio.from_thread.run(double, x) + 1

    async def main() -> int:
        return await_(anyio.to_thread.run_sync(in_thread, 20))

    assert run(main) == 41
