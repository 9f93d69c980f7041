"""Trio: greenback's API on Trio tasks, and automatic portals for every task
of a run (greenback_loop.trio.run, PortalInstrument, guest runs, anyio).

Each behaviour is compared with what plain ``await`` does in plain Trio.
The core axis comes from the process (the C core here, the pure-Python twin
in the suite's rerun); ``run`` is parametrized over the two ways a Trio
program gets portals: greenback_loop.trio.run, and plain trio.run with an
``ensure_portal()`` at the top of each task that uses ``await_``.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import greenback_loop
import greenback_loop.trio


@pytest.fixture(params=["auto", "ensure_portal"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def run(mode: str) -> Callable[..., Any]:
    """``run(async_fn, *args)``: under greenback_loop.trio.run (every task
    has a portal), or plain trio.run (tasks call ``portal()`` first)."""

    def run(async_fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        if mode == "auto":
            return greenback_loop.trio.run(async_fn, *args, **kwargs)
        return trio.run(async_fn, *args, **kwargs)

    return run


@pytest.fixture
def portal(mode: str) -> Callable[[], Awaitable[None]]:
    """What a task does first to be able to await_: nothing under
    greenback_loop.trio.run, ensure_portal() under plain trio.run."""

    async def portal() -> None:
        if mode != "auto":
            await greenback_loop.ensure_portal()

    return portal


def sync_sleep(seconds: float, value: Any = None) -> Any:
    greenback_loop.await_(trio.sleep(seconds))
    return value


# -- greenback's README example ------------------------------------------------


def print_fact(n: int) -> None:
    """A synchronous function whose bottom layer runs a subprocess."""
    result = greenback_loop.await_(
        trio.run_process(
            [sys.executable, "-c", f"print({math.factorial(n)})"],
            capture_stdout=True,
        )
    )
    print(f"{n}! = {result.stdout.decode().strip()}")


def test_readme_example(
    run: Callable[..., Any], portal: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        await portal()
        print_fact(10)

    run(main)
    assert capsys.readouterr().out == "10! = 3628800\n"


def test_readme_example_with_greenback_style_ensure_portal(capsys: Any) -> None:
    """greenback's README program exactly: ensure_portal() under trio.run."""

    async def main() -> None:
        await greenback_loop.ensure_portal()
        print_fact(5)

    trio.run(main)
    assert capsys.readouterr().out == "5! = 120\n"


# -- every task of a run ---------------------------------------------------------


def test_every_task_has_a_portal_without_ensure_portal() -> None:
    async def grandchild(out: list[Any]) -> None:
        out.append(sync_sleep(0, ("grandchild", greenback_loop.has_portal())))

    async def child(i: int, out: list[Any]) -> None:
        out.append(sync_sleep(0.001, (i, greenback_loop.has_portal())))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(grandchild, out)

    async def main() -> list[Any]:
        out: list[Any] = [("main", greenback_loop.has_portal())]
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(child, i, out)
        return out

    out = greenback_loop.trio.run(main)
    assert sorted(map(str, out)) == sorted(
        map(str, [("main", True), *((i, True) for i in range(3)), *[("grandchild", True)] * 3])
    )


@pytest.mark.parametrize("system_tasks", [False, True])
def test_system_tasks_left_alone_unless_asked(system_tasks: bool) -> None:
    async def system() -> None:
        seen.append(greenback_loop.has_portal())

    async def main() -> bool:
        trio.lowlevel.spawn_system_task(system)
        await trio.sleep(0.01)
        return greenback_loop.has_portal()

    seen: list[bool] = []
    assert greenback_loop.trio.run(main, system_tasks=system_tasks) is True
    assert seen == [system_tasks]


def test_portal_instrument_beside_other_instruments() -> None:
    """Passed to trio.run by hand, next to an instrument of the program's,
    which still sees every task."""

    class Counter(trio.abc.Instrument):  # type: ignore[misc]
        def __init__(self) -> None:
            self.spawned = 0

        def task_spawned(self, task: Any) -> None:
            self.spawned += 1

    async def child() -> int:
        return sync_sleep(0, 1)  # type: ignore[no-any-return]

    async def main() -> int:
        total = 0

        async def add() -> None:
            nonlocal total
            value = await child()
            total += value

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(add)
        return total

    counter = Counter()
    instruments = [counter, greenback_loop.trio.PortalInstrument()]
    assert trio.run(main, instruments=instruments) == 4
    assert counter.spawned >= 6  # the root, main, four children (and Trio's own)


