"""Trio versions of the asyncio-only behaviours of test_await.py,
test_cancel.py, test_portal.py and test_lifecycle.py.

Only what test_any_library.py (the same behaviour on asyncio, uvloop and
Trio) and test_trio.py (Trio-specific tests) do not already check is here.
Each test runs its scenario under both ways a Trio program gets portals,
greenback_loop.trio.run and plain trio.run with ``ensure_portal()`` at the
top of each task that calls await_, and compares ``await_(x)`` in sync
code with what ``await x`` does in plain Trio, in the same program where it
can. The core axis comes from the process (the C core here, the twin under
``GREENBACK_LOOP_NO_EXTENSIONS=1`` and in the suite's rerun); subprocess
scripts get the same core.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import gc
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import types
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import greenlet
import outcome
import pytest
import trio
import trio.testing

import greenback_loop
import greenback_loop.trio
from greenback_loop import _impl, await_

# -- the two ways ----------------------------------------------------------------


@pytest.fixture(params=["auto", "ensure_portal"])
def mode(request: pytest.FixtureRequest) -> str:
    """``auto``: greenback_loop.trio.run; ``ensure_portal``: trio.run, each
    task that uses await_ asking for its portal first."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def run(mode: str) -> Callable[..., Any]:
    """``run(async_fn, *args)`` the way *mode* says."""

    def run(async_fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        runner = greenback_loop.trio.run if mode == "auto" else trio.run
        return runner(async_fn, *args, **kwargs)

    return run


@pytest.fixture
def portal(mode: str) -> Callable[[], Awaitable[None]]:
    """What a task awaits first so that its sync code may call await_: nothing
    under greenback_loop.trio.run, ``ensure_portal()`` under trio.run."""

    async def portal() -> None:
        if mode == "ensure_portal":
            await greenback_loop.ensure_portal()

    return portal


# -- shared helpers ----------------------------------------------------------------


class Boom(Exception):
    pass


async def add_later(a: int, b: int) -> int:
    await trio.sleep(0)
    return a + b


async def fail_later() -> None:
    await trio.sleep(0)
    raise Boom("from async")


def sync_sleep(seconds: float, value: Any = None) -> Any:
    await_(trio.sleep(seconds))
    return value


@types.coroutine
def suspend(value: Any) -> Generator[Any, Any, Any]:
    """Yield *value* to whoever drives the coroutine (not to Trio)."""
    return (yield value)


PACKAGE_DIR = os.path.dirname(greenback_loop.__file__) + os.sep
TRIO_DIR = os.path.dirname(trio.__file__) + os.sep


def user_frames(tb: Any) -> list[str]:
    """The traceback's frames outside greenback_loop and Trio."""
    return [
        f.name
        for f in traceback.extract_tb(tb)
        if not f.filename.startswith((PACKAGE_DIR, TRIO_DIR))
    ]


# == test_await.py ================================================================


def test_value_and_order_of_effects(run: Any, portal: Any) -> None:
    async def main() -> dict[str, Any]:
        await portal()
        seen: dict[str, Any] = {}
        for how in ("await", "await_"):
            log: list[str] = []

            async def step(name: str, log: list[str] = log) -> str:
                log.append(f"{name} start")
                await trio.sleep(0)
                log.append(f"{name} end")
                return name

            def sync_layer() -> list[str]:
                return [await_(step("a")), await_(step("b"))]

            values = [await step("a"), await step("b")] if how == "await" else sync_layer()
            seen[how] = (values, log)
        return seen

    seen = run(main)
    assert seen["await_"] == seen["await"]
    assert seen["await"] == (["a", "b"], ["a start", "a end", "b start", "b end"])


class CustomAwaitable:
    def __await__(self) -> Generator[Any, None, str]:
        yield from trio.sleep(0).__await__()
        return "custom"


@types.coroutine
def generator_based() -> Generator[Any, None, str]:
    """A generator-based coroutine passing Trio's traps up."""
    yield from trio.lowlevel.checkpoint()
    yield from trio.lowlevel.cancel_shielded_checkpoint()
    return "generator-based"


def rescheduled(value: Any) -> Awaitable[Any]:
    """Trio's future: the task waits until something reschedules it with an
    outcome (here a run_sync_soon callback), and gets the outcome's value."""
    task = trio.lowlevel.current_task()
    trio.lowlevel.current_trio_token().run_sync_soon(
        trio.lowlevel.reschedule, task, outcome.Value(value)
    )
    return trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)


