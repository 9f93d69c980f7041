"""The greenback_loop demo: a legacy synchronous layer doing real network I/O.

Run it with ``python -m greenback_loop.demo``.

An inventory service listens on 127.0.0.1. Many concurrent order tasks talk
to it through a client library written long ago as plain synchronous code
(``LegacyInventory``): it calls ``greenback_loop.await_()`` where it reads
and writes its TCP stream, so it runs unchanged inside asyncio tasks, with
no thread and no ``ensure_portal()``. The same workload written with plain
``await`` (``AsyncInventory``) runs beside it on a plain event loop (no
portals at all), on asyncio and on uvloop, and the demo prints both results
and timings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import greenback_loop
from greenback_loop import await_

ITEMS = ("apples", "pears", "plums", "figs")


# -- the service (ordinary asyncio code) -------------------------------------


class InventoryServer:
    """A line protocol: ``STOCK item`` -> count; ``TAKE item n`` -> ``OK left``
    or ``SHORT left``; ``QUIT``."""

    def __init__(self, stock: int) -> None:
        self.stock = {item: stock for item in ITEMS}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                cmd, *args = line.decode().split()
                if cmd == "STOCK":
                    reply = str(self.stock[args[0]])
                elif cmd == "TAKE":
                    item, n = args[0], int(args[1])
                    if self.stock[item] >= n:
                        self.stock[item] -= n
                        reply = f"OK {self.stock[item]}"
                    else:
                        reply = f"SHORT {self.stock[item]}"
                else:
                    break
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


# -- the legacy synchronous client, made to work by await_ -------------------


class LegacyInventory:
    """A synchronous client, as an old code base would have it."""

    def __init__(self, host: str, port: int) -> None:
        self.reader, self.writer = await_(asyncio.open_connection(host, port))

    def _call(self, line: str) -> str:
        self.writer.write(line.encode() + b"\n")
        await_(self.writer.drain())
        return await_(self.reader.readline()).decode().strip()  # type: ignore[no-any-return]

    def stock(self, item: str) -> int:
        return int(self._call(f"STOCK {item}"))

    def take(self, item: str, n: int) -> bool:
        return self._call(f"TAKE {item} {n}").startswith("OK")

    def close(self) -> None:
        self.writer.close()
        await_(self.writer.wait_closed())


def legacy_fulfil(client: LegacyInventory, order: list[tuple[str, int]]) -> int:
    """Business logic nobody wants to rewrite: check, then take, each line."""
    taken = 0
    for item, n in order:
        if client.stock(item) >= n and client.take(item, n):
            taken += n
    return taken


async def legacy_worker(port: int, orders: list[list[tuple[str, int]]]) -> int:
    client = LegacyInventory("127.0.0.1", port)
    try:
        return sum(legacy_fulfil(client, order) for order in orders)
    finally:
        client.close()


# -- the same client written with plain await ---------------------------------


class AsyncInventory:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def _call(self, line: str) -> str:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        return (await self.reader.readline()).decode().strip()

    async def stock(self, item: str) -> int:
        return int(await self._call(f"STOCK {item}"))

    async def take(self, item: str, n: int) -> bool:
        return (await self._call(f"TAKE {item} {n}")).startswith("OK")


async def async_worker(port: int, orders: list[list[tuple[str, int]]]) -> int:
    client = AsyncInventory(*await asyncio.open_connection("127.0.0.1", port))
    taken = 0
    try:
        for order in orders:
            for item, n in order:
                if await client.stock(item) >= n and await client.take(item, n):
                    taken += n
    finally:
        client.writer.close()
        await client.writer.wait_closed()
    return taken


# -- running it ---------------------------------------------------------------


def make_orders(tasks: int, orders_per_task: int) -> list[list[list[tuple[str, int]]]]:
    """Deterministic orders: task t, order o asks for 1-3 of two items."""
    return [
        [
            [(ITEMS[(t + o) % 4], 1 + (t * o) % 3), (ITEMS[(t + 2 * o + 1) % 4], 1 + o % 2)]
            for o in range(orders_per_task)
        ]
        for t in range(tasks)
    ]


async def run_workload(
    worker: Callable[[int, list[list[tuple[str, int]]]], Any],
    tasks: int,
    orders_per_task: int,
    stock: int,
) -> tuple[int, dict[str, int], float, int]:
    server_state = InventoryServer(stock)
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    orders = make_orders(tasks, orders_per_task)
    requests = sum(2 * len(order) for per_task in orders for order in per_task)
    async with server:
        start = time.perf_counter()
        taken = await asyncio.gather(*(worker(port, per_task) for per_task in orders))
        elapsed = time.perf_counter() - start
    return sum(taken), dict(server_state.stock), elapsed, requests


def run_on(kind: str, portals: bool, coro: Any) -> Any:
    """Run *coro* on a greenback_loop loop, or on a plain one."""
    if portals:
        return greenback_loop.run(coro, uvloop=kind == "uvloop")
    if kind == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greenback_loop.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=200, help="concurrent order tasks (200)")
    parser.add_argument("--orders", type=int, default=10, help="orders per task (10)")
    parser.add_argument("--stock", type=int, default=3000, help="initial stock per item (3000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; best time shown (3)")
    args = parser.parse_args(argv)

    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        print("(uvloop not installed: pip install 'greenback_loop[uvloop]' to compare it)")

    print(
        f"greenback_loop {greenback_loop.__version__} demo: {args.tasks} concurrent tasks, "
        f"{args.orders} orders each, over TCP on 127.0.0.1 "
        f"(core: {greenback_loop.implementation}, Python {sys.version.split()[0]})"
    )
    print(f"{'loop':8} {'program':42} {'requests':>8} {'best s':>7} {'req/s':>7}  result")
    failures = 0
    for kind in loops:
        rows = {}
        for label, worker, portals in (
            ("sync layer + await_, greenback_loop loop", legacy_worker, True),
            ("plain async/await, plain loop", async_worker, False),
        ):
            best = float("inf")
            outcome = None
            for _ in range(args.repeat):
                taken, left, elapsed, requests = run_on(
                    kind, portals, run_workload(worker, args.tasks, args.orders, args.stock)
                )
                best = min(best, elapsed)
                outcome = (taken, left)
            assert outcome is not None
            rows[label] = (outcome, requests / best)
            taken, left = outcome
            consistent = taken + sum(left.values()) == args.stock * len(ITEMS)
            failures += not consistent
            print(
                f"{kind:8} {label:42} {requests:8d} {best:7.3f} {requests / best:7.0f}  "
                f"{taken} units taken, {sum(left.values())} left"
                + ("" if consistent else "  INCONSISTENT")
            )
        (ours, ours_rate), (plain, plain_rate) = rows.values()
        failures += ours != plain
        print(
            f"{'':8} same end state: {'yes' if ours == plain else 'NO'}; "
            f"sync layer at {ours_rate / plain_rate:.2f}x the plain program's requests/s"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
