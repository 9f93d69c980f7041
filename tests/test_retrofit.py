"""Portals given to tasks created without one: ensure_portal() and
bestow_portal() on plain asyncio and uvloop loops, asyncio.Task() built
directly on our loops, and what each refuses.

The C core replaces a C Task's coroutine in place; the pure-Python core can
only give portals to pure-Python Tasks (asyncio.tasks._PyTask), and says so
for C Tasks: both behaviours are asserted, by core.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from typing import Any

import pytest
from conftest import plain_loop_factory

import greenback_loop
from greenback_loop import _impl

C_CORE = _impl.implementation == "c"
PyTask: Any = asyncio.tasks._PyTask  # type: ignore[attr-defined]
NEEDS_C = "only the C core can replace"


async def fetch(n: int) -> int:
    await asyncio.sleep(0)
    return n


def sync_fetch(n: int) -> int:
    return greenback_loop.await_(fetch(n))


def test_ensure_portal_on_a_plain_loop(run_plain: Any) -> None:
    async def worker(n: int) -> tuple[bool, int, bool]:
        before = greenback_loop.has_portal()
        await greenback_loop.ensure_portal()
        await greenback_loop.ensure_portal()  # a second call keeps the portal
        return before, sync_fetch(n), greenback_loop.has_portal()

    async def main() -> Any:
        return await asyncio.gather(*(worker(i) for i in range(3)))

    if C_CORE:
        assert run_plain(main()) == [(False, i, True) for i in range(3)]
    else:
        with pytest.raises(RuntimeError, match=NEEDS_C):
            run_plain(main())


PYTASK_SEEN = pytest.mark.skipif(
    sys.version_info >= (3, 14),
    reason="3.14+: asyncio.current_task() (C) does not see a running pure-Python Task, "
    "on plain asyncio too",
)


@PYTASK_SEEN
def test_pure_python_task_on_a_plain_loop(run_plain: Any) -> None:
    """Both cores give a portal to asyncio's pure-Python Task."""

    async def worker() -> int:
        await greenback_loop.ensure_portal()
        return sync_fetch(5)

    async def main() -> Any:
        task = PyTask(worker())
        other = PyTask(fetch(1))
        greenback_loop.bestow_portal(other)
        return await task, await other, greenback_loop.has_portal(task)

    assert run_plain(main()) == (5, 1, False)


pytestmark_c = pytest.mark.skipif(not C_CORE, reason=f"{NEEDS_C} a C Task's coroutine")


@pytestmark_c
def test_ensure_portal_is_a_checkpoint(run_plain: Any, run: Any) -> None:
    """As greenback's: it yields once, even when the task has a portal, so
    another task runs (and a cancellation can land) inside it."""

    async def main() -> list[str]:
        order: list[str] = []

        async def other() -> None:
            order.append("other")

        for _ in range(2):
            asyncio.get_running_loop().call_soon(order.append, "callback")
            await greenback_loop.ensure_portal()
            order.append("after")
        task = asyncio.create_task(greenback_loop.ensure_portal())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t = asyncio.create_task(other())
        await greenback_loop.ensure_portal()
        await t
        return order

    expected = ["callback", "after", "callback", "after", "other"]
    assert run_plain(main()) == expected
    assert run(main()) == expected


@pytestmark_c
def test_bestow_portal_before_the_first_step(run_plain: Any) -> None:
    async def main() -> Any:
        task = asyncio.create_task(asyncio.sleep(0, None))
        worker = asyncio.create_task(_uses_portal())
        assert not greenback_loop.has_portal(worker)
        greenback_loop.bestow_portal(worker)
        greenback_loop.bestow_portal(worker)  # idempotent
        assert greenback_loop.has_portal(worker)
        await task
        return await worker

    assert run_plain(main()) == (True, 7)


async def _uses_portal() -> tuple[bool, int]:
    return greenback_loop.has_portal(), sync_fetch(7)


@pytestmark_c
def test_bestow_portal_on_the_current_task(run_plain: Any) -> None:
    """Effective from the task's next step, as greenback's."""

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        greenback_loop.bestow_portal(task)
        assert not greenback_loop.has_portal()
        with pytest.raises(RuntimeError, match="must yield to the event loop"):
            greenback_loop.await_(fetch(1))
        await asyncio.sleep(0)
        assert greenback_loop.has_portal() and greenback_loop.has_portal(task)
        return sync_fetch(3)

    assert run_plain(main()) == 3


