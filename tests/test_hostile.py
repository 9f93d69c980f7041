"""Hostile reproducers: what a user who pokes at the machinery might write.

Each scenario is a script run in a subprocess, once per core (the C core
and the pure-Python twin, chosen by GREENBACK_LOOP_NO_EXTENSIONS) and per
loop kind (asyncio, uvloop), so a crash, an abort or a hang stays in its
process. Where plain asyncio is the reference, the same script also runs on
a plain loop (``PLAIN = True``) and the outputs are compared.

All the subprocesses the collected tests need start together, on the first
test's setup, and run in parallel; each test then waits for its own.

Run ``python tests/test_hostile.py NAME...`` to print a scenario's output on
every core and loop (and on plain loops), for a quick look.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

PRELUDE = """\
import asyncio, contextvars, gc, os, sys, threading, time, weakref
import greenlet
import greenback_loop
from greenback_loop import await_

UVLOOP = {uvloop!r}
PLAIN = {plain!r}
CORE = {core!r}
if not PLAIN:
    assert greenback_loop.implementation == CORE, greenback_loop.implementation


def new_loop():
    if PLAIN:
        if UVLOOP:
            import uvloop
            return uvloop.new_event_loop()
        return asyncio.SelectorEventLoop()
    return greenback_loop.new_event_loop(uvloop=UVLOOP)


def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


def out(*args):
    print(*args, flush=True)


def ename(exc):
    return type(exc).__name__ if exc is not None else None


def depth():
    # How much deeper Python can recurse from here.
    def f(n):
        try:
            return f(n + 1)
        except RecursionError:
            return n
    return f(0)


class OrphanFuture:
    # An awaitable that blocks on a future only the task will reference
    # (so a task dropped while parked on it is collectable).
    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        fut = asyncio.get_running_loop().create_future()
        fut._asyncio_future_blocking = True
        return fut


def portal_of(coro):
    # A hand-made portal around coro (the bare coroutine on a plain loop).
    return coro if PLAIN else greenback_loop._impl.core.Portal(coro)


def park_forever():
    await_(OrphanFuture())
"""


@dataclasses.dataclass
class Scenario:
    name: str
    script: str
    #: Expected stdout; None: the same as the script's on a plain loop.
    expected: str | None
    #: Instead of an exact comparison: check(stdout, plain_stdout) asserts.
    check: Callable[[str, str], None] | None = None
    #: Regexes for lines stderr may hold; any other line that mentions
    #: "Exception ignored", "Traceback", "Error" or "Fatal" fails the test.
    stderr_ok: tuple[str, ...] = ()
    #: {(core, loop): reason}, "*" matching any core or loop.
    xfail: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: Whether an xfail that passes fails the test (False: the outcome
    #: depends on collection timing, and either is possible).
    xfail_strict: bool = True
    timeout: float = 40
    returncode: int = 0
    #: Skip under AddressSanitizer (test_sanitizers reruns the suite so).
    not_under_asan: str | None = None

    def xfail_reason(self, core: str, loop: str) -> str | None:
        for key in ((core, loop), (core, "*"), ("*", loop), ("*", "*")):
            if key in self.xfail:
                return self.xfail[key]
        return None


SCENARIOS: dict[str, Scenario] = {}


def add(name: str, script: str, expected: str | None = None, **kwargs: Any) -> None:
    assert name not in SCENARIOS, name
    if expected is not None:
        expected = textwrap.dedent(expected).lstrip("\n")
    SCENARIOS[name] = Scenario(name, textwrap.dedent(script), expected, **kwargs)


# -- scenarios ------------------------------------------------------------------

# 1. Re-entrancy inside a switch ------------------------------------------------

add(
    "reentry_settrace_steps_other_portals",
    """
    # A greenlet.settrace callback that, on switches, steps other portals:
    # one driven to its end at once, and one kept parked across callbacks
    # and advanced a step at a time.
    async def quick(n):
        # sync code that awaits without suspending
        def sync():
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(n)
            return await_(fut) + await_(_noop())
        return sync()

    async def _noop():
        return 0

    @__import__("types").coroutine
    def bare_yield():
        yield None

    async def slow():
        # parks in await_ on a bare yield: the driver just sends None
        total = 0
        for i in range(5):
            total += (lambda: await_(bare_yield()) or i)()
        return total

    state = {"busy": False, "quick": 0, "slow_done": 0, "slow": None, "events": 0}

    def tracer(event, args):
        if state["busy"] or PortalType is None:
            return
        state["busy"] = True
        try:
            state["events"] += 1
            p = PortalType(quick(1))
            try:
                p.send(None)
            except StopIteration as e:
                state["quick"] += e.value
            s = state["slow"]
            if s is None:
                s = state["slow"] = PortalType(slow())
            try:
                s.send(None)
            except StopIteration as e:
                state["slow_done"] += 1
                assert e.value == 10, e.value
                state["slow"] = None
        finally:
            state["busy"] = False

    PortalType = None

    def work(i):
        total = 0
        for j in range(30):
            total += await_(asyncio.sleep(0, j))
        return total + i

    async def worker(i):
        return work(i)

    async def main():
        global PortalType
        PortalType = type(asyncio.current_task().get_coro())
        greenlet.settrace(tracer)
        try:
            res = await asyncio.gather(*(worker(i) for i in range(20)))
        finally:
            greenlet.settrace(None)
        out("results", res == [435 + i for i in range(20)])
        out("other portals stepped", state["quick"] > 100, state["slow_done"] > 10)

    run(main())
    """,
    """
    results True
    other portals stepped True True
    """,
)

add(
    "reentry_settrace_gc_finalizes_parked",
    """
    # A settrace callback calls gc.collect() on switches, while dropped
    # tasks parked in await_ wait to be collected: their portals are
    # finalized (stepped with GeneratorExit) inside other portals' switches.
    finalized = []

    def parked_sync(i):
        try:
            park_forever()
        finally:
            finalized.append(i)

    async def dropped(i):
        parked_sync(i)

    busy = [False]
    count = [0]
    def tracer(event, args):
        count[0] += 1
        if busy[0] or count[0] % 4:
            return
        busy[0] = True
        try:
            gc.collect()
        finally:
            busy[0] = False

    def work(i):
        total = 0
        for j in range(20):
            if j % 5 == 0:
                asyncio.get_running_loop().create_task(dropped(i * 100 + j))
            total += await_(asyncio.sleep(0, j))
        return total

    async def worker(i):
        return work(i)

    async def main():
        greenlet.settrace(tracer)
        try:
            res = await asyncio.gather(*(worker(i) for i in range(6)))
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            greenlet.settrace(None)
        gc.collect()
        out("results", res == [190] * 6)
        out("finalized", sorted(finalized) == sorted(i * 100 + j for i in range(6) for j in range(0, 20, 5)))

    run(main())
    """,
    """
    results True
    finalized True
    """,
    stderr_ok=(r"Task was destroyed but it is pending", r"^task: <Task pending"),
)

add(
    "reentry_settrace_callback_calls_await_",
    """
    # A greenlet.settrace callback that itself calls await_ on the switches
    # of a step: on the one resuming a parked greenlet it runs there before
    # the greenlet has taken its job; await_ must refuse (it used to take
    # the job and leave the step spinning forever).
    calls = [0]
    refusals = []
    def tracer(event, args):
        calls[0] += 1
        if calls[0] <= 4:
            try:
                await_(asyncio.sleep(0))
            except RuntimeError as exc:
                refusals.append("switched into" in str(exc) or "descend" in str(exc))

    async def main():
        greenlet.settrace(tracer)
        try:
            value = await_(asyncio.sleep(0, "ok"))
            await asyncio.sleep(0)
        finally:
            greenlet.settrace(None)
        out("value", value)
        out("refused clearly", bool(refusals) and all(refusals))

    run(main())
    """,
    """
    value ok
    refused clearly True
    """,
)

add(
    "reentry_deferred_greenlet_deletion",
    """
    # Suspended greenlets of the loop thread are dropped in another thread:
    # greenlet deletes them at a later switch in the loop thread, i.e. inside
    # some portal's switch. Their finally blocks step a portal, collect
    # garbage and schedule loop callbacks.
    cleanups = []
    callbacks = []
    PortalType = None

    async def quick(n):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(n)
        return (lambda: await_(fut))()

    def hostile_cleanup(i):
        p = PortalType(quick(i))
        try:
            p.send(None)
        except StopIteration as e:
            cleanups.append(e.value)
        gc.collect()
        LOOP.call_soon(callbacks.append, i)

    def child(i):
        try:
            greenlet.getcurrent().parent.switch()
        finally:
            hostile_cleanup(i)

    def make_suspended(i):
        g = greenlet.greenlet(child)
        g.switch(i)
        return g

    def work(i, q):
        total = 0
        for j in range(20):
            q.append(make_suspended(i * 100 + j))
            total += await_(asyncio.sleep(0, j))
        return total

    async def worker(i, q):
        return work(i, q)

    async def main():
        global PortalType, LOOP
        LOOP = asyncio.get_running_loop()
        PortalType = type(asyncio.current_task().get_coro())
        q = []
        tasks = [asyncio.create_task(worker(i, q)) for i in range(5)]
        stop = threading.Event()
        def dropper():
            while not stop.is_set() or q:
                while q:
                    g = q.pop()
                    del g
                time.sleep(0.0005)
        th = threading.Thread(target=dropper)
        th.start()
        res = await asyncio.gather(*tasks)
        stop.set()
        th.join()
        for _ in range(20):
            await asyncio.sleep(0.001)
        want = sorted(i * 100 + j for i in range(5) for j in range(20))
        out("results", res == [190] * 5)
        out("cleanups", sorted(cleanups) == want)
        out("callbacks", sorted(callbacks) == want)

    run(main())
    """,
    """
    results True
    cleanups True
    callbacks True
    """,
)

# 2. Runners carry nothing between tasks ---------------------------------------


def check_depths(stdout: str, plain: str) -> None:
    """Every "depth NAME N" line is within 50 frames of the plain run's."""

    def parse(text: str) -> dict[str, int]:
        found = dict(re.findall(r"^depth (\S+) (\d+)$", text, re.M))
        return {k: int(v) for k, v in found.items()}

    got, want = parse(stdout), parse(plain)
    assert got.keys() == want.keys() and got, (stdout, plain)
    for key, value in got.items():
        assert abs(value - want[key]) <= 50, (key, value, want[key], stdout, plain)
    rest = [line for line in stdout.splitlines() if not line.startswith("depth ")]
    rest_plain = [line for line in plain.splitlines() if not line.startswith("depth ")]
    assert rest == rest_plain, (stdout, plain)


