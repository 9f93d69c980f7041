"""Test axes: implementation (session-wide) and event loop (per test).

Every test runs once per implementation of the portal core; every async test
runs on greenback_loop's asyncio loop and on its uvloop loop. Sync tests that
build their own loops take the ``loop_kind`` fixture.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

import greenback_loop
from greenback_loop import _impl

LOOP_KINDS = ("asyncio", "uvloop")


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


@pytest.fixture(scope="session", params=_impl.AVAILABLE, autouse=True)
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """The portal core under test; switches the whole package to it."""
    _impl.select(request.param)
    yield request.param


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


def run_pytest(cwd: Any, env: dict[str, str], *args: str) -> Any:
    """Run pytest in a subprocess (for suites run again under other
    conditions); returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
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
        f"greenback_loop {greenback_loop.__version__} implementations "
        f"{', '.join(_impl.AVAILABLE)}; greenlet {greenlet.__version__}; "
        f"uvloop {uvloop.__version__}; Python {sys.version.split()[0]}"
    )