async def starts(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await trio.sleep(0)
    task_status.started("started value")
    await trio.sleep(0)


def test_awaitables_of_every_kind(run: Any, portal: Any) -> None:
    """Coroutines, objects with __await__, generator-based coroutines,
    Trio's own low-level awaitables, an already-set Event, nursery.start():
    await_ gives each what await gives."""

    async def main() -> tuple[list[Any], list[Any]]:
        await portal()
        done = trio.Event()
        done.set()
        async with trio.open_nursery() as nursery:
            kinds: list[Callable[[], Any]] = [
                lambda: add_later(2, 3),
                CustomAwaitable,
                generator_based,
                lambda: rescheduled("rescheduled"),
                trio.lowlevel.checkpoint,
                trio.lowlevel.cancel_shielded_checkpoint,
                lambda: trio.sleep(0),
                done.wait,
                lambda: nursery.start(starts),
            ]
            plain = [await make() for make in kinds]

            def sync_layer() -> list[Any]:
                return [await_(make()) for make in kinds]

            ours = sync_layer()
        return plain, ours

    plain, ours = run(main)
    assert ours == plain
    assert plain == [
        5,
        "custom",
        "generator-based",
        "rescheduled",
        None,
        None,
        None,
        None,
        "started value",
    ]


class Ready:
    """An awaitable that finishes without suspending."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, int]:
        return self.value
        yield  # pragma: no cover - makes this a generator


def test_non_suspending_awaitables(run: Any, portal: Any) -> None:
    """Awaitables that never suspend pass no checkpoint, under await_ as
    under await: no other task runs meanwhile."""

    async def immediate(x: int) -> int:
        return x

    async def sibling(ran: list[str]) -> None:
        ran.append("sibling")

    async def main() -> tuple[int, int, bool]:
        await portal()
        ran: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sibling, ran)
            with trio.testing.assert_no_checkpoints():
                plain = 0
                for i in range(100):
                    plain += await immediate(i) + await Ready(i)

                def sync_layer() -> int:
                    return sum(await_(immediate(i)) + await_(Ready(i)) for i in range(100))

                ours = sync_layer()
            sibling_ran = bool(ran)
        return plain, ours, sibling_ran

    assert run(main) == (9900, 9900, False)


class CoroutineFromAwait:
    """A bad __await__: it returns a coroutine, not an iterator."""

    def __init__(self) -> None:
        self.coros: list[Any] = []

    def __await__(self) -> Any:
        coro = add_later(1, 1)
        self.coros.append(coro)
        return coro


@pytest.mark.parametrize("case", ["str", "coroutine-from-__await__"])
def test_not_awaitable_errors_are_awaits(run: Any, portal: Any, case: str) -> None:
    """(int, None and an __await__ returning an int: test_any_library.py)"""

    async def main() -> tuple[str, str]:
        await portal()
        obj: Any = "text" if case == "str" else CoroutineFromAwait()
        with pytest.raises(TypeError) as plain:
            await obj
        with pytest.raises(TypeError) as ours:
            await_(obj)
        for coro in getattr(obj, "coros", ()):
            coro.close()
        return str(plain.value), str(ours.value)

    plain, ours = run(main)
    assert ours == plain


def test_reusing_a_coroutine_awaited_the_other_way(run: Any, portal: Any) -> None:
    """A coroutine awaited with await, reused with await_, and the reverse:
    the error await gives (the same way round: test_any_library.py)."""

    async def main() -> tuple[str, str]:
        await portal()
        by_await = add_later(1, 1)
        assert await by_await == 2
        with pytest.raises(RuntimeError) as reused_by_await_:
            await_(by_await)
        by_await_ = add_later(1, 1)
        assert await_(by_await_) == 2
        with pytest.raises(RuntimeError) as reused_by_await:
            await by_await_
        return str(reused_by_await_.value), str(reused_by_await.value)

    assert run(main) == ("cannot reuse already awaited coroutine",) * 2


def test_exception_handled_in_sync_code(run: Any, portal: Any) -> None:
    """An exception at await_, and a nursery's ExceptionGroup from a nursery
    the sync code opened, handled in sync code; the task goes on."""

    async def child_fails() -> None:
        await fail_later()

    async def with_await() -> tuple[str, str, int]:
        try:
            await fail_later()
        except Boom as exc:
            handled = f"handled {exc}"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child_fails)
        except* Boom as group:
            grouped = repr(group.exceptions)
        return handled, grouped, await add_later(1, 1)

    def sync_layer() -> tuple[str, str, int]:
        try:
            await_(fail_later())
        except Boom as exc:
            handled = f"handled {exc}"
        try:
            with greenback_loop.async_context(trio.open_nursery()) as nursery:
                nursery.start_soon(child_fails)
        except* Boom as group:
            grouped = repr(group.exceptions)
        return handled, grouped, await_(add_later(1, 1))

    async def main() -> tuple[Any, Any]:
        await portal()
        return await with_await(), sync_layer()

    plain, ours = run(main)
    assert ours == plain == ("handled from async", repr((Boom("from async"),)), 2)


def test_exception_reaching_a_custom_awaitable_iterator(run: Any, portal: Any) -> None:
    """A Cancelled delivered to a task parked in await_ reaches the iterator
    of the awaitable it drives, which may recover from it; the scope stays
    cancelled, so the next checkpoint raises again, as with await."""

    async def main(use_await_: bool) -> tuple[Any, ...]:
        if use_await_:
            await portal()
        seen: list[str] = []

        class Catcher:
            def __await__(self) -> Generator[Any, None, str]:
                try:
                    yield from trio.sleep(10).__await__()
                except trio.Cancelled:
                    seen.append("cancel seen by iterator")
                    return "recovered"
                return "slept"

        def sync_layer() -> str:
            return await_(Catcher())  # type: ignore[no-any-return]

        with trio.move_on_after(0.01) as scope:
            result = sync_layer() if use_await_ else await Catcher()
            seen.append(result)
            await trio.sleep(0)
            seen.append("not cancelled again")
        return seen, scope.cancelled_caught

    plain = trio.run(main, False)
    assert plain == (["cancel seen by iterator", "recovered"], True)
    assert run(main, True) == plain


async def greenlet_spawn(fn: Callable[..., Any], *args: Any) -> Any:
    """SQLAlchemy's bridge in miniature: run *fn* in a child greenlet that
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


def test_sqlalchemy_style_bridge_across_steps(run: Any, portal: Any) -> None:
    """A greenlet whose parent is the task's outlives steps while other tasks
    run in between, and calls await_ itself (a greenlet started from sync
    code in the task, as SQLAlchemy's)."""

    def db_work(n: int) -> int:
        total = 0
        for i in range(5):
            total += await_only(add_later(n, i))  # suspends the whole task
            total += await_(add_later(0, 1))  # greenback_loop from the same greenlet
        return total

    async def worker(n: int, out: list[int]) -> None:
        await portal()
        out.append(await greenlet_spawn(db_work, n))

    async def main() -> list[int]:
        out: list[int] = []
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(worker, n, out)
        return sorted(out)

    assert run(main) == [5 * n + 10 + 5 for n in range(20)]


def test_task_holding_its_greenlet_across_awaits(run: Any, portal: Any) -> None:
    async def body(out: list[bool]) -> None:
        await portal()
        me = greenlet.getcurrent()
        await trio.sleep(0)
        sync_sleep(0.001)
        await trio.sleep(0)
        out.append(greenlet.getcurrent() is me)

    async def main() -> list[bool]:
        out: list[bool] = []
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(body, out)
        return out

    assert run(main) == [True] * 10


def test_current_task_in_sync_code(run: Any, portal: Any) -> None:
    """trio.lowlevel.current_task() (and the root task) in sync code, before
    and after await_, and in what await_ drives: the task itself."""

    async def inner() -> Any:
        await trio.sleep(0)
        return trio.lowlevel.current_task()

    def sync_layer() -> tuple[Any, ...]:
        before = trio.lowlevel.current_task()
        within = await_(inner())
        return before, within, trio.lowlevel.current_task(), trio.lowlevel.current_root_task()

    async def body(out: list[Any]) -> None:
        await portal()
        out.extend([trio.lowlevel.current_task(), *sync_layer()])

    async def main() -> tuple[Any, ...]:
        out: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body, out)
            (task,) = nursery.child_tasks
        return task, trio.lowlevel.current_root_task(), out

    task, root, (me, before, within, after, root_in_sync) = run(main)
    assert me is before is within is after is task
    assert root_in_sync is root