add(
    "runner_started_deep_keeps_no_depth",
    """
    # Runners first started deep in a stack: a task's coroutine stepped by
    # hand (coro.send(None)) from sync code 700 frames down, and a portal
    # of a coroutine that finishes in that step. Later tasks must recurse
    # as deep as on a plain loop.
    def recurse(n, fn):
        return recurse(n - 1, fn) if n else fn()

    async def first_step_then_more():
        await asyncio.sleep(0)
        return depth()

    async def finishes_at_once():
        return 1

    async def deep_stepper():
        def at_depth():
            t = asyncio.get_running_loop().create_task(first_step_then_more())
            t.get_coro().send(None)  # its first step, 700 frames down
            try:
                portal_of(finishes_at_once()).send(None)
            except StopIteration:
                pass
            return t
        return recurse(700, at_depth)

    async def measure():
        return depth()

    async def parked_measure(ev):
        d = depth()
        if not PLAIN:
            await_(ev.wait())
        else:
            await ev.wait()
        return d

    async def main():
        ts = []
        for _ in range(8):
            ts.append(await asyncio.create_task(deep_stepper()))
        victims = [await t for t in ts]
        out("depth victim", min(victims))
        later = await asyncio.gather(*(measure() for _ in range(20)))
        out("depth later_min", min(later))
        ev = asyncio.Event()
        parked = [asyncio.create_task(parked_measure(ev)) for _ in range(20)]
        await asyncio.sleep(0)
        ev.set()
        out("depth parked_min", min(await asyncio.gather(*parked)))

    run(main())
    """,
    check=check_depths,
)

add(
    "runner_reparented_not_pooled",
    """
    # Sync code in a task points its greenlet's parent elsewhere; later
    # tasks must not get that runner with that parent.
    async def reparent(park):
        here = greenlet.getcurrent()
        hub = here
        while hub.parent is not None:
            hub = hub.parent
        other = greenlet.greenlet(lambda: None, parent=hub)
        here.parent = other
        if park:
            await_(asyncio.sleep(0))
        return here.parent is other

    async def parent_of_step():
        return greenlet.getcurrent().parent

    async def main():
        loop_greenlet = greenlet.getcurrent()
        while loop_greenlet.parent is not None:
            loop_greenlet = loop_greenlet.parent
        r = await asyncio.gather(*(reparent(i % 2 == 0) for i in range(10)))
        out("reparented", all(r))
        parents = await asyncio.gather(*(parent_of_step() for _ in range(100)))
        out("later parents are the loop's greenlet", all(p is loop_greenlet for p in parents))

    run(main())
    """,
    """
    reparented True
    later parents are the loop's greenlet True
    """,
)

