"""Case g: a line-based TCP request/reply server whose handler runs a
synchronous layer that reads and writes through ``await_``.

The clients are plain asyncio protocols (callbacks, no tasks) on the same
loop, so only the server side differs between contenders. Each client sends
one request line, waits for the reply, checks it, and sends the next one
until it has done its share of the requests.

On Trio (:func:`trio_case_tcp`) the server is ``trio.serve_tcp`` and the
layer reads with ``receive_some`` and writes with ``send_all``; Trio has no
callbacks, so each client is a task, and the clients are spawned under a
system task so that under ``greenback_loop.trio.run`` (where every task
below the main one has a portal) they have none either: there too only the
server side differs between contenders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from benchmarks.cases import Params, Sample, per_op
from benchmarks.contenders import BenchmarkError, Contender, check

HOST = "127.0.0.1"
BACKLOG = 4096


def reply_for(line: bytes) -> bytes:
    return b"%d\n" % (int(line) + 1)


def sync_layer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, await_: Callable[[Any], Any]
) -> int:
    """The "legacy" synchronous protocol layer: serve requests until EOF."""
    served = 0
    while True:
        line = await_(reader.readline())
        if not line:
            break
        writer.write(reply_for(line))
        await_(writer.drain())
        served += 1
    writer.close()
    return served


async def async_layer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """The same layer written with plain ``await``."""
    served = 0
    while True:
        line = await reader.readline()
        if not line:
            break
        writer.write(reply_for(line))
        await writer.drain()
        served += 1
    writer.close()
    return served


class ServerState:
    def __init__(self, connections: int, loop: asyncio.AbstractEventLoop) -> None:
        self.connections = connections
        self.started = 0
        self.finished = 0
        self.served = 0
        self.errors: list[BaseException] = []
        self.all_started = loop.create_future()
        self.all_finished = loop.create_future()


def make_handler(c: Contender, state: ServerState) -> Callable[..., Any]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.started += 1
        if state.started == state.connections:
            state.all_started.set_result(None)
        try:
            if c.kind == "plain":
                served = await async_layer(reader, writer)
            else:
                served = await c.run_sync(sync_layer, reader, writer)
            state.served += served
        except BaseException as exc:  # reported after the run, loudly
            state.errors.append(exc)
            writer.close()
        state.finished += 1
        if state.finished == state.connections:
            state.all_finished.set_result(None)

    return handler


class Client(asyncio.Protocol):
    """Sends ``quota`` requests one after the other, checking every reply."""

    def __init__(self, cid: int, quota: int, done: asyncio.Future[int]) -> None:
        self.base = cid * 1_000_000
        self.quota = quota
        self.done = done
        self.replies = 0
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        if self.quota == 0:
            self.done.set_result(0)
        else:
            self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(b"%d\n" % (self.base + self.replies))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line, buf = buf[:i], buf[i + 1 :]
            expected = self.base + self.replies + 1
            if int(line) != expected:
                self.fail(f"reply {line!r}, expected {expected}")
                return
            self.replies += 1
            if self.replies == self.quota:
                self.done.set_result(self.replies)
            else:
                self.send()
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.fail(f"connection lost after {self.replies} replies ({exc!r})")

    def fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(BenchmarkError(f"tcp client: {why}"))


async def case_tcp(c: Contender, variant: str | None, p: Params) -> Sample:
    loop = asyncio.get_running_loop()
    total = p.tcp_requests
    nconn = max(1, min(p.tcp_clients, total))
    state = ServerState(nconn, loop)
    server = await asyncio.start_server(make_handler(c, state), HOST, 0, backlog=BACKLOG)
    try:
        port = server.sockets[0].getsockname()[1]
        clients: list[Client] = []
        for i in range(nconn):
            quota = total // nconn + (1 if i < total % nconn else 0)
            _, proto = await loop.create_connection(
                partial(Client, i, quota, loop.create_future()), HOST, port
            )
            clients.append(proto)
        await asyncio.wait_for(asyncio.shield(state.all_started), 30)  # every handler is running

        t0 = perf_counter()
        for client in clients:
            client.start()
        counts = await asyncio.gather(*(client.done for client in clients))
        elapsed = perf_counter() - t0

        for client in clients:
            assert client.transport is not None
            client.transport.close()
        await asyncio.wait_for(asyncio.shield(state.all_finished), 30)
    finally:
        server.close()
        await server.wait_closed()
    if state.errors:
        raise BenchmarkError(f"{c.name}: a server handler failed") from state.errors[0]
    check(sum(counts) == total, f"clients got {sum(counts)} replies, expected {total}")
    check(state.served == total, f"server served {state.served} requests, expected {total}")
    sample = per_op(elapsed, total)
    sample.extra["requests_per_s"] = total / elapsed
    return sample


# -- the same case on Trio -----------------------------------------------------------


class LineBuffer:
    """Splits the bytes a Trio stream receives into lines."""

    def __init__(self) -> None:
        self.buf = b""

    def pop(self) -> bytes | None:
        """The next whole line (without its newline), or None."""
        i = self.buf.find(b"\n")
        if i < 0:
            return None
        line, self.buf = self.buf[:i], self.buf[i + 1 :]
        return line


def trio_sync_layer(stream: Any, await_: Callable[[Any], Any]) -> int:
    """The synchronous layer on a ``trio.SocketStream``: serve until EOF."""
    served = 0
    lines = LineBuffer()
    while True:
        line = lines.pop()
        if line is None:
            data = await_(stream.receive_some(65536))
            if not data:
                break
            lines.buf += data
            continue
        await_(stream.send_all(reply_for(line)))
        served += 1
    await_(stream.aclose())
    return served


async def trio_async_layer(stream: Any) -> int:
    """The same layer written with plain ``await``."""
    served = 0
    lines = LineBuffer()
    while True:
        line = lines.pop()
        if line is None:
            data = await stream.receive_some(65536)
            if not data:
                break
            lines.buf += data
            continue
        await stream.send_all(reply_for(line))
        served += 1
    await stream.aclose()
    return served


class TrioState:
    """Counters and events shared by the handlers, the clients and the
    measuring task."""

    def __init__(self, connections: int) -> None:
        import trio

        self.connections = connections
        self.started = self.finished = self.served = 0
        self.connected = self.clients_done = 0
        self.errors: list[BaseException] = []
        self.counts: list[int] = []
        self.all_started = trio.Event()  # every handler runs its layer
        self.all_finished = trio.Event()  # every handler saw EOF
        self.all_connected = trio.Event()
        self.go = trio.Event()  # clients: start sending
        self.all_replied = trio.Event()  # every client got its quota
        self.close = trio.Event()  # clients: close the connections

    def client_exit(self) -> None:
        self.clients_done += 1
        if self.clients_done == self.connections:
            self.all_replied.set()


def trio_handler(c: Contender, state: TrioState) -> Callable[[Any], Any]:
    async def handler(stream: Any) -> None:
        try:
            await c.get_portal(None)  # greenback: ensure_portal(), not timed
            state.started += 1
            if state.started == state.connections:
                state.all_started.set()
            if c.kind == "plain":
                served = await trio_async_layer(stream)
            else:
                served = await c.run_sync(trio_sync_layer, stream)
            state.served += served
        except BaseException as exc:  # reported after the run, loudly
            state.errors.append(exc)
            await stream.aclose()
        state.finished += 1
        if state.finished == state.connections:
            state.all_finished.set()

    return handler


async def trio_client(cid: int, quota: int, port: int, state: TrioState) -> None:
    """Sends *quota* requests one after the other, checking every reply."""
    import trio

    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except BaseException as exc:
        state.errors.append(exc)
        state.client_exit()
        return
    try:
        state.connected += 1
        if state.connected == state.connections:
            state.all_connected.set()
        await state.go.wait()
        base = cid * 1_000_000
        lines = LineBuffer()
        replies = 0
        while replies < quota:
            await stream.send_all(b"%d\n" % (base + replies))
            line = lines.pop()
            while line is None:
                data = await stream.receive_some(65536)
                if not data:
                    raise BenchmarkError(f"tcp client: connection lost after {replies} replies")
                lines.buf += data
                line = lines.pop()
            expected = base + replies + 1
            if int(line) != expected:
                raise BenchmarkError(f"tcp client: reply {line!r}, expected {expected}")
            replies += 1
        state.counts.append(replies)
    except BaseException as exc:
        state.errors.append(exc)
    finally:
        state.client_exit()
    try:
        await state.close.wait()
    finally:
        await stream.aclose()


async def trio_clients(port: int, state: TrioState, quotas: list[int]) -> None:
    """The system task that runs the clients (a system task's children get
    no portal from ``greenback_loop.trio.run``)."""
    import trio

    try:
        async with trio.open_nursery() as nursery:
            for i, quota in enumerate(quotas):
                nursery.start_soon(trio_client, i, quota, port, state)
    except BaseException as exc:  # a system task must not raise
        state.errors.append(exc)


async def trio_case_tcp(c: Contender, variant: str | None, p: Params) -> Sample:
    import trio

    total = p.tcp_requests
    nconn = max(1, min(p.tcp_clients, total))
    quotas = [total // nconn + (1 if i < total % nconn else 0) for i in range(nconn)]
    state = TrioState(nconn)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, trio_handler(c, state), 0, host=HOST, backlog=BACKLOG)
        )
        port = listeners[0].socket.getsockname()[1]
        trio.lowlevel.spawn_system_task(trio_clients, port, state, quotas)
        with trio.fail_after(30):  # every client is connected, every handler running
            await state.all_connected.wait()
            await state.all_started.wait()

        t0 = perf_counter()
        state.go.set()
        await state.all_replied.wait()
        elapsed = perf_counter() - t0

        state.close.set()
        with trio.fail_after(30):
            await state.all_finished.wait()
        nursery.cancel_scope.cancel()  # the listener
    if state.errors:
        raise BenchmarkError(f"{c.name}: a server handler or client failed") from state.errors[0]
    counts = state.counts
    check(sum(counts) == total, f"clients got {sum(counts)} replies, expected {total}")
    check(state.served == total, f"server served {state.served} requests, expected {total}")
    sample = per_op(elapsed, total)
    sample.extra["requests_per_s"] = total / elapsed
    return sample