def test_run_passes_trio_run_arguments() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main(a: int, b: int) -> tuple[int, float]:
        sync_sleep(3600)  # autojumped
        return a + b, trio.current_time()

    total, now = greenback_loop.trio.run(main, 1, 2, clock=clock)
    assert total == 3 and now >= 3600


def test_hundreds_of_parked_children() -> None:
    async def main() -> int:
        event = trio.Event()
        done = 0

        async def parked() -> None:
            nonlocal done
            greenback_loop.await_(event.wait())
            done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(500):
                nursery.start_soon(parked)
            await trio.sleep(0.01)
            assert done == 0
            event.set()
        return done

    assert greenback_loop.trio.run(main) == 500


# -- await_ behaves like await ----------------------------------------------------


def test_results_exceptions_and_contextvars(run: Any, portal: Any) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def raises() -> None:
        await trio.sleep(0)
        raise KeyError("boom")

    async def sets() -> None:
        await trio.sleep(0)
        var.set("inner")

    async def main() -> tuple[Any, ...]:
        await portal()
        var.set("outer")
        value = greenback_loop.await_(trio.sleep(0)) or 7
        with pytest.raises(KeyError, match="boom"):
            greenback_loop.await_(raises())
        greenback_loop.await_(sets())  # as await: the coroutine runs in our context
        return value, var.get()

    assert run(main) == (7, "inner")


@pytest.mark.parametrize("how", ["move_on_after", "fail_after", "cancel_scope"])
def test_cancellation_surfaces_at_await_(run: Any, portal: Any, how: str) -> None:
    events: list[str] = []

    def blocking() -> None:
        try:
            greenback_loop.await_(trio.sleep(10))
        except trio.Cancelled:
            events.append("cancelled at await_")
            raise
        finally:
            events.append("sync finally")

    async def main() -> bool:
        await portal()
        if how == "move_on_after":
            with trio.move_on_after(0.01) as scope:
                blocking()
            return scope.cancelled_caught  # type: ignore[no-any-return]
        if how == "fail_after":
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.01):
                    blocking()
            return True
        with trio.CancelScope() as scope:
            trio.lowlevel.current_trio_token().run_sync_soon(scope.cancel)
            blocking()
        return scope.cancelled_caught  # type: ignore[no-any-return]

    assert run(main) is True
    assert events == ["cancelled at await_", "sync finally"]


def test_cancelled_nursery_of_parked_children(run: Any, portal: Any) -> None:
    unwound = 0

    async def child() -> None:
        nonlocal unwound
        await portal()
        try:
            sync_sleep(10)
        finally:
            unwound += 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(child)
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    run(main)
    assert unwound == 100


def test_keyboard_interrupt_reaches_a_task_parked_in_await_(run: Any, portal: Any) -> None:
    """Trio delivers a Ctrl-C that lands in its own (protected) code to the
    main task at its next checkpoint: here, the one inside await_."""
    unwound: list[str] = []

    async def main() -> None:
        await portal()
        trio.lowlevel.current_trio_token().run_sync_soon(signal.raise_signal, signal.SIGINT)
        try:
            sync_sleep(10)
        finally:
            unwound.append("finally")

    with pytest.raises(KeyboardInterrupt):
        run(main)
    assert unwound == ["finally"]


class ForeignFuture:
    """An awaitable of another framework: it yields itself to the loop."""

    def __await__(self) -> Any:
        return (yield self)


def _foreign_yield_error(use_await_: bool, runner: Callable[..., Any], portal: Any) -> str:
    async def main() -> str:
        await portal()
        try:
            if use_await_:
                greenback_loop.await_(ForeignFuture())
            else:
                await ForeignFuture()
        except TypeError as exc:
            return re.sub(r"0x[0-9a-f]+", "0x...", str(exc))
        return "no error"

    return runner(main)  # type: ignore[no-any-return]


def test_foreign_yield_reaches_the_coroutine_as_without_a_portal(run: Any, portal: Any) -> None:
    """A value Trio does not expect: Trio throws its TypeError back in, and
    it surfaces where the value was yielded, as with plain await."""

    async def no_portal() -> None:
        pass

    plain = _foreign_yield_error(False, trio.run, no_portal)
    assert "unrecognized yield message" in plain
    assert _foreign_yield_error(True, run, portal) == plain
    assert _foreign_yield_error(False, run, portal) == plain