@pytestmark_c
def test_task_subclass_and_eager_task(run_plain: Any) -> None:
    class MyTask(asyncio.Task):  # type: ignore[type-arg]
        pass

    async def eager_body() -> int:
        await greenback_loop.ensure_portal()  # in its eager first step
        return sync_fetch(2)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        mine = MyTask(_uses_portal(), loop=loop)
        greenback_loop.bestow_portal(mine)
        results = [await mine]
        if sys.version_info >= (3, 12):
            eager = asyncio.Task(eager_body(), loop=loop, eager_start=True)
            results.append(await eager)
            done = asyncio.Task(fetch_now(), loop=loop, eager_start=True)
            assert done.done()
            if sys.version_info >= (3, 13):
                assert done.get_coro() is None
                with pytest.raises(RuntimeError, match="no coroutine left"):
                    greenback_loop.bestow_portal(done)
            else:
                # 3.12's get_coro() crashes on such a task, plain asyncio too:
                # bestow_portal() must not ask it (done: nothing to give)
                greenback_loop.bestow_portal(done)
                assert not greenback_loop.has_portal(done)
        return results

    expected = [(True, 7)] + ([2] if sys.version_info >= (3, 12) else [])
    assert run_plain(main()) == expected


async def fetch_now() -> int:
    return 1


@pytestmark_c
def test_task_of_a_loop_in_another_thread(run_plain: Any) -> None:
    started = threading.Event()
    release = threading.Event()
    box: dict[str, Any] = {}

    async def waits() -> None:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.001)

    def other_thread() -> None:
        async def main() -> None:
            box["task"] = asyncio.current_task()
            await waits()

        asyncio.run(main())

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        assert started.wait(10)

        async def main() -> None:
            with pytest.raises(RuntimeError, match="running in another thread"):
                greenback_loop.bestow_portal(box["task"])

        run_plain(main())
    finally:
        release.set()
        t.join(10)


def test_bestow_portal_needs_a_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(
            TypeError, match=r"needs an asyncio\.Task or a trio\.lowlevel\.Task, not Future"
        ):
            greenback_loop.bestow_portal(asyncio.Future(loop=loop))  # type: ignore[arg-type]
    finally:
        loop.close()


@pytestmark_c
def test_introspection_after_a_retrofit(run_plain: Any) -> None:
    """repr(), get_stack(), get_coro()'s cr_* read as without a portal."""

    release = asyncio.Event()

    async def user_coroutine() -> None:
        await greenback_loop.ensure_portal()
        await release.wait()

    async def main() -> Any:
        task = asyncio.create_task(user_coroutine())
        for _ in range(3):
            await asyncio.sleep(0)
        coro = task.get_coro()
        assert type(coro).__name__ == "Portal"
        assert "user_coroutine" in repr(task)
        assert coro.cr_code is user_coroutine.__code__
        frames = task.get_stack()
        assert [f.f_code.co_name for f in frames] == ["user_coroutine"]
        release.set()
        await task
        return True

    assert run_plain(main())


@pytestmark_c
def test_cancel_a_retrofitted_task_parked_in_await_(run_plain: Any) -> None:
    cleanup: list[str] = []

    def park() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            cleanup.append("cancelled at await_")
            raise

    async def worker() -> None:
        await greenback_loop.ensure_portal()
        park()

    async def main() -> None:
        task = asyncio.create_task(worker())
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_plain(main())
    assert cleanup == ["cancelled at await_"]


@pytestmark_c
def test_scheduler_of_many_tasks(run_plain: Any) -> None:
    """A job scheduler's shape: hundreds of tasks under plain asyncio.run,
    each ensure_portal() first, a synchronous comms layer below using
    has_portal() and await_(); some cancelled while parked."""

    class Comms:
        async def asend(self, msg: int) -> int:
            await asyncio.sleep(0.001)
            return msg * 2

        def send(self, msg: int) -> int:
            assert greenback_loop.has_portal()
            return greenback_loop.await_(self.asend(msg))

    comms = Comms()

    async def trigger(n: int) -> int:
        await greenback_loop.ensure_portal()
        total = 0
        for i in range(3):
            total += comms.send(n + i)
        if n % 10 == 0:
            greenback_loop.await_(asyncio.sleep(10))  # parked: cancelled below
        return total

    async def main() -> tuple[list[Any], int]:
        tasks = [asyncio.create_task(trigger(n)) for n in range(200)]
        while sum(t.done() for t in tasks) < 180:
            await asyncio.sleep(0.005)
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        return results, cancelled

    results, cancelled = run_plain(main())
    assert cancelled == 20
    assert [r for n, r in enumerate(results) if n % 10] == [
        2 * (3 * n + 3) for n in range(200) if n % 10
    ]