add(
    "runner_idle_poked",
    """
    # Idle runners found with gc.get_objects(): switched into, thrown
    # into (even GreenletExit) and reparented while idle.
    # Each foreign call gets a RuntimeError; later tasks run normally.
    async def step():
        return await_(asyncio.sleep(0, 1)) + (await asyncio.sleep(0, 1))

    def idle_greenlets():
        me = greenlet.getcurrent()
        return [
            o for o in gc.get_objects()
            if isinstance(o, greenlet.greenlet) and o is not me and o.parent is not None
            and o and not o.dead
        ]

    async def main():
        await asyncio.gather(*(step() for _ in range(10)))
        errors = {}
        found = idle_greenlets()
        for g in found:
            for how in ("switch", "switch-args", "throw-exit", "throw-value"):
                try:
                    if how == "switch":
                        g.switch()
                    elif how == "switch-args":
                        g.switch(1, 2, x=3)
                    elif how == "throw-exit":
                        g.throw(greenlet.GreenletExit)
                    else:
                        g.throw(ValueError("poke"))
                except BaseException as e:
                    errors[ename(e)] = errors.get(ename(e), 0) + 1
                else:
                    errors["none"] = errors.get("none", 0) + 1
        out("found idle runners", len(found) > 0)
        out("errors", sorted(k for k in errors), sum(errors.values()) == 4 * len(found))
        out("dead after pokes", sum(g.dead for g in found))
        for g in found:
            g.parent = greenlet.greenlet(lambda: None, parent=g.parent)
        del found, g
        r = await asyncio.gather(*(step() for _ in range(200)))
        out("later tasks", r == [2] * 200)
        hub = greenlet.getcurrent()
        while hub.parent is not None:
            hub = hub.parent
        async def parent_of_step():
            return greenlet.getcurrent().parent
        parents = await asyncio.gather(*(parent_of_step() for _ in range(100)))
        out("later parents are the loop's greenlet", all(p is hub for p in parents))

    run(main())
    """,
    """
    found idle runners True
    errors ['RuntimeError'] True
    dead after pokes 0
    later tasks True
    later parents are the loop's greenlet True
    """,
)

# 3. Foreign switch()/throw() into a task parked in await_ ----------------------

add(
    "foreign_switch_and_throw_into_parked",
    """
    # Sync code in a victim task saves its greenlet and parks; other tasks
    # and loop callbacks switch and throw into it with all sorts of
    # arguments. Each foreign caller gets a clear RuntimeError (or greenlet's
    # own TypeError for arguments it refuses); the victim finishes with its
    # result.
    saved = []

    def victim_sync(ev):
        saved.append(greenlet.getcurrent())
        try:
            await_(ev.wait())
        except BaseException as e:
            return "victim caught " + ename(e)
        return "victim done"

    async def victim(ev):
        return victim_sync(ev)

    def poke(how, victim_task):
        g = saved[0]
        try:
            if how == "throw ValueError":
                g.throw(ValueError)
            elif how == "throw 3 args":
                g.throw(ValueError, ValueError("x"), None)
            elif how == "throw GreenletExit":
                g.throw(greenlet.GreenletExit)
            elif how == "throw CancelledError":
                g.throw(asyncio.CancelledError)
            elif how == "throw StopIteration":
                g.throw(StopIteration(5))
            elif how == "throw KeyboardInterrupt":
                g.throw(KeyboardInterrupt)
            elif how == "throw 1":
                g.throw(1)
            elif how == "switch":
                g.switch()
            elif how == "switch kwargs":
                g.switch(1, x=2)
            elif how == "switch own portal":
                g.switch(victim_task.get_coro())
            elif how == "switch boxed portal":
                g.switch([victim_task.get_coro()])
            elif how == "switch caller's portal":
                g.switch(asyncio.current_task().get_coro())
            elif how == "switch boxed caller's portal":
                g.switch([asyncio.current_task().get_coro()])
        except BaseException as e:
            return ename(e)
        return "no error"

    HOWS = ["throw ValueError", "throw 3 args", "throw GreenletExit", "throw CancelledError",
            "throw StopIteration", "throw KeyboardInterrupt", "throw 1", "switch",
            "switch kwargs", "switch own portal", "switch boxed portal",
            "switch caller's portal", "switch boxed caller's portal"]

    async def main():
        ev = asyncio.Event()
        v = asyncio.create_task(victim(ev))
        await asyncio.sleep(0)
        async def from_task(how):
            return poke(how, v)
        for how in HOWS:
            out("task:", how, "->", await asyncio.create_task(from_task(how)))
        fut = asyncio.get_running_loop().create_future()
        def callback():
            fut.set_result([poke(how, v) for how in HOWS[:-2]])
        asyncio.get_running_loop().call_soon(callback)
        for how, r in zip(HOWS, await fut):
            out("callback:", how, "->", r)
        out("main task:", poke("throw ValueError", v))
        await asyncio.sleep(0.01)
        out("victim pending", not v.done())
        ev.set()
        out(await v)

    run(main())
    """,
    """
    task: throw ValueError -> RuntimeError
    task: throw 3 args -> RuntimeError
    task: throw GreenletExit -> RuntimeError
    task: throw CancelledError -> RuntimeError
    task: throw StopIteration -> RuntimeError
    task: throw KeyboardInterrupt -> RuntimeError
    task: throw 1 -> TypeError
    task: switch -> RuntimeError
    task: switch kwargs -> RuntimeError
    task: switch own portal -> RuntimeError
    task: switch boxed portal -> RuntimeError
    task: switch caller's portal -> RuntimeError
    task: switch boxed caller's portal -> RuntimeError
    callback: throw ValueError -> RuntimeError
    callback: throw 3 args -> RuntimeError
    callback: throw GreenletExit -> RuntimeError
    callback: throw CancelledError -> RuntimeError
    callback: throw StopIteration -> RuntimeError
    callback: throw KeyboardInterrupt -> RuntimeError
    callback: throw 1 -> TypeError
    callback: switch -> RuntimeError
    callback: switch kwargs -> RuntimeError
    callback: switch own portal -> RuntimeError
    callback: switch boxed portal -> RuntimeError
    main task: RuntimeError
    victim pending True
    victim done
    """,
)

add(
    "foreign_throw_then_cancel",
    """
    # After a foreign throw into the victim's greenlet, cancel() the victim:
    # it gets CancelledError at its await_, as at an await.
    saved = []

    def victim_sync(ev):
        saved.append(greenlet.getcurrent())
        try:
            if PLAIN:
                raise AssertionError
            await_(ev.wait())
        except asyncio.CancelledError:
            out("victim: CancelledError at the await")
            raise

    async def victim(ev):
        if PLAIN:
            try:
                await ev.wait()
            except asyncio.CancelledError:
                out("victim: CancelledError at the await")
                raise
        return victim_sync(ev)

    async def main():
        ev = asyncio.Event()
        v = asyncio.create_task(victim(ev))
        await asyncio.sleep(0)
        if not PLAIN:
            for exc in (ValueError, asyncio.CancelledError):
                try:
                    saved[0].throw(exc)
                except RuntimeError:
                    pass
        else:
            saved.append(None)
        await asyncio.sleep(0)
        v.cancel()
        try:
            await v
        except asyncio.CancelledError:
            out("main: victim cancelled", v.cancelled())

    run(main())
    """,
)

