"""The same programs through the C core and the pure-Python twin give the
same results, the same exceptions and the same user tracebacks."""

from __future__ import annotations

import asyncio
import contextvars
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _impl

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")


async def ticks(n: int) -> int:
    for _ in range(n):
        await asyncio.sleep(0)
    return n


class Failure(Exception):
    pass


async def fail_after(n: int) -> None:
    await ticks(n)
    raise Failure(f"failed after {n}")


def sync_sum(n: int) -> int:
    return sum(greenback_loop.await_(ticks(i)) for i in range(n))


def sync_fail(n: int) -> None:
    greenback_loop.await_(fail_after(n))


async def program_values() -> Any:
    async def worker(i: int) -> tuple[int, str]:
        var.set(f"w{i}")
        total = sync_sum(i)
        return total, var.get()

    return await asyncio.gather(*(worker(i) for i in range(6)))


async def program_exceptions() -> Any:
    async def worker(i: int) -> None:
        sync_fail(i)

    return await asyncio.gather(*(worker(i) for i in range(3)), return_exceptions=True)


async def program_cancellation() -> Any:
    log: list[str] = []

    def parked() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            log.append("cancelled")
            greenback_loop.await_(asyncio.sleep(0))
            log.append("cleanup awaited")
            raise

    async def worker() -> None:
        parked()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        log.append("task cancelled")
    return log


async def program_errors() -> Any:
    outcomes = []
    for bad in (42, object()):
        try:
            greenback_loop.await_(bad)
        except BaseException as exc:
            outcomes.append(exc)

    def in_callback() -> None:
        try:
            greenback_loop.await_(asyncio.sleep(0))
        except BaseException as exc:
            outcomes.append(exc)

    asyncio.get_running_loop().call_soon(in_callback)
    await asyncio.sleep(0.01)
    return outcomes


async def program_throw_signatures() -> Any:
    from greenback_loop import _impl

    @__import__("types").coroutine
    def suspend() -> Any:
        yield

    async def body() -> None:
        await suspend()

    outcomes = []
    for args in [(ValueError("v"),), (ValueError,), (42,), (ValueError("v"), "x")]:
        portal = _impl.core.Portal(body())
        portal.send(None)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                portal.throw(*args)
        except BaseException as exc:
            outcomes.append(exc)
        portal.close()
    return outcomes


PROGRAMS: list[Callable[[], Any]] = [
    program_values,
    program_exceptions,
    program_cancellation,
    program_errors,
    program_throw_signatures,
]


def describe(value: Any) -> Any:
    """What a user can observe of a result: values as they are; exceptions
    by type, message and the traceback's frames outside greenback_loop."""
    if isinstance(value, BaseException):
        frames = [
            (f.name, f.line)
            for f in traceback.extract_tb(value.__traceback__)
            if "/greenback_loop/" not in f.filename
        ]
        return (type(value).__name__, str(value), frames)
    if isinstance(value, (list, tuple)):
        return type(value)(describe(v) for v in value)
    return value


@pytest.fixture
def both_cores(impl: str) -> Iterator[list[str]]:
    if len(_impl.AVAILABLE) < 2:
        pytest.skip("needs both cores (the C core is not built here)")
    if impl != _impl.AVAILABLE[0]:
        pytest.skip("compares both cores itself: runs once")
    yield list(_impl.AVAILABLE)
    _impl.select(impl)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_same_behaviour(both_cores: list[str], run: Any, program: Callable[[], Any]) -> None:
    seen = {}
    for name in both_cores:
        _impl.select(name)
        try:
            seen[name] = describe(run(program()))
        except BaseException as exc:
            seen[name] = ("raised", describe(exc))
    assert seen["c"] == seen["python"]
