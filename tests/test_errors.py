"""greenback_loop.await_() outside a portal: a clear RuntimeError, never a crash or a hang."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import inspect
import threading
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _impl


async def answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_no_event_loop() -> None:
    with pytest.raises(RuntimeError, match="no event loop running in this thread"):
        greenback_loop.await_(answer())  # the coroutine is closed: no "never awaited" warning


def test_non_awaitable_outside_portal_still_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="no event loop"):
        greenback_loop.await_(42)  # type: ignore[arg-type]


async def test_loop_callback() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            greenback_loop.await_(answer())
        except BaseException as exc:
            fut.set_result(exc)

    loop.call_soon(callback)
    exc = await fut
    assert isinstance(exc, RuntimeError)
    assert "outside of any task" in str(exc)


async def test_other_thread() -> None:
    def in_thread() -> BaseException | None:
        try:
            greenback_loop.await_(asyncio.sleep(0))
        except BaseException as exc:
            return exc
        return None

    exc = await asyncio.to_thread(in_thread)
    assert isinstance(exc, RuntimeError)
    assert "run_coroutine_threadsafe" in str(exc)


async def test_outside_portal_leaves_a_suspended_coroutine_to_its_task() -> None:
    """await_() outside a portal closes only a coroutine that never started:
    one that another task is suspended in goes on, and that task finishes it."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    async def inner() -> str:
        await event.wait()
        return "inner result"

    c = inner()

    async def task_a() -> str:
        return await c

    a = asyncio.create_task(task_a())
    await asyncio.sleep(0)
    assert inspect.getcoroutinestate(c) == inspect.CORO_SUSPENDED
    caught: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            greenback_loop.await_(c)
        except BaseException as exc:
            caught.set_result(exc)

    loop.call_soon(callback)
    exc = await caught
    assert isinstance(exc, RuntimeError) and "outside of any task" in str(exc)
    assert inspect.getcoroutinestate(c) == inspect.CORO_SUSPENDED
    event.set()
    assert await a == "inner result"


def test_outside_portal_closes_only_never_started_coroutines() -> None:
    started = answer()
    started.send(None)  # suspended in its sleep(0)
    never = answer()
    portal = _impl.core.Portal(answer())
    closed: list[str] = []

    class CoroutineLike(collections.abc.Coroutine[Any, Any, int]):
        def send(self, value: Any) -> Any:
            raise StopIteration(1)

        def throw(self, *args: Any) -> Any:
            raise StopIteration(1)

        def close(self) -> None:
            closed.append("close")

        def __await__(self) -> Any:
            return self

        def __next__(self) -> Any:
            return self.send(None)

    for aw in (started, never, portal, CoroutineLike()):
        with pytest.raises(RuntimeError, match="no event loop running"):
            greenback_loop.await_(aw)
    assert inspect.getcoroutinestate(never) == inspect.CORO_CLOSED
    assert inspect.getcoroutinestate(started) == inspect.CORO_SUSPENDED
    assert portal.cr_frame is not None  # never started, not closed either
    assert closed == []
    with pytest.raises(StopIteration):
        started.send(None)
    portal.close()


def test_plain_loop_task(run_plain: Any, impl: str) -> None:
    async def main() -> str:
        with pytest.raises(RuntimeError, match="not a greenback_loop event loop") as info:
            greenback_loop.await_(answer())
        assert not greenback_loop.has_portal()
        return str(info.value)

    message = run_plain(main())
    # the advice is one that works with this core: the pure-Python core
    # cannot give a C Task a portal, so it does not suggest ensure_portal()
    if impl == "python":
        assert "pure-Python core" in message and "ensure_portal() would refuse" in message
    else:
        assert "ensure_portal()" in message and "pure-Python" not in message


@pytest.mark.parametrize("fn", ["with_portal_run", "with_portal_run_sync"])
def test_with_portal_run_outside_a_task(fn: str, recwarn: pytest.WarningsRecorder) -> None:
    """Named in the error, and nothing is left unawaited."""
    target = answer if fn == "with_portal_run" else (lambda: 1)
    coro = getattr(greenback_loop, fn)(target)
    with pytest.raises(RuntimeError, match=rf"^{fn}\(\) must be called from"):
        coro.send(None)
    gc.collect()
    assert [str(w.message) for w in recwarn.list if "never awaited" in str(w.message)] == []