add(
    "foreign_throw_retrying_victim_does_not_spin",
    """
    # A victim that retries on any Exception in a loop: foreign throws must
    # not turn into a busy loop.
    saved = []
    tries = [0]

    def victim_sync(ev):
        saved.append(greenlet.getcurrent())
        while True:
            try:
                await_(ev.wait())
                return "victim done"
            except Exception:
                tries[0] += 1

    async def victim(ev):
        return victim_sync(ev)

    async def thrower():
        errors = 0
        for _ in range(5):
            try:
                saved[0].throw(ValueError)
            except RuntimeError:
                errors += 1
            await asyncio.sleep(0)
        return errors

    async def main():
        ev = asyncio.Event()
        v = asyncio.create_task(victim(ev))
        await asyncio.sleep(0)
        out("thrower errors", await asyncio.create_task(thrower()))
        cpu = time.process_time()
        await asyncio.sleep(0.3)
        cpu = time.process_time() - cpu
        out("idle while parked", cpu < 0.15)
        ev.set()
        out(await v, "after", tries[0], "retries")

    run(main())
    """,
    """
    thrower errors 5
    idle while parked True
    victim done after 0 retries
    """,
)

# 4. Closing and collecting -------------------------------------------------------

add(
    "close_task_pinned_by_child_greenlet",
    """
    # SQLAlchemy-like: sync code in the task starts a child greenlet that
    # parks in await_; then someone closes the task's coroutine. The close
    # must unwind the child greenlet's frames and the coroutine, and return,
    # as closing a plain coroutine parked at an await does.
    def child_body(ev):
        try:
            await_(ev.wait())
        except GeneratorExit:
            out("child: GeneratorExit at await_")
            raise
        finally:
            out("child: finally")

    def sync_layer(ev):
        g = greenlet.greenlet(child_body)
        try:
            return g.switch(ev)
        finally:
            out("sync: finally")

    async def body(ev):
        try:
            if PLAIN:
                try:
                    try:
                        await ev.wait()
                    except GeneratorExit:
                        out("child: GeneratorExit at await_")
                        raise
                    finally:
                        out("child: finally")
                finally:
                    out("sync: finally")
            else:
                sync_layer(ev)
        finally:
            out("coroutine: finally")

    async def pinned_body(ev):
        # the child greenlet lives on, suspended, while the coroutine awaits
        def start():
            g = greenlet.greenlet(lambda: greenlet.getcurrent().parent.switch())
            g.switch()
            return g
        g = start() if not PLAIN else None
        try:
            await ev.wait()
        finally:
            out("pinned: finally")

    async def main():
        ev = asyncio.Event()
        for fn in (body, pinned_body):
            t = asyncio.create_task(fn(ev))
            await asyncio.sleep(0)
            try:
                out("close returned", t.get_coro().close())
            except BaseException as e:
                out("close raised", ename(e), e)
            out("task done", t.done())
            t.cancel()
            try:
                await t
            except BaseException as e:
                out("task then raises", ename(e))

    run(main())
    """,
)

add(
    "await_outside_portal_keeps_running_coroutines",
    """
    # await_(c) from a loop callback (outside any portal) must raise and
    # leave c alone when c is not new: another task is running it.
    async def inner(ev):
        await ev.wait()
        return "inner done"

    async def awaits(c):
        return await c

    async def parked_sync_task(ev):
        def sync():
            await_(ev.wait())
            return "parked done"
        return sync()

    async def main():
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        c = inner(ev)
        a = asyncio.create_task(awaits(c))
        b = asyncio.create_task(parked_sync_task(ev))
        await asyncio.sleep(0)
        done = loop.create_future()
        def callback():
            for what in (c, b.get_coro(), a.get_coro()):
                try:
                    await_(what)
                except BaseException as e:
                    out("callback:", ename(e))
            done.set_result(None)
        loop.call_soon(callback)
        await done
        ev.set()
        for t in (a, b):
            try:
                out(await asyncio.wait_for(t, 0.5))
            except BaseException as e:
                out("task raised", ename(e), e)
        # a never-started coroutine is closed (no "never awaited" warning)
        fresh = inner(ev)
        loop.call_soon(_try, fresh)
        await asyncio.sleep(0)
        out("fresh closed", fresh.cr_frame is None)

    def _try(aw):
        try:
            await_(aw)
        except RuntimeError:
            pass

    run(main())
    """,
    """
    callback: RuntimeError
    callback: RuntimeError
    callback: RuntimeError
    inner done
    parked done
    fresh closed True
    """,
    stderr_ok=(),
)

add(
    "gc_finalizer_await_inside_other_step",
    """
    # Dropped tasks whose coroutine's cleanup calls sync code that uses
    # await_, finalized by a gc pass inside another task's step (in plain
    # sync code): await_ must raise a clear RuntimeError there instead of
    # suspending the other task.
    errors = []

    def cleanup(tag):
        try:
            await_(asyncio.sleep(0))
            errors.append((tag, "suspended"))
        except RuntimeError as e:
            errors.append((tag, "RuntimeError" if "cannot suspend" in str(e) else str(e)))

    async def parked_at_await():
        try:
            await OrphanFuture()
        finally:
            cleanup("finally after await")

    async def parked_in_await_():
        try:
            park_forever()
        finally:
            cleanup("finally after await_")

    async def swallows_exit():
        try:
            await OrphanFuture()
        except GeneratorExit:
            pass
        cleanup("after swallowed GeneratorExit")

    def collector():
        loop = asyncio.get_running_loop()
        ran = []
        loop.call_soon(ran.append, 1)
        gc.collect()
        return "not suspended" if not ran else "SUSPENDED mid-gc"

    async def main():
        for fn in (parked_at_await, parked_in_await_, swallows_exit):
            asyncio.create_task(fn())
            await asyncio.sleep(0)
            async def other():
                return collector()
            out(fn.__name__, "other task:", await asyncio.create_task(other()))
            await asyncio.sleep(0.01)
            out("  cleanup:", errors)
            errors.clear()

    run(main())
    """,
    """
    parked_at_await other task: not suspended
      cleanup: [('finally after await', 'RuntimeError')]
    parked_in_await_ other task: not suspended
      cleanup: [('finally after await_', 'RuntimeError')]
    swallows_exit other task: not suspended
      cleanup: [('after swallowed GeneratorExit', 'RuntimeError')]
    """,
    stderr_ok=(
        r"Task was destroyed but it is pending",
        r"^task: <Task pending",
        r"coroutine ignored GeneratorExit",
        r"^Exception ignored in: <coroutine object swallows_exit",
        r"^Traceback",
        r"^  File ",
        r"^    ",
        r"^RuntimeError: coroutine ignored GeneratorExit",
    ),
)

