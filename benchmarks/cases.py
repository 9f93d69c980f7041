"""The benchmark cases and their bodies.

Every body runs inside a fresh event loop (on Trio: a fresh ``trio.run``),
times only its hot part with ``time.perf_counter`` and checks its result,
then returns a :class:`Sample`. A case measured on Trio has a second body
written with Trio's primitives (``trio_body``). The TCP case lives in
:mod:`benchmarks.tcp`, the memory case (one subprocess per sample) in
:mod:`benchmarks.memory`. Trio is imported only by the Trio bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from benchmarks.contenders import ON_GBL, RETROFIT, Contender, check


@dataclass
class Params:
    """Sizes of the cases (``--quick`` shrinks them)."""

    n: int = 200_000  # a, b, c, d, h: operations per sample
    spawn_tasks: int = 20_000  # e
    memory_tasks: int = 100_000  # f
    tcp_clients: int = 100  # g: concurrent connections
    tcp_requests: int = 20_000  # g: requests per sample, all clients together
    depth: int = 50  # h: frames between the task and the await

    @classmethod
    def quick(cls) -> Params:
        return cls(n=2_000, spawn_tasks=200, memory_tasks=2_000, tcp_requests=500)


@dataclass
class Sample:
    """One measurement: ``value`` in the case's unit, plus extras."""

    value: float
    extra: dict[str, float] = field(default_factory=dict)


def per_op(elapsed: float, ops: int) -> Sample:
    check(elapsed > 0 and ops > 0, f"elapsed {elapsed!r} s for {ops} operations")
    return Sample(elapsed / ops * 1e9)


# A row of a case: (contender kind, variant or None). Kind "greenback_loop"
# stands for every available greenback_loop core.
Row = tuple[str, "str | None"]
Body = Callable[[Contender, "str | None", Params], Awaitable[Sample]]


@dataclass(frozen=True)
class Case:
    id: str  # "a", "d.coro", "h.50", ...
    title: str
    unit: str
    rows: tuple[Row, ...]
    body: Body | None  # None: not measured in a loop (memory)
    #: (case id, kind) whose median is the ratio's denominator; None: the
    #: plain row of this case.
    baseline: tuple[str, str] | None = None
    #: The same case written for Trio (None: not measured on Trio).
    trio_body: Body | None = None
    #: The title on Trio, where it differs.
    trio_title: str | None = None

    @property
    def letter(self) -> str:
        return self.id.split(".")[0]

    def body_for(self, loop: str) -> Body | None:
        return self.trio_body if loop == "trio" else self.body

    def title_for(self, loop: str) -> str:
        return (self.trio_title or self.title) if loop == "trio" else self.title

    def runs_on(self, loop: str) -> bool:
        """Whether the case is measured on *loop* (memory: not on Trio)."""
        return loop != "trio" or self.trio_body is not None


# -- a, b, c: steps and await_ of a suspending awaitable ---------------------


async def async_steps(n: int) -> float:
    """``await asyncio.sleep(0)`` n times; returns the elapsed seconds."""
    sleep = asyncio.sleep
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await sleep(0, 1)
    elapsed = perf_counter() - t0
    check(total == n, f"sum of sleep(0, 1) results {total} != {n}")
    return elapsed


def sync_steps(n: int, await_: Callable[[Any], Any]) -> float:
    """``await_(asyncio.sleep(0))`` n times from sync code."""
    sleep = asyncio.sleep
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await_(sleep(0, 1))
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await_(sleep(0, 1)) results {total} != {n}")
    return elapsed


async def case_step(c: Contender, variant: str | None, p: Params) -> Sample:
    await c.get_portal(variant)  # not timed
    return per_op(await async_steps(p.n), p.n)


async def case_await_sleep(c: Contender, variant: str | None, p: Params) -> Sample:
    if c.kind == "plain":
        return per_op(await async_steps(p.n), p.n)
    return per_op(await c.run_sync(sync_steps, p.n, variant=variant), p.n)


# -- d: await_ of awaitables that do not suspend ------------------------------


async def one() -> int:
    return 1


async def async_coros(n: int) -> float:
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await one()
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await one() {total} != {n}")
    return elapsed


def sync_coros(n: int, await_: Callable[[Any], Any]) -> float:
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await_(one())
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await_(one()) {total} != {n}")
    return elapsed


def done_future() -> asyncio.Future[int]:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(1)
    return fut


async def async_futures(n: int) -> float:
    fut = done_future()
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await fut
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await done_future {total} != {n}")
    return elapsed


def sync_futures(n: int, await_: Callable[[Any], Any]) -> float:
    fut = done_future()
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await_(fut)
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await_(done_future) {total} != {n}")
    return elapsed


async def case_await_coro(c: Contender, variant: str | None, p: Params) -> Sample:
    if c.kind == "plain":
        return per_op(await async_coros(p.n), p.n)
    return per_op(await c.run_sync(sync_coros, p.n), p.n)


async def case_await_future(c: Contender, variant: str | None, p: Params) -> Sample:
    if c.kind == "plain":
        return per_op(await async_futures(p.n), p.n)
    return per_op(await c.run_sync(sync_futures, p.n), p.n)


