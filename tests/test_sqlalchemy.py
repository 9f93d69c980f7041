"""SQLAlchemy directly in portal tasks: its ``await_only`` (``await_`` in 2.1)
and its synchronous ``Session``/``Connection`` over an asyncio engine work
from synchronous code in any task that has a portal, with no
``greenlet_spawn``, through SQLAlchemy's greenlet-provider convention; a
real aiosqlite database file is used.

Each behaviour is compared with what SQLAlchemy's own ``greenlet_spawn``
(``AsyncConnection.run_sync``) or plain ``await`` gives.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import plain_eager_task_factory

import greenback_loop
from greenback_loop import _impl

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("aiosqlite")

from sqlalchemy import Column, Integer, String, exc, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Session  # noqa: E402
from sqlalchemy.util import await_only, greenlet_spawn  # noqa: E402

in_greenlet: Any = getattr(sqlalchemy.util.concurrency, "in_greenlet", None)
if in_greenlet is None:  # SQLAlchemy 2.0
    from sqlalchemy.util._concurrency_py3k import in_greenlet


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id = Column(Integer, primary_key=True)
    owner = Column(String, nullable=False)
    balance = Column(Integer, nullable=False)


var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def double(x: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * x


async def fail() -> None:
    await asyncio.sleep(0)
    raise KeyError("from the awaited coroutine")


async def new_engine(tmp_path: Path) -> Any:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'bank.sqlite'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return engine


def test_await_only_in_every_task(run: Any) -> None:
    def sync_layer(n: int) -> int:
        assert in_greenlet()
        return await_only(double(n)) + await_only(double(n))  # type: ignore[no-any-return]

    async def task(n: int) -> int:
        return sync_layer(n)

    async def main() -> list[int]:
        return await asyncio.gather(*(task(n) for n in range(50)))

    assert run(main()) == [4 * n for n in range(50)]


def test_errors_context_and_cancellation_as_await(run: Any) -> None:
    def raises() -> None:
        await_only(fail())

    async def sets_var() -> None:
        var.set("set by the awaited coroutine")

    async def main() -> None:
        # an exception from the awaitable: raised by await_only, same type
        with pytest.raises(KeyError, match="from the awaited coroutine"):
            raises()
        # the awaitable runs in the task's context, as under await
        var.set("task")

        async def reads() -> str:
            return var.get()

        assert await_only(reads()) == "task"
        await_only(sets_var())
        assert var.get() == "set by the awaited coroutine"
        # cancelled while parked in await_only: CancelledError arrives there
        seen: list[str] = []

        def parked() -> None:
            try:
                await_only(asyncio.sleep(30))
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        async def victim() -> None:
            parked()

        t = asyncio.create_task(victim())
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert seen == ["cancelled"]
        # a timeout around it, as around await
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await_only(asyncio.sleep(30))

    run(main())


def test_await_only_nested_in_await_(run: Any) -> None:
    def inner() -> int:
        return await_only(double(3))  # type: ignore[no-any-return]

    async def middle() -> int:
        await asyncio.sleep(0)
        return inner() + 1

    async def main() -> int:
        return greenback_loop.await_(middle())

    assert run(main()) == 7


def test_greenlet_spawn_still_works_in_our_tasks(run: Any) -> None:
    def fn(n: int) -> int:
        return await_only(double(n))  # type: ignore[no-any-return]

    async def main() -> int:
        return await greenlet_spawn(fn, 5)  # type: ignore[no-any-return]

    assert run(main()) == 10


def test_sync_session_over_an_async_engine(run: Any, tmp_path: Path) -> None:
    """Concurrent tasks move money with the synchronous ORM; the same file
    read back through the async API and through run_sync agrees."""

    def deposit(engine: Any, owner: str, amount: int) -> int:
        with Session(engine.sync_engine) as session:
            acct = session.scalars(select(Account).filter_by(owner=owner)).one_or_none()
            if acct is None:
                acct = Account(owner=owner, balance=0)
                session.add(acct)
            acct.balance += amount
            session.commit()
            return acct.balance  # type: ignore[no-any-return]

    async def main() -> tuple[Any, ...]:
        engine = await new_engine(tmp_path)
        lock = asyncio.Lock()

        async def task(n: int) -> int:
            async with lock:  # one writer at a time, as sqlite wants
                return deposit(engine, f"owner{n % 5}", n)

        balances = await asyncio.gather(*(task(n) for n in range(40)))
        async with engine.connect() as conn:
            rows = (await conn.execute(text("select owner, balance from accounts"))).all()

            def read(sync_conn: Any) -> list[Any]:
                return list(sync_conn.execute(text("select sum(balance) from accounts")))

            total = await conn.run_sync(read)
        # a sync Connection, from sync code
        with engine.sync_engine.connect() as sync_conn:
            count = sync_conn.execute(text("select count(*) from accounts")).scalar()
        await engine.dispose()
        return balances, sorted(rows), total, count

    balances, rows, total, count = run(main())
    assert rows == [(f"owner{k}", sum(n for n in range(40) if n % 5 == k)) for k in range(5)]
    assert total == [(sum(range(40)),)]
    assert count == 5
    assert max(balances) == max(r[1] for r in rows)
    assert Path(tmp_path / "bank.sqlite").stat().st_size > 0


def test_sync_session_error_rolls_back(run: Any, tmp_path: Path) -> None:
    def insert_twice(engine: Any) -> None:
        with Session(engine.sync_engine) as session:
            session.add(Account(id=1, owner="a", balance=1))
            session.commit()
            session.add(Account(id=1, owner="b", balance=2))
            session.commit()  # duplicate primary key

    async def main() -> list[Any]:
        engine = await new_engine(tmp_path)
        with pytest.raises(exc.IntegrityError):
            insert_twice(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("select owner from accounts"))).all()
        await engine.dispose()
        return rows

    assert run(main()) == [("a",)]


def test_outside_a_portal_sqlalchemy_refuses_as_before(run: Any) -> None:
    """Where there is no portal step (sync code outside any task, a loop
    callback), SQLAlchemy raises its own MissingGreenlet and closes the
    coroutine, as it does without greenback_loop."""

    outcomes: list[Any] = []

    def from_callback() -> None:
        coro = double(1)
        try:
            await_only(coro)
        except exc.MissingGreenlet as e:
            outcomes.append((type(e), coro.cr_frame))

    async def main() -> None:
        asyncio.get_running_loop().call_soon(from_callback)
        await asyncio.sleep(0.01)

    run(main())
    assert outcomes == [(exc.MissingGreenlet, None)]
    assert not in_greenlet()


def test_loop_in_a_non_main_greenlet_refuses(loop_kind: str) -> None:
    """A loop running in a greenlet other than the thread's main one: the
    runner's parent is not the greenlet doing the step, so the runner is no
    provider there and SQLAlchemy refuses cleanly (no hang, no stray
    switch); greenback_loop.await_ still works."""
    import greenlet

    async def main() -> tuple[bool, int]:
        provider = in_greenlet()
        with pytest.raises(exc.MissingGreenlet):
            await_only(double(1))
        return provider, greenback_loop.await_(double(2))

    g = greenlet.greenlet(lambda: greenback_loop.run(main(), uvloop=loop_kind == "uvloop"))
    assert g.switch() == (False, 4)


@pytest.mark.skipif(_impl.implementation != "c", reason="C Task retrofit needs the C core")
def test_retrofitted_task_on_a_plain_loop(run_plain: Any, tmp_path: Path) -> None:
    async def main() -> tuple[int, Any]:
        await greenback_loop.ensure_portal()
        engine = await new_engine(tmp_path)
        with Session(engine.sync_engine) as session:
            session.add(Account(owner="x", balance=3))
            session.commit()
            n = session.scalars(select(Account)).one().balance
        await engine.dispose()

        async def no_portal() -> Any:
            with pytest.raises(exc.MissingGreenlet):
                await_only(double(1))
            return in_greenlet()

        return n, await asyncio.create_task(no_portal())

    assert run_plain(main()) == (3, False)


def test_a_runner_switch_with_a_non_awaitable_is_refused(run: Any) -> None:
    """The convention covers awaitables only: a runner that switches to its
    parent with anything else still gets greenback_loop's RuntimeError."""
    import greenlet

    async def main() -> None:
        with pytest.raises(RuntimeError, match="switched into"):
            greenlet.getcurrent().parent.switch(42)
        assert await_only(double(4)) == 8

    run(main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_eager_task(run: Any, loop_kind: str) -> None:
    """An eager task's first step runs inside the creating task's step, off
    the hub: there the runner is no provider and SQLAlchemy refuses with its
    own error (documented), consistently with in_greenlet(); from its first
    suspension on, await_only works. (uvloop, plain uvloop too, starts even
    eager tasks lazily: there the first step is on the hub already.)"""
    if plain_eager_task_factory(loop_kind) == "refused":
        pytest.skip("plain uvloop cannot run eager_task_factory on this Python")

    async def main() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        creating = True

        async def task() -> tuple[bool, int]:
            eager = creating  # this step runs inside create_task()
            first = in_greenlet()
            if first:
                assert await_only(double(1)) == 2
            else:
                with pytest.raises(exc.MissingGreenlet):
                    await_only(double(1))
            await asyncio.sleep(0)
            return first == (not eager), await_only(double(21))

        t = asyncio.create_task(task())
        creating = False
        return await t

    assert run(main()) == (True, 42)