add(
    "drop_greenlet_hosting_running_loop",
    """
    # A greenlet runs a loop; sync code in a task switches out to the main
    # greenlet mid-step, and the main greenlet drops the loop's greenlet.
    # greenlet kills it: GreenletExit must unwind the task's frames (sync
    # ones too) and the loop, running the finally blocks, as without portals.
    main_greenlet = greenlet.getcurrent()

    def sync_layer():
        try:
            main_greenlet.switch("left mid-step")
        except greenlet.GreenletExit:
            out("sync: GreenletExit")
            raise
        finally:
            out("sync: finally")

    async def body():
        try:
            if PLAIN:
                try:
                    main_greenlet.switch("left mid-step")
                except greenlet.GreenletExit:
                    out("sync: GreenletExit")
                    raise
                finally:
                    out("sync: finally")
            else:
                sync_layer()
        finally:
            out("coroutine: finally")

    async def amain():
        try:
            await asyncio.create_task(body())
        finally:
            out("main coroutine: finally")

    def host():
        try:
            run(amain())
        except BaseException as e:
            out("host:", ename(e))
            raise
        finally:
            out("host: finally")

    g = greenlet.greenlet(host)
    out(g.switch())
    del g
    gc.collect()
    out("main: after drop")
    run(asyncio.sleep(0))  # a new loop in this thread still works
    out("main: new loop ran")
    """,
)


def check_same_lines(stdout: str, plain: str) -> None:
    """The same lines as plain asyncio, in any order: which of several tasks
    dropped at interpreter exit unwinds first is the collector's business,
    in plain asyncio as with portals (greenback_loop closes the oldest
    first)."""
    assert sorted(stdout.splitlines()) == sorted(plain.splitlines()), (stdout, plain)


add(
    "exit_with_parked_tasks",
    """
    # The script ends with tasks parked and the loop open: the tasks are
    # dropped at interpreter exit. Compare with plain asyncio (where the
    # coroutines are parked at an await).
    def sync_layer(i):
        try:
            park_forever()
        finally:
            out("finally", i)

    async def worker(i):
        if PLAIN:
            try:
                await OrphanFuture()
            finally:
                out("finally", i)
        else:
            sync_layer(i)

    loop = new_loop()

    async def main():
        for i in range(3):
            loop.create_task(worker(i))
        await asyncio.sleep(0.01)
        out("parked")

    loop.run_until_complete(main())
    """,
    stderr_ok=(r"Task was destroyed but it is pending", r"^task: <Task pending"),
    check=check_same_lines,
)

add(
    "exit_with_parked_tasks_in_cycles",
    """
    # As above, but the tasks wait on an Event whose future refers back to
    # them (the usual case): a cycle through the parked greenlet's frames.
    def sync_layer(i, ev):
        try:
            await_(ev.wait())
        finally:
            out("finally", i)

    async def worker(i, ev):
        if PLAIN:
            try:
                await ev.wait()
            finally:
                out("finally", i)
        else:
            sync_layer(i, ev)

    loop = new_loop()

    async def main():
        ev = asyncio.Event()
        for i in range(3):
            loop.create_task(worker(i, ev))
        await asyncio.sleep(0.01)
        out("parked")

    loop.run_until_complete(main())
    """,
    stderr_ok=(r"Task was destroyed but it is pending", r"^task: <Task pending"),
    check=check_same_lines,
)

# 5. await_ parity with await -------------------------------------------------------

add(
    "await_parity_being_awaited",
    """
    # await_(c) of a coroutine another task awaits, and of a task's portal.
    async def inner(ev):
        await ev.wait()
        return "inner"

    async def awaits(c):
        return await c

    async def parked_inner(ev):
        if PLAIN:
            await ev.wait()
        else:
            await_(ev.wait())
        return "parked inner"

    async def main():
        ev = asyncio.Event()
        c = inner(ev)
        a = asyncio.create_task(awaits(c))
        c2 = parked_inner(ev)
        a2 = asyncio.create_task(awaits(c2))
        t = asyncio.create_task(inner(ev))
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(0.2, ev.set)  # no deadlock if a check is missing
        for label, what in (("awaited coroutine", c), ("coroutine parked in await_", c2),
                            ("another task's coroutine", t.get_coro())):
            try:
                if PLAIN:
                    async def aw(w):
                        return await w
                    await aw(what)
                else:
                    (lambda: await_(what))()
                out(label, "no error")
            except BaseException as e:
                out(label, ename(e), e)
        ev.set()
        out(await a, await a2, await t)

    run(main())
    """,
)

add(
    "await_parity_exception_context",
    """
    # A cancellation thrown into a task parked in await_ inside an except
    # block has the handled exception as its __context__, as with await.
    seen = []

    def sync_layer(ev):
        try:
            raise KeyError("handled")
        except KeyError:
            try:
                if not PLAIN:
                    await_(ev.wait())
            except asyncio.CancelledError as e:
                seen.append(repr(e.__context__))
                raise

    async def body(ev):
        if PLAIN:
            try:
                raise KeyError("handled")
            except KeyError:
                try:
                    await ev.wait()
                except asyncio.CancelledError as e:
                    seen.append(repr(e.__context__))
                    raise
        else:
            sync_layer(ev)

    async def main():
        ev = asyncio.Event()
        t = asyncio.create_task(body(ev))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError as e:
            out("cancelled")
        out("context:", seen)

    run(main())
    """,
)

add(
    "await_parity_non_awaitables",
    """
    # What await_ raises for things await refuses, with await's types and
    # messages.
    import types

    class AwaitReturnsInt:
        def __await__(self):
            return 1

    class AwaitReturnsCoroutine:
        def __await__(self):
            return asyncio.sleep(0)

    class AwaitRaises:
        def __await__(self):
            raise LookupError("from __await__")

    class AwaitIsNone:
        __await__ = None

    class AwaitReturnsIterable:
        def __await__(self):
            return [1, 2]

    def plain_generator():
        yield

    async def coro_fn():
        return 1

    def cases():
        return [("int", 1), ("None", None), ("str", "s"), ("int class", int),
                ("__await__ returns int", AwaitReturnsInt()),
                ("__await__ returns coroutine", AwaitReturnsCoroutine()),
                ("__await__ raises", AwaitRaises()),
                ("__await__ = None", AwaitIsNone()),
                ("__await__ returns list", AwaitReturnsIterable()),
                ("plain generator", plain_generator()),
                ("coroutine function", coro_fn)]

    async def main():
        for label, x in cases():
            if PLAIN:
                async def aw():
                    return await x
                try:
                    await aw()
                    out(label, "no error")
                except BaseException as e:
                    out(label, ename(e), e)
            else:
                try:
                    await_(x)
                    out(label, "no error")
                except BaseException as e:
                    out(label, ename(e), e)
            if isinstance(x, AwaitReturnsCoroutine):
                gc.collect()

    run(main())
    """,
    stderr_ok=(
        r"RuntimeWarning: coroutine 'sleep' was never awaited",
        r"^  ",
        r"^RuntimeWarning: Enable tracemalloc",
    ),
)

