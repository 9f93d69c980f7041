"""with_portal_run_tree, portals_for_children and portals_for_tree on plain
asyncio and uvloop loops (greenback has them under Trio only): every task
created under the call, by context and recursively, gets a portal until the
call returns; nothing else changes on the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import greenback_loop


async def fetch(n: int) -> int:
    await asyncio.sleep(0)
    return n


def sync_fetch(n: int) -> int:
    return greenback_loop.await_(fetch(n))


async def child(n: int) -> int:
    return sync_fetch(n)


async def grandparent(n: int) -> list[int]:
    """A task tree three levels deep, made through TaskGroup, gather and
    create_task; every level uses await_ from sync code."""

    async def parent(i: int) -> list[int]:
        here = sync_fetch(i)
        below = await asyncio.gather(child(i * 10), child(i * 10 + 1))
        return [here, *below]

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(parent(i)) for i in range(n)]
    return [x for t in tasks for x in t.result()]


def test_with_portal_run_tree(run_plain: Any) -> None:
    async def main() -> Any:
        factory = asyncio.get_running_loop().get_task_factory()
        got = await greenback_loop.with_portal_run_tree(grandparent, 2)
        # the loop is as it was, and new tasks get no portal any more
        after = asyncio.get_running_loop().get_task_factory()
        task = asyncio.create_task(fetch(1))
        no_portal = not greenback_loop.has_portal(task)
        await task
        return got, after is factory, no_portal

    assert run_plain(main()) == ([0, 0, 1, 1, 10, 11], True, True)


def test_outside_the_tree_no_portal(run_plain: Any) -> None:
    """A task created concurrently by a task outside the call gets none:
    the tree is the call's context, not the loop."""

    async def main() -> tuple[bool, bool]:
        inside = asyncio.Event()
        release = asyncio.Event()
        seen: dict[str, bool] = {}

        async def in_tree() -> None:
            seen["inside"] = greenback_loop.has_portal(asyncio.create_task(fetch(0)))
            inside.set()
            await release.wait()

        async def outsider() -> None:
            await inside.wait()
            t = asyncio.create_task(fetch(0))
            seen["outside"] = greenback_loop.has_portal(t)
            await t
            release.set()

        await asyncio.gather(greenback_loop.with_portal_run_tree(in_tree), outsider())
        return seen["inside"], seen["outside"]

    assert run_plain(main()) == (True, False)


def test_portals_for_children(run_plain: Any) -> None:
    async def main() -> tuple[Any, ...]:
        with greenback_loop.portals_for_children():
            parent_has = greenback_loop.has_portal()
            got = await asyncio.gather(child(3), child(4))
            nested = await asyncio.create_task(grandparent(1))
        later = asyncio.create_task(fetch(0))
        later_has = greenback_loop.has_portal(later)
        await later
        return parent_has, got, nested, later_has

    assert run_plain(main()) == (False, [3, 4], [0, 0, 1], False)


def test_portals_for_tree(run_plain: Any, impl: str) -> None:
    """The current task is given a portal as ensure_portal() does, which on
    asyncio's C Task only the C core can do (the twin refuses, clearly)."""
    if impl == "python":
        with pytest.raises(RuntimeError, match="only the C core can replace"):
            run_plain(_enter_portals_for_tree())
        return

    async def main() -> tuple[Any, ...]:
        before = greenback_loop.has_portal()
        async with greenback_loop.portals_for_tree():
            here = sync_fetch(5)
            below = await asyncio.create_task(child(6))
        # as greenback's: the portal given for the block is taken back
        after = greenback_loop.has_portal()
        with pytest.raises(RuntimeError, match="no portal"):
            sync_fetch(7)
        await asyncio.sleep(0)
        # and the task runs on as it would have without it
        return before, here, below, after, await fetch(8)

    assert run_plain(main()) == (False, 5, 6, False, 8)


async def _enter_portals_for_tree() -> None:
    async with greenback_loop.portals_for_tree():
        pass


def test_user_task_factory_kept_and_called(run_plain: Any) -> None:
    """A task factory the program installed still makes every task, the
    tree's included, and is back in place afterwards."""

    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", type(coro).__name__))
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        got = await greenback_loop.with_portal_run_tree(grandparent, 1)
        return got, loop.get_task_factory() is factory

    assert run_plain(main()) == ([0, 0, 1], True)
    # parent and its two children (then the runner's own shutdown tasks)
    assert made[:3] == ["grandparent.<locals>.parent", "child", "child"]


def test_overlapping_trees(run_plain: Any) -> None:
    """Two calls active at once in two tasks: the first to return leaves
    the other's tree working."""

    async def main() -> tuple[list[int], list[int]]:
        first_done = asyncio.Event()

        async def short() -> list[int]:
            try:
                return await grandparent(1)
            finally:
                first_done.set()

        async def long() -> list[int]:
            await first_done.wait()
            return await grandparent(2)

        a, b = await asyncio.gather(
            greenback_loop.with_portal_run_tree(short),
            greenback_loop.with_portal_run_tree(long),
        )
        assert asyncio.get_running_loop().get_task_factory() is None
        return a, b

    assert run_plain(main()) == ([0, 0, 1], [0, 0, 1, 1, 10, 11])