# -- e: spawning tasks ---------------------------------------------------------


async def nothing() -> None:
    pass


async def case_spawn(c: Contender, variant: str | None, p: Params) -> Sample:
    loop = asyncio.get_running_loop()
    m = p.spawn_tasks
    make: Callable[[], Any]
    probe: Callable[[], Any] | None = None
    if c.kind == "greenback":
        gb = c.greenback

        async def probe_body() -> bool:
            return bool(gb.has_portal())

        if variant == "with_portal_run":

            def make() -> Any:
                return gb.with_portal_run(nothing)

            def probe() -> Any:
                return gb.with_portal_run(probe_body)

        else:

            async def make() -> None:
                await gb.ensure_portal()

            async def probe() -> bool:
                await gb.ensure_portal()
                return bool(gb.has_portal())

    elif variant == RETROFIT:
        gbl = c.greenback

        async def make() -> None:
            await gbl.ensure_portal()

        async def probe() -> bool:
            await gbl.ensure_portal()
            return bool(gbl.has_portal())

    else:
        make = nothing
        if c.kind == "greenback_loop":
            gbl = c.greenback

            async def probe() -> bool:
                return bool(gbl.has_portal())

    create_task = loop.create_task
    gather = asyncio.gather
    t0 = perf_counter()
    tasks = [create_task(make()) for _ in range(m)]
    results = await gather(*tasks)
    elapsed = perf_counter() - t0
    check(
        len(results) == m and results.count(None) == m, f"{m} tasks returned {len(results)} Nones"
    )
    if probe is not None:  # a task made the same way can reach its portal
        check(await create_task(probe()) is True, f"{c.name}: spawned task has no portal")
    return per_op(elapsed, m)


# -- h: the same await, deep in a stack -----------------------------------------


async def async_deep(k: int, n: int) -> float:
    if k > 1:
        return await async_deep(k - 1, n)
    return await async_steps(n)


def sync_deep(k: int, n: int, await_: Callable[[Any], Any]) -> float:
    if k > 1:
        return sync_deep(k - 1, n, await_)
    return sync_steps(n, await_)


async def case_deep(c: Contender, variant: str | None, p: Params, depth: int) -> Sample:
    if c.kind == "plain":
        coro = async_deep(depth, p.n) if depth else async_steps(p.n)
        return per_op(await coro, p.n)
    if depth:
        return per_op(await c.run_sync(sync_deep, depth, p.n), p.n)
    return per_op(await c.run_sync(sync_steps, p.n), p.n)


async def case_deep0(c: Contender, variant: str | None, p: Params) -> Sample:
    return await case_deep(c, variant, p, 0)


async def case_deep_n(c: Contender, variant: str | None, p: Params) -> Sample:
    return await case_deep(c, variant, p, p.depth)


# -- the same cases on Trio ----------------------------------------------------
#
# A step is ``await trio.sleep(0)`` (a checkpoint: a real trip through Trio's
# scheduler), which returns None: the check counts the Nones that came back.


async def trio_async_steps(n: int) -> float:
    """``await trio.sleep(0)`` n times; returns the elapsed seconds."""
    import trio

    sleep: Callable[[float], Awaitable[Any]] = trio.sleep
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        if await sleep(0) is None:
            total += 1
    elapsed = perf_counter() - t0
    check(total == n, f"{total} of {n} trio.sleep(0) returned None")
    return elapsed


def trio_sync_steps(n: int, await_: Callable[[Any], Any]) -> float:
    """``await_(trio.sleep(0))`` n times from sync code."""
    import trio

    sleep: Callable[[float], Awaitable[Any]] = trio.sleep
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        if await_(sleep(0)) is None:
            total += 1
    elapsed = perf_counter() - t0
    check(total == n, f"{total} of {n} await_(trio.sleep(0)) returned None")
    return elapsed


async def trio_case_step(c: Contender, variant: str | None, p: Params) -> Sample:
    await c.get_portal(variant)  # not timed
    return per_op(await trio_async_steps(p.n), p.n)


async def trio_case_await_sleep(c: Contender, variant: str | None, p: Params) -> Sample:
    if c.kind == "plain":
        return per_op(await trio_async_steps(p.n), p.n)
    return per_op(await c.run_sync(trio_sync_steps, p.n, variant=variant), p.n)