# 7. Twin parity -------------------------------------------------------------------

add(
    "context_run_around_await_",
    """
    # contextvars.Context.run() around sync code that calls await_: the
    # values inside and outside stay right, and leaving the context works.
    var = contextvars.ContextVar("var", default="unset")

    def inside(tag):
        var.set(tag + "-inner")
        before = var.get()
        await_(asyncio.sleep(0.001))
        after = var.get()
        return before == after == tag + "-inner"

    async def body(tag):
        var.set(tag)
        ctx = contextvars.copy_context()
        ok = ctx.run(inside, tag)
        outer = var.get()
        await_(asyncio.sleep(0))
        return ok, outer == tag, ctx[var] == tag + "-inner", var.get() == tag

    async def same_ctx_twice(ctx):
        try:
            return ctx.run(inside, "dup")
        except RuntimeError as e:
            return "RuntimeError: " + str(e).split(":")[0]

    async def main():
        res = await asyncio.gather(*(body(str(i)) for i in range(20)))
        out("values", all(all(r) for r in res))
        ctx = contextvars.copy_context()
        out("same context entered by two tasks", await asyncio.gather(same_ctx_twice(ctx), same_ctx_twice(ctx)))
        out("main's var", var.get())

    run(main())
    """,
    """
    values True
    same context entered by two tasks [True, 'RuntimeError: cannot enter context']
    main's var unset
    """,
)

add(
    "portal_bad_arguments",
    """
    # Portal() misuse: the same TypeErrors from both cores, no noise.
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # throw(type, value, tb), 3.12+
    Portal = greenback_loop._impl.core.Portal

    async def coro_fn():
        pass

    def gen():
        yield

    c = coro_fn()
    cases = [("no args", (), {}), ("two args", (c, c), {}), ("keyword", (), {"coro": c}),
             ("int", (1,), {}), ("None", (None,), {}), ("function", (coro_fn,), {}),
             ("generator", (gen(),), {})]
    for label, args, kwargs in cases:
        try:
            p = Portal(*args, **kwargs)
            out(label, "ok", type(p).__name__)
            del p
        except BaseException as e:
            out(label, ename(e), str(e).replace("greenback_loop._portal_py.", "").replace("greenback_loop._cportal.", ""))
    try:
        class Sub(Portal):
            pass
    except TypeError as e:
        out("subclass", "TypeError", str(e).replace("greenback_loop._portal_py.", "").replace("greenback_loop._cportal.", ""))
    p = Portal(c)
    for label, call in (("throw()", lambda: p.throw()), ("throw(1)", lambda: p.throw(1)),
                        ("throw 4 args", lambda: p.throw(ValueError, 1, None, 4)),
                        ("throw bad tb", lambda: p.throw(ValueError, ValueError(), 5)),
                        ("send()", lambda: p.send())):
        try:
            call()
            out(label, "no error")
        except BaseException as e:
            out(label, ename(e), e)
    p.close()
    gc.collect()
    out("done")
    """,
    """
    no args TypeError Portal expected 1 argument, got 0
    two args TypeError Portal expected 1 argument, got 2
    keyword TypeError Portal() takes no keyword arguments
    int TypeError Portal() argument must be a coroutine, not int
    None TypeError Portal() argument must be a coroutine, not NoneType
    function TypeError Portal() argument must be a coroutine, not function
    generator ok Portal
    subclass TypeError type 'Portal' is not an acceptable base type
    throw() TypeError throw expected at least 1 argument, got 0
    throw(1) TypeError exceptions must be classes or instances deriving from BaseException, not int
    throw 4 args TypeError throw expected at most 3 arguments, got 4
    throw bad tb TypeError throw() third argument must be a traceback object
    send() TypeError Portal.send() takes exactly one argument (0 given)
    done
    """,
)

add(
    "parked_portal_from_other_thread",
    """
    # A parked task's portal stepped, thrown into, closed and finally
    # dropped from another thread: one clear RuntimeError each, no
    # "Exception ignored", and the task still finishes (or, once dropped,
    # unwinds in its own thread).
    unwound = []

    def sync_layer(ev):
        try:
            return await_(ev.wait()) or "resumed"
        finally:
            unwound.append(threading.current_thread() is threading.main_thread())

    async def body(ev):
        return sync_layer(ev)

    def dropped_sync():
        try:
            park_forever()
        finally:
            unwound.append(threading.current_thread() is threading.main_thread())

    async def dropped():
        dropped_sync()

    async def main():
        ev = asyncio.Event()
        t = asyncio.create_task(body(ev))
        await asyncio.sleep(0)
        portal = t.get_coro()
        results = []
        def other():
            for label, call in (("send", lambda: portal.send(None)),
                                ("throw", lambda: portal.throw(ValueError)),
                                ("close", portal.close)):
                try:
                    call()
                    results.append((label, "no error"))
                except BaseException as e:
                    results.append((label, ename(e), "thread whose event loop" in str(e)))
        th = threading.Thread(target=other)
        th.start()
        th.join()
        for r in results:
            out(*r)
        ev.set()
        out(await t, unwound)
        unwound.clear()
        d = [asyncio.create_task(dropped())]
        await asyncio.sleep(0)
        portal_ref = weakref.ref(d[0].get_coro())
        holder = [d.pop()]
        def drop():
            holder.clear()
            gc.collect()
            # (freed there: kept past it by a cycle its own close() made,
            # it was collected in the loop's thread, where 3.15's collector
            # cleared the parked frames without unwinding them)
            out("portal freed by that collection", portal_ref() is None)
        th = threading.Thread(target=drop)
        th.start()
        th.join()
        for _ in range(5):
            await asyncio.sleep(0.001)
        gc.collect()
        await asyncio.sleep(0.001)
        out("dropped task unwound in the loop thread", unwound)

    run(main())
    """,
    """
    send RuntimeError True
    throw RuntimeError True
    close RuntimeError True
    True [True]
    portal freed by that collection True
    dropped task unwound in the loop thread [True]
    """,
    stderr_ok=(r"Task was destroyed but it is pending", r"^task: <Task pending"),
)

# 9. Memory exhaustion ---------------------------------------------------------------

