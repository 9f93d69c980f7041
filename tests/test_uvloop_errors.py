"""greenback_loop.uvloop is a drop-in for uvloop: the same bad arguments
raise the same exceptions, with the same messages, as uvloop's."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

uvloop = pytest.importorskip("uvloop")

import greenback_loop.uvloop as gb_uvloop  # noqa: E402

Run = Callable[..., Any]


async def answer() -> int:
    return 42


def in_running_loop(run: Run, main: Coroutine[Any, Any, Any]) -> Any:
    async def outer() -> Any:
        return run(main)

    return asyncio.run(outer())


CASES: dict[str, Callable[[Run, Coroutine[Any, Any, Any]], Any]] = {
    "main is an int": lambda run, main: run(42),
    "main is None": lambda run, main: run(None),
    "main is an async function, not called": lambda run, main: run(answer),
    "foreign loop_factory": lambda run, main: run(main, loop_factory=asyncio.new_event_loop),
    "loop_factory=None": lambda run, main: run(main, loop_factory=None),
    "loop_factory not callable": lambda run, main: run(main, loop_factory=42),
    "loop_factory positional": lambda run, main: run(main, asyncio.new_event_loop),
    "unknown keyword": lambda run, main: run(main, bogus=1),
    "debug not a bool": lambda run, main: run(main, debug="yes"),
    "debug=True": lambda run, main: run(main, debug=True),
    "inside a running loop": in_running_loop,
}


def outcome(run: Run, case: Callable[[Run, Coroutine[Any, Any, Any]], Any]) -> Any:
    """What ``case(run, main)`` returns or raises (type and message)."""
    with warnings.catch_warnings():
        # uvloop.run() on 3.12+ drops its wrapper coroutine unawaited when
        # asyncio.run() refuses the arguments
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        main = answer()
        try:
            return ("returned", case(run, main))
        except Exception as exc:
            return (type(exc), str(exc))
        finally:
            main.close()  # whatever the run left unawaited
            gc.collect()


@pytest.mark.parametrize("name", CASES)
def test_same_errors_as_uvloop(name: str) -> None:
    case = CASES[name]
    assert outcome(gb_uvloop.run, case) == outcome(uvloop.run, case)


def test_the_cases_are_errors() -> None:
    """The comparison above is between errors, mostly: uvloop refuses these."""
    refused = [name for name, case in CASES.items() if outcome(uvloop.run, case)[0] != "returned"]
    assert set(CASES) - set(refused) == {"debug not a bool", "debug=True"}


def test_plain_uvloop_loop_factory_is_refused() -> None:
    """uvloop.run() accepts a plain uvloop loop; the drop-in refuses it: its
    tasks would have no portals."""
    main = answer()
    with pytest.raises(TypeError, match="plain uvloop.Loop have no portals"):
        gb_uvloop.run(main, loop_factory=uvloop.new_event_loop)


def test_same_public_names_as_uvloop() -> None:
    names = set(getattr(uvloop, "__all__", ()))
    assert names <= set(gb_uvloop.__all__)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in names | {"Loop"}:
            assert hasattr(gb_uvloop, name), name
    if sys.version_info < (3, 16):
        assert {"EventLoopPolicy", "install"} <= names
