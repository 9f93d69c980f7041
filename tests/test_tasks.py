"""Every task, however it is made, gets a portal with no ensure_portal()."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from conftest import plain_eager_task_factory

import greenback_loop

needs_eager = pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks: 3.12+")


async def double(n: int) -> int:
    await asyncio.sleep(0)
    return n * 2


def legacy(n: int) -> str:
    """A sync layer that awaits on the running loop."""
    return f"report {greenback_loop.await_(double(n))}"


async def handler(n: int) -> str:
    return legacy(n)


def test_quickstart(run: Any) -> None:
    async def main() -> list[str]:
        return await asyncio.gather(*(handler(i) for i in range(3)))

    assert run(main()) == ["report 0", "report 2", "report 4"]


async def test_create_task() -> None:
    assert await asyncio.create_task(handler(1)) == "report 2"
    loop = asyncio.get_running_loop()
    assert await loop.create_task(handler(2), name="named") == "report 4"


async def test_create_task_arguments_pass_through() -> None:
    loop = asyncio.get_running_loop()
    by_keyword = loop.create_task(coro=handler(3), name="kw")
    assert greenback_loop.has_portal(by_keyword)
    assert by_keyword.get_name() == "kw"
    assert await by_keyword == "report 6"
    assert loop.create_task.__name__ == "create_task"
    with pytest.raises(TypeError):
        loop.create_task()  # type: ignore[call-arg]


async def test_create_task_keeps_name_and_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")

    async def body() -> tuple[str, str]:
        task = asyncio.current_task()
        assert task is not None
        return task.get_name(), var.get()

    task = asyncio.get_running_loop().create_task(body(), name="job-7", context=ctx)
    assert await task == ("job-7", "in ctx")


async def test_gather_and_ensure_future() -> None:
    results = await asyncio.gather(handler(1), asyncio.ensure_future(handler(2)))
    assert results == ["report 2", "report 4"]


async def test_wait_for() -> None:
    assert await asyncio.wait_for(handler(3), timeout=5) == "report 6"


async def test_wait() -> None:
    done, pending = await asyncio.wait([asyncio.create_task(handler(i)) for i in range(4)])
    assert not pending
    assert sorted(t.result() for t in done) == ["report 0", "report 2", "report 4", "report 6"]


async def test_task_group() -> None:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(handler(i)) for i in range(5)]
    assert [t.result() for t in tasks] == [f"report {2 * i}" for i in range(5)]


async def test_every_task_has_portal() -> None:
    assert greenback_loop.has_portal()

    async def child() -> bool:
        return greenback_loop.has_portal()

    assert await asyncio.create_task(child())
    assert await asyncio.gather(child(), child()) == [True, True]
    task = asyncio.create_task(child())
    assert greenback_loop.has_portal(task)
    await task


async def test_ensure_portal_is_a_noop() -> None:
    await greenback_loop.ensure_portal()
    await greenback_loop.ensure_portal()
    assert legacy(5) == "report 10"


async def test_user_task_factory_is_kept() -> None:
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        task = asyncio.create_task(handler(4), name="from-factory")
        assert await task == "report 8"
        assert made == [task]
        assert task.get_name() == "from-factory"
        assert type(task) is asyncio.Task
    finally:
        loop.set_task_factory(None)


@needs_eager
async def test_eager_task_factory() -> None:
    loop = asyncio.get_running_loop()
    import uvloop

    plain = plain_eager_task_factory("uvloop" if isinstance(loop, uvloop.Loop) else "asyncio")
    if plain == "refused":
        pytest.skip("plain uvloop cannot run eager_task_factory on this Python")
    # do exactly what the plain loop does (uvloop 0.23 starts lazily)
    eager_first_step = plain == "eager"
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        steps: list[str] = []

        async def eager() -> str:
            steps.append("started")
            return legacy(6)

        task = asyncio.create_task(eager())
        # the first step ran inside create_task, where the plain loop does so
        assert steps == (["started"] if eager_first_step else [])
        assert await task == "report 12"

        async def done_eagerly() -> int:
            return 7

        t2 = asyncio.create_task(done_eagerly())
        assert t2.done() is eager_first_step
        assert await t2 == 7

        # an eager task created from sync code inside another task's step
        def spawn_from_sync() -> asyncio.Task[str]:
            return asyncio.create_task(handler(8))

        assert await spawn_from_sync() == "report 16"
    finally:
        loop.set_task_factory(None)


async def test_start_server_handlers_have_portals() -> None:
    def sync_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = greenback_loop.await_(reader.readline())
        writer.write(line.upper())
        greenback_loop.await_(writer.drain())
        writer.close()
        greenback_loop.await_(writer.wait_closed())

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sync_echo(reader, writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        replies = []
        for word in (b"alpha\n", b"beta\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(word)
            await writer.drain()
            replies.append(await reader.readline())
            writer.close()
            await writer.wait_closed()
    assert replies == [b"ALPHA\n", b"BETA\n"]


def test_runner_with_loop_factory(loop_kind: str) -> None:
    import greenback_loop.uvloop as gb_uvloop

    factory: Any = greenback_loop.new_event_loop
    if loop_kind == "uvloop":
        factory = gb_uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(handler(1)) == "report 2"
        assert runner.run(handler(2)) == "report 4"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=): 3.12+")
def test_asyncio_run_with_loop_factory() -> None:
    assert asyncio.run(handler(3), loop_factory=greenback_loop.new_event_loop) == "report 6"  # type: ignore[call-arg]


@pytest.mark.skipif(sys.version_info >= (3, 16), reason="policies removed in 3.16")
def test_policy(loop_kind: str) -> None:
    import warnings

    policy = greenback_loop.GreenbackPolicy(uvloop=loop_kind == "uvloop")
    with warnings.catch_warnings():
        # asyncio deprecates the policy functions from 3.14 on
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(policy)
    try:
        loop = asyncio.new_event_loop()
        assert greenback_loop._loop.is_portal_loop(loop)
        loop.close()
        assert asyncio.run(handler(2)) == "report 4"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info >= (3, 16), reason="policies removed in 3.16")
def test_policy_runs_subprocesses(loop_kind: str) -> None:
    """GreenbackPolicy is the platform's default policy with our loops: on
    3.11 that includes its child watcher, which subprocesses need."""
    import warnings

    def sync_layer() -> tuple[bytes, int]:
        async def spawn() -> tuple[bytes, int]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "print(1)", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            return out, await proc.wait()

        return greenback_loop.await_(spawn())

    async def main() -> tuple[bytes, int]:
        assert greenback_loop.has_portal()
        return sync_layer()

    policy = greenback_loop.GreenbackPolicy(uvloop=loop_kind == "uvloop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)
        assert asyncio.get_event_loop_policy() is policy
    try:
        out, code = asyncio.run(main())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(None)
    assert (out.strip(), code) == (b"1", 0)


@pytest.mark.skipif(sys.version_info >= (3, 16), reason="policies removed in 3.16")
def test_policy_is_built_on_the_platform_default() -> None:
    import warnings

    module = asyncio.windows_events if sys.platform == "win32" else asyncio.unix_events  # type: ignore[attr-defined,unused-ignore]
    default = vars(module).get("_DefaultEventLoopPolicy") or vars(module)["DefaultEventLoopPolicy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        policy_class = greenback_loop.GreenbackPolicy
    assert issubclass(policy_class, default)
    loop = policy_class().new_event_loop()
    try:
        assert type(loop) is greenback_loop.EventLoop
    finally:
        loop.close()
    loop = policy_class(uvloop=True).new_event_loop()
    try:
        import greenback_loop.uvloop as gb_uvloop

        assert type(loop) is gb_uvloop.Loop
    finally:
        loop.close()


def test_uvloop_dropin() -> None:
    import uvloop

    import greenback_loop.uvloop as gb_uvloop

    assert gb_uvloop.run(handler(5)) == "report 10"
    loop = gb_uvloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert isinstance(loop, gb_uvloop.Loop)
        assert loop.run_until_complete(handler(6)) == "report 12"
    finally:
        loop.close()
    with pytest.raises(TypeError, match="greenback_loop.uvloop.Loop"):
        gb_uvloop.run(handler(1), loop_factory=uvloop.new_event_loop)


def test_uvloop_dropin_import_leaves_uvloop_policy_alone() -> None:
    """Importing the drop-in must not touch uvloop's deprecated policy names:
    uvloop builds its policy class on first access, which warns on 3.14."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import uvloop
        seen = []
        lookup = getattr(uvloop, "__getattr__", None)
        def spy(name):
            seen.append(name)
            if lookup is None:
                raise AttributeError(name)
            return lookup(name)
        uvloop.__getattr__ = spy
        for name in ("EventLoopPolicy", "install"):
            uvloop.__dict__.pop(name, None)  # older uvloop defines them outright
        import greenback_loop.uvloop
        assert seen == [], seen
        """
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(sys.version_info >= (3, 16), reason="policies removed in 3.16")
def test_uvloop_dropin_policy() -> None:
    import warnings

    import greenback_loop.uvloop as gb_uvloop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            gb_uvloop.install()
        loop = asyncio.new_event_loop()
        assert isinstance(loop, gb_uvloop.Loop)
        loop.close()
        assert asyncio.run(handler(7)) == "report 14"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(old)


def test_run_semantics(run: Any) -> None:
    """run() cancels leftover tasks and lets them unwind, closes the loop."""
    events: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    def sync_wait_forever() -> None:
        try:
            greenback_loop.await_(asyncio.Event().wait())
        finally:
            events.append("leftover unwound")

    async def leftover() -> None:
        sync_wait_forever()

    async def main() -> str:
        loops.append(asyncio.get_running_loop())
        asyncio.create_task(leftover())
        await asyncio.sleep(0.01)
        return "done"

    assert run(main()) == "done"
    assert events == ["leftover unwound"]
    assert loops[0].is_closed()


def test_run_rejects_running_loop(run: Any) -> None:
    async def main() -> None:
        inner = handler(1)
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                greenback_loop.run(inner)
        finally:
            inner.close()

    run(main())


def test_run_rejects_non_coroutine() -> None:
    with pytest.raises((ValueError, TypeError), match="coroutine"):
        greenback_loop.run(42)  # type: ignore[arg-type]


def test_run_debug(run: Any) -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug() and legacy(1) == "report 2"

    assert run(main(), debug=True)
