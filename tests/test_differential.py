"""The same programs through the C core and the pure-Python twin give the
same results, the same exceptions and the same user tracebacks.

Both cores are imported side by side and each program runs on loops whose
tasks get their portals from one of them (``conftest.core_loop_factory``),
independently of the core the process selected; their sync code calls that
core's ``await_``.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import traceback
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from conftest import core_loop_factory

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")


async def ticks(n: int) -> int:
    for _ in range(n):
        await asyncio.sleep(0)
    return n


class Failure(Exception):
    pass


async def fail_after(n: int) -> None:
    await ticks(n)
    raise Failure(f"failed after {n}")


def sync_sum(core: types.ModuleType, n: int) -> int:
    return sum(core.await_(ticks(i)) for i in range(n))


def sync_fail(core: types.ModuleType, n: int) -> None:
    core.await_(fail_after(n))


async def program_values(core: types.ModuleType) -> Any:
    async def worker(i: int) -> tuple[int, str]:
        var.set(f"w{i}")
        total = sync_sum(core, i)
        return total, var.get()

    return await asyncio.gather(*(worker(i) for i in range(6)))


async def program_exceptions(core: types.ModuleType) -> Any:
    async def worker(i: int) -> None:
        sync_fail(core, i)

    return await asyncio.gather(*(worker(i) for i in range(3)), return_exceptions=True)


async def program_cancellation(core: types.ModuleType) -> Any:
    log: list[str] = []

    def parked() -> None:
        try:
            core.await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            log.append("cancelled")
            core.await_(asyncio.sleep(0))
            log.append("cleanup awaited")
            raise

    async def worker() -> None:
        parked()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        log.append("task cancelled")
    return log


async def program_errors(core: types.ModuleType) -> Any:
    outcomes = []
    for bad in (42, object()):
        try:
            core.await_(bad)
        except BaseException as exc:
            outcomes.append(exc)

    def in_callback() -> None:
        try:
            core.await_(asyncio.sleep(0))
        except BaseException as exc:
            outcomes.append(exc)

    asyncio.get_running_loop().call_soon(in_callback)
    await asyncio.sleep(0.01)
    return outcomes


async def program_throw_signatures(core: types.ModuleType) -> Any:
    @types.coroutine
    def suspend() -> Any:
        yield

    async def body() -> None:
        await suspend()

    outcomes = []
    for args in [(ValueError("v"),), (ValueError,), (42,), (ValueError("v"), "x")]:
        portal = core.Portal(body())
        portal.send(None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                portal.throw(*args)
        except BaseException as exc:
            outcomes.append(exc)
        portal.close()
    return outcomes


PROGRAMS: list[Callable[[types.ModuleType], Any]] = [
    program_values,
    program_exceptions,
    program_cancellation,
    program_errors,
    program_throw_signatures,
]


def describe(value: Any) -> Any:
    """What a user can observe of a result: values as they are; exceptions
    by type, message and the traceback's frames outside greenback_loop (and
    await_'s entry, which both cores show)."""
    if isinstance(value, BaseException):
        frames = [
            (f.name, None if "greenback_loop" in f.filename else f.line)
            for f in traceback.extract_tb(value.__traceback__)
            if "greenback_loop" not in f.filename or f.name == "await_"
        ]
        return (type(value).__name__, str(value), frames)
    if isinstance(value, (list, tuple)):
        return type(value)(describe(v) for v in value)
    return value


CORES = {"c": "greenback_loop._cportal", "python": "greenback_loop._portal_py"}


@pytest.fixture(scope="module")
def cores() -> dict[str, types.ModuleType]:
    """Both cores, imported side by side."""
    try:
        return {name: importlib.import_module(mod) for name, mod in CORES.items()}
    except ImportError as exc:
        pytest.skip(f"needs both cores (the C core is not built here: {exc})")


@pytest.mark.once
def test_same_call_signatures(cores: dict[str, types.ModuleType]) -> None:
    """``await_`` takes one positional argument in both cores: the same
    signature, and a TypeError for a keyword, none or two (the wording is
    CPython's own for a C and for a Python function)."""
    import inspect

    params = {
        name: [(p.name, p.kind) for p in inspect.signature(core.await_).parameters.values()]
        for name, core in cores.items()
    }
    assert params["c"] == params["python"] == [("aw", inspect.Parameter.POSITIONAL_ONLY)]
    for core in cores.values():
        for args, kwargs in [((), {"aw": 1}), ((), {}), ((1, 2), {})]:
            with pytest.raises(TypeError):
                core.await_(*args, **kwargs)


@pytest.mark.once
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_same_behaviour(
    cores: dict[str, types.ModuleType], loop_kind: str, program: Callable[[types.ModuleType], Any]
) -> None:
    seen = {}
    for name, core in cores.items():
        try:
            with asyncio.Runner(loop_factory=core_loop_factory(core, loop_kind)) as runner:
                seen[name] = describe(runner.run(program(core)))
        except BaseException as exc:
            seen[name] = ("raised", describe(exc))
    assert seen["c"] == seen["python"]


@pytest.mark.once
@pytest.mark.parametrize("name", CORES)
def test_core_loops_use_their_core(
    cores: dict[str, types.ModuleType], loop_kind: str, name: str
) -> None:
    """The comparison above is between the two cores, not one core twice."""
    core = cores[name]
    other = cores["python" if name == "c" else "c"]

    async def main() -> tuple[bool, bool, bool]:
        task = asyncio.current_task()
        assert task is not None
        return type(task.get_coro()) is core.Portal, core.in_portal(), other.in_portal()

    with asyncio.Runner(loop_factory=core_loop_factory(core, loop_kind)) as runner:
        assert runner.run(main()) == (True, True, False)


# -- the same on Trio --------------------------------------------------------------


async def trio_program_values(core: types.ModuleType) -> Any:
    import trio

    results: list[tuple[int, str]] = []

    async def worker(i: int) -> None:
        var.set(f"w{i}")
        total = sum(core.await_(trio.sleep(0)) or j for j in range(i))
        results.append((total, var.get()))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(worker, i)
    return sorted(results)


async def trio_program_exceptions_and_cancellation(core: types.ModuleType) -> Any:
    import trio

    async def fails() -> None:
        await trio.sleep(0)
        raise Failure("trio failure")

    outcomes: list[Any] = []
    try:
        core.await_(fails())
    except Failure as exc:
        outcomes.append(exc)
    with trio.move_on_after(0.001) as scope:
        core.await_(trio.sleep(10))
    outcomes.append(scope.cancelled_caught)
    try:
        core.await_(42)
    except TypeError as exc:
        outcomes.append(exc)
    return outcomes


TRIO_PROGRAMS = [trio_program_values, trio_program_exceptions_and_cancellation]


@pytest.mark.once
@pytest.mark.parametrize("program", TRIO_PROGRAMS, ids=lambda p: p.__name__)
def test_same_behaviour_on_trio(
    cores: dict[str, types.ModuleType], program: Callable[[types.ModuleType], Any]
) -> None:
    import trio

    seen = {}
    for name, core in cores.items():

        class CorePortals(trio.abc.Instrument):  # type: ignore[misc]
            """Every task's portal from this core."""

            def task_spawned(self, task: Any, core: types.ModuleType = core) -> None:
                task.coro = core.Portal(task.coro)

        try:
            seen[name] = describe(trio.run(program, core, instruments=[CorePortals()]))
        except BaseException as exc:
            seen[name] = ("raised", describe(exc))
    assert seen["c"] == seen["python"]
