"""Allocation failures in a portal's first step, one at a time: CPython's
``_testcapi.set_nomemory(k, k + 1)`` makes the k-th allocation from there
on fail, for every k in turn (a fault-injection sweep). Whatever failed, the
step raises MemoryError in the code that made it (or succeeds) and the
portal stays usable: a coroutine the step never entered runs from the start
when stepped again, one parked in ``await_`` resumes.

C core only. Allocations greenlet itself makes during a switch are not the
core's to survive: greenlet aborts the process when it cannot save a stack
slice ("Failed low-level slp_switch") and crashes when it cannot allocate a
new greenlet's C++ state (``green_new``); those ks are told apart (the abort
by its message, the crash by gdb's backtrace) and skipped, as docs/limits.rst
says. The pure-Python core's bookkeeping is Python code that an allocation
failure can interrupt anywhere (documented there too)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(
        bool(os.environ.get("GREENBACK_LOOP_SANITIZE")),
        reason="greenlet's own crashes are told apart by their signal, which "
        "AddressSanitizer's handler turns into an exit code",
    ),
]

try:
    import _testcapi  # noqa: F401
except ImportError:  # pragma: no cover - a CPython built without its tests
    pytest.skip("CPython's _testcapi (set_nomemory) is not available", allow_module_level=True)

# The worker: for k in its range, a fresh portal's first step on a new
# runner, with the k-th allocation failing; "k begin" before the fault, "k <outcome> <state>" after
# it, "k retry <what the next steps gave>" once stepped again without faults.
WORKER = r"""
import inspect, sys, threading, _testcapi
import greenlet
import greenback_loop
from greenback_loop import _impl

core = _impl.core
assert core.__name__ == "greenback_loop._cportal", core
WHERE, PARKS, START, STOP = sys.argv[1], sys.argv[2] == "parks", int(sys.argv[3]), int(sys.argv[4])


class Ready:
    def __await__(self):
        yield "parked"
        return 5


def sync():
    return greenback_loop.await_(Ready()) if PARKS else 5


async def job():
    return sync() + 1


def finish(p):
    out = []
    try:
        while True:
            out.append(p.send(None))
    except StopIteration as e:
        out.append(("returned", e.value))
    except BaseException as e:
        out.append((type(e).__name__, str(e)))
    return out


def one(k):
    coro = job()
    p = core.Portal(coro)
    print(k, "begin", flush=True)
    _testcapi.set_nomemory(k, k + 1)
    try:
        p.send(None)
    except StopIteration as e:
        outcome = "returned"
    except MemoryError:
        outcome = "MemoryError"
    except BaseException as e:
        outcome = f"{type(e).__name__}:{e}"
    else:
        outcome = "yielded"
    finally:
        _testcapi.remove_mem_hooks()
    state = inspect.getcoroutinestate(coro)
    print(k, "outcome", outcome, state, flush=True)
    print(k, "retry", repr(finish(p)), flush=True)


async def outer(k):
    one(k)


def in_a_thread(k):
    # a thread of its own: its pool is empty, so each k meets a new runner
    # (greenlet's state for the thread is made first, outside the sweep:
    # greenlet aborts when that fails)
    greenlet.getcurrent()
    if WHERE == "hub":
        one(k)
    else:  # a portal stepped from inside another portal's step
        finish(core.Portal(outer(k)))


for k in range(START, STOP):
    t = threading.Thread(target=in_a_thread, args=(k,))
    t.start()
    t.join()
"""

SWEEP = 40  # past the last k that meets the first step's allocations


def greenlets_own_crash(
    proc: subprocess.CompletedProcess[str], argv: list[str], env: dict[str, str]
) -> bool:
    """Whether a dead worker died inside greenlet: its abort on a failed
    stack save, or a crash whose innermost frames (by gdb) are greenlet's."""
    if "greenlet: Failed low-level slp_switch" in proc.stderr:
        return True
    if proc.returncode != -signal.SIGSEGV:
        return False
    gdb = subprocess.run(
        ["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 6", "--args", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    frames = [line for line in gdb.stdout.splitlines() if line.startswith("#")]
    return any("greenlet::" in f or "green_new" in f for f in frames[:4])


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb tells greenlet's own crashes apart")
@pytest.mark.parametrize("parks", ["parks", "returns"])
@pytest.mark.parametrize("where", ["hub", "nested"])
def test_each_allocation_failure_in_a_first_step_is_a_memory_error(
    tmp_path: Path, where: str, parks: str
) -> None:
    env = dict(os.environ, PYTHONFAULTHANDLER="")  # a crash ends by its signal
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    script = str(tmp_path / "worker.py")
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    results: dict[int, tuple[str, str, str]] = {}
    greenlets: list[int] = []
    start = 0
    while start < SWEEP:
        argv = [sys.executable, script, where, parks, str(start), str(SWEEP)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        last = start
        for line in proc.stdout.splitlines():
            k, _, rest = line.partition(" ")
            if not k.isdigit():
                continue
            last = int(k)
            kind, _, what = rest.partition(" ")
            if kind == "outcome":
                outcome, state = what.split(" ")
                results[last] = (outcome, state, "")
            elif kind == "retry":
                results[last] = (*results[last][:2], what)
        if proc.returncode == 0:
            break
        # died at k = last, before its outcome: only greenlet may do that
        assert last not in results, (last, proc.returncode, proc.stderr[-3000:])
        one = [*argv[:4], str(last), str(last + 1)]
        assert greenlets_own_crash(proc, one, env), (
            f"k={last}: the worker died (rc {proc.returncode}) outside greenlet",
            proc.stderr[-3000:],
        )
        greenlets.append(last)
        start = last + 1

    whole = ["parked", ("returned", 6)] if parks == "parks" else [("returned", 6)]
    reused = [("RuntimeError", "cannot reuse already awaited coroutine")]
    memory_errors = 0
    for k, (outcome, state, retry) in sorted(results.items()):
        if outcome == "MemoryError":
            memory_errors += 1
            # before the coroutine ran (it runs whole when stepped again),
            # or raised in its own code, as plain code would raise it
            assert state in ("CORO_CREATED", "CORO_CLOSED"), (k, state)
            assert retry == repr(whole if state == "CORO_CREATED" else reused), (k, retry)
        elif outcome == "yielded":  # parked in await_ (mid-send), as without a fault
            assert (parks, state, retry) == ("parks", "CORO_RUNNING", repr(whole[1:])), k
        else:
            assert (outcome, state, retry) == ("returned", "CORO_CLOSED", repr(reused)), k
    assert memory_errors >= 5, results  # the sweep did meet the step's allocations
    assert len(results) + len(greenlets) == SWEEP
