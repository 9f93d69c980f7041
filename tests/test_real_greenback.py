"""The real greenback package beside greenback_loop: its functions work in
every greenback_loop task, with any number of tasks parked in its await_,
mixed with greenback_loop's own; greenback keeps working on plain loops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
import weakref
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _greenback

greenback = pytest.importorskip("greenback")


class Comms:
    """A synchronous comms layer over an async transport."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def asend(self, msg: int) -> int:
        await asyncio.sleep(0.001)
        self.sent.append(msg)
        return msg + 1000

    def send(self, msg: int) -> int:
        if not greenback.has_portal():
            raise RuntimeError("no portal")
        return greenback.await_(self.asend(msg))  # type: ignore[no-any-return]


def test_scheduler_of_200_tasks(run: Any) -> None:
    comms = Comms()

    async def trigger(n: int) -> int:
        await greenback.ensure_portal()
        total = 0
        for i in range(3):
            total += comms.send(n * 10 + i)
        if n % 20 == 0:
            greenback.await_(asyncio.sleep(30))  # parked here when cancelled
        return total

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(trigger(n)) for n in range(200)]
        while sum(t.done() for t in tasks) < 190:
            await asyncio.sleep(0.005)
        parked = [t for t in tasks if not t.done()]
        assert len(parked) == 10
        for t in parked:
            t.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    for n, r in enumerate(results):
        if n % 20 == 0:
            assert isinstance(r, asyncio.CancelledError)
        else:
            assert r == sum(n * 10 + i + 1000 for i in range(3))
    assert len(comms.sent) == 600


def test_two_tasks_parked_in_greenback_await_and_mixing(run: Any) -> None:
    async def both(n: int) -> tuple[int, int, int]:
        a = greenback.await_(asyncio.sleep(0.01, n))
        b = greenback_loop.await_(asyncio.sleep(0.01, n + 1))
        c = greenback.await_(greenback_loop.with_portal_run_sync(lambda: n + 2))
        return a, b, c

    async def main() -> Any:
        return await asyncio.gather(*(both(n) for n in (0, 10, 20)))

    assert run(main()) == [(0, 1, 2), (10, 11, 12), (20, 21, 22)]


def test_debugger_bestows_a_portal_on_a_new_task(run: Any) -> None:
    """An actor framework's debugger: bestow_portal() on a task another
    task just created; a synchronous breakpoint deep inside uses it."""

    def breakpoint_hook() -> str:
        assert greenback.has_portal()
        return greenback.await_(asyncio.sleep(0, "resumed"))  # type: ignore[no-any-return]

    async def actor() -> str:
        await asyncio.sleep(0)
        return breakpoint_hook()

    async def main() -> tuple[str, bool]:
        task = asyncio.create_task(actor())
        greenback.bestow_portal(task)
        return await task, greenback.has_portal(task)

    assert run(main()) == ("resumed", False)


def test_workflow_engine_helpers(run: Any) -> None:
    async def run_until_complete(aw: Any) -> Any:
        await greenback.ensure_portal()
        return await aw

    class Resource:
        def __init__(self) -> None:
            self.log: list[str] = []

        async def __aenter__(self) -> Resource:
            self.log.append("enter")
            return self

        async def __aexit__(self, *exc: object) -> None:
            self.log.append("exit")

    async def agen() -> Any:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    class Thing:
        @greenback.autoawait
        async def value(self) -> int:
            await asyncio.sleep(0)
            return 5

    def sync_work() -> Any:
        res = Resource()
        with greenback.async_context(res):
            items = list(greenback.async_iter(agen()))
        return res.log, items, Thing().value()

    async def main() -> Any:
        a = await run_until_complete(asyncio.sleep(0, "done"))
        b = await greenback.with_portal_run_sync(sync_work)
        c = await greenback.with_portal_run(lambda: asyncio.sleep(0, "ran"))
        return a, b, c

    assert run(main()) == ("done", (["enter", "exit"], [0, 1, 2], 5), "ran")


def test_greenback_still_works_on_plain_loops(run_plain: Any) -> None:
    """greenback's own shims, on a loop of someone else's, are untouched."""
    greenback_loop.new_event_loop().close()  # greenback is hooked by now
    comms = Comms()

    async def worker(n: int) -> int:
        await greenback.ensure_portal()
        return comms.send(n)

    async def main() -> Any:
        return await asyncio.gather(*(worker(n) for n in range(5)))

    assert run_plain(main()) == [n + 1000 for n in range(5)]


def test_a_greenback_it_does_not_know_refuses_loudly() -> None:
    impl = types.SimpleNamespace(task_portals=weakref.WeakKeyDictionary())
    fake = types.SimpleNamespace(__version__="9.0.0", _impl=impl)
    _greenback.hook(fake)
    with pytest.raises(RuntimeError, match=r"greenback 9\.0\.0 is not one greenback_loop knows"):
        _ = object() in impl.task_portals


def test_a_greenback_with_other_internals_refuses_loudly() -> None:
    def await_(aw: Any) -> Any:  # reads no task_portals
        return aw

    impl = types.SimpleNamespace(task_portals=weakref.WeakKeyDictionary(), await_=await_)
    fake = types.SimpleNamespace(__version__="1.3.9", _impl=impl)
    _greenback.hook(fake)
    with pytest.raises(RuntimeError, match=r"await_\(\) does not read task_portals"):
        impl.task_portals.get(object())


def test_installed_greenback_is_hooked() -> None:
    greenback_loop.new_event_loop().close()
    assert isinstance(greenback._impl.task_portals, _greenback.PortalMap)


@pytest.mark.parametrize("entry", ["portals_for_children", "with_portal_run_tree"])
def test_tree_portals_alone_hook_greenback(entry: str) -> None:
    """In a fresh process whose only greenback_loop call is a tree function
    on a plain loop, greenback's await_ works in the tree's tasks."""
    script = f"""
import asyncio, greenback, greenback_loop

async def child():
    return greenback.await_(asyncio.sleep(0, "ok"))

async def tree():
    return await asyncio.create_task(child())

async def main():
    if {entry!r} == "portals_for_children":
        with greenback_loop.portals_for_children():
            return await tree()
    return await greenback_loop.with_portal_run_tree(tree)

print(asyncio.run(main()))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("library", ["asyncio", "trio"])
@pytest.mark.parametrize("what", ["ensure_portal", "bestow_portal"])
def test_our_portal_over_greenbacks_own_is_refused_clearly(library: str, what: str) -> None:
    """A task given greenback's own portal (before greenback was hooked)
    gets a clear RuntimeError from greenback_loop's functions, not a crash,
    and greenback's portal keeps working."""
    script = f"""
import asyncio, trio, greenback, greenback_loop

async def main(sleep, current):
    await greenback.ensure_portal()  # greenback's own shim: nothing hooked yet
    try:
        if {what!r} == "ensure_portal":
            await greenback_loop.ensure_portal()
        else:
            greenback_loop.bestow_portal(current())
    except RuntimeError as exc:
        print("refused:", "portal of the greenback package's own" in str(exc))
    greenback.await_(sleep(0))
    return "greenback's portal still works"

if {library!r} == "trio":
    print(trio.run(main, trio.sleep, trio.lowlevel.current_task))
else:
    print(asyncio.run(main(asyncio.sleep, asyncio.current_task)))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["refused: True", "greenback's portal still works"]