def test_await_of_a_non_awaitable_is_awaits_type_error(run: Any, portal: Any) -> None:
    async def main() -> tuple[str, str]:
        await portal()
        try:
            await 42  # type: ignore[misc]
        except TypeError as exc:
            plain = str(exc)
        with pytest.raises(TypeError) as info:
            greenback_loop.await_(42)  # type: ignore[arg-type]
        return plain, str(info.value)

    plain, ours = run(main)
    assert ours == plain


# -- introspection -------------------------------------------------------------


def test_introspection_shows_the_users_coroutine(run: Any, portal: Any) -> None:
    async def parked_here(ready: Any) -> None:
        await portal()
        ready.set()
        sync_sleep(10)

    async def main() -> tuple[Any, ...]:
        ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked_here, ready)
            await ready.wait()
            await trio.sleep(0.01)
            (task,) = trio.lowlevel.current_task().child_nurseries[0].child_tasks
            frames = [f.f_code.co_name for f, _ in task.iter_await_frames()]
            names = (task.coro.__name__, task.coro.cr_code.co_name, task.name.rsplit(".")[-1])
            nursery.cancel_scope.cancel()
        return frames, names

    frames, names = run(main)
    assert frames[0] == "parked_here"
    assert names == ("parked_here", "parked_here", "parked_here")


def test_traceback_shows_the_users_frames(run: Any, portal: Any) -> None:
    async def failing() -> None:
        await trio.sleep(0)
        raise ValueError("deep")

    def sync_layer() -> None:
        greenback_loop.await_(failing())

    async def task_fn() -> None:
        await portal()
        sync_layer()

    async def main() -> list[str]:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(task_fn)
        except BaseExceptionGroup as group:
            (exc,) = group.exceptions
            return [f.name for f in traceback.extract_tb(exc.__traceback__)]
        return []

    names = run(main)
    # as with plain await, plus an await_ entry (as greenback's); the
    # pure-Python core shows one frame of its own, its send
    if greenback_loop.implementation == "c":
        assert names == ["task_fn", "sync_layer", "await_", "failing"]
    else:
        assert names == ["send", "task_fn", "sync_layer", "await_", "failing"]


# -- greenback's API on Trio -----------------------------------------------------


def test_ensure_portal_is_a_checkpoint() -> None:
    async def main() -> None:
        with trio.testing.assert_checkpoints():
            await greenback_loop.ensure_portal()
        with trio.testing.assert_checkpoints():
            await greenback_loop.ensure_portal()  # already has one: still a checkpoint
        with trio.testing.assert_no_checkpoints():
            greenback_loop.await_(_nothing())

    trio.run(main)


async def _nothing() -> None:
    pass