add(
    "memory_exhaustion_with_parked_tasks",
    """
    # Tasks parked in await_ until the address space runs out: the process
    # must end through Python (a MemoryError is fine), never abort.
    import resource

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    def sync_layer(ev):
        await_(ev.wait())

    async def worker(ev):
        sync_layer(ev)

    async def main():
        ev = asyncio.Event()
        tasks = []
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 150 * 2**20, resource.RLIM_INFINITY))
        try:
            while len(tasks) < 2_000_000:
                for _ in range(500):
                    tasks.append(asyncio.create_task(worker(ev)))
                await asyncio.sleep(0)
        except OOM:
            pass
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        ev.set()
        errors = 0
        for t in tasks:
            try:
                await t
            except OOM:
                errors += 1
        return len(tasks) > 1000

    OOM = MemoryError
    try:
        out("survived", run(main()))
    except OOM:
        out("survived", True)
    """,
    """
    survived True
    """,
    stderr_ok=(
        r"MemoryError",
        r"^Task exception was never retrieved",
        r"^future: <Task",
        r"^Traceback",
        r"^  ",
        r"Exception ignored",
    ),
    timeout=50,
    not_under_asan="RLIMIT_AS cannot bound a process under AddressSanitizer (its shadow memory)",
)

# 10. More hostile ideas ---------------------------------------------------------------

add(
    "loop_greenlet_introspection_from_a_task",
    """
    # Sync code in a task reads the context of the greenlet that runs the
    # loop (its runner's parent).
    async def body():
        loop_greenlet = greenlet.getcurrent().parent
        try:
            ctx = loop_greenlet.gr_context
            out("read loop greenlet's gr_context", type(ctx).__name__)
        except BaseException as e:
            out("read loop greenlet's gr_context", ename(e), e)

    async def main():
        await asyncio.create_task(body())

    run(main())
    """,
    """
    read loop greenlet's gr_context Context
    """,
    xfail={
        ("c", "*"): "documented limit (docs/limits.rst, the stack seen from inside a step): "
        "the C core unlinks the stepping greenlet's frames for the switch, so greenlet finds "
        "no saved frame and takes it for a greenlet running in another thread: its "
        "gr_context raises ValueError"
    },
)

add(
    "generator_finally_uses_await_",
    """
    # A sync generator inside a task cleans up with await_ in its finally;
    # the task's own code closes it (break + close()). Nothing is being
    # finalized behind the task's back: the await_ should work.
    log = []

    def rows():
        try:
            for i in range(10):
                yield i
        finally:
            try:
                await_(asyncio.sleep(0))
                log.append("cleanup awaited")
            except RuntimeError as e:
                log.append("cleanup RuntimeError")

    async def body():
        g = rows()
        for r in g:
            if r == 2:
                break
        g.close()
        with __import__("contextlib").closing(rows()) as g2:
            next(g2)
        return log

    async def main():
        out(await asyncio.create_task(body()))

    run(main())
    """,
    """
    ['cleanup awaited', 'cleanup awaited']
    """,
)

add(
    "nested_loops",
    """
    # A task's sync code starts another loop in the same thread (refused,
    # as on a plain loop) and in another thread (works, with await_ there).
    async def inner():
        return "inner ran"

    def in_thread():
        async def m():
            return (lambda: await_(asyncio.sleep(0, "thread loop")))() if not PLAIN else "thread loop"
        res = []
        th = threading.Thread(target=lambda: res.append(run(m())))
        th.start()
        th.join()
        return res[0]

    async def body():
        try:
            run(inner())
        except RuntimeError as e:
            out("same thread:", "RuntimeError", str(e).split(" cannot")[0])
        c = inner()
        try:
            new_loop().run_until_complete(c)
        except RuntimeError as e:
            out("run_until_complete:", "RuntimeError")
        c.close()
        out("other thread:", in_thread())

    run(body())
    """,
    stderr_ok=(r"RuntimeWarning: coroutine '[\w.]+' was never awaited", r"^  ", r"tracemalloc"),
)

add(
    "keyboardinterrupt_while_parked",
    """
    # SIGINT while the main task is parked: asyncio.Runner cancels it and
    # raises KeyboardInterrupt; finally blocks run, as on a plain loop.
    import signal

    def sync_layer(ev):
        try:
            if PLAIN:
                raise AssertionError
            await_(ev.wait())
        finally:
            out("sync finally")

    async def main():
        ev = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            if PLAIN:
                try:
                    await ev.wait()
                finally:
                    out("sync finally")
            else:
                sync_layer(ev)
        except asyncio.CancelledError:
            out("main: CancelledError")
            raise

    try:
        run(main())
    except KeyboardInterrupt:
        out("KeyboardInterrupt")
    """,
)

add(
    "weird_awaitables",
    """
    # Awaitables that misbehave, through await_ and through await.
    class BadYield:
        def __await__(self):
            yield 42

    class NextOnly:
        def __await__(self):
            return self
        def __next__(self):
            fut = asyncio.get_running_loop().create_future()
            fut._asyncio_future_blocking = True
            return fut

    class SwallowsCancel:
        def __await__(self):
            fut = asyncio.get_running_loop().create_future()
            try:
                yield from fut
            except asyncio.CancelledError:
                return "swallowed"

    class ImmediateStop:
        def __await__(self):
            return iter(())

    class YieldsDoneFuture:
        def __await__(self):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result("done future")
            return (yield from fut)

    async def via(obj):
        if PLAIN:
            return await obj
        return (lambda: await_(obj))()

    async def main():
        for label, make, cancel in (("bad yield", BadYield, False), ("next only, cancelled", NextOnly, True),
                                    ("swallows cancel", SwallowsCancel, True),
                                    ("empty iterator", ImmediateStop, False),
                                    ("done future", YieldsDoneFuture, False),
                                    ("portal of a coroutine", lambda: portal_of(asyncio.sleep(0, "portal")), False)):
            t = asyncio.create_task(via(make()))
            await asyncio.sleep(0)
            if cancel:
                t.cancel()
            try:
                out(label, "->", await t)
            except BaseException as e:
                out(label, "->", ename(e), str(e).split(" at 0x")[0])

    run(main())
    """,
)

add(
    "coroutine_resumed_by_hand",
    """
    # A task's coroutine resumed by hand: from another task while parked,
    # and from inside its own step.
    def park(ev):
        return await_(ev.wait())

    async def victim(ev):
        if PLAIN:
            return await ev.wait()
        return park(ev)

    async def self_sender():
        try:
            asyncio.current_task().get_coro().send(None)
        except BaseException as e:
            return ename(e) + ": " + str(e)

    async def main():
        ev = asyncio.Event()
        t = asyncio.create_task(victim(ev))
        await asyncio.sleep(0)
        try:
            t.get_coro().send(None)
            out("manual send: no error")
        except BaseException as e:
            out("manual send:", ename(e), e)
        ev.set()
        try:
            out("victim:", await t)
        except BaseException as e:
            out("victim:", ename(e), e)
        out("self send:", await asyncio.create_task(self_sender()))

    run(main())
    """,
)

