"""Test axes: implementation (per process) and event loop (per test).

The suite runs against the portal core this process selected: the C core on
CPython, the pure-Python twin under ``GREENBACK_LOOP_NO_EXTENSIONS=1`` (or
off CPython). tests/test_twin_suite.py runs the whole suite again in a
subprocess with the twin; tests marked ``once`` (they do not depend on the
core, or compare both cores themselves) are skipped in that rerun. Every
async test runs on greenback_loop's asyncio loop and on its uvloop loop. Sync
tests that build their own loops take the ``loop_kind`` fixture.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _impl

LOOP_KINDS = ("asyncio", "uvloop")

#: Set in the environment of the twin rerun (tests/test_twin_suite.py).
TWIN_RUN_ENV = "GREENBACK_LOOP_TWIN_RUN"
IN_TWIN_RUN = os.environ.get(TWIN_RUN_ENV, "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "once: independent of the portal core (or compares both cores itself); "
        "skipped in the twin rerun",
    )
    _sigint_as_in_a_foreground_program()


def _sigint_as_in_a_foreground_program() -> None:
    """The Ctrl-C tests (here and in the subprocesses they start) need SIGINT
    to raise KeyboardInterrupt, as in a program started from a terminal. A
    shell starts its background commands (``cmd &`` in a script, as
    ``.ci/run`` starts the second CPython's suite) with SIGINT ignored, which
    Python then keeps, and so would every subprocess: give it Python's own
    handler back (which exec resets to the default in the subprocesses)."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The sanitized rerun runs in the background from the end of collection
    # (pytest_collection_finish): its test, which waits for it, goes last.
    items.sort(key=lambda item: item.path.name == "test_sanitizers.py")
    if not IN_TWIN_RUN:
        return
    skip = pytest.mark.skip(reason="runs once, in the main run")
    for item in items:
        if item.get_closest_marker("once") is not None:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    # The sanitized rerun (tests/test_sanitizers.py) takes minutes and needs
    # nothing of this process: when selected, it starts now and runs beside
    # the rest of the suite; its test waits for it.
    for item in session.items:
        if isinstance(item, pytest.Function) and item.path.name == "test_sanitizers.py":
            rerun = item.module.start_in_background()
            if rerun is not None:
                session.config.add_cleanup(rerun.stop)
            return


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return functools.partial(greenback_loop.new_event_loop, uvloop=kind == "uvloop")


def plain_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {kind: loop_factory(kind) for kind in LOOP_KINDS}


@pytest.fixture(scope="session")
def impl() -> str:
    """The portal core under test: the one this process selected, ``"c"`` or
    ``"python"``."""
    return _impl.implementation


def core_loop_factory(core: types.ModuleType, kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of greenback_loop loops (asyncio or uvloop) whose tasks get
    their portals from *core* (``greenback_loop._cportal`` or
    ``greenback_loop._portal_py``), independently of the core the process
    selected.

    For tests that compare both cores in one process: sync code in such a
    loop's tasks must call ``core.await_``.
    """
    if kind == "uvloop":
        import uvloop

        import greenback_loop.uvloop as gb_uvloop

        base: type = gb_uvloop.Loop
        base_create_task = uvloop.Loop.create_task
    else:
        base = greenback_loop.EventLoop
        base_create_task = asyncio.BaseEventLoop.create_task

    def wrap(coro: Any) -> Any:
        if type(coro) is not core.Portal and asyncio.iscoroutine(coro):
            return core.Portal(coro)
        return coro

    cls = type(
        f"{base.__name__}Over{core.__name__.rpartition('.')[2]}",
        (base,),
        {"create_task": core.portal_create_task(base_create_task, wrap)},
    )
    return cls  # type: ignore[no-any-return]


@functools.cache
def plain_eager_task_factory(kind: str) -> str:
    """What a plain *kind* loop does with ``asyncio.eager_task_factory``:
    ``"eager"`` (a task's first step runs inside ``create_task``), ``"lazy"``
    (uvloop 0.23 passes ``eager_start=None``, which turns eagerness off) or
    ``"refused"`` (uvloop passes ``eager_start=`` to every task factory, which
    asyncio's eager factory does not take before 3.14: ``create_task``
    raises TypeError). Tried on a plain loop in a thread of its own."""
    import threading

    result: list[str] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        started: list[bool] = []

        async def first() -> None:
            started.append(True)

        coro = first()
        try:
            task = loop.create_task(coro)
        except TypeError:
            coro.close()
            result.append("refused")
            return
        finally:
            loop.set_task_factory(None)
        result.append("eager" if started else "lazy")
        await task

    def main() -> None:
        loop = plain_loop_factory(kind)()
        try:
            loop.run_until_complete(probe())
        finally:
            loop.close()

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    return result[0]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """``run(coro)``: run *coro* to completion on a new greenback_loop loop."""

    def run(coro: Any, *, debug: bool | None = None) -> Any:
        return greenback_loop.run(coro, debug=debug, uvloop=loop_kind == "uvloop")

    return run


@pytest.fixture
def run_plain(loop_kind: str) -> Callable[..., Any]:
    """``run_plain(coro)``: run *coro* on a plain asyncio or uvloop loop."""

    def run_plain(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=plain_loop_factory(loop_kind)) as runner:
            return runner.run(coro)

    return run_plain


@pytest.fixture(autouse=True)
def _collect_between_tests() -> Iterator[None]:
    yield
    gc.collect()


def suite_command(*args: str) -> list[str]:
    """The command line of a pytest subprocess (for suites run again under
    other conditions)."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def run_pytest(cwd: Any, env: dict[str, str], *args: str) -> Any:
    """Run pytest in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        suite_command(*args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def pytest_report_header(config: pytest.Config) -> str:
    import greenlet
    import uvloop

    return (
        f"greenback_loop {greenback_loop.__version__} core {_impl.implementation}"
        f"{' (twin rerun)' if IN_TWIN_RUN else ''}; greenlet {greenlet.__version__}; "
        f"uvloop {uvloop.__version__}; Python {sys.version.split()[0]}"
    )