def test_bestow_portal_on_another_task_and_on_itself() -> None:
    async def main() -> tuple[bool, ...]:
        ready, go = trio.Event(), trio.Event()
        box: dict[str, Any] = {}

        async def target() -> None:
            box["task"] = trio.lowlevel.current_task()
            ready.set()
            await go.wait()
            box["inside"] = greenback_loop.has_portal()
            box["value"] = sync_sleep(0, 5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(target)
            await ready.wait()
            before = greenback_loop.has_portal(box["task"])
            greenback_loop.bestow_portal(box["task"])
            after = greenback_loop.has_portal(box["task"])
            go.set()
        me = trio.lowlevel.current_task()
        greenback_loop.bestow_portal(me)
        same_step = greenback_loop.has_portal()
        with pytest.raises(RuntimeError, match="must yield to the event loop"):
            sync_sleep(0)
        await trio.sleep(0)
        return (
            before,
            after,
            box["inside"],
            box["value"] == 5,
            same_step,
            greenback_loop.has_portal(),
        )

    assert trio.run(main) == (False, True, True, True, False, True)


def test_bestow_portal_on_a_scheduled_task_takes_effect_at_its_next_step() -> None:
    """A task Trio has already scheduled (woken, not yet run) runs its next
    step in the portal."""

    async def main() -> bool:
        ready, go = trio.Event(), trio.Event()
        box: dict[str, Any] = {}

        async def target() -> None:
            box["task"] = trio.lowlevel.current_task()
            ready.set()
            await go.wait()
            box["has"] = greenback_loop.has_portal()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(target)
            await ready.wait()
            go.set()  # schedules target's next step, bound to its coroutine
            greenback_loop.bestow_portal(box["task"])  # in the same step
        return box["has"]  # type: ignore[no-any-return]

    assert trio.run(main) is True


def test_with_portal_run_and_sync_on_plain_trio() -> None:
    async def uses(n: int) -> int:
        return sync_sleep(0, n)  # type: ignore[no-any-return]

    async def main() -> tuple[Any, ...]:
        a = await greenback_loop.with_portal_run(uses, 1)
        b = await greenback_loop.with_portal_run_sync(sync_sleep, 0, 2)
        return a, b, greenback_loop.has_portal()

    assert trio.run(main) == (1, 2, False)


def test_tree_functions_on_trio() -> None:
    async def child(out: list[bool]) -> None:
        out.append(greenback_loop.has_portal())
        sync_sleep(0)

    async def tree(out: list[bool]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, out)
            nursery.start_soon(child, out)

    async def main() -> tuple[Any, ...]:
        a: list[bool] = []
        await greenback_loop.with_portal_run_tree(tree, a)
        b: list[bool] = []
        with greenback_loop.portals_for_children():
            outer_has = greenback_loop.has_portal()
            await tree(b)
        async with greenback_loop.portals_for_tree():
            inside = greenback_loop.has_portal()
            sync_sleep(0)
        after = greenback_loop.has_portal()  # as greenback's: taken back
        no: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _record(no))
        return a, b, outer_has, inside, after, no

    assert trio.run(main) == ([True, True], [True, True], False, True, False, [False])


async def _record(out: list[bool]) -> None:
    out.append(greenback_loop.has_portal())


def test_portals_for_tree_keeps_a_portal_the_run_gave() -> None:
    async def main() -> bool:
        async with greenback_loop.portals_for_tree():
            pass
        return greenback_loop.has_portal()

    assert greenback_loop.trio.run(main) is True


def test_helpers_on_trio(run: Any, portal: Any) -> None:
    @greenback_loop.autoawait
    async def add(a: int, b: int) -> int:
        await trio.sleep(0)
        return a + b

    class Resource:
        async def __aenter__(self) -> str:
            await trio.sleep(0)
            return "entered"

        async def __aexit__(self, *exc: Any) -> None:
            await trio.sleep(0)

    async def agen() -> Any:
        for i in range(3):
            await trio.sleep(0)
            yield i

    async def main() -> tuple[Any, ...]:
        await portal()
        with greenback_loop.async_context(Resource()) as value:
            entered = value
        return add(1, 2), entered, list(greenback_loop.async_iter(agen()))

    assert run(main) == (3, "entered", [0, 1, 2])


# -- errors ----------------------------------------------------------------------


def test_await__without_a_portal_says_what_to_do() -> None:
    async def main() -> str:
        with pytest.raises(RuntimeError) as info:
            sync_sleep(0)
        return str(info.value)

    message = trio.run(main)
    assert "Trio task" in message and "has no portal" in message
    assert "greenback_loop.trio.run" in message and "ensure_portal()" in message


def test_await__outside_any_loop_is_sniffios_error_when_sniffio_is_used() -> None:
    sniffio = pytest.importorskip("sniffio")
    with pytest.raises(sniffio.AsyncLibraryNotFoundError, match="no event loop running"):
        greenback_loop.await_(42)  # type: ignore[arg-type]


def test_bestow_portal_refuses_a_task_of_another_run() -> None:
    box: dict[str, Any] = {}
    started, release = threading.Event(), threading.Event()

    async def other_main() -> None:
        box["task"] = trio.lowlevel.current_task()
        started.set()
        await trio.to_thread.run_sync(release.wait)

    thread = threading.Thread(target=trio.run, args=(other_main,))
    thread.start()
    try:
        started.wait(10)

        async def main() -> None:
            with pytest.raises(RuntimeError, match="belongs to a Trio run other than"):
                greenback_loop.bestow_portal(box["task"])

        trio.run(main)
        assert not greenback_loop.has_portal(box["task"])
    finally:
        release.set()
        thread.join()