add(
    "recursion_limit_games",
    """
    # await_ right at the recursion limit, and recursion limits lowered
    # and raised while tasks run: no crash, and afterwards tasks recurse
    # as deep as on a plain loop.
    def deep_await(n):
        try:
            return deep_await(n + 1)
        except RecursionError:
            try:
                return (PLAIN and n) or await_(asyncio.sleep(0, n))
            except RecursionError:
                return n

    async def at_limit():
        return deep_await(0) > 500

    async def lowered():
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(300)
        try:
            if not PLAIN:
                await_(asyncio.sleep(0))
            else:
                await asyncio.sleep(0)
            return depth()
        finally:
            sys.setrecursionlimit(old)

    async def measure():
        return depth()

    async def main():
        out("at limit", await asyncio.create_task(at_limit()))
        low = await asyncio.create_task(lowered())
        out("lowered limit honoured", 200 < low < 300)
        out("depth after", min(await asyncio.gather(*(measure() for _ in range(5)))))

    run(main())
    """,
    check=check_depths,
)

add(
    "await_future_of_other_loop",
    """
    # await_ of a future and of a task that belong to a loop running in
    # another thread: the same error as await gives.
    other = new_loop()
    th = threading.Thread(target=other.run_forever)
    th.start()

    async def never():
        await asyncio.sleep(3600)

    async def main():
        fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), other)
        fut.result()
        foreign_fut = other.create_future()
        foreign_task = asyncio.run_coroutine_threadsafe(_make_task(), other).result()
        for label, what in (("future", foreign_fut), ("task", foreign_task)):
            async def via():
                if PLAIN:
                    return await what
                return (lambda: await_(what))()
            try:
                await via()
            except BaseException as e:
                out(label, ename(e), str(e).split(" <")[0])
        other.call_soon_threadsafe(foreign_task.cancel)

    async def _make_task():
        return asyncio.get_running_loop().create_task(never())

    run(main())
    other.call_soon_threadsafe(other.stop)
    th.join()
    other.close()
    """,
)


# -- running them -------------------------------------------------------------------

CORES = ("c", "python")
LOOPS = ("asyncio", "uvloop")
_BAD_STDERR = re.compile(r"Exception ignored|Traceback|Error|Fatal|Segmentation|Aborted")


def script_for(sc: Scenario, core: str, loop: str, plain: bool) -> str:
    prelude = PRELUDE.format(uvloop=loop == "uvloop", plain=plain, core=core)
    return prelude + "\n" + sc.script


def run_scenario(
    sc: Scenario, core: str, loop: str, plain: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1" if core == "python" else "0"
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-c", script_for(sc, core, loop, plain)],
            capture_output=True,
            text=True,
            timeout=sc.timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:

        def text(b: Any) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        return subprocess.CompletedProcess(
            exc.cmd, -999, text(exc.stdout), text(exc.stderr) + f"\nTIMEOUT after {sc.timeout}s"
        )


def _key(name: str, core: str, loop: str, plain: bool) -> tuple[str, str, str, bool]:
    # The plain run does not depend on the core.
    return (name, "-" if plain else core, loop, plain)


class _Results:
    """Every subprocess the session's collected hostile tests need, started
    together on first use."""

    def __init__(self) -> None:
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.futures: dict[tuple[str, str, str, bool], concurrent.futures.Future[Any]] = {}

    def start(self, wanted: list[tuple[str, str, str]]) -> None:
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, (os.cpu_count() or 2) * 2)
            )
        for name, core, loop in wanted:
            sc = SCENARIOS[name]
            jobs = [(core, False)] + ([(core, True)] if sc.expected is None else [])
            for c, plain in jobs:
                key = _key(name, c, loop, plain)
                if key not in self.futures:
                    self.futures[key] = self.pool.submit(run_scenario, sc, c, loop, plain)

    def get(self, name: str, core: str, loop: str, plain: bool) -> subprocess.CompletedProcess[str]:
        key = _key(name, core, loop, plain)
        if key not in self.futures:
            self.start([(name, core, loop)])
        return self.futures[key].result()  # type: ignore[no-any-return]


_results = _Results()


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> _Results:
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        params = callspec.params
        if "name" in params and not (
            SCENARIOS[params["name"]].not_under_asan
            and "libasan" in os.environ.get("LD_PRELOAD", "")
        ):
            wanted.append((params["name"], params["core"], params["loop_kind"]))
    _results.start(wanted)
    return _results


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


def check_stderr(sc: Scenario, stderr: str) -> None:
    allowed = [re.compile(p) for p in sc.stderr_ok]
    bad = [
        line
        for line in stderr.splitlines()
        if _BAD_STDERR.search(line) and not any(p.search(line) for p in allowed)
    ]
    assert not bad, bad


@pytest.mark.once
@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_hostile(
    name: str, core: str, loop_kind: str, results: _Results, request: pytest.FixtureRequest
) -> None:
    """Each scenario runs in subprocesses on both cores (whatever core this
    process uses), compared with plain asyncio where it has a reference."""
    impl = core
    sc = SCENARIOS[name]
    if sc.not_under_asan and "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip(sc.not_under_asan)
    reason = sc.xfail_reason(impl, loop_kind)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=sc.xfail_strict, reason=reason))
    proc = results.get(name, impl, loop_kind, False)
    info = describe(proc)
    assert proc.returncode == sc.returncode, info
    check_stderr(sc, proc.stderr)
    if sc.expected is not None:
        expected = sc.expected
    else:
        plain = results.get(name, impl, loop_kind, True)
        assert plain.returncode == sc.returncode, "plain run: " + describe(plain)
        expected = plain.stdout
    if sc.check is not None:
        sc.check(proc.stdout, expected)
    else:
        assert proc.stdout == expected, info


def main(argv: list[str]) -> None:
    """Print each named scenario's output on every core and loop."""
    names = argv or sorted(SCENARIOS)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = {}
        for name in names:
            sc = SCENARIOS[name]
            for loop in LOOPS:
                if sc.expected is None:
                    jobs[(name, "plain", loop)] = pool.submit(run_scenario, sc, "c", loop, True)
                for core in CORES:
                    jobs[(name, core, loop)] = pool.submit(run_scenario, sc, core, loop, False)
        for (name, core, loop), fut in jobs.items():
            proc = fut.result()
            err = proc.stderr if len(proc.stderr) < 1200 else "[...]" + proc.stderr[-1200:]
            print(
                f"===== {name} [{core} {loop}] exit {proc.returncode}\n{proc.stdout}--- stderr\n{err}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
