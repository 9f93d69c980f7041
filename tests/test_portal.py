"""The portal looks like the coroutine it wraps to everything that inspects
or drives a task's coroutine."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import inspect
import sys
import traceback
import types
import warnings
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _impl


def Portal(coro: Any) -> Any:
    return _impl.core.Portal(coro)


async def parked_forever(gate: asyncio.Event) -> None:
    def sync_wait() -> None:
        greenback_loop.await_(gate.wait())

    sync_wait()


async def test_task_keeps_asyncio_task_type_and_coroutine_protocol() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    assert type(task) is asyncio.Task
    coro = task.get_coro()
    assert asyncio.iscoroutine(coro)
    assert isinstance(coro, collections.abc.Coroutine)
    await task


async def test_repr_matches_plain_task() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(parked_forever(gate), name="worker")
    plain = asyncio.Task(parked_forever(gate), name="worker")
    assert repr(task).split(" running at ")[0] == repr(plain).split(" running at ")[0]
    assert "coro=<parked_forever() running at " in repr(task)
    await asyncio.sleep(0)
    r = repr(task)
    assert "coro=<parked_forever() running at " in r and __file__ in r
    gate.set()
    await task
    # built directly, it has a portal too (C core) or says why not (twin)
    await asyncio.gather(plain, return_exceptions=True)
    assert "coro=<parked_forever() done, defined at " in repr(task)


async def test_get_stack_while_suspended_normally() -> None:
    gate = asyncio.Event()

    async def waiter() -> None:
        await gate.wait()

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    stack = task.get_stack()
    assert [f.f_code.co_name for f in stack] == ["waiter"]
    gate.set()
    await task


async def test_get_stack_while_parked_in_await_() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(parked_forever(gate))
    await asyncio.sleep(0)
    names = [f.f_code.co_name for f in task.get_stack()]
    assert names[-1] == "parked_forever"
    gate.set()
    await task


async def test_coroutine_state_and_cr_await() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(parked_forever(gate))
    portal = task.get_coro()
    assert portal.cr_code is parked_forever.__code__
    assert portal.__name__ == "parked_forever"
    assert portal.__qualname__ == "parked_forever"
    assert inspect.getcoroutinestate(portal) == inspect.CORO_CREATED  # type: ignore[arg-type]
    await asyncio.sleep(0)
    # parked inside await_: suspended, awaiting what await_ drives
    assert inspect.getcoroutinestate(portal) == inspect.CORO_SUSPENDED  # type: ignore[arg-type]
    assert portal.cr_running is False
    assert inspect.iscoroutine(portal.cr_await)
    assert portal.cr_await.cr_code is asyncio.Event.wait.__code__
    if hasattr(types.CoroutineType, "cr_suspended"):
        assert portal.cr_suspended is True
    assert hasattr(portal, "cr_state") == hasattr(types.CoroutineType, "cr_state")
    assert portal.cr_frame.f_code is parked_forever.__code__
    gate.set()
    await task
    assert inspect.getcoroutinestate(portal) == inspect.CORO_CLOSED  # type: ignore[arg-type]
    assert portal.cr_await is None


async def test_cr_running_inside_the_step() -> None:
    async def body() -> bool:
        task = asyncio.current_task()
        assert task is not None
        return task.get_coro().cr_running  # type: ignore[no-any-return, union-attr]

    assert await asyncio.create_task(body()) is True


async def test_cr_origin_forwarded() -> None:
    loop = asyncio.get_running_loop()
    sys.set_coroutine_origin_tracking_depth(2)
    try:
        task = loop.create_task(asyncio.sleep(0))
    finally:
        sys.set_coroutine_origin_tracking_depth(0)
    assert task.get_coro().cr_origin is not None  # type: ignore[union-attr]
    await task


def drive(portal: Any, value: Any = None) -> Any:
    try:
        return portal.send(value)
    except StopIteration as exc:
        return ("returned", exc.value)


@types.coroutine
def suspend(value: Any) -> Any:
    return (yield value)


def test_protocol_send_throw_close() -> None:
    async def body() -> str:
        got = await suspend("first")
        try:
            await suspend("second")
        except KeyError as exc:
            return f"{got} {exc.args[0]}"
        return "no"

    portal = Portal(body())
    assert portal.__await__() is portal
    assert iter(portal) is portal
    assert next(portal) == "first"
    assert portal.send("sent") == "second"
    with pytest.raises(StopIteration) as info:
        portal.throw(KeyError("thrown"))
    assert info.value.value == "sent thrown"


def test_protocol_throw_signatures() -> None:
    async def body() -> None:
        await suspend(1)

    for args in [(ValueError,), (ValueError, "v"), (ValueError, ValueError("v"))]:
        portal = Portal(body())
        portal.send(None)
        if len(args) > 1 and sys.version_info >= (3, 12):
            with pytest.warns(DeprecationWarning), pytest.raises(ValueError):
                portal.throw(*args)
        else:
            with pytest.raises(ValueError):
                portal.throw(*args)
    portal = Portal(body())
    try:
        with pytest.raises(TypeError, match="exceptions must be classes or instances"):
            portal.throw(42)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(TypeError, match="instance exception may not have a separate value"):
                portal.throw(ValueError("x"), "y")
    finally:
        portal.close()


def test_close_never_started() -> None:
    async def body() -> None:
        raise AssertionError("never runs")

    portal = Portal(body())
    portal.close()  # no "never awaited" warning, nothing runs
    assert inspect.getcoroutinestate(portal) == inspect.CORO_CLOSED


def test_close_parked_in_await_unwinds_sync_frames() -> None:
    events: list[str] = []

    def sync_layer() -> None:
        try:
            greenback_loop.await_(suspend_coro())
        except GeneratorExit:
            events.append("GeneratorExit at await_")
            raise
        finally:
            events.append("sync finally")

    async def suspend_coro() -> None:
        await suspend("parked")

    async def body() -> None:
        try:
            sync_layer()
        finally:
            events.append("async finally")

    portal = Portal(body())
    assert portal.send(None) == "parked"
    assert portal.cr_running is False
    portal.close()
    assert events == ["GeneratorExit at await_", "sync finally", "async finally"]
    assert inspect.getcoroutinestate(portal) == inspect.CORO_CLOSED


def test_close_parked_ignoring_generator_exit() -> None:
    """A coroutine that swallows the GeneratorExit of close() and awaits
    again cannot suspend: await_ raises there (as await in a closing
    coroutine cannot suspend either), and close() reports it."""
    seen: list[str] = []

    def stubborn() -> None:
        try:
            greenback_loop.await_(suspend_once())
        except GeneratorExit:
            pass
        try:
            greenback_loop.await_(suspend_once())
        except RuntimeError as exc:
            seen.append(str(exc))
            raise

    async def suspend_once() -> None:
        await suspend("parked")

    async def body() -> None:
        stubborn()

    portal = Portal(body())
    portal.send(None)
    with pytest.raises(RuntimeError, match="being closed"):
        portal.close()
    assert len(seen) == 1 and "being closed" in seen[0]
    assert inspect.getcoroutinestate(portal) == inspect.CORO_CLOSED
    portal.close()  # closed for good: nothing left to unwind


def test_parked_portal_dropped_unwinds() -> None:
    events: list[str] = []

    def sync_layer() -> None:
        try:
            greenback_loop.await_(suspend_coro())
        finally:
            events.append("sync finally")

    async def suspend_coro() -> None:
        await suspend("parked")

    async def body() -> None:
        sync_layer()

    portal = Portal(body())
    portal.send(None)
    del portal
    assert events == ["sync finally"]


async def test_a_portal_dropped_before_its_first_step_leaves_the_coroutine_alone() -> None:
    """A portal made around a coroutine another task is running (or around
    a task's own portal) and dropped before any step of its own does not
    close it: the other task finishes as if the portal never existed."""
    gate = asyncio.Event()

    async def inner() -> str:
        await gate.wait()
        return "inner done"

    async def awaits(c: Any) -> str:
        return await c  # type: ignore[no-any-return]

    c = inner()
    task = asyncio.create_task(awaits(c))
    await asyncio.sleep(0)
    for what in (c, task.get_coro()):
        portal = Portal(what)
        del portal
        gc.collect()
    assert c.cr_frame is not None  # still suspended, not closed
    gate.set()
    assert await task == "inner done"


def test_send_while_running_raises() -> None:
    holder: list[Any] = []

    async def body() -> None:
        with pytest.raises(ValueError, match="already executing"):
            holder[0].send(None)

    portal = Portal(body())
    holder.append(portal)
    drive(portal)


def test_exhausted_portal_raises_like_a_coroutine() -> None:
    async def body() -> int:
        return 1

    portal = Portal(body())
    assert drive(portal) == ("returned", 1)
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        portal.send(None)


needs_call_graph = pytest.mark.skipif(
    not hasattr(asyncio, "capture_call_graph"), reason="asyncio.capture_call_graph is new in 3.14"
)


def graph_frames(task: asyncio.Task[Any]) -> list[str]:
    graph = asyncio.capture_call_graph(task)  # type: ignore[attr-defined]
    assert graph is not None
    return [entry.frame.f_code.co_qualname for entry in graph.call_stack]


@needs_call_graph
async def test_call_graph_matches_a_plain_task() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    portal_task = asyncio.create_task(outer())
    plain_task = asyncio.Task(outer())  # no portal
    await asyncio.sleep(0)
    assert graph_frames(portal_task) == graph_frames(plain_task)
    assert graph_frames(portal_task) == [
        "Event.wait",
        "test_call_graph_matches_a_plain_task.<locals>.inner",
        "test_call_graph_matches_a_plain_task.<locals>.outer",
    ]
    gate.set()
    await asyncio.gather(portal_task, plain_task)


@needs_call_graph
async def test_call_graph_while_parked_in_await_() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(parked_forever(gate))

    async def awaiter() -> None:
        await task

    waiting = asyncio.create_task(awaiter())
    await asyncio.sleep(0)
    # the coroutine await_ drives, then the task's own coroutine
    assert graph_frames(task) == ["Event.wait", "parked_forever"]
    graph = asyncio.capture_call_graph(task)  # type: ignore[attr-defined]
    assert [entry.future for entry in graph.awaited_by] == [waiting]
    gate.set()
    await waiting


async def test_frames_seen_from_inside_and_after_a_step() -> None:
    """Stack introspection works inside a portal step (the task's own frames)
    and in the loop's greenlet around it (the loop's frames, linked back)."""
    import traceback

    import greenlet

    def sync_layer() -> list[str]:
        names = [f.name for f in traceback.extract_stack()]
        # every frame of every thread, and the suspended loop greenlet's
        for top in list(sys._current_frames().values()) + [greenlet.getcurrent().parent.gr_frame]:
            f = top
            while f is not None:
                assert f.f_code.co_name
                f = f.f_back
        return names

    async def body() -> list[str]:
        await asyncio.sleep(0)
        return sync_layer()

    names = await asyncio.create_task(body())
    assert names[-2:] == ["body", "sync_layer"]

    seen: list[list[str]] = []

    def callback() -> None:  # runs in the loop's greenlet, between steps
        seen.append([f.name for f in traceback.extract_stack()])

    for _ in range(3):
        asyncio.get_running_loop().call_soon(callback)
        await asyncio.create_task(body())
    assert len(seen) == 3
    assert all(s[-1] == "callback" for s in seen)
    assert len({tuple(s) for s in seen}) == 1  # the same loop frames each time
    here = [f.name for f in traceback.extract_stack()]
    assert here[-1] == "test_frames_seen_from_inside_and_after_a_step"


def test_tracing_sees_task_and_loop_frames(run: Any) -> None:
    """sys.settrace keeps working across portal steps, in the tasks and the loop."""
    calls: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name in ("in_task", "in_loop"):
            calls.append(frame.f_code.co_name)
        return None

    def in_task() -> int:
        return greenback_loop.await_(asyncio.sleep(0, 1))  # type: ignore[no-any-return]

    def in_loop() -> None:
        pass

    async def body() -> int:
        return in_task()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        total = 0
        for _ in range(3):
            loop.call_soon(in_loop)
            total += await asyncio.create_task(body())
        return total

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        assert run(main()) == 3
    finally:
        sys.settrace(old)
    assert calls.count("in_task") == 3 and calls.count("in_loop") == 3


def _core_frames(tb: Any) -> list[str]:
    return [f.name for f in traceback.extract_tb(tb) if "/greenback_loop/" in f.filename]


def test_a_failed_task_traceback_shows_no_step_machinery(run: Any, impl: str) -> None:
    """An exception leaving a task through await_ carries the user's frames;
    the C core adds none of its own, the twin at most the one method of the
    portal that the Task called (a pure-Python callee always lands in the
    traceback; its step helpers and runner do not)."""

    def sync_layer() -> None:
        greenback_loop.await_(asyncio.sleep(0))
        raise ValueError("boom")

    async def body() -> None:
        sync_layer()

    async def main() -> Any:
        with pytest.raises(ValueError) as info:
            await asyncio.create_task(body())
        return info.value.__traceback__

    tb = run(main())
    names = [f.name for f in traceback.extract_tb(tb)]
    assert names[-2:] == ["body", "sync_layer"]
    core = _core_frames(tb)
    assert core == [] if impl == "c" else core in ([], ["__next__"], ["send"], ["throw"])


def test_debug_creation_point_is_the_callers_as_on_plain_asyncio(run: Any, run_plain: Any) -> None:
    async def main() -> tuple[str, str]:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        last = task._source_traceback[-1]  # type: ignore[attr-defined]
        return last.name, last.filename

    got = run(main(), debug=True)
    with_plain_loop = run_plain(_debug(main()))
    assert got == with_plain_loop
    assert "/greenback_loop/" not in got[1]


def test_debug_creation_record_holds_no_frame_of_ours(run: Any, run_plain: Any) -> None:
    """The whole recorded creation stack: no frame of greenback_loop's (the
    twin's runner at its bottom was one), and the user's frames above the
    loop's as with a plain loop."""

    async def main() -> list[tuple[str, str]]:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        return [(f.filename, f.name) for f in task._source_traceback]  # type: ignore[attr-defined]

    got = run(main(), debug=True)
    plain = run_plain(_debug(main()))
    assert [f for f in got if "/greenback_loop/" in f[0]] == []
    assert got == plain[len(plain) - len(got) :]
    assert any(name == "main" for _, name in got)


async def _debug(coro: Any) -> Any:
    asyncio.get_running_loop().set_debug(True)
    return await coro


def test_finished_tasks_leave_no_reference_cycles(run: Any) -> None:
    """Results, exceptions and cancellation through await_ are freed by
    reference counting, as with plain await (nothing for the collector)."""

    def fail() -> None:
        greenback_loop.await_(asyncio.sleep(0))
        raise ValueError("x")

    async def failing() -> None:
        fail()

    async def returning() -> int:
        return greenback_loop.await_(asyncio.sleep(0, 5))  # type: ignore[no-any-return]

    async def parked() -> None:
        greenback_loop.await_(asyncio.sleep(10))

    async def main() -> list[int]:
        await asyncio.create_task(returning())  # warm: runners exist
        counts = []
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(ValueError):
                await asyncio.create_task(failing())
            counts.append(gc.collect())
            assert await asyncio.create_task(returning()) == 5
            counts.append(gc.collect())
            task = asyncio.create_task(parked())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            del task
            counts.append(gc.collect())
        finally:
            gc.enable()
        return counts

    assert run(main()) == [0, 0, 0]


def test_an_exception_thrown_in_and_raised_back_leaves_no_cycle() -> None:
    """throw(exc) whose coroutine lets exc out: exc's traceback holds the
    portal method's frame, which must not hold exc (a cycle only the
    collector frees; it kept a timed-out SSL handshake's context alive in
    CPython's test_ssl)."""

    async def body() -> None:
        await suspend("parked")

    portal = Portal(body())
    assert portal.send(None) == "parked"
    exc = ValueError("thrown")
    gc.collect()
    gc.disable()
    try:
        try:
            portal.throw(exc)
        except ValueError as raised:
            assert raised is exc
        del exc, portal
        assert gc.collect() == 0
    finally:
        gc.enable()