def test_bestow_portal_type_error_names_both_libraries() -> None:
    with pytest.raises(TypeError, match=r"asyncio\.Task or a trio\.lowlevel\.Task"):
        greenback_loop.bestow_portal(object())


# -- guest runs and anyio ----------------------------------------------------------


@pytest.mark.parametrize("host", ["asyncio", "greenback_loop"])
def test_guest_run_on_an_asyncio_loop(host: str) -> None:
    import asyncio

    async def trio_main() -> list[Any]:
        out: list[Any] = []

        async def child(i: int) -> None:
            out.append(sync_sleep(0.001, i))

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(child, i)
        return sorted(out)

    async def asyncio_main() -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        greenback_loop.trio.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
            host_uses_signal_set_wakeup_fd=True,
        )
        # the host's own tasks keep running, and keep their portals
        host_value = await asyncio.sleep(0.001, "host")
        outcome = await done
        return outcome.unwrap(), host_value

    factory = greenback_loop.new_event_loop if host == "greenback_loop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(asyncio_main()) == ([0, 1, 2, 3, 4], "host")


def _anyio_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("anyio").split(".")[:2])


@pytest.mark.parametrize("backend", ["trio", "asyncio", "trio via greenback_loop.trio.run"])
def test_anyio_program_with_portals_on_both_backends(backend: str) -> None:
    anyio = pytest.importorskip("anyio")
    if backend == "trio" and _anyio_version() < (4, 14):
        pytest.skip("anyio passes backend_options to trio.run from 4.14 on")

    def sync_layer(i: int) -> int:
        greenback_loop.await_(anyio.sleep(0.001))
        return i * 2

    async def main() -> list[int]:
        out: list[int] = []

        async def child(i: int) -> None:
            out.append(sync_layer(i))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(child, i)
        return sorted(out)

    if backend == "trio via greenback_loop.trio.run":
        assert greenback_loop.trio.run(main) == [0, 2, 4, 6, 8]
        return
    options: dict[str, Any] = (
        {"instruments": [greenback_loop.trio.PortalInstrument()]}
        if backend == "trio"
        else {"loop_factory": greenback_loop.new_event_loop}
    )
    assert anyio.run(main, backend=backend, backend_options=options) == [0, 2, 4, 6, 8]


# -- the real greenback package ----------------------------------------------------


def test_real_greenback_inside_greenback_loop_trio_run() -> None:
    greenback = pytest.importorskip("greenback")

    async def main() -> int:
        total = 0

        async def child(i: int) -> None:
            nonlocal total
            assert greenback.has_portal()
            greenback.await_(trio.sleep(0.001))
            value = sync_sleep(0, i)
            total += value

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(child, i)
        return total

    assert greenback_loop.trio.run(main) == sum(range(20))