def test_tasks_spawned_from_sync_code(run: Any, portal: Any) -> None:
    """Sync code opens a nursery (async_context), spawns into it and into
    one its caller opened, and awaits nursery.start(): the children run,
    with portals of their own, as children spawned with await do."""

    async def child(i: int, out: list[int]) -> None:
        await portal()
        out.append(sync_sleep(0.001, i * 2))

    async def starter(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await portal()
        task_status.started(sync_sleep(0, "started"))
        sync_sleep(0.001)

    def sync_layer(outer: trio.Nursery, out: list[int]) -> str:
        outer.start_soon(child, 100, out)
        with greenback_loop.async_context(trio.open_nursery()) as nursery:
            for i in range(5):
                nursery.start_soon(child, i, out)
            started = await_(nursery.start(starter))
        return started  # type: ignore[no-any-return]

    async def main() -> tuple[str, list[int]]:
        await portal()
        out: list[int] = []
        async with trio.open_nursery() as outer:
            started = sync_layer(outer, out)
        return started, sorted(out)

    assert run(main) == ("started", [0, 2, 4, 6, 8, 200])


def test_async_generator_stepped_and_closed_from_sync_code(run: Any, portal: Any) -> None:
    """asend/athrow/aclose of an async generator from sync code: its finally
    block runs and awaits as with await (plain iteration:
    test_any_library.py)."""

    async def agen(log: list[str]) -> Any:
        try:
            received = yield 1
            log.append(f"received {received}")
            try:
                yield 2
            except Boom:
                log.append("thrown in")
                yield 3
            yield 4
        finally:
            await trio.sleep(0)
            log.append("finally awaited")

    async def with_await(log: list[str]) -> list[Any]:
        gen = agen(log)
        values = [await gen.__anext__(), await gen.asend("x"), await gen.athrow(Boom())]
        await gen.aclose()
        return values

    def sync_layer(log: list[str]) -> list[Any]:
        gen = agen(log)
        values = [await_(gen.__anext__()), await_(gen.asend("x")), await_(gen.athrow(Boom()))]
        await_(gen.aclose())
        return values

    async def main() -> tuple[Any, Any]:
        await portal()
        plain_log: list[str] = []
        our_log: list[str] = []
        return (await with_await(plain_log), plain_log), (sync_layer(our_log), our_log)

    plain, ours = run(main)
    assert ours == plain == ([1, 2, 3], ["received x", "thrown in", "finally awaited"])


@pytest.mark.parametrize(
    "system_tasks",
    [
        False,
        True,
    ],
    ids=["default", "system_tasks"],
)
def test_abandoned_async_generator_cleanup(system_tasks: bool, caplog: Any) -> None:
    """An async generator left unfinished in a task with a portal, whose
    cleanup calls sync code that awaits, finalized by Trio when dropped:
    the cleanup sees what await sees there (Trio cancels async work in
    finalizers), and nothing is logged."""

    def sync_cleanup(log: list[str]) -> None:
        try:
            await_(trio.sleep(0))
        except BaseException as exc:
            log.append(type(exc).__name__)
            raise

    async def rows(log: list[str], use_await_: bool) -> Any:
        try:
            for i in range(10):
                yield i
        finally:
            if use_await_:
                sync_cleanup(log)
            else:
                try:
                    await trio.sleep(0)
                except BaseException as exc:
                    log.append(type(exc).__name__)
                    raise

    async def main(use_await_: bool) -> list[str]:
        log: list[str] = []
        async for row in rows(log, use_await_):
            if row == 2:
                break  # the generator is dropped here, unfinished
        gc.collect()
        await trio.sleep(0.01)  # Trio's finalizer task runs
        return log

    def observed(runner: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)  # Trio's "garbage collected before..."
            log = runner(main, *args, **kwargs)
        warned = [type(w.message).__name__ for w in caught]
        return log, warned, [r.getMessage()[:70] for r in caplog.records]

    plain = observed(trio.run, False)
    assert plain == (["Cancelled"], ["ResourceWarning"], [])
    assert observed(greenback_loop.trio.run, True, system_tasks=system_tasks) == plain


@pytest.mark.parametrize("swallow", [False, True], ids=["finally", "swallows-exit"])
def test_dropped_suspended_coroutine_unwinds_in_its_own_step(
    run: Any, portal: Any, swallow: bool
) -> None:
    """A portal dropped by sync code in a Trio task while its coroutine is
    suspended is closed then and there: its cleanup runs, cannot suspend
    (await_ raises "being closed", even after the coroutine swallowed the
    GeneratorExit), and the task that dropped it passes no checkpoint."""

    async def main() -> tuple[list[str], int]:
        await portal()
        events: list[str] = []

        def cleanup() -> None:
            try:
                await_(trio.sleep(0))
                events.append("suspended")
            except RuntimeError as exc:
                events.append("being closed" if "being closed" in str(exc) else str(exc))

        async def victim() -> None:
            if swallow:
                try:
                    await suspend("parked")
                except GeneratorExit:
                    pass
                cleanup()
                return
            try:
                await suspend("parked")
            finally:
                cleanup()

        def sync_code() -> None:
            dropped = _impl.core.Portal(victim())
            assert dropped.send(None) == "parked"
            del dropped  # the last reference: finalized here

        with trio.testing.assert_no_checkpoints():
            sync_code()
        return events, await_(add_later(1, 2))  # the task itself still can

    assert run(main) == (["being closed"], 3)


def test_sync_generator_closed_by_the_task_may_await(run: Any, portal: Any) -> None:
    async def main() -> list[str]:
        await portal()
        log: list[str] = []

        def rows() -> Generator[int, None, None]:
            try:
                yield from range(10)
            finally:
                log.append(f"cleanup {await_(add_later(1, 1))}")

        def sync_layer() -> None:
            g = rows()
            for r in g:
                if r == 2:
                    break
            g.close()
            with contextlib.closing(rows()) as g2:
                next(g2)

        sync_layer()
        return log

    assert run(main) == ["cleanup 2", "cleanup 2"]


def test_coroutine_awaited_elsewhere_is_refused_as_await_refuses_it(run: Any, portal: Any) -> None:
    """await_ of a coroutine another task is parked in await_ with, or of
    another task's own coroutine (``task.coro``, its portal), raises "being
    awaited already", as await of another plain task's coroutine does. (A
    coroutine another task awaits with plain await: test_any_library.py.)"""

    async def parked_inner(ev: trio.Event) -> str:
        await_(ev.wait())
        return "parked inner"

    async def awaits(c: Any, out: list[str]) -> None:
        await portal()
        out.append(await c)

    async def waits(ev: trio.Event, out: list[str], plain: bool) -> None:
        if not plain:
            await portal()
        await ev.wait()
        out.append("waited")

    async def main(plain: bool) -> tuple[list[str], list[str]]:
        if not plain:
            await portal()
        ev = trio.Event()
        out: list[str] = []
        errors: list[str] = []
        async with trio.open_nursery() as nursery:
            c2 = parked_inner(ev)
            if not plain:
                nursery.start_soon(awaits, c2, out)
            nursery.start_soon(waits, ev, out, plain)
            await trio.sleep(0.01)
            other = [t for t in nursery.child_tasks if t.name.endswith("waits")][0]
            targets = [other.coro] if plain else [c2, other.coro]
            for what in targets:
                if not plain:
                    with pytest.raises(RuntimeError) as info:
                        await_(what)
                    errors.append(str(info.value))
                if what is not c2:  # await of c2 says "already executing" (limits.rst)

                    async def plain_await(w: Any = what) -> None:
                        await w

                    with pytest.raises(RuntimeError) as info:
                        await plain_await()
                    errors.append(str(info.value))
            ev.set()
        if plain:
            c2.close()
        return sorted(out), errors

    plain_out, plain_errors = trio.run(main, True)
    assert (plain_out, plain_errors) == (["waited"], ["coroutine is being awaited already"])
    out, errors = run(main, False)
    assert out == ["parked inner", "waited"]
    assert errors == ["coroutine is being awaited already"] * 3


def test_await_is_none_error_is_the_one_await_gives(run: Any, portal: Any) -> None:
    class AwaitIsNone:
        __await__ = None

    async def main() -> tuple[str, str]:
        await portal()
        with pytest.raises(TypeError) as plain:
            await AwaitIsNone()  # type: ignore[misc]
        with pytest.raises(TypeError) as ours:
            await_(AwaitIsNone())
        return str(plain.value), str(ours.value)

    plain, ours = run(main)
    assert ours == plain


# == test_cancel.py =================================================================


def test_swallowed_cancel_behaves_like_await(run: Any, portal: Any) -> None:
    """Catching Cancelled at await_ keeps the task going, as at await; Trio's
    cancellation is level-triggered, so the next checkpoint raises it again,
    and a shielded scope entered in sync code lets await_ finish."""

    async def with_await(events: list[str]) -> None:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            events.append("swallowed")
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            events.append("cancelled again")
        with trio.CancelScope(shield=True):
            events.append(f"shielded {await add_later(1, 1)}")
        events.append("end of block")

    def sync_layer(events: list[str]) -> None:
        try:
            await_(trio.sleep(10))
        except trio.Cancelled:
            events.append("swallowed")
        try:
            await_(trio.lowlevel.checkpoint())
        except trio.Cancelled:
            events.append("cancelled again")
        with trio.CancelScope(shield=True):
            events.append(f"shielded {await_(add_later(1, 1))}")
        events.append("end of block")

    async def main() -> list[tuple[list[str], bool]]:
        await portal()
        results = []
        for use_await_ in (False, True):
            events: list[str] = []
            with trio.move_on_after(0.01) as scope:
                if use_await_:
                    sync_layer(events)
                else:
                    await with_await(events)
            results.append((events, scope.cancelled_caught))
        return results

    plain, ours = run(main)
    assert ours == plain
    assert plain == (
        ["swallowed", "cancelled again", "shielded 2", "end of block"],
        False,
    )


def test_cancel_before_first_step(run: Any, portal: Any, mode: str) -> None:
    """A task spawned into an already-cancelled nursery still takes its first
    step, as in plain Trio, and the cancellation lands at its first
    checkpoint: in await_ (or in ensure_portal(), itself a checkpoint)."""

    async def child(events: list[str], use_await_: bool) -> None:
        events.append("first step")
        if use_await_:
            await portal()
        elif mode == "ensure_portal":
            await trio.lowlevel.checkpoint()  # where ensure_portal() checkpoints

        def sync_layer() -> None:
            events.append("sync code")
            await_(trio.lowlevel.checkpoint())

        try:
            if use_await_:
                sync_layer()
            else:
                events.append("sync code")
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            events.append("cancelled")
            raise
        events.append("not cancelled")

    async def main(use_await_: bool) -> tuple[list[str], bool]:
        events: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.cancel()
            nursery.start_soon(child, events, use_await_)
        return events, nursery.cancel_scope.cancelled_caught

    plain = trio.run(main, False)
    assert run(main, True) == plain
    first = ["first step"] if mode == "ensure_portal" else ["first step", "sync code", "cancelled"]
    assert plain == (first, True)


@pytest.mark.parametrize("how", ["move_on_after", "fail_after", "cancel_scope"])
def test_timeouts_entered_in_sync_code(run: Any, portal: Any, how: str) -> None:
    """Trio's timeouts are plain ``with`` blocks: sync code enters them itself
    around await_, as async code does around await. (Scopes entered by the
    async caller around sync code: test_trio.py.)"""

    def body(wait: Callable[[Any], Any]) -> str:
        if how == "move_on_after":
            with trio.move_on_after(0.01) as scope:
                wait(trio.sleep(10))
            return f"caught {scope.cancelled_caught}"
        if how == "fail_after":
            try:
                with trio.fail_after(0.01):
                    wait(trio.sleep(10))
            except trio.TooSlowError:
                return "timed out"
            return "finished"
        with trio.CancelScope() as scope:
            scope.cancel()
            wait(trio.sleep(10))
        return f"caught {scope.cancelled_caught}"

    async def with_await() -> str:
        # the same body, with await in place of await_
        if how == "move_on_after":
            with trio.move_on_after(0.01) as scope:
                await trio.sleep(10)
            return f"caught {scope.cancelled_caught}"
        if how == "fail_after":
            try:
                with trio.fail_after(0.01):
                    await trio.sleep(10)
            except trio.TooSlowError:
                return "timed out"
            return "finished"
        with trio.CancelScope() as scope:
            scope.cancel()
            await trio.sleep(10)
        return f"caught {scope.cancelled_caught}"

    async def main() -> tuple[str, str]:
        await portal()
        return await with_await(), body(await_)

    plain, ours = run(main)
    assert ours == plain == ("timed out" if how == "fail_after" else "caught True")


def _escaped(exc: BaseException) -> Any:
    """What left the run, as a nested structure of exception type names."""
    if isinstance(exc, BaseExceptionGroup):
        return (type(exc).__name__, [_escaped(e) for e in exc.exceptions])
    return type(exc).__name__


@pytest.mark.parametrize("where", ["main", "child"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_escape_the_run(
    run: Any, portal: Any, exc_type: type[BaseException], where: str
) -> None:
    """KeyboardInterrupt/SystemExit raised by what await_ drives leave
    trio.run as they do from plain await, finally blocks run."""

    async def raiser() -> None:
        await trio.sleep(0)
        raise exc_type()

    def sync_layer(cleanup: list[str]) -> None:
        try:
            await_(raiser())
        finally:
            cleanup.append("finally ran")

    async def task_body(cleanup: list[str], use_await_: bool) -> None:
        if use_await_:
            await portal()
            sync_layer(cleanup)
            return
        try:
            await raiser()
        finally:
            cleanup.append("finally ran")

    async def main(cleanup: list[str], use_await_: bool) -> None:
        if where == "main":
            await task_body(cleanup, use_await_)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task_body, cleanup, use_await_)
            await trio.sleep(10)

    results = []
    for use_await_, runner in ((False, trio.run), (True, run)):
        cleanup: list[str] = []
        with pytest.raises(BaseException) as info:
            runner(main, cleanup, use_await_)
        results.append((_escaped(info.value), cleanup))
    assert results[1] == results[0]
    assert results[0][1] == ["finally ran"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("where", ["parked", "sync-code", "awaited-code", "child-sync-code"])
def test_keyboard_interrupt_from_a_real_signal(run: Any, portal: Any, where: str) -> None:
    """A SIGINT sent from another thread: while the task is parked in await_
    (Trio defers it and delivers it to the main task there), while sync code
    of a task busy-loops, or while code await_ drives does (raised right
    there, as in plain Trio's unprotected user code). The same exception
    leaves the run, after the same finally blocks, as with plain await."""

    ready = threading.Event()  # the code the signal is for is running

    def spin(log: list[str]) -> None:
        deadline = time.monotonic() + 5
        ready.set()
        try:
            while time.monotonic() < deadline:
                pass
        except KeyboardInterrupt:
            log.append("interrupted in the loop")
            raise
        log.append("never interrupted")

    async def spin_async(log: list[str]) -> None:
        spin(log)
        await trio.sleep(0)

    def sync_layer(log: list[str]) -> None:
        if where == "parked":
            ready.set()
            await_(trio.sleep(5))
        elif where in ("sync-code", "child-sync-code"):
            spin(log)
        else:
            await_(spin_async(log))

    async def with_await(log: list[str]) -> None:
        if where == "parked":
            ready.set()
            await trio.sleep(5)
        elif where in ("sync-code", "child-sync-code"):
            spin(log)
        else:
            await spin_async(log)

    async def body(log: list[str], use_await_: bool) -> None:
        if use_await_:
            await portal()
        try:
            if use_await_:
                sync_layer(log)
            else:
                await with_await(log)
        finally:
            log.append("finally")

    def interrupt() -> None:
        # once that code runs (not on a timer: a loaded machine would land
        # the signal in Trio's own code before it), a moment later
        if ready.wait(5):
            time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)

    async def main(log: list[str], use_await_: bool) -> None:
        ready.clear()
        timer = threading.Thread(target=interrupt)
        timer.start()
        try:
            if where == "child-sync-code":
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(body, log, use_await_)
                    await trio.sleep(5)
            else:
                await body(log, use_await_)
        finally:
            timer.join()

    results = []
    for use_await_, runner in ((False, trio.run), (True, run)):
        log: list[str] = []
        with pytest.raises(BaseException) as info:
            runner(main, log, use_await_)
        results.append((_escaped(info.value), log))
    if sys.version_info[:2] == (3, 13) and where != "parked":
        # Plain Trio itself varies here on CPython 3.13.0: of 30 runs, 25-26
        # defer the interrupt to the next checkpoint and 4-5 raise it in the
        # busy loop, for sync code as for awaited code (3.11, 3.12, 3.14 and
        # 3.15: always in the loop); with portals, the same two outcomes in
        # about the same shares. Either is what plain await gives.
        assert results[1][0] == results[0][0]
        assert results[1][1] in (["finally"], ["interrupted in the loop", "finally"])
    else:
        assert results[1] == results[0]
    escaped, log = results[0]
    assert "KeyboardInterrupt" in str(escaped) and log[-1] == "finally"


# == test_portal.py =================================================================


def test_task_coro_answers_as_a_plain_tasks(run: Any, portal: Any) -> None:
    """``task.coro`` of a task with a portal answers what a plain Trio task's
    coroutine answers (inspect.iscoroutine() aside: docs/limits.rst), before
    the first step, suspended at await, parked in await_ (where
    iter_await_frames() goes on into what await_ drives), and finished."""

    def sync_wait(ev: trio.Event) -> None:
        await_(ev.wait())

    async def parked(ev: trio.Event, use_await_: bool) -> None:
        if use_await_:
            await portal()
            sync_wait(ev)
        else:
            await ev.wait()

    def addresses_out(text: str) -> str:
        return re.sub(r"0x[0-9a-f]+", "0x...", text)

    async def main(use_await_: bool) -> dict[str, Any]:
        ev = trio.Event()
        seen: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked, ev, use_await_)
            (task,) = nursery.child_tasks
            c: Any = task.coro
            seen["before"] = (
                type(task) is trio.lowlevel.Task,
                inspect.getcoroutinestate(c),
                isinstance(c, collections.abc.Coroutine),
                addresses_out(repr(task)),
            )
            await trio.sleep(0.01)
            c = task.coro  # (ensure_portal() has replaced it by now)
            seen["suspended"] = (
                inspect.getcoroutinestate(c),
                c.cr_running,
                c.cr_await.cr_code is trio.Event.wait.__code__,
                c.cr_frame.f_code is parked.__code__,
                (c.cr_code, c.__name__, c.__qualname__.rpartition(".")[2]),
                [f.f_code.co_name for f, _ in task.iter_await_frames()],
                addresses_out(repr(task)),
            )
            ev.set()
        with pytest.raises(RuntimeError) as exhausted:
            c.send(None)
        seen["finished"] = (
            inspect.getcoroutinestate(c),
            c.cr_await,
            c.cr_frame,
            str(exhausted.value),
        )
        return seen

    plain = trio.run(main, False)
    ours = run(main, True)
    assert ours == plain
    assert plain["suspended"][:4] == (inspect.CORO_SUSPENDED, False, True, True)
    assert plain["finished"][-1] == "cannot reuse already awaited coroutine"
    # a task with a portal suspended at plain await answers the same too
    with_portal_plain_await = run(main, False)
    assert with_portal_plain_await == plain


def test_task_coro_inside_its_own_step(run: Any, portal: Any) -> None:
    """From inside the task (and from its sync code), its coroutine is
    running: cr_running, getcoroutinestate, and send() refused."""

    def look(coro: Any) -> tuple[Any, ...]:
        with pytest.raises(ValueError) as info:
            coro.send(None)
        return coro.cr_running, inspect.getcoroutinestate(coro), str(info.value)

    async def main() -> tuple[Any, Any]:
        await portal()
        in_coroutine = look(trio.lowlevel.current_task().coro)
        await_(trio.sleep(0))

        def sync_layer() -> tuple[Any, ...]:
            return look(trio.lowlevel.current_task().coro)

        return in_coroutine, sync_layer()

    async def plain_main() -> Any:
        return look(trio.lowlevel.current_task().coro)

    plain = trio.run(plain_main)
    assert plain == (True, inspect.CORO_RUNNING, "coroutine already executing")
    assert run(main) == (plain, plain)


def test_cr_origin_forwarded(run: Any, portal: Any) -> None:
    async def child(use_await_: bool) -> None:
        if use_await_:
            await portal()
            sync_sleep(0)
        else:
            await trio.sleep(0)

    async def main(use_await_: bool) -> Any:
        async with trio.open_nursery() as nursery:
            sys.set_coroutine_origin_tracking_depth(3)
            try:
                nursery.start_soon(child, use_await_)
            finally:
                sys.set_coroutine_origin_tracking_depth(0)
            (task,) = nursery.child_tasks
            await trio.sleep(0.001)  # (ensure_portal() has given it its portal)
            origin = task.coro.cr_origin
        return [name for _, _, name in origin] if origin else origin

    plain = trio.run(main, False)
    assert plain == ["coroutine_or_error", "spawn_impl", "start_soon"]
    assert run(main, True) == plain


def test_frames_seen_from_inside_and_after_a_step(run: Any, portal: Any) -> None:
    """Stack introspection works inside a step (the task's frames, down to
    its coroutine: docs/limits.rst) and in Trio's code around it (a
    run_sync_soon callback sees the same frames as under plain Trio)."""

    def frames_ok() -> bool:
        tops = list(sys._current_frames().values())
        parent = greenlet.getcurrent().parent
        if parent is not None and parent.gr_frame is not None:
            tops.append(parent.gr_frame)
        for top in tops:
            f: Any = top
            while f is not None:
                assert f.f_code.co_name
                f = f.f_back
        return True

    def sync_layer() -> list[str]:
        assert frames_ok()
        return [f.name for f in traceback.extract_stack()]

    async def body(out: list[list[str]], with_portal: bool) -> None:
        if with_portal:
            await portal()
        await trio.sleep(0)
        out.append(sync_layer())

    def from_trios_run(names: list[str]) -> list[str]:
        return names[len(names) - names[::-1].index("run") - 1 :]

    async def main(seen: list[list[str]], with_portal: bool) -> list[list[str]]:
        out: list[list[str]] = []

        def callback() -> None:
            assert frames_ok()
            seen.append(from_trios_run([f.name for f in traceback.extract_stack()]))

        for _ in range(3):
            trio.lowlevel.current_trio_token().run_sync_soon(callback)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(body, out, with_portal)
        return out

    plain_seen: list[list[str]] = []
    plain = trio.run(main, plain_seen, False)
    seen: list[list[str]] = []
    ours = run(main, seen, True)
    assert all(names[-2:] == ["body", "sync_layer"] for names in plain + ours)
    assert len({tuple(s) for s in seen}) == 1 and seen == plain_seen
    assert seen[0][-1] == "callback"


@pytest.mark.skipif(
    sys.version_info >= (3, 15) and _impl.implementation == "python",
    reason="sys.settrace across the twin's greenlet switches crashes CPython 3.15 "
    "(test_portal.py's tracing test, issue 9)",
)
@pytest.mark.parametrize("hook", ["settrace", "setprofile"])
def test_tracing_sees_task_and_run_frames(run: Any, portal: Any, hook: str) -> None:
    """sys.settrace / sys.setprofile keep working across steps: they see the
    calls in tasks, in what await_ drives and in Trio's own callbacks, as
    under plain Trio."""
    watched = {"in_task", "in_awaited", "in_run"}

    def in_task(use_await_: bool) -> Any:
        return await_(in_awaited()) if use_await_ else None

    async def in_awaited() -> int:
        await trio.sleep(0)
        return 1

    def in_run() -> None:
        pass

    async def body(use_await_: bool, total: list[int]) -> None:
        if use_await_:
            await portal()
            total.append(in_task(True))
        else:
            in_task(False)
            total.append(await in_awaited())

    async def main(use_await_: bool) -> int:
        total: list[int] = []
        for _ in range(3):
            trio.lowlevel.current_trio_token().run_sync_soon(in_run)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(body, use_await_, total)
        return sum(total)

    def counted(runner: Callable[..., Any], use_await_: bool) -> tuple[int, dict[str, int]]:
        calls: dict[str, int] = {}

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            if event == "call" and frame.f_code.co_name in watched:
                calls[frame.f_code.co_name] = calls.get(frame.f_code.co_name, 0) + 1
            return None

        install: Any = sys.settrace if hook == "settrace" else sys.setprofile
        old = sys.gettrace() if hook == "settrace" else sys.getprofile()
        install(tracer)
        try:
            result = runner(main, use_await_)
        finally:
            install(old)
        return result, calls

    plain = counted(trio.run, False)
    # (each resumption of a coroutine is a "call" too: in_awaited has two)
    assert plain == (3, {"in_task": 3, "in_awaited": 6, "in_run": 3})
    assert counted(run, True) == plain


def test_a_failed_tasks_traceback_shows_no_step_machinery(run: Any, portal: Any, impl: str) -> None:
    """An exception raised in sync code after an await_, leaving a child task
    (into its nursery's group) and the main task (out of trio.run), carries
    plain Trio's frames: the C core adds none of its own, the twin at most
    the one portal method Trio called. (An exception raised by what await_
    drives: test_trio.py.)"""

    def sync_layer(use_await_: bool) -> None:
        if use_await_:
            await_(trio.sleep(0))
        raise Boom("boom")

    async def body(use_await_: bool) -> None:
        if use_await_:
            await portal()
        else:
            await trio.sleep(0)
        sync_layer(use_await_)

    async def main(use_await_: bool) -> Any:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(body, use_await_)
        except BaseExceptionGroup as group:
            (exc,) = group.exceptions
            return exc.__traceback__
        raise AssertionError("the child did not fail")

    def core_frames(tb: Any) -> list[str]:
        return [f.name for f in traceback.extract_tb(tb) if f.filename.startswith(PACKAGE_DIR)]

    for in_main in (False, True):
        if in_main:
            tbs = []
            for use_await_, runner in ((False, trio.run), (True, run)):
                with pytest.raises(Boom) as info:
                    runner(body, use_await_)
                tbs.append(info.value.__traceback__)
            plain_tb, our_tb = tbs
        else:
            plain_tb, our_tb = trio.run(main, False), run(main, True)
        assert user_frames(our_tb)[-2:] == user_frames(plain_tb)[-2:] == ["body", "sync_layer"]
        core = core_frames(our_tb)
        if in_main:
            core = [name for name in core if name != "run"]  # greenback_loop.trio.run itself
        assert core == [] if impl == "c" else core in ([], ["send"], ["throw"])


async def _no_portal() -> None:
    pass


def _collected_per_case(
    runner: Callable[..., Any], portal: Any, use_await_: bool, case: str
) -> int:
    """What gc.collect() finds after one task's ending of kind *case*, the
    collector off meanwhile."""

    async def wait(seconds: float, value: Any = None) -> Any:
        if use_await_:
            return sync_sleep(seconds, value)
        await trio.sleep(seconds)
        return value

    async def child() -> Any:
        await portal()
        if case == "fails":
            await wait(0)
            raise Boom("x")
        if case == "returns":
            return await wait(0, 5)
        await wait(10)

    async def warm() -> None:
        await portal()
        await wait(0)

    async def main() -> int:
        await portal()
        async with trio.open_nursery() as nursery:  # runners exist from here on
            nursery.start_soon(warm)
        gc.collect()
        gc.disable()
        try:
            if case == "main-times-out":
                with trio.move_on_after(0.001):
                    await wait(10)
                return gc.collect()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(child)
                    if case == "cancelled":
                        await trio.sleep(0.001)
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup:
                pass
            return gc.collect()
        finally:
            gc.enable()

    return runner(main)  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", ["fails", "returns", "cancelled", "main-times-out"])
def test_finished_tasks_leave_no_reference_cycles(run: Any, portal: Any, case: str) -> None:
    """Results, exceptions and cancellations through await_ are freed by
    reference counting, as with plain await: the collector finds nothing."""
    plain = _collected_per_case(trio.run, _no_portal, False, case)
    assert plain == 0
    assert _collected_per_case(run, portal, True, case) == plain


# == test_lifecycle.py ==============================================================


def test_finished_tasks_leave_nothing_behind(run: Any, portal: Any) -> None:
    """After parked tasks finish, nothing of them stays reachable: not the
    tasks, their coroutines (portals), what their sync code held."""

    class Payload:
        pass

    async def main(use_await_: bool) -> list[Any]:
        refs: list[weakref.ref[Any]] = []
        gate = trio.Event()

        def sync_layer() -> Payload:
            payload = Payload()
            refs.append(weakref.ref(payload))
            await_(gate.wait())
            return payload

        async def body() -> None:
            if use_await_:
                await portal()
                sync_layer()
            else:
                payload = Payload()
                refs.append(weakref.ref(payload))
                await gate.wait()

        async def spawn_and_wait() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(body)
                await trio.sleep(0.01)
                for task in nursery.child_tasks:
                    refs.extend([weakref.ref(task), weakref.ref(task.coro)])
                gate.set()

        await spawn_and_wait()
        await trio.sleep(0)
        gc.collect()
        assert len(refs) == 600
        return [r() for r in refs if r() is not None]

    assert trio.run(main, False) == []
    assert run(main, True) == []


def test_runners_are_reused(run: Any, portal: Any) -> None:
    """Steps that end normally give their runner back: a long run of steps
    creates no greenlet per step."""

    def greenlets() -> int:
        return sum(isinstance(o, greenlet.greenlet) for o in gc.get_objects())

    async def step_a_lot() -> None:
        await portal()
        for _ in range(100):
            await trio.sleep(0)
            await_(trio.sleep(0))

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(step_a_lot)
        before = greenlets()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(step_a_lot)
        return greenlets() - before

    assert run(main) <= 5


PRELUDE = """
import os, signal, sys, threading
import trio
PLAIN = MODE == "plain"
if not PLAIN:
    import greenback_loop, greenback_loop.trio
    assert greenback_loop.implementation == IMPL, greenback_loop.implementation

async def portal():
    if MODE == "ensure_portal":
        await greenback_loop.ensure_portal()

def run(main):
    return (greenback_loop.trio.run if MODE == "auto" else trio.run)(main)
"""


def run_script(source: str, mode: str, impl: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run *source* in a fresh interpreter, in *mode* (``plain``: plain Trio,
    greenback_loop not even imported), with this process's core."""
    env = dict(os.environ)
    env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1" if impl == "python" else "0"
    script = f"MODE = {mode!r}\nIMPL = {impl!r}\n" + PRELUDE + textwrap.dedent(source)
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@functools.cache
def plain_script_result(source: str, *args: str) -> tuple[int, str, str]:
    proc = run_script(source, "plain", _impl.implementation, *args)
    return proc.returncode, proc.stdout, proc.stderr


def last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else ""


SYS_EXIT_INSIDE_AWAIT_ = """
async def bye():
    await trio.sleep(0)
    sys.exit(3)

def sync_layer():
    greenback_loop.await_(bye())

async def main():
    await portal()
    if PLAIN:
        await bye()
    else:
        sync_layer()

run(main)
"""


def test_exit_via_sys_exit_inside_await_(mode: str, impl: str) -> None:
    plain = plain_script_result(SYS_EXIT_INSIDE_AWAIT_)
    assert plain == (3, "", "")
    proc = run_script(SYS_EXIT_INSIDE_AWAIT_, mode, impl)
    assert (proc.returncode, proc.stdout, proc.stderr) == plain


INTERRUPTED_WITH_TASKS_PARKED = """
import atexit
atexit.register(print, "user atexit")
HOW = sys.argv[1]

async def plain_park(event, i):
    try:
        await event.wait()
    finally:
        print("sync finally", i)

def park(event, i):
    try:
        greenback_loop.await_(event.wait())
    finally:
        print("sync finally", i)

async def worker(event, i):
    await portal()
    try:
        if PLAIN:
            await plain_park(event, i)
        else:
            park(event, i)
    finally:
        print("coroutine finally", i)

async def main():
    event = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(worker, event, i)
        await trio.sleep(0.05)
        print("parked", flush=True)
        if HOW == "signal":
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                await trio.sleep(10)
            finally:
                timer.join()
        elif HOW == "raise":
            raise ValueError("main failed")
        else:
            sys.exit(3)

run(main)
"""


@pytest.mark.parametrize("how", ["signal", "raise", "exit"])
def test_interrupted_run_unwinds_parked_tasks_as_plain_trio(mode: str, impl: str, how: str) -> None:
    """A run ended by Ctrl-C (a real SIGINT), an exception or sys.exit() in
    the main task while 50 tasks are parked in await_: their finally blocks,
    sync and async, run as plain Trio's do, and the program ends as plain
    Trio's does, with nothing more on stderr."""
    plain = plain_script_result(INTERRUPTED_WITH_TASKS_PARKED, how)
    assert "parked" in plain[1] and plain[1].count("coroutine finally") == 50
    proc = run_script(INTERRUPTED_WITH_TASKS_PARKED, mode, impl, how)
    # (Trio's scheduler orders the tasks' unwinding at random)
    lines = proc.stdout.splitlines()
    assert sorted(lines) == sorted(plain[1].splitlines()), proc.stderr[-3000:]
    assert lines[0] == "parked" and lines[-1] == "user atexit"
    for i in range(50):
        assert lines.index(f"sync finally {i}") < lines.index(f"coroutine finally {i}")
    assert proc.returncode == plain[0]
    assert last_line(proc.stderr) == last_line(plain[2])
    for noise in ("Exception ignored", "Fatal Python error", "never awaited", "TrioInternalError"):
        assert noise not in proc.stderr, proc.stderr[-3000:]


ABANDONED_GUEST_RUN = """
import asyncio

def park(event):
    try:
        greenback_loop.await_(event.wait())
    finally:
        print("sync finally")

async def worker(event):
    await portal()
    try:
        if PLAIN:
            await event.wait()
        else:
            park(event)
    finally:
        print("coroutine finally")
        await trio.sleep(0)

async def trio_main():
    event = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(worker, event)
        await trio.sleep(3600)

async def host():
    loop = asyncio.get_running_loop()
    start = greenback_loop.trio.start_guest_run if MODE == "auto" else trio.lowlevel.start_guest_run
    start(
        trio_main,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=lambda outcome: print("done", outcome),
        host_uses_signal_set_wakeup_fd=True,
    )
    await asyncio.sleep(0.05)
    print("host leaves")

asyncio.run(host())  # the guest run is left unfinished, its tasks parked
"""


def test_abandoned_guest_run_with_tasks_parked_exits_as_plain_trio(mode: str, impl: str) -> None:
    """A Trio guest run whose asyncio host ends first, its tasks parked in
    await_: the program exits as the same program with plain awaits does
    (plain Trio never unwinds those tasks)."""
    plain = plain_script_result(ABANDONED_GUEST_RUN)
    assert plain == (0, "host leaves\n", "")
    proc = run_script(ABANDONED_GUEST_RUN, mode, impl)
    assert (proc.returncode, proc.stdout, proc.stderr) == plain