def test_task_outliving_the_call_keeps_its_portal(run_plain: Any) -> None:
    """A child created in the tree that is still running when the call
    returns keeps its portal; what it creates after that gets none."""

    async def main() -> tuple[int, bool]:
        go = asyncio.Event()
        box: dict[str, Any] = {}

        async def lingering() -> int:
            await go.wait()
            t = asyncio.create_task(fetch(0))
            box["late_child_has_portal"] = greenback_loop.has_portal(t)
            await t
            return sync_fetch(8)

        async def spawn() -> asyncio.Task[int]:
            return asyncio.create_task(lingering())

        task = await greenback_loop.with_portal_run_tree(spawn)
        go.set()
        return await task, box["late_child_has_portal"]

    assert run_plain(main()) == (8, False)


def test_exception_and_cancellation_restore_the_loop(run_plain: Any) -> None:
    async def main() -> tuple[bool, bool]:
        async def boom() -> None:
            sync_fetch(0)
            raise KeyError("x")

        with pytest.raises(KeyError):
            await greenback_loop.with_portal_run_tree(boom)
        restored_after_error = asyncio.get_running_loop().get_task_factory() is None

        async def park() -> None:
            greenback_loop.await_(asyncio.sleep(10))

        task = asyncio.create_task(greenback_loop.with_portal_run_tree(park))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return restored_after_error, asyncio.get_running_loop().get_task_factory() is None

    assert run_plain(main()) == (True, True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: greenback_loop.portals_for_children().__enter__(),
        lambda: greenback_loop.with_portal_run_tree(fetch, 1).send(None),
    ],
    ids=["portals_for_children", "with_portal_run_tree"],
)
def test_without_a_loop(call: Any) -> None:
    with pytest.raises(RuntimeError, match="must be called from an asyncio or Trio task"):
        call()


def test_on_our_loop_they_simply_run(run: Any) -> None:
    async def main() -> tuple[Any, ...]:
        factory = asyncio.get_running_loop().get_task_factory()
        a = await greenback_loop.with_portal_run_tree(grandparent, 1)
        with greenback_loop.portals_for_children():
            b = await child(2)
        async with greenback_loop.portals_for_tree():
            c = sync_fetch(3)
        return a, b, c, asyncio.get_running_loop().get_task_factory() is factory

    assert run(main()) == ([0, 0, 1], 2, 3, True)


def test_portals_for_tree_gives_back_after_an_error_and_a_cancel(run_plain: Any, impl: str) -> None:
    """The portal given for the block is taken back however the block ends,
    and the task goes on as without it."""
    if impl == "python":
        pytest.skip("the pure-Python core cannot give a C Task a portal (tested above)")

    async def main() -> tuple[bool, bool, int]:
        with pytest.raises(KeyError):
            async with greenback_loop.portals_for_tree():
                sync_fetch(1)
                raise KeyError("in the block")
        after_error = greenback_loop.has_portal()

        async def cancelled() -> None:
            async with greenback_loop.portals_for_tree():
                greenback_loop.await_(asyncio.sleep(10))

        task = asyncio.create_task(cancelled())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return after_error, greenback_loop.has_portal(task), await fetch(3)

    assert run_plain(main()) == (False, False, 3)


def test_portals_for_tree_keeps_a_portal_a_live_greenlet_needs(run_plain: Any, impl: str) -> None:
    """A greenlet started in the block's sync code and still alive at the
    exit depends on the portal's runner: the portal stays, and the task and
    the greenlet keep working."""
    if impl == "python":
        pytest.skip("the pure-Python core cannot give a C Task a portal (tested above)")
    import greenlet

    async def main() -> tuple[bool, int, int]:
        task_greenlet: Any = None

        def in_child() -> int:
            value = task_greenlet.switch("started")
            return value * 2  # type: ignore[no-any-return]

        async with greenback_loop.portals_for_tree():
            task_greenlet = greenlet.getcurrent()
            child = greenlet.greenlet(in_child)
            assert child.switch() == "started"
        kept = greenback_loop.has_portal()
        after = sync_fetch(4)
        return kept, after, child.switch(21)

    assert run_plain(main()) == (True, 4, 42)


def test_portals_for_tree_left_from_sync_code_keeps_the_portal(run_plain: Any, impl: str) -> None:
    if impl == "python":
        pytest.skip("the pure-Python core cannot give a C Task a portal (tested above)")
    import contextlib

    async def main() -> tuple[str, bool, int]:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(greenback_loop.portals_for_tree())

        def sync_teardown() -> str:
            greenback_loop.await_(stack.aclose())
            return "closed"

        closed = sync_teardown()
        await asyncio.sleep(0.001)
        return closed, greenback_loop.has_portal(), sync_fetch(5)

    assert run_plain(main()) == ("closed", True, 5)
