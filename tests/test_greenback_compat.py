"""Code written for greenback 1.x runs unchanged on greenback_loop."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

import greenback_loop as greenback  # the one line a greenback user changes


async def fetch(n: int) -> int:
    await asyncio.sleep(0)
    return n


def sync_fetch(n: int) -> int:
    return greenback.await_(fetch(n))


def test_api_is_a_superset_of_greenback() -> None:
    import greenback as original

    missing = {
        name for name in dir(original) if not name.startswith("_") and not hasattr(greenback, name)
    }
    assert missing == set()


async def test_greenback_style_program() -> None:
    """The greenback README's pattern: ensure_portal, then await_ below."""

    async def worker(n: int) -> int:
        await greenback.ensure_portal()
        return sync_fetch(n)

    assert await asyncio.gather(*(worker(i) for i in range(5))) == list(range(5))


def test_with_portal_run_on_plain_loop(run_plain: Any) -> None:
    """with_portal_run* need no greenback_loop loop: the portal is awaited."""

    async def uses_await_(n: int) -> int:
        return sync_fetch(n) + 1

    async def main() -> tuple[Any, ...]:
        assert not greenback.has_portal()
        a = await greenback.with_portal_run(uses_await_, 1)
        b = await greenback.with_portal_run_sync(sync_fetch, 5)
        c = await greenback.with_portal_run(greenback.with_portal_run_sync, sync_fetch, 7)

        async def check_inside() -> bool:
            return greenback.has_portal()

        d = await greenback.with_portal_run(check_inside)
        task = asyncio.current_task()
        assert task is not None
        e = not greenback.has_portal(task)
        return a, b, c, d, e, greenback.has_portal()

    assert run_plain(main()) == (2, 5, 7, True, True, False)


def test_with_portal_run_cancellation_on_plain_loop(run_plain: Any) -> None:
    cleanup = []

    def park() -> None:
        try:
            greenback.await_(asyncio.sleep(10))
        finally:
            cleanup.append("unwound")

    async def main() -> None:
        task = asyncio.create_task(greenback.with_portal_run_sync(park))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_plain(main())
    assert cleanup == ["unwound"]


def test_with_portal_run_accepts_any_awaitable(run_plain: Any) -> None:
    def returns_future() -> asyncio.Future[int]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(9)
        return fut

    async def main() -> int:
        return await greenback.with_portal_run(returns_future)  # type: ignore[arg-type]

    assert run_plain(main()) == 9


async def test_with_portal_run_tree_and_portals_for_tree() -> None:
    async def child(n: int) -> int:
        return sync_fetch(n)

    async def tree() -> list[int]:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(i)) for i in range(3)]
        return [t.result() for t in tasks]

    assert await greenback.with_portal_run_tree(tree) == [0, 1, 2]
    async with greenback.portals_for_tree():
        assert sync_fetch(4) == 4
    with greenback.portals_for_children():
        assert await asyncio.create_task(child(6)) == 6


async def test_bestow_portal_on_portal_task() -> None:
    task = asyncio.create_task(fetch(3))
    greenback.bestow_portal(task)
    assert greenback.has_portal(task)
    assert await task == 3


async def test_autoawait() -> None:
    @greenback.autoawait
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert add(2, 3) == 5
    assert add.__name__ == "add"


async def test_autoawait_property() -> None:
    class Account:
        @property
        @greenback.autoawait
        async def balance(self) -> int:
            await asyncio.sleep(0)
            return 100

    assert Account().balance == 100


async def test_decorate_as_sync_with_lru_cache() -> None:
    calls = []

    @greenback.decorate_as_sync(functools.lru_cache(maxsize=8))
    async def lookup(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0)
        return key.upper()

    assert [await lookup("a"), await lookup("b"), await lookup("a")] == ["A", "B", "A"]
    assert calls == ["a", "b"]


def test_decorate_as_sync_on_plain_loop(run_plain: Any) -> None:
    @greenback.decorate_as_sync(functools.lru_cache(maxsize=8))
    async def lookup(key: str) -> str:
        await asyncio.sleep(0)
        return key * 2

    async def main() -> list[str]:
        return [await lookup("x"), await lookup("x")]

    assert run_plain(main()) == ["xx", "xx"]


async def test_async_context() -> None:
    events = []

    class Resource:
        async def __aenter__(self) -> str:
            await asyncio.sleep(0)
            events.append("enter")
            return "resource"

        async def __aexit__(self, *exc: Any) -> bool:
            await asyncio.sleep(0)
            events.append(f"exit {exc[0].__name__ if exc[0] else None}")
            return exc[0] is KeyError  # swallow KeyError only

    with greenback.async_context(Resource()) as value:
        assert value == "resource"
    with greenback.async_context(Resource()):
        raise KeyError("swallowed")
    with pytest.raises(ValueError), greenback.async_context(Resource()):
        raise ValueError("propagates")
    assert events == ["enter", "exit None", "enter", "exit KeyError", "enter", "exit ValueError"]

    lock = asyncio.Lock()
    with greenback.async_context(lock):
        assert lock.locked()
    assert not lock.locked()


async def test_async_context_type_errors() -> None:
    with pytest.raises(TypeError, match="asynchronous context manager protocol"):
        with greenback.async_context(object()):  # type: ignore[arg-type]
            pass

    class EnterOnly:
        async def __aenter__(self) -> None:
            pass

    with pytest.raises(TypeError, match="missed __aexit__"):
        with greenback.async_context(EnterOnly()):  # type: ignore[arg-type]
            pass


async def test_async_iter() -> None:
    class Countdown:
        def __init__(self, n: int) -> None:
            self.n = n

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            await asyncio.sleep(0)
            if self.n == 0:
                raise StopAsyncIteration
            self.n -= 1
            return self.n

    assert list(greenback.async_iter(Countdown(3))) == [2, 1, 0]
    assert not hasattr(greenback.async_iter(Countdown(1)), "send")

    with pytest.raises(TypeError, match="requires an object with __aiter__"):
        greenback.async_iter(42)  # type: ignore[arg-type]


async def test_async_iter_async_generator_protocol() -> None:
    log = []

    async def agen() -> Any:
        try:
            received = yield 1
            log.append(f"received {received}")
            try:
                yield 2
            except KeyError:
                log.append("KeyError thrown in")
                yield 3
            yield 4
        finally:
            await asyncio.sleep(0)
            log.append("closed")

    it = greenback.async_iter(agen())
    assert next(it) == 1
    assert it.send("hello") == 2  # type: ignore[attr-defined]
    assert it.throw(KeyError) == 3  # type: ignore[attr-defined]
    it.close()  # type: ignore[attr-defined]
    assert log == ["received hello", "KeyError thrown in", "closed"]

    def consume() -> list[int]:
        return [x for x in greenback.async_iter(agen())]

    assert consume() == [1, 2, 4]
