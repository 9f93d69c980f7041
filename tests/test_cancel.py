"""Cancellation, timeouts and process-level exceptions through greenback_loop.await_()."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

import greenback_loop


async def test_cancel_while_parked_surfaces_at_the_call() -> None:
    events: list[str] = []

    def sync_layer() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            events.append("cancelled at await_")
            raise
        finally:
            events.append("sync finally")

    async def body() -> None:
        sync_layer()

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel("stop it")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert events == ["cancelled at await_", "sync finally"]


async def test_swallowed_cancel_behaves_like_await() -> None:
    """Swallowing CancelledError at await_ keeps the task alive, as it does
    at ``await``; uncancel() bookkeeping matches too."""

    def sync_layer() -> str:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            pass
        # the task carries on and can still await
        return greenback_loop.await_(asyncio.sleep(0, "carried on"))

    async def with_await() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        return await asyncio.sleep(0, "carried on")

    async def body() -> str:
        return sync_layer()

    results = []
    for coro_fn in (body, with_await):
        task = asyncio.create_task(coro_fn())
        await asyncio.sleep(0.01)
        task.cancel()
        results.append((await task, task.cancelled(), task.cancelling()))
    assert results[0] == results[1] == ("carried on", False, 1)


async def test_cancel_before_first_step() -> None:
    ran = []

    async def body() -> None:
        ran.append(True)

    task = asyncio.create_task(body())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == []


async def test_wait_for_timeout_in_sync_code() -> None:
    def sync_layer() -> str:
        try:
            greenback_loop.await_(asyncio.wait_for(asyncio.sleep(10), timeout=0.01))
        except TimeoutError:
            return "timed out"
        return "finished"

    assert sync_layer() == "timed out"


async def test_wait_for_around_task_parked_in_sync_code() -> None:
    cleanup = []

    def sync_layer() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        finally:
            cleanup.append("unwound")

    async def body() -> None:
        sync_layer()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(body(), timeout=0.01)
    assert cleanup == ["unwound"]


async def test_timeout_context_around_sync_code() -> None:
    def sync_layer() -> None:
        greenback_loop.await_(asyncio.sleep(10))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            sync_layer()

    def sync_with_timeout() -> str:
        try:
            with_timeout = asyncio.timeout(0.01)

            with greenback_loop.async_context(with_timeout):
                greenback_loop.await_(asyncio.sleep(10))
        except TimeoutError:
            return "timed out"
        return "no timeout"

    assert sync_with_timeout() == "timed out"


async def test_task_group_cancels_siblings_parked_in_sync_code() -> None:
    unwound = []

    def park() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        finally:
            unwound.append("sibling")

    async def sibling() -> None:
        park()

    async def failing() -> None:
        greenback_loop.await_(asyncio.sleep(0.01))
        raise ValueError("boom")

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(sibling())
            tg.create_task(failing())
    assert info.group_contains(ValueError)  # type: ignore[attr-defined]
    assert unwound == ["sibling", "sibling"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_escape_the_loop(run: Any, exc_type: type[BaseException]) -> None:
    """KeyboardInterrupt/SystemExit raised in sync code under await_ stop the
    run like they do from plain async code."""
    cleanup = []

    async def raiser() -> None:
        await asyncio.sleep(0)
        raise exc_type()

    def sync_layer() -> None:
        try:
            greenback_loop.await_(raiser())
        finally:
            cleanup.append("finally ran")

    async def main() -> None:
        sync_layer()

    with pytest.raises(exc_type):
        run(main())
    assert cleanup == ["finally ran"]


def test_keyboard_interrupt_from_signal_while_parked(run: Any) -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("POSIX signals")
    import os
    import signal

    cleanup = []

    def sync_layer() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, os.kill, os.getpid(), signal.SIGINT)
        try:
            greenback_loop.await_(asyncio.sleep(10))
        finally:
            cleanup.append("finally ran")

    async def main() -> None:
        sync_layer()

    with pytest.raises(KeyboardInterrupt):
        run(main())
    assert cleanup == ["finally ran"]