class Done:
    """An awaitable that is already done (Trio has no Future): awaiting it
    returns its value without suspending, as a done asyncio Future does."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, int]:
        return self.value
        yield  # a generator that stops at once


async def async_dones(n: int) -> float:
    done = Done(1)
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await done
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await Done(1) {total} != {n}")
    return elapsed


def sync_dones(n: int, await_: Callable[[Any], Any]) -> float:
    done = Done(1)
    total = 0
    t0 = perf_counter()
    for _ in range(n):
        total += await_(done)
    elapsed = perf_counter() - t0
    check(total == n, f"sum of await_(Done(1)) {total} != {n}")
    return elapsed


async def trio_case_await_done(c: Contender, variant: str | None, p: Params) -> Sample:
    if c.kind == "plain":
        return per_op(await async_dones(p.n), p.n)
    return per_op(await c.run_sync(sync_dones, p.n), p.n)


async def count(acc: list[None]) -> None:
    acc.append(None)


async def trio_case_spawn(c: Contender, variant: str | None, p: Params) -> Sample:
    """Start m trivial tasks into a nursery and wait for them all (Trio has
    no gather: the nursery's exit is the wait)."""
    import trio

    m = p.spawn_tasks
    args: tuple[Any, ...]
    probe_args: tuple[Any, ...]
    gb = c.greenback

    async def probe(found: list[bool]) -> None:
        found.append(bool(gb.has_portal()))

    if c.kind == "greenback" and variant == "with_portal_run":
        args = (gb.with_portal_run, count)
        probe_args = (gb.with_portal_run, probe)
    elif c.kind == "greenback" or variant == RETROFIT:

        async def make(acc: list[None]) -> None:
            await gb.ensure_portal()
            acc.append(None)

        async def probe_ensured(found: list[bool]) -> None:
            await gb.ensure_portal()
            await probe(found)

        args = (make,)
        probe_args = (probe_ensured,)
    else:
        args = (count,)
        probe_args = (probe,)

    acc: list[None] = []
    open_nursery = trio.open_nursery
    t0 = perf_counter()
    async with open_nursery() as nursery:
        start_soon: Callable[..., None] = nursery.start_soon
        for _ in range(m):
            start_soon(*args, acc)
    elapsed = perf_counter() - t0
    check(len(acc) == m, f"{len(acc)} of {m} tasks ran")
    if c.kind != "plain":  # a task made the same way can reach its portal
        found: list[bool] = []
        async with open_nursery() as nursery:
            start_probe: Callable[..., None] = nursery.start_soon
            start_probe(*probe_args, found)
        check(found == [True], f"{c.name}: spawned task has no portal")
    return per_op(elapsed, m)


# -- the registry ----------------------------------------------------------------

GBL: Row = ("greenback_loop", None)
BRIDGES: tuple[Row, ...] = (("plain", None), ("greenback", None), ("sqlalchemy", None), GBL)


def all_cases(depth: int = 50) -> list[Case]:
    from benchmarks import tcp

    return [
        Case(
            "a",
            "step: await sleep(0)",
            "ns/op",
            (("plain", None),),
            case_step,
            trio_body=trio_case_step,
            trio_title="step: await trio.sleep(0)",
        ),
        Case(
            "b",
            "portal step: await sleep(0) in a task with a portal",
            "ns/op",
            (("greenback", None), GBL, ("greenback_loop", RETROFIT)),
            case_step,
            baseline=("a", "plain"),
            trio_body=trio_case_step,
            trio_title="portal step: await trio.sleep(0) in a task with a portal",
        ),
        Case(
            "c",
            "await_(sleep(0)) from sync code",
            "ns/op",
            (*BRIDGES, ("greenback_loop", RETROFIT), ("greenback", ON_GBL)),
            case_await_sleep,
            trio_body=trio_case_await_sleep,
            trio_title="await_(trio.sleep(0)) from sync code",
        ),
        Case(
            "d.coro",
            "await_ non-suspending: coroutine",
            "ns/op",
            BRIDGES,
            case_await_coro,
            trio_body=case_await_coro,
        ),
        Case(
            "d.future",
            "await_ non-suspending: done Future",
            "ns/op",
            BRIDGES,
            case_await_future,
            trio_body=trio_case_await_done,
            trio_title="await_ non-suspending: done awaitable (Trio has no Future)",
        ),
        Case(
            "e",
            "spawn: create + gather trivial tasks",
            "ns/task",
            (
                ("plain", None),
                ("greenback", "with_portal_run"),
                ("greenback", "ensure_portal"),
                GBL,
                ("greenback_loop", RETROFIT),
                ("greenback", ON_GBL),
            ),
            case_spawn,
            trio_body=trio_case_spawn,
            trio_title="spawn: start_soon trivial tasks into a nursery, wait at its exit",
        ),
        Case(
            "f.idle",
            "memory: tasks idle on an Event",
            "B/task",
            (("plain", None), ("greenback", "ensure_portal"), GBL),
            None,
        ),
        Case(
            "f.await_",
            "memory: tasks parked in await_ from sync code",
            "B/task",
            (("greenback", "ensure_portal"), ("sqlalchemy", None), GBL),
            None,
            baseline=("f.idle", "plain"),
        ),
        Case(
            "g",
            "tcp: sync handler layer, request/reply",
            "ns/req",
            BRIDGES,
            tcp.case_tcp,
            trio_body=tcp.trio_case_tcp,
        ),
        Case("h.0", "deep stack: await_(sleep(0)) 0 frames deep", "ns/op", BRIDGES, case_deep0),
        Case(
            "h.deep",
            f"deep stack: await_(sleep(0)) {depth} frames deep",
            "ns/op",
            BRIDGES,
            case_deep_n,
        ),
    ]