def test_every_task_on_our_loops_has_a_portal(run: Any) -> None:
    """asyncio.Task() built directly on a greenback_loop loop gets its portal
    when it schedules its first step (a C Task: with the C core)."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        py = await PyTask(_uses_portal(), loop=loop)
        if not C_CORE:
            with pytest.raises(RuntimeError, match=r"built with asyncio\.Task\(\) directly"):
                await asyncio.Task(_uses_portal(), loop=loop)
            return py, None
        return py, await asyncio.Task(_uses_portal(), loop=loop)

    assert run(main()) == ((True, 7), (True, 7) if C_CORE else None)


@pytest.mark.skipif(not C_CORE, reason="the C core's probe")
def test_layout_probe_agrees_with_cpython() -> None:
    """The probed offset is cross-checked by set_task_layout with the one
    CPython 3.14+ publishes for debuggers, when the symbol is visible."""
    from greenback_loop import _retrofit

    assert _retrofit.layout_known()
    published = _impl.core.asyncio_debug_offsets()
    if sys.version_info < (3, 14):
        assert published is None
    elif published is not None:
        task_type = asyncio.tasks._CTask  # type: ignore[attr-defined]
        assert published["size"] == task_type.__basicsize__


@pytestmark_c
def test_swap_refuses_a_coroutine_that_is_not_there() -> None:
    async def main() -> None:
        task = asyncio.create_task(fetch(1))
        other = fetch(2)
        portal = _impl.core.Portal(fetch(3))
        with pytest.raises(RuntimeError, match="not where it was probed"):
            _impl.core.swap_task_coro(task, other, portal)
        portal.close()
        with pytest.raises(TypeError, match="needs a"):
            _impl.core.swap_task_coro(object(), other, other)
        other.close()
        assert await task == 1

    asyncio.run(main())


@PYTASK_SEEN
def test_traceback_has_no_retrofit_frames(run_plain: Any) -> None:
    async def worker() -> None:
        await greenback_loop.ensure_portal()
        greenback_loop.await_(boom())

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def main() -> None:
        await PyTask(worker())

    with pytest.raises(ValueError, match="boom") as info:
        run_plain(main())
    files = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert not [f for f in files if "/greenback_loop/" in f and not f.endswith("_portal_py.py")]


def test_task_given_a_portal_and_dropped_before_its_step_is_closed_by_its_portal(
    loop_kind: str,
) -> None:
    """A task given its portal by bestow_portal() and dropped (its last
    reference) from sync code in another task's step, before the portal's
    first step: the portal still closes the coroutine as a step of its own,
    so an await_ in its cleanup is refused and does not suspend the other
    task (before, the coroutine closed itself on the dropping task's stack
    and that task's step was suspended in await-free code)."""
    if not C_CORE and sys.version_info >= (3, 14):
        pytest.skip(
            "the twin gives portals to pure-Python Tasks only, which 3.14+'s C "
            "asyncio.current_task() does not see"
        )
    events: list[str] = []
    loop = plain_loop_factory(loop_kind)()

    async def b_coro(fut: Any) -> None:
        try:
            await fut
        finally:
            try:
                greenback_loop.await_(asyncio.sleep(0.05))
                events.append("B cleanup suspended")
            except RuntimeError as exc:
                events.append("B cleanup refused" if "being closed" in str(exc) else str(exc))

    async def a_coro() -> None:
        await greenback_loop.ensure_portal()
        fut = asyncio.futures._PyFuture(loop=loop)  # type: ignore[attr-defined]
        # B is a pure-Python task, so that dropping its last reference
        # collects it at once (A is a C task on the C core: on 3.14+ the C
        # current_task() does not see a _PyTask)
        b: Any = asyncio.tasks._PyTask(b_coro(fut), loop=loop)  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # B waits on fut
        greenback_loop.bestow_portal(b)  # B's portal, not stepped yet
        fut.remove_done_callback(fut._callbacks[0][0])

        def sync_layer() -> None:
            nonlocal b, fut
            b = fut = None  # B's last reference goes
            events.append("A after the drop")

        sync_layer()

    try:
        # the twin gives portals to pure-Python Tasks only
        loop.run_until_complete(a_coro() if C_CORE else PyTask(a_coro(), loop=loop))
    finally:
        loop.close()
    assert events == ["B cleanup refused", "A after the drop"], events