def test_script_in_a_fresh_process() -> None:
    """The one-line change, as a user makes it, in a process of its own."""
    script = """
import trio, greenback_loop, greenback_loop.trio

def legacy():
    return greenback_loop.await_(trio.sleep(0)) or "ok"

async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
    return legacy()

print(greenback_loop.trio.run(main))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr[-3000:]


def test_portals_for_tree_keeps_a_portal_a_live_greenlet_needs() -> None:
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
        after = sync_sleep(0, 4)
        return kept, after, child.switch(21)

    assert trio.run(main) == (True, 4, 42)


def test_portals_for_tree_exit_is_no_cancellation_point() -> None:
    """As greenback's: under a cancelled scope, neither entering nor
    leaving raises Cancelled; the next checkpoint does."""

    async def main() -> tuple[bool, bool, bool]:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with greenback_loop.portals_for_tree():
                inside = greenback_loop.has_portal()
            after = greenback_loop.has_portal()
            await trio.lowlevel.checkpoint()
        return inside, after, scope.cancelled_caught

    assert trio.run(main) == (True, False, True)


def test_settrace_callback_calling_await__is_refused_not_a_livelock() -> None:
    import greenlet

    calls = 0
    refused: list[str] = []

    def tracer(event: str, args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 4:
            try:
                greenback_loop.await_(trio.sleep(0))
            except RuntimeError as exc:
                refused.append(str(exc))

    async def main() -> str:
        greenlet.settrace(tracer)
        try:
            sync_sleep(0)
            await trio.sleep(0)
        finally:
            greenlet.settrace(None)
        return "finished"

    assert greenback_loop.trio.run(main) == "finished"
    assert any("being switched into" in r for r in refused), refused


@pytest.mark.parametrize("where", ["main", "child"])
def test_interrupt_raised_at_a_steps_switch_back_takes_trios_ctrl_c_path(where: str) -> None:
    """A KeyboardInterrupt raised by a greenlet.settrace callback on the
    switch that ends a step (after the step's message was brought) keeps
    the message, as a Ctrl-C landing in Trio's own code is kept off it:
    the main task gets the interrupt at its next checkpoint, and the task
    whose step it was carries on (before, that step raised it, and Trio's
    bookkeeping of the task broke: TrioInternalError)."""
    import greenlet

    armed = False
    fired = 0

    def tracer(event: str, args: Any) -> None:
        nonlocal armed, fired
        if armed and event == "switch" and args[1].parent is None:
            if where == "main" or trio.lowlevel.current_task().name.endswith("child"):
                armed = False
                fired += 1
                raise KeyboardInterrupt

    async def child(log: list[str]) -> None:
        for _ in range(20):
            await trio.sleep(0)
        log.append("child finished")

    async def main() -> list[str]:
        nonlocal armed
        log: list[str] = []
        greenlet.settrace(tracer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child, log)
                armed = True
                try:
                    for _ in range(20):
                        await trio.sleep(0)
                except KeyboardInterrupt:
                    log.append("main: KeyboardInterrupt at a checkpoint")
        finally:
            greenlet.settrace(None)
        return log

    log = greenback_loop.trio.run(main)
    assert fired == 1
    assert sorted(log) == ["child finished", "main: KeyboardInterrupt at a checkpoint"]


def test_instrument_failing_for_one_task_keeps_working_for_the_others() -> None:
    """A task whose coroutine cannot be given a portal (another instrument
    put a non-coroutine there) keeps none; Trio does not disable ours, so
    every other task still gets its portal."""

    class Wrapper:
        def __init__(self, coro: Any) -> None:
            self.coro = coro
            self.cr_frame = coro.cr_frame
            self.send, self.throw, self.close = coro.send, coro.throw, coro.close

    class WrapOne(trio.abc.Instrument):  # type: ignore[misc]
        def task_spawned(self, task: Any) -> None:
            if task.name.endswith("wrapped"):
                task.coro = Wrapper(task.coro)

    async def wrapped(out: list[Any]) -> None:
        await trio.sleep(0)
        out.append("wrapped ran")

    async def normal(out: list[Any]) -> None:
        out.append(sync_sleep(0, "normal has a portal"))

    async def main() -> list[Any]:
        out: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wrapped, out)
            for _ in range(2):
                nursery.start_soon(normal, out)
        return sorted(out)

    instruments = [WrapOne(), greenback_loop.trio.PortalInstrument()]
    assert trio.run(main, instruments=instruments) == [
        "normal has a portal",
        "normal has a portal",
        "wrapped ran",
    ]


def test_one_instrument_shared_by_runs_in_two_threads() -> None:
    instrument = greenback_loop.trio.PortalInstrument()
    both_started = threading.Barrier(2, timeout=10)
    results: dict[str, Any] = {}

    class Sync(trio.abc.Instrument):  # type: ignore[misc]
        def before_run(self) -> None:
            both_started.wait()  # both runs start before either spawns its main task

    def thread(name: str) -> None:
        async def main() -> bool:
            sync_sleep(0)
            return greenback_loop.has_portal()

        try:
            results[name] = trio.run(main, instruments=[instrument, Sync()])
        except BaseException as exc:  # pragma: no cover - reported below
            results[name] = exc

    threads = [threading.Thread(target=thread, args=(n,)) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"A": True, "B": True}


def test_portals_for_tree_left_from_sync_code_keeps_the_portal() -> None:
    """The block's exit awaited from sync code (await_ of an exit stack's
    aclose()): the portal cannot be taken back there, and stays; the task
    goes on as with plain await."""
    import contextlib

    async def main() -> tuple[str, bool, int]:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(greenback_loop.portals_for_tree())

        def sync_teardown() -> str:
            greenback_loop.await_(stack.aclose())
            return "closed"

        closed = sync_teardown()
        await trio.sleep(0.001)
        return closed, greenback_loop.has_portal(), sync_sleep(0, 5)

    assert trio.run(main) == ("closed", True, 5)