async def test_nested_greenlet_not_under_the_task() -> None:
    import greenlet

    results: list[BaseException] = []
    task_greenlet = greenlet.getcurrent()

    def foreign() -> None:
        try:
            greenback_loop.await_(answer())
        except BaseException as exc:
            results.append(exc)
        task_greenlet.switch()

    # a greenlet whose parent is the thread's main greenlet, not the task's
    main = task_greenlet
    while main.parent is not None:
        main = main.parent
    greenlet.greenlet(foreign, parent=main).switch()
    assert len(results) == 1 and isinstance(results[0], RuntimeError)
    assert "does not descend" in str(results[0])


def test_ensure_portal_outside_task() -> None:
    with pytest.raises(RuntimeError, match="must be called from an asyncio or Trio task"):
        asyncio.run(_call_ensure_portal_in_callback())


async def _call_ensure_portal_in_callback() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def callback() -> None:
        coro = greenback_loop.ensure_portal()
        try:
            coro.send(None)
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon(callback)
    await done


def test_bestow_portal_type_error() -> None:
    with pytest.raises(TypeError, match="asyncio.Task"):
        greenback_loop.bestow_portal(object())  # type: ignore[arg-type]


async def test_portal_rejects_non_coroutine() -> None:
    with pytest.raises(TypeError, match="must be a coroutine, not int"):
        _impl.core.Portal(42)


async def test_create_task_rejects_non_coroutine() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError):
        loop.create_task(42)  # type: ignore[arg-type]


def test_run_in_other_threads_each_with_own_loop(loop_kind: str) -> None:
    """Threads each run their own greenback_loop loop concurrently."""
    results: dict[int, Any] = {}

    def sync_layer(n: int) -> int:
        return sum(greenback_loop.await_(asyncio.sleep(0.001, i)) for i in range(20)) + n

    async def main(n: int) -> list[int]:
        async def one(i: int) -> int:
            return sync_layer(i)

        return await asyncio.gather(*(one(i) for i in range(10)))

    def thread_main(n: int) -> None:
        try:
            results[n] = greenback_loop.run(main(n), uvloop=loop_kind == "uvloop")
        except BaseException as exc:  # pragma: no cover - reported below
            results[n] = exc

    threads = [threading.Thread(target=thread_main, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: [190 + i for i in range(10)] for n in range(4)}


async def test_portal_stepped_from_another_thread_is_refused() -> None:
    """Driving a parked task's coroutine from another thread raises a clear
    error there and leaves the task intact."""
    gate = asyncio.Event()

    def park() -> str:
        greenback_loop.await_(gate.wait())
        return "resumed"

    async def body() -> str:
        return park()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    portal = task.get_coro()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            portal.send(None)  # type: ignore[union-attr]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "thread whose event loop runs the task" in str(errors[0])
    gate.set()
    assert await task == "resumed"


def test_foreign_throw_into_parked_greenlet_is_refused(run: Any) -> None:
    """greenlet.throw() into a task's greenlet parked in await_ cannot be
    honoured: the caller gets a clear RuntimeError, and the parked task is
    unaffected and finishes as it would have."""
    import greenlet

    parked: list[Any] = []

    def sync_layer() -> str:
        parked.append(greenlet.getcurrent())
        try:
            greenback_loop.await_(asyncio.sleep(0.05))
        except KeyError:
            return "caught"
        return "slept"

    async def victim() -> str:
        return sync_layer()

    async def main() -> tuple[str, str]:
        task = asyncio.create_task(victim())
        await asyncio.sleep(0)
        assert not task.done()  # parked inside await_
        with pytest.raises(RuntimeError, match="from outside the task's step") as info:
            parked[0].throw(KeyError)
        return str(type(info.value).__name__), await task

    assert run(main()) == ("RuntimeError", "slept")
