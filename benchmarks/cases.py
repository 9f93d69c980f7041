"""The benchmark cases and their bodies.

Every body runs inside a fresh event loop, times only its hot part with
``time.perf_counter`` and checks its result, then returns a
:class:`Sample`. The TCP case lives in :mod:`benchmarks.tcp`, the memory
case (one subprocess per sample) in :mod:`benchmarks.memory`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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

    @property
    def letter(self) -> str:
        return self.id.split(".")[0]


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


# -- the registry ----------------------------------------------------------------

GBL: Row = ("greenback_loop", None)
BRIDGES: tuple[Row, ...] = (("plain", None), ("greenback", None), ("sqlalchemy", None), GBL)


def all_cases(depth: int = 50) -> list[Case]:
    from benchmarks import tcp

    return [
        Case("a", "step: await sleep(0)", "ns/op", (("plain", None),), case_step),
        Case(
            "b",
            "portal step: await sleep(0) in a task with a portal",
            "ns/op",
            (("greenback", None), GBL, ("greenback_loop", RETROFIT)),
            case_step,
            baseline=("a", "plain"),
        ),
        Case(
            "c",
            "await_(sleep(0)) from sync code",
            "ns/op",
            (*BRIDGES, ("greenback_loop", RETROFIT), ("greenback", ON_GBL)),
            case_await_sleep,
        ),
        Case("d.coro", "await_ non-suspending: coroutine", "ns/op", BRIDGES, case_await_coro),
        Case("d.future", "await_ non-suspending: done Future", "ns/op", BRIDGES, case_await_future),
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
        Case("g", "tcp: sync handler layer, request/reply", "ns/req", BRIDGES, tcp.case_tcp),
        Case("h.0", "deep stack: await_(sleep(0)) 0 frames deep", "ns/op", BRIDGES, case_deep0),
        Case(
            "h.deep",
            f"deep stack: await_(sleep(0)) {depth} frames deep",
            "ns/op",
            BRIDGES,
            case_deep_n,
        ),
    ]
