"""Reference leaks: each scenario is repeated until memory settles; a
scenario whose allocated-block count keeps growing fails.

The scenarios make hundreds of tasks, steps and await_ calls per round, so
a leak of one object per task or step grows by hundreds of blocks a round,
far above the block or two a round that asyncio itself leaves (its task
name counter, for one: a plain loop shows it too). With a debug CPython the
check also watches sys.gettotalrefcount().
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable
from typing import Any

import greenlet
import pytest

import greenback_loop
from greenback_loop import _impl

ROUNDS = 12
WARMUP = 4
#: Mean growth per round, in blocks (or references), above which it leaks.
ALLOWANCE = 10


def counts() -> tuple[int, int]:
    gc.collect()
    gc.collect()
    total = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else 0
    return sys.getallocatedblocks(), total


def assert_no_growth(scenario: Callable[[], None]) -> None:
    for _ in range(WARMUP):
        scenario()
    deltas = []
    before = counts()
    for _ in range(ROUNDS):
        scenario()
        after = counts()
        deltas.append((after[0] - before[0], after[1] - before[1]))
        before = after
    # Judge the second half, once caches and pools have filled.
    late = deltas[ROUNDS // 2 :]
    assert sum(d[0] for d in late) / len(late) < ALLOWANCE, deltas
    if hasattr(sys, "gettotalrefcount"):
        assert sum(d[1] for d in late) / len(late) < ALLOWANCE, deltas


async def ticks(n: int) -> int:
    for _ in range(n):
        await asyncio.sleep(0)
    return n


class Oops(Exception):
    pass


async def oops() -> None:
    await asyncio.sleep(0)
    raise Oops("x")


async def scenario_body() -> None:
    def sync_layer(i: int) -> int:
        total = greenback_loop.await_(ticks(2))
        try:
            greenback_loop.await_(oops())
        except Oops:
            total += 1
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(i)
        total += greenback_loop.await_(fut)
        return total

    async def worker(i: int) -> int:
        return sync_layer(i)

    await asyncio.gather(*(worker(i) for i in range(200)))

    # cancellation while parked
    async def parked() -> None:
        greenback_loop.await_(asyncio.sleep(10))

    task = asyncio.create_task(parked())
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

    # a greenlet started by sync code, SQLAlchemy style
    def in_child() -> int:
        return greenback_loop.await_(ticks(1))

    async def nested() -> int:
        return greenlet.greenlet(in_child).switch()  # type: ignore[no-any-return]

    await asyncio.create_task(nested())

    # errors
    try:
        greenback_loop.await_(42)  # type: ignore[arg-type]
    except TypeError:
        pass


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_no_leak_in_tasks(impl: str, loop_kind: str) -> None:
    def scenario() -> None:
        # A bare loop: asyncio.Runner itself leaves a few blocks per run on
        # some versions (its SIGINT handler bookkeeping), which would hide ours.
        loop = greenback_loop.new_event_loop(uvloop=loop_kind == "uvloop")
        try:
            loop.run_until_complete(scenario_body())
        finally:
            loop.close()

    assert_no_growth(scenario)


def test_no_leak_in_portal_protocol(impl: str) -> None:
    assert_no_growth(portal_protocol_scenario(None))


def test_leak_check_catches_one_object_per_throw(impl: str) -> None:
    """The check is sensitive enough to see one object leaked per throw()."""
    hoard: list[object] = []
    with pytest.raises(AssertionError):
        assert_no_growth(portal_protocol_scenario(lambda: hoard.append(object())))


def portal_protocol_scenario(leak: Callable[[], None] | None) -> Callable[[], None]:
    """Sends, throws, closes and drops of portals, parked or not; *leak*, if
    given, runs once per throw."""
    Portal = _impl.core.Portal

    @__import__("types").coroutine
    def suspend() -> Any:
        yield "y"

    async def body() -> int:
        await suspend()
        return 1

    def parked_body_sync() -> None:
        greenback_loop.await_(body())

    async def parked_body() -> None:
        parked_body_sync()

    def scenario() -> None:
        for _ in range(100):
            p = Portal(body())
            p.send(None)
            try:
                p.send(None)
            except StopIteration:
                pass
            p = Portal(body())
            p.send(None)
            try:
                p.throw(Oops("t"))
            except Oops:
                pass
            if leak is not None:
                leak()
            p = Portal(body())
            p.close()
            p = Portal(parked_body())
            p.send(None)
            p.close()
            p = Portal(parked_body())
            p.send(None)
            del p  # finalizer unwinds the parked greenlet

    return scenario


def test_leak_check_detects_a_leak() -> None:
    """The check itself fails on a real leak."""
    hoard: list[object] = []

    def leaky() -> None:
        hoard.extend(object() for _ in range(100))

    with pytest.raises(AssertionError):
        assert_no_growth(leaky)


async def trio_scenario_body() -> None:
    import trio

    async def oops_trio() -> None:
        await trio.sleep(0)
        raise Oops("x")

    def sync_layer() -> int:
        total = 0
        for _ in range(2):
            greenback_loop.await_(trio.sleep(0))
            total += 1
        try:
            greenback_loop.await_(oops_trio())
        except Oops:
            total += 1
        return total

    async def worker() -> None:
        await greenback_loop.ensure_portal()  # a checkpoint only, under greenback_loop.trio.run
        sync_layer()

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(worker)

    # cancellation while parked, a foreign yield, a portal given and taken back
    with trio.move_on_after(0.001):
        greenback_loop.await_(trio.sleep(10))
    async with greenback_loop.portals_for_tree():
        greenback_loop.await_(trio.sleep(0))
    try:
        greenback_loop.await_(42)  # type: ignore[arg-type]
    except TypeError:
        pass


@pytest.mark.parametrize("how", ["greenback_loop.trio.run", "ensure_portal"])
def test_no_leak_in_trio_tasks(impl: str, how: str) -> None:
    import trio

    import greenback_loop.trio

    async def with_ensure_portal() -> None:
        await greenback_loop.ensure_portal()
        await trio_scenario_body()

    def scenario() -> None:
        if how == "ensure_portal":
            trio.run(with_ensure_portal)
        else:
            greenback_loop.trio.run(trio_scenario_body)

    assert_no_growth(scenario)
