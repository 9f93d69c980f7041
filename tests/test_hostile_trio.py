"""Hostile reproducers on Trio: test_hostile.py's scenarios, under
``greenback_loop.trio.run`` (every Trio task has a portal from its first step).

Each scenario is a script run in a subprocess, once per core (the C core and
the pure-Python twin, chosen by GREENBACK_LOOP_NO_EXTENSIONS), so a crash, an
abort or a hang stays in its process. Where plain Trio is the reference, the
same script also runs under plain ``trio.run`` (``PLAIN = True``, with plain
``await`` where the script has a plain branch) and the outputs are compared.

The scenarios of test_hostile.py that are asyncio's business alone have no
Trio version here: futures of another asyncio loop
(``await_future_of_other_loop``), and tasks dropped while parked
(``parked_portal_from_other_thread``'s second half). A Trio run holds every
task until it ends, so no task can be dropped: hand-stepped coroutines and
portals stand in for dropped tasks, and the "exit with parked tasks" cases
become a guest run its host abandons and a ``sys.exit()`` from the main task.

Run ``python tests/test_hostile_trio.py NAME...`` to print a scenario's output
on both cores (and under plain Trio), for a quick look.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

# tests/ is on sys.path: pytest's default (prepend) import mode puts it there
# for its rootdir-less test modules, and Python does for `python tests/...`.
from test_hostile import Scenario, check_depths, check_same_lines, check_stderr, describe

PRELUDE = """\
import contextvars, gc, os, sys, threading, time, types, weakref
import greenlet
import trio
import trio.testing
import greenback_loop
import greenback_loop.trio
from greenback_loop import await_

PLAIN = {plain!r}
CORE = {core!r}
if not PLAIN:
    assert greenback_loop.implementation == CORE, greenback_loop.implementation


def run(async_fn, *args, **kwargs):
    if PLAIN:
        return trio.run(async_fn, *args, **kwargs)
    return greenback_loop.trio.run(async_fn, *args, **kwargs)


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


def show(exc):
    # an exception, and those of a group, recursively
    if isinstance(exc, BaseExceptionGroup):
        return ename(exc) + "[" + ", ".join(show(e) for e in exc.exceptions) + "]"
    return ename(exc) + ("(" + str(exc) + ")" if str(exc) else "")


def this_task():
    return trio.lowlevel.current_task()


def portal_of(coro):
    # A hand-made portal around coro (the bare coroutine under plain Trio).
    return coro if PLAIN else greenback_loop._impl.core.Portal(coro)


def park_forever():
    await_(trio.sleep_forever())


async def value(v):
    # finishes without suspending
    return v


async def sleep0(v=None):
    # one checkpoint, then v
    await trio.sleep(0)
    return v


async def gather(*fns):
    # each async fn() in a task of one nursery; their results, in order
    results = [None] * len(fns)

    async def one(i, fn):
        results[i] = await fn()

    async with trio.open_nursery() as nursery:
        for i, fn in enumerate(fns):
            nursery.start_soon(one, i, fn)
    return results


def spawn(nursery, async_fn, *args):
    # nursery.start_soon(), returning the new task
    before = nursery.child_tasks
    nursery.start_soon(async_fn, *args)
    (task,) = nursery.child_tasks - before
    return task
"""


SCENARIOS: dict[str, Scenario] = {}


def add(name: str, script: str, expected: str | None = None, **kwargs: Any) -> None:
    assert name not in SCENARIOS, name
    if expected is not None:
        expected = textwrap.dedent(expected).lstrip("\n")
    kwargs.setdefault("timeout", 40)  # as test_hostile: ASan and a busy machine are slow
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
        return (lambda: await_(value(n)) + await_(value(0)))()

    @types.coroutine
    def bare_yield():
        yield None

    async def slow():
        # parks in await_ on a bare yield: the driver just sends None
        total = 0
        for i in range(5):
            total += (lambda: await_(bare_yield()) or i)()
        return total

    state = {"busy": False, "quick": 0, "slow_done": 0, "slow": None}

    def tracer(event, args):
        if state["busy"] or PortalType is None:
            return
        state["busy"] = True
        try:
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
            total += await_(sleep0(j))
        return total + i

    async def worker(i):
        return work(i)

    async def main():
        global PortalType
        PortalType = type(this_task().coro)
        greenlet.settrace(tracer)
        try:
            res = await gather(*(lambda i=i: worker(i) for i in range(20)))
        finally:
            greenlet.settrace(None)
        out("results", res == [435 + i for i in range(20)])
        out("other portals stepped", state["quick"] > 100, state["slow_done"] > 10)

    run(main)
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
    # hand-stepped portals parked in await_ (Trio keeps its tasks: these
    # stand in for dropped tasks) wait to be collected, each held by a
    # reference cycle (not one through its parked frames, which the collector
    # cannot see into, docs/limits.rst): they are finalized (stepped with
    # GeneratorExit) inside other portals' switches.
    finalized = []

    def parked_sync(i):
        try:
            park_forever()
        finally:
            finalized.append(i)

    async def dropped(i):
        parked_sync(i)

    def drop_parked(i):
        p = portal_of(dropped(i))
        p.send(None)
        box = [p]
        box.append(box)

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
                drop_parked(i * 100 + j)
            total += await_(sleep0(j))
        return total

    async def worker(i):
        return work(i)

    async def main():
        greenlet.settrace(tracer)
        try:
            res = await gather(*(lambda i=i: worker(i) for i in range(6)))
            for _ in range(3):
                await trio.sleep(0)
        finally:
            greenlet.settrace(None)
        gc.collect()
        out("results", res == [190] * 6)
        want = sorted(i * 100 + j for i in range(6) for j in range(0, 20, 5))
        out("finalized", sorted(finalized) == want)

    run(main)
    """,
    """
    results True
    finalized True
    """,
)

add(
    "reentry_settrace_callback_calls_await_",
    """
    # A greenlet.settrace callback that itself calls await_ on the switches
    # of a step: on the one resuming a parked greenlet it runs there before
    # the greenlet has taken its job; await_ must refuse.
    calls = [0]
    refusals = []
    def tracer(event, args):
        calls[0] += 1
        if calls[0] <= 4:
            try:
                await_(trio.sleep(0))
            except RuntimeError as exc:
                refusals.append("switched into" in str(exc) or "descend" in str(exc))

    async def main():
        greenlet.settrace(tracer)
        try:
            v = await_(sleep0("ok"))
            await trio.sleep(0)
        finally:
            greenlet.settrace(None)
        out("value", v)
        out("refused clearly", bool(refusals) and all(refusals))

    run(main)
    """,
    """
    value ok
    refused clearly True
    """,
)

add(
    "reentry_deferred_greenlet_deletion",
    """
    # Suspended greenlets of the Trio thread are dropped in another thread:
    # greenlet deletes them at a later switch in the Trio thread, i.e. inside
    # some portal's switch. Their finally blocks step a portal, collect
    # garbage and schedule run_sync_soon callbacks.
    cleanups = []
    callbacks = []
    PortalType = None
    TOKEN = None

    async def quick(n):
        return (lambda: await_(value(n)))()

    def hostile_cleanup(i):
        p = PortalType(quick(i))
        try:
            p.send(None)
        except StopIteration as e:
            cleanups.append(e.value)
        gc.collect()
        TOKEN.run_sync_soon(callbacks.append, i)

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
            total += await_(sleep0(j))
        return total

    async def worker(i, q):
        return work(i, q)

    async def main():
        global PortalType, TOKEN
        TOKEN = trio.lowlevel.current_trio_token()
        PortalType = type(this_task().coro)
        q = []
        stop = threading.Event()
        def dropper():
            while not stop.is_set() or q:
                while q:
                    g = q.pop()
                    del g
                time.sleep(0.0005)
        th = threading.Thread(target=dropper)
        th.start()
        try:
            res = await gather(*(lambda i=i: worker(i, q) for i in range(5)))
        finally:
            stop.set()
            th.join()
        for _ in range(20):
            await trio.sleep(0.001)
        want = sorted(i * 100 + j for i in range(5) for j in range(20))
        out("results", res == [190] * 5)
        out("cleanups", sorted(cleanups) == want)
        out("callbacks", sorted(callbacks) == want)

    run(main)
    """,
    """
    results True
    cleanups True
    callbacks True
    """,
)

# 2. Runners carry nothing between tasks ---------------------------------------

add(
    "runner_started_deep_keeps_no_depth",
    """
    # Runners first started deep in a stack: a task's coroutine stepped by
    # hand (task.coro.send(None), before Trio's first step) from sync code
    # 700 frames down, and a portal of a coroutine that finishes in that
    # step. Later tasks must recurse as deep as under plain Trio.
    def recurse(n, fn):
        return recurse(n - 1, fn) if n else fn()

    @types.coroutine
    def bare_yield():
        yield None

    async def first_step_then_more(results):
        await bare_yield()  # the step taken by hand ends here
        await trio.sleep(0)
        results.append(depth())

    async def finishes_at_once():
        return 1

    async def deep_stepper(nursery, results):
        def at_depth():
            t = spawn(nursery, first_step_then_more, results)
            t.coro.send(None)  # its first step, 700 frames down
            try:
                portal_of(finishes_at_once()).send(None)
            except StopIteration:
                pass
        recurse(700, at_depth)

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
        victims = []
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                await deep_stepper(nursery, victims)
                await trio.sleep(0)
        out("depth victim", min(victims))
        later = await gather(*(measure for _ in range(20)))
        out("depth later_min", min(later))
        ev = trio.Event()
        async def set_soon():
            await trio.testing.wait_all_tasks_blocked()
            ev.set()
        parked = await gather(set_soon, *(lambda: parked_measure(ev) for _ in range(20)))
        out("depth parked_min", min(parked[1:]))

    run(main)
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
            await_(trio.sleep(0))
        return here.parent is other

    async def parent_of_step():
        return greenlet.getcurrent().parent

    async def main():
        trio_greenlet = greenlet.getcurrent()
        while trio_greenlet.parent is not None:
            trio_greenlet = trio_greenlet.parent
        r = await gather(*(lambda i=i: reparent(i % 2 == 0) for i in range(10)))
        out("reparented", all(r))
        parents = await gather(*(parent_of_step for _ in range(100)))
        out("later parents are Trio's greenlet", all(p is trio_greenlet for p in parents))

    run(main)
    """,
    """
    reparented True
    later parents are Trio's greenlet True
    """,
)

add(
    "runner_idle_poked",
    """
    # Idle runners found with gc.get_objects(): switched into, thrown
    # into (even GreenletExit) and reparented while idle.
    # Each foreign call gets a RuntimeError; later tasks run normally.
    async def step():
        return await_(sleep0(1)) + (await sleep0(1))

    def idle_greenlets():
        me = greenlet.getcurrent()
        return [
            o for o in gc.get_objects()
            if isinstance(o, greenlet.greenlet) and o is not me and o.parent is not None
            and o and not o.dead
        ]

    async def main():
        await gather(*(step for _ in range(10)))
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
        out("errors", sorted(errors), sum(errors.values()) == 4 * len(found))
        out("dead after pokes", sum(g.dead for g in found))
        for g in found:
            g.parent = greenlet.greenlet(lambda: None, parent=g.parent)
        del found, g
        r = await gather(*(step for _ in range(200)))
        out("later tasks", r == [2] * 200)
        hub = greenlet.getcurrent()
        while hub.parent is not None:
            hub = hub.parent
        async def parent_of_step():
            return greenlet.getcurrent().parent
        parents = await gather(*(parent_of_step for _ in range(100)))
        out("later parents are Trio's greenlet", all(p is hub for p in parents))

    run(main)
    """,
    """
    found idle runners True
    errors ['RuntimeError'] True
    dead after pokes 0
    later tasks True
    later parents are Trio's greenlet True
    """,
)

# 3. Foreign switch()/throw() into a task parked in await_ ----------------------

add(
    "foreign_switch_and_throw_into_parked",
    """
    # Sync code in a victim task saves its greenlet and parks; other tasks,
    # run_sync_soon callbacks (in Trio's system task, which has no portal)
    # and the main task switch and throw into it with all sorts of
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

    async def victim(ev, res):
        res.append(victim_sync(ev))

    def poke(how, victim_task):
        g = saved[0]
        try:
            if how == "throw ValueError":
                g.throw(ValueError)
            elif how == "throw 3 args":
                g.throw(ValueError, ValueError("x"), None)
            elif how == "throw GreenletExit":
                g.throw(greenlet.GreenletExit)
            elif how == "throw Cancelled":
                g.throw(trio.Cancelled._create())
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
                g.switch(victim_task.coro)
            elif how == "switch boxed portal":
                g.switch([victim_task.coro])
            elif how == "switch caller's coro":
                g.switch(this_task().coro)
            elif how == "switch boxed caller's coro":
                g.switch([this_task().coro])
        except BaseException as e:
            return ename(e)
        return "no error"

    HOWS = ["throw ValueError", "throw 3 args", "throw GreenletExit", "throw Cancelled",
            "throw StopIteration", "throw KeyboardInterrupt", "throw 1", "switch",
            "switch kwargs", "switch own portal", "switch boxed portal",
            "switch caller's coro", "switch boxed caller's coro"]

    async def main():
        ev = trio.Event()
        res = []
        async with trio.open_nursery() as nursery:
            v = spawn(nursery, victim, ev, res)
            await trio.testing.wait_all_tasks_blocked()
            for how in HOWS:
                r = await gather(lambda: value(poke(how, v)))
                out("task:", how, "->", r[0])
            done = trio.Event()
            got = []
            def callback():
                got.extend(poke(how, v) for how in HOWS)
                done.set()
            trio.lowlevel.current_trio_token().run_sync_soon(callback)
            await done.wait()
            for how, r in zip(HOWS, got):
                out("callback:", how, "->", r)
            out("main task:", poke("throw ValueError", v))
            await trio.sleep(0.01)
            out("victim pending", not res)
            ev.set()
        out(*res)

    run(main)
    """,
    """
    task: throw ValueError -> RuntimeError
    task: throw 3 args -> RuntimeError
    task: throw GreenletExit -> RuntimeError
    task: throw Cancelled -> RuntimeError
    task: throw StopIteration -> RuntimeError
    task: throw KeyboardInterrupt -> RuntimeError
    task: throw 1 -> TypeError
    task: switch -> RuntimeError
    task: switch kwargs -> RuntimeError
    task: switch own portal -> RuntimeError
    task: switch boxed portal -> RuntimeError
    task: switch caller's coro -> RuntimeError
    task: switch boxed caller's coro -> RuntimeError
    callback: throw ValueError -> RuntimeError
    callback: throw 3 args -> RuntimeError
    callback: throw GreenletExit -> RuntimeError
    callback: throw Cancelled -> RuntimeError
    callback: throw StopIteration -> RuntimeError
    callback: throw KeyboardInterrupt -> RuntimeError
    callback: throw 1 -> TypeError
    callback: switch -> RuntimeError
    callback: switch kwargs -> RuntimeError
    callback: switch own portal -> RuntimeError
    callback: switch boxed portal -> RuntimeError
    callback: switch caller's coro -> RuntimeError
    callback: switch boxed caller's coro -> RuntimeError
    main task: RuntimeError
    victim pending True
    victim done
    """,
)

add(
    "foreign_throw_then_cancel",
    """
    # After foreign throws into the victim's greenlet, cancel the victim's
    # cancel scope: it gets Cancelled at its await_, as at an await.
    saved = []

    def victim_sync(ev):
        saved.append(greenlet.getcurrent())
        try:
            await_(ev.wait())
        except trio.Cancelled:
            out("victim: Cancelled at the await")
            raise

    async def victim(ev, scope):
        with scope:
            if PLAIN:
                try:
                    await ev.wait()
                except trio.Cancelled:
                    out("victim: Cancelled at the await")
                    raise
            else:
                victim_sync(ev)
        out("victim: scope caught it", scope.cancelled_caught)

    async def main():
        ev = trio.Event()
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim, ev, scope)
            await trio.testing.wait_all_tasks_blocked()
            if not PLAIN:
                for exc in (ValueError, trio.Cancelled._create(), KeyboardInterrupt):
                    try:
                        saved[0].throw(exc)
                    except RuntimeError:
                        pass
            await trio.sleep(0)
            scope.cancel()
        out("main: after the nursery")

    run(main)
    """,
)

add(
    "foreign_throw_retrying_victim_does_not_spin",
    """
    # A victim that retries on any Exception in a loop: foreign throws must
    # not turn into a busy loop.
    saved = []
    tries = [0]
    res = []

    def victim_sync(ev):
        saved.append(greenlet.getcurrent())
        while True:
            try:
                await_(ev.wait())
                return "victim done"
            except Exception:
                tries[0] += 1

    async def victim(ev):
        res.append(victim_sync(ev))

    async def thrower():
        errors = 0
        for _ in range(5):
            try:
                saved[0].throw(ValueError)
            except RuntimeError:
                errors += 1
            await trio.sleep(0)
        return errors

    async def main():
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim, ev)
            await trio.testing.wait_all_tasks_blocked()
            out("thrower errors", (await gather(thrower))[0])
            cpu = time.process_time()
            await trio.sleep(0.3)
            cpu = time.process_time() - cpu
            out("idle while parked", cpu < 0.15)
            ev.set()
        out(*res, "after", tries[0], "retries")

    run(main)
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
    # parks in await_; then someone closes the task's coroutine (task.coro).
    # The close must unwind the child greenlet's frames and the coroutine,
    # and return, as closing a plain coroutine parked at an await does.
    # Then the task is cancelled: Trio finds its coroutine finished.
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
        ev = trio.Event()
        for fn in (body, pinned_body):
            try:
                async with trio.open_nursery() as nursery:
                    t = spawn(nursery, fn, ev)
                    await trio.testing.wait_all_tasks_blocked()
                    try:
                        out("close returned", t.coro.close())
                    except BaseException as e:
                        out("close raised", ename(e), e)
                    out("coroutine finished", t.coro.cr_frame is None)
                    nursery.cancel_scope.cancel()
                out("nursery: cancelled", nursery.cancel_scope.cancelled_caught)
            except BaseExceptionGroup as e:
                out("nursery raised", ename(e), [(ename(x), str(x)) for x in e.exceptions])

    run(main)
    """,
)

add(
    "await_outside_portal_keeps_running_coroutines",
    """
    # await_(c) outside any portal -- from a run_sync_soon callback, from a
    # system task, from another thread -- must raise and leave c alone when
    # c is not new: another task is running it.
    async def inner(ev):
        await ev.wait()
        return "inner done"

    async def awaits(c, res):
        res.append(await c)

    async def parked_sync_task(ev, res):
        def sync():
            await_(ev.wait())
            return "parked done"
        res.append(sync())

    def try_all(where, things):
        for what in things:
            try:
                await_(what)
                out(where, "no error")
            except RuntimeError as e:  # sniffio's AsyncLibraryNotFoundError in a thread
                out(where, "RuntimeError")
            except BaseException as e:
                out(where, ename(e))

    async def system_task(things, done):
        try_all("system task:", things)
        done.set()

    async def main():
        token = trio.lowlevel.current_trio_token()
        ev = trio.Event()
        res = []
        async with trio.open_nursery() as nursery:
            c = inner(ev)
            a = spawn(nursery, awaits, c, res)
            b = spawn(nursery, parked_sync_task, ev, res)
            await trio.testing.wait_all_tasks_blocked()
            things = (c, b.coro, a.coro)
            done = trio.Event()
            def callback():
                try_all("callback:", things)
                done.set()
            token.run_sync_soon(callback)
            await done.wait()
            done = trio.Event()
            trio.lowlevel.spawn_system_task(system_task, things, done)
            await done.wait()
            th = threading.Thread(target=try_all, args=("thread:", things))
            th.start()
            th.join()
            ev.set()
        out(*sorted(res))
        # a never-started coroutine is closed (no "never awaited" warning)
        fresh = inner(ev)
        done = trio.Event()
        def close_fresh():
            try:
                await_(fresh)
            except RuntimeError:
                pass
            done.set()
        token.run_sync_soon(close_fresh)
        await done.wait()
        out("fresh closed", fresh.cr_frame is None)

    run(main)
    """,
    """
    callback: RuntimeError
    callback: RuntimeError
    callback: RuntimeError
    system task: RuntimeError
    system task: RuntimeError
    system task: RuntimeError
    thread: RuntimeError
    thread: RuntimeError
    thread: RuntimeError
    inner done parked done
    fresh closed True
    """,
)

add(
    "gc_finalizer_await_inside_other_step",
    """
    # Hand-stepped coroutines (Trio keeps its tasks: these stand in for
    # dropped tasks) whose cleanup calls sync code that uses await_,
    # finalized by a gc pass inside another task's step (in plain sync code
    # of it), and a portal parked in await_ whose last reference goes away
    # there: await_ must raise a clear RuntimeError there instead of
    # suspending the other task. (A bare coroutine whose last reference the
    # other task drops is that task's own call, not told apart: its await_
    # suspends the task there, docs/limits.rst.)
    errors = []

    def cleanup(tag):
        try:
            await_(trio.sleep(0))
            errors.append((tag, "suspended"))
        except RuntimeError as e:
            errors.append((tag, "RuntimeError" if "cannot suspend" in str(e) else str(e)))

    async def parked_at_await():
        try:
            await trio.sleep_forever()
        finally:
            cleanup("finally after await")

    async def parked_in_await_():
        try:
            park_forever()
        finally:
            cleanup("finally after await_")

    async def swallows_exit():
        try:
            await trio.sleep_forever()
        except GeneratorExit:
            pass
        cleanup("after swallowed GeneratorExit")

    def start(fn):
        c = fn()
        if fn is parked_in_await_:
            c = portal_of(c)
        c.send(None)
        return c

    def collector(how, fn):
        ran = []
        trio.lowlevel.current_trio_token().run_sync_soon(ran.append, 1)
        c = start(fn)
        if how == "gc":
            box = [c]
            box.append(box)
            del c, box
            gc.collect()
        else:
            del c  # only for the portal
        return "not suspended" if not ran else "SUSPENDED"

    async def main():
        for how, fn in [("gc", parked_at_await), ("gc", parked_in_await_), ("gc", swallows_exit),
                        ("refcount", parked_in_await_)]:
            r = await gather(lambda: value(collector(how, fn)))
            out(how, fn.__name__, "other task:", r[0])
            await trio.sleep(0.01)
            out("  cleanup:", errors)
            errors.clear()

    run(main)
    """,
    """
    gc parked_at_await other task: not suspended
      cleanup: [('finally after await', 'RuntimeError')]
    gc parked_in_await_ other task: not suspended
      cleanup: [('finally after await_', 'RuntimeError')]
    gc swallows_exit other task: not suspended
      cleanup: [('after swallowed GeneratorExit', 'RuntimeError')]
    refcount parked_in_await_ other task: not suspended
      cleanup: [('finally after await_', 'RuntimeError')]
    """,
    stderr_ok=(
        r"coroutine ignored GeneratorExit",
        r"^Exception ignored in: <coroutine object swallows_exit",
        r"^Traceback",
        r"^  File ",
        r"^    ",
        r"^RuntimeError: coroutine ignored GeneratorExit",
    ),
)

add(
    "drop_greenlet_hosting_running_run",
    """
    # A greenlet runs a Trio run; sync code in a task switches out to the
    # main greenlet mid-step, and the main greenlet drops the run's greenlet.
    # greenlet kills it: GreenletExit must unwind the task's frames (sync
    # ones too) and the run, running the finally blocks, as without portals.
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
            async with trio.open_nursery() as nursery:
                nursery.start_soon(body)
        finally:
            out("main coroutine: finally")

    def host():
        try:
            run(amain)
        except BaseExceptionGroup as e:
            # Trio's nursery wraps it: unwrapped, greenlet takes it as the kill
            out("host:", show(e))
            raise greenlet.GreenletExit from None
        except BaseException as e:
            out("host:", show(e))
            raise
        finally:
            out("host: finally")

    g = greenlet.greenlet(host)
    out(g.switch())
    del g
    gc.collect()
    out("main: after drop")
    run(trio.sleep, 0)  # a new run in this thread still works
    out("main: new run ran")
    """,
)

add(
    "exit_abandoned_guest_run_with_parked_tasks",
    """
    # A Trio guest run on an asyncio host loop, abandoned by its host (the
    # host loop stops and is closed) while tasks are parked in await_, on
    # sleep_forever and on an Event (whose wait refers back to the tasks).
    # Plain Trio never unwinds such tasks (the run's I/O thread keeps them),
    # and neither does greenback_loop's atexit handler (it leaves Trio
    # tasks' portals alone): no finally block runs, as with plain awaits.
    import asyncio

    def sync_layer(i, ev):
        try:
            if ev is None:
                park_forever()
            else:
                await_(ev.wait())
        finally:
            out("finally", i)

    async def worker(i, ev):
        if PLAIN:
            try:
                if ev is None:
                    await trio.sleep_forever()
                else:
                    await ev.wait()
            finally:
                out("finally", i)
        else:
            sync_layer(i, ev)

    async def trio_main():
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(worker, i, ev if i % 2 else None)
            await trio.testing.wait_all_tasks_blocked()
            out("parked")
            await trio.sleep_forever()

    async def host_main():
        loop = asyncio.get_running_loop()
        start = trio.lowlevel.start_guest_run if PLAIN else greenback_loop.trio.start_guest_run
        start(trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
              done_callback=lambda outcome: out("done", outcome))
        await asyncio.sleep(0.2)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(host_main())
    loop.close()
    out("host closed")
    """,
    """
    parked
    host closed
    """,
    stderr_ok=(
        r"RuntimeWarning: Trio guest run got abandoned",
        r"^  ",
    ),
)

add(
    "exit_sys_exit_with_parked_tasks",
    """
    # sys.exit() (SystemExit) and an error raised from sync code of the main
    # task while its children are parked in await_ in its nursery: the
    # children are cancelled at their await_ and unwind, and the exception
    # leaves the run, as with await.
    def sync_layer(i, ev):
        try:
            await_(ev.wait())
        except trio.Cancelled:
            out("child", i, "Cancelled")
            raise
        finally:
            out("child", i, "finally")

    async def child(i, ev):
        if PLAIN:
            try:
                try:
                    await ev.wait()
                except trio.Cancelled:
                    out("child", i, "Cancelled")
                    raise
            finally:
                out("child", i, "finally")
        else:
            sync_layer(i, ev)

    def leave(exc):
        raise exc

    async def main(exc):
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(child, i, ev)
            await trio.testing.wait_all_tasks_blocked()
            leave(exc)

    for exc in (SystemExit(3), LookupError("boom")):
        try:
            run(main, exc)
        except BaseException as e:
            out("run raised", show(e))
    out("exiting")
    sys.exit(5)
    """,
    check=check_same_lines,
    returncode=5,
)

# 5. await_ parity with await -------------------------------------------------------

add(
    "await_parity_being_awaited",
    """
    # await_(c) of a coroutine another task awaits, of one parked in await_,
    # of another task's coroutine (its portal) and of the task's own.
    async def inner(ev):
        await ev.wait()
        return "inner"

    async def awaits(c, res):
        res.append(await c)

    async def parked_inner(ev):
        if PLAIN:
            await ev.wait()
        else:
            await_(ev.wait())
        return "parked inner"

    async def inner_task(ev, res):
        res.append(await inner(ev))

    async def aw(w):
        return await w

    async def set_later(ev):
        await trio.sleep(0.2)  # no deadlock if a check is missing
        ev.set()

    async def main():
        ev = trio.Event()
        res = []
        async with trio.open_nursery() as nursery:
            c = inner(ev)
            nursery.start_soon(awaits, c, res)
            c2 = parked_inner(ev)
            nursery.start_soon(awaits, c2, res)
            t = spawn(nursery, inner_task, ev, res)
            nursery.start_soon(set_later, ev)
            await trio.testing.wait_all_tasks_blocked()
            for label, what in (("awaited coroutine", c), ("coroutine parked in await_", c2),
                                ("another task's coroutine", t.coro),
                                ("this task's own coroutine", this_task().coro)):
                try:
                    if PLAIN:
                        await aw(what)
                    else:
                        (lambda: await_(what))()
                    out(label, "no error")
                except BaseException as e:
                    out(label, ename(e), e)
            ev.set()
        out(*sorted(res))

    run(main)
    """,
)

add(
    "await_parity_exception_context",
    """
    # A cancellation reaching a task parked in await_ inside an except
    # block has the handled exception as its __context__, as with await.
    seen = []

    def sync_layer(ev):
        try:
            raise KeyError("handled")
        except KeyError:
            try:
                await_(ev.wait())
            except trio.Cancelled as e:
                seen.append(repr(e.__context__))
                raise

    async def body(ev):
        if PLAIN:
            try:
                raise KeyError("handled")
            except KeyError:
                try:
                    await ev.wait()
                except trio.Cancelled as e:
                    seen.append(repr(e.__context__))
                    raise
        else:
            sync_layer(ev)

    async def main():
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body, ev)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        out("cancelled", nursery.cancel_scope.cancelled_caught)
        out("context:", seen)

    run(main)
    """,
)

add(
    "await_parity_non_awaitables",
    """
    # What await_ raises for things await refuses, with await's types and
    # messages.
    async def coro_fn():
        return 1

    class AwaitReturnsInt:
        def __await__(self):
            return 1

    class AwaitReturnsCoroutine:
        def __await__(self):
            return coro_fn()

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

    def cases():
        return [("int", 1), ("None", None), ("str", "s"), ("int class", int),
                ("__await__ returns int", AwaitReturnsInt()),
                ("__await__ returns coroutine", AwaitReturnsCoroutine()),
                ("__await__ raises", AwaitRaises()),
                ("__await__ = None", AwaitIsNone()),
                ("__await__ returns list", AwaitReturnsIterable()),
                ("plain generator", plain_generator()),
                ("coroutine function", coro_fn),
                ("trio.Event", trio.Event()),
                ("trio.sleep", trio.sleep)]

    async def main():
        for label, x in cases():
            try:
                if PLAIN:
                    async def aw():
                        return await x
                    await aw()
                else:
                    await_(x)
                out(label, "no error")
            except BaseException as e:
                out(label, ename(e), e)
            if isinstance(x, AwaitReturnsCoroutine):
                gc.collect()

    run(main)
    """,
    stderr_ok=(
        r"RuntimeWarning: coroutine 'coro_fn' was never awaited",
        r"^  ",
        r"^RuntimeWarning: Enable tracemalloc",
    ),
)

# 6. Contexts, arguments, threads ----------------------------------------------------

add(
    "context_run_around_await_",
    """
    # contextvars.Context.run() around sync code that calls await_: the
    # values inside and outside stay right, and leaving the context works.
    var = contextvars.ContextVar("var", default="unset")

    def inside(tag):
        var.set(tag + "-inner")
        before = var.get()
        await_(trio.sleep(0.001))
        after = var.get()
        return before == after == tag + "-inner"

    async def body(tag):
        var.set(tag)
        ctx = contextvars.copy_context()
        ok = ctx.run(inside, tag)
        outer = var.get()
        await_(trio.sleep(0))
        return ok, outer == tag, ctx[var] == tag + "-inner", var.get() == tag

    async def same_ctx_twice(ctx):
        try:
            return ctx.run(inside, "dup")
        except RuntimeError as e:
            return "RuntimeError: " + str(e).split(":")[0]

    async def main():
        res = await gather(*(lambda i=i: body(str(i)) for i in range(20)))
        out("values", all(all(r) for r in res))
        ctx = contextvars.copy_context()
        twice = await gather(lambda: same_ctx_twice(ctx), lambda: same_ctx_twice(ctx))
        out("same context entered by two tasks", sorted(twice, key=str))
        out("main's var", var.get())

    run(main)
    """,
    """
    values True
    same context entered by two tasks ['RuntimeError: cannot enter context', True]
    main's var unset
    """,
)

add(
    "portal_bad_arguments",
    """
    # Misuse of a portal, and of greenback_loop's Trio API, inside a Trio run:
    # the same TypeErrors and RuntimeErrors from both cores, no noise.
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)  # throw(type, value, tb), 3.12+
    Portal = greenback_loop._impl.core.Portal

    def strip(e):
        return str(e).replace("greenback_loop._portal_py.", "").replace("greenback_loop._cportal.", "")

    def attempt(label, call):
        try:
            r = call()
            out(label, "ok", r if isinstance(r, bool) else type(r).__name__)
        except BaseException as e:
            out(label, ename(e), strip(e).split(" at 0x")[0].split(". ")[0])

    async def child():
        await trio.sleep(0)

    async def main():
        me = this_task()
        attempt("Portal(own portal)", lambda: Portal(me.coro))
        p = Portal(child())
        attempt("throw()", lambda: p.throw())
        attempt("throw(1)", lambda: p.throw(1))
        attempt("throw 4 args", lambda: p.throw(ValueError, 1, None, 4))
        attempt("throw bad tb", lambda: p.throw(ValueError, ValueError(), 5))
        attempt("send()", lambda: p.send())
        attempt("send(2) before start", lambda: p.send(2))
        p.close()
        attempt("send after close", lambda: p.send(None))
        attempt("own portal send()", lambda: me.coro.send(None))
        attempt("own portal throw()", lambda: me.coro.throw(ValueError))
        attempt("own portal close()", lambda: me.coro.close())
        attempt("bestow_portal(None)", lambda: greenback_loop.bestow_portal(None))
        attempt("bestow_portal(42)", lambda: greenback_loop.bestow_portal(42))
        attempt("has_portal(42)", lambda: greenback_loop.has_portal(42))
        attempt("has_portal(root)", lambda: greenback_loop.has_portal(trio.lowlevel.current_root_task()))
        attempt("has_portal(me)", lambda: greenback_loop.has_portal(me))
        attempt("trio.run inside", lambda: greenback_loop.trio.run(child))
        attempt("PortalInstrument(1, 2)", lambda: greenback_loop.trio.PortalInstrument(1, 2))
        await trio.sleep(0)
        out("main still has its portal", greenback_loop.has_portal())

    attempt("run(not callable)", lambda: greenback_loop.trio.run(42))
    attempt("run(coroutine object)", lambda: greenback_loop.trio.run(child()))
    attempt("run(two PortalInstruments)", lambda: greenback_loop.trio.run(
        child, instruments=[greenback_loop.trio.PortalInstrument(), greenback_loop.trio.PortalInstrument()]))
    attempt("await_ with no run", lambda: await_(trio.sleep(0)))
    greenback_loop.trio.run(main)
    gc.collect()
    out("done")
    """,
    """
    run(not callable) TypeError 'int' object is not callable
    run(coroutine object) TypeError Trio was expecting an async function, but instead it got a coroutine object <coroutine object child
    run(two PortalInstruments) ok NoneType
    await_ with no run AsyncLibraryNotFoundError greenback_loop.await_() was called with no event loop running in this thread
    Portal(own portal) ok Portal
    throw() TypeError throw expected at least 1 argument, got 0
    throw(1) TypeError exceptions must be classes or instances deriving from BaseException, not int
    throw 4 args TypeError throw expected at most 3 arguments, got 4
    throw bad tb TypeError throw() third argument must be a traceback object
    send() TypeError Portal.send() takes exactly one argument (0 given)
    send(2) before start TypeError can't send non-None value to a just-started coroutine
    send after close RuntimeError cannot reuse already awaited coroutine
    own portal send() ValueError coroutine already executing
    own portal throw() ValueError coroutine already executing
    own portal close() ValueError coroutine already executing
    bestow_portal(None) TypeError bestow_portal() needs an asyncio.Task or a trio.lowlevel.Task, not NoneType
    bestow_portal(42) TypeError bestow_portal() needs an asyncio.Task or a trio.lowlevel.Task, not int
    has_portal(42) TypeError has_portal() needs an asyncio.Task or a trio.lowlevel.Task, not int
    has_portal(root) ok False
    has_portal(me) ok True
    trio.run inside RuntimeError Attempted to call run() from inside a run()
    PortalInstrument(1, 2) TypeError PortalInstrument.__init__() takes 1 positional argument but 3 were given
    main still has its portal True
    done
    """,
)

add(
    "portal_dropped_unstepped_leaves_coroutine",
    """
    # A hand-made portal around a coroutine something else is running --
    # another task's awaited inner coroutine, another task's coroutine (its
    # portal), Trio's root task's coroutine -- dropped without ever being
    # stepped must leave that coroutine alone, as dropping any other
    # reference to it does.
    async def inner(ev):
        await ev.wait()
        return "inner done"

    async def awaits(c, res):
        res.append(await c)

    def drop_portal_of(label, what):
        p = portal_of(what)
        del p
        gc.collect()
        out(label, "still suspended:", what.cr_frame is not None)

    async def main():
        ev = trio.Event()
        res = []
        async with trio.open_nursery() as nursery:
            c = inner(ev)
            a = spawn(nursery, awaits, c, res)
            await trio.testing.wait_all_tasks_blocked()
            drop_portal_of("another task's awaited coroutine", c)
            drop_portal_of("another task's coroutine", a.coro)
            ev.set()
        out("tasks:", *res)

    async def root_main():
        drop_portal_of("Trio's root task's coroutine", trio.lowlevel.current_root_task().coro)
        await trio.sleep(0)

    for fn in (main, root_main):
        try:
            run(fn)
            out(fn.__name__, "ran")
        except BaseException as e:
            out(fn.__name__, "raised", show(e))
    """,
)

add(
    "parked_portal_from_other_thread",
    """
    # A parked task's portal (task.coro) stepped, thrown into and closed
    # from another thread: one clear RuntimeError each, no "Exception
    # ignored", and the task still finishes.
    unwound = []

    def sync_layer(ev):
        try:
            return await_(ev.wait()) or "resumed"
        finally:
            unwound.append(threading.current_thread() is threading.main_thread())

    async def body(ev, res):
        res.append(sync_layer(ev))

    async def main():
        ev = trio.Event()
        res = []
        async with trio.open_nursery() as nursery:
            t = spawn(nursery, body, ev, res)
            await trio.testing.wait_all_tasks_blocked()
            portal = t.coro
            results = []
            def other():
                for label, call in (("send", lambda: portal.send(None)),
                                    ("throw", lambda: portal.throw(ValueError)),
                                    ("close", portal.close)):
                    try:
                        call()
                        results.append((label, "no error"))
                    except BaseException as e:
                        results.append((label, ename(e), "thread" in str(e)))
            th = threading.Thread(target=other)
            th.start()
            th.join()
            for r in results:
                out(*r)
            ev.set()
        out(*res, unwound)

    run(main)
    """,
    """
    send RuntimeError True
    throw RuntimeError True
    close RuntimeError True
    resumed [True]
    """,
)

# 7. Memory exhaustion ---------------------------------------------------------------

add(
    "memory_exhaustion_with_parked_tasks",
    """
    # Tasks parked in await_ until the address space runs out: the process
    # must end through Python (a MemoryError is fine, however Trio wraps
    # it: one inside Trio's own code ends the run with a TrioInternalError,
    # the main task's finally unrun), never abort.
    import resource

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    # bound ahead: called where memory has run out
    setrlimit, RLIMIT_AS, UNLIMITED = resource.setrlimit, resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2

    def sync_layer(ev):
        await_(ev.wait())

    async def worker(ev):
        sync_layer(ev)

    def has_oom(e):
        if isinstance(e, MemoryError):
            return True
        if isinstance(e, SystemError) and str(e) == "error return without exception set":
            # CPython 3.11's own: a frame push whose data-stack chunk cannot
            # be had fails with no MemoryError set (each greenlet has its
            # own data stack, so this comes up more often with portals)
            return True
        if isinstance(e, BaseExceptionGroup):
            return any(has_oom(x) for x in e.exceptions)
        return has_oom(e.__cause__) if e.__cause__ is not None else False

    async def main():
        ev = trio.Event()
        spawned = 0
        try:
            async with trio.open_nursery() as nursery:
                setrlimit(RLIMIT_AS, (vm_size() + 150 * 2**20, resource.RLIM_INFINITY))
                try:
                    while spawned < 2_000_000:
                        for _ in range(500):
                            nursery.start_soon(worker, ev)
                            spawned += 1
                        await trio.sleep(0)
                except MemoryError:
                    pass
                finally:
                    setrlimit(RLIMIT_AS, UNLIMITED)
                    ev.set()
        except BaseException as e:
            setrlimit(RLIMIT_AS, UNLIMITED)
            if not has_oom(e):
                raise
        return spawned > 1000

    def attempt():
        try:
            return run(main), None
        except BaseException as e:
            setrlimit(RLIMIT_AS, UNLIMITED)
            return None, e

    result, error = attempt()
    out("survived", result if error is None else has_oom(error))
    """,
    """
    survived True
    """,
    stderr_ok=(
        r"MemoryError",
        r"TrioInternalError",
        r"^Traceback",
        r"^  ",
        r"Exception ignored",
    ),
    timeout=40,
    not_under_asan="RLIMIT_AS cannot bound a process under AddressSanitizer (its shadow memory)",
)

# 8. More hostile ideas ---------------------------------------------------------------

add(
    "trio_greenlet_introspection_from_a_task",
    """
    # Sync code in a task reads the context of the greenlet that runs the
    # Trio run (its runner's parent).
    async def body():
        run_greenlet = greenlet.getcurrent().parent
        try:
            ctx = run_greenlet.gr_context
            out("read the run's greenlet's gr_context", type(ctx).__name__)
        except BaseException as e:
            out("read the run's greenlet's gr_context", ename(e), e)

    async def main():
        await gather(body)

    run(main)
    """,
    """
    read the run's greenlet's gr_context Context
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
                await_(trio.sleep(0))
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
        out((await gather(body))[0])

    run(main)
    """,
    """
    ['cleanup awaited', 'cleanup awaited']
    """,
)

add(
    "nested_runs",
    """
    # A task's sync code starts another Trio run in the same thread
    # (refused, as under plain Trio), one in another thread (works, with
    # await_ there), and an asyncio loop in the same thread (works, with
    # await_ in its task).
    import asyncio

    async def inner():
        return "inner ran"

    def in_thread():
        async def m():
            return (lambda: await_(sleep0("thread run")))() if not PLAIN else "thread run"
        res = []
        th = threading.Thread(target=lambda: res.append(run(m)))
        th.start()
        th.join()
        return res[0]

    def asyncio_inside():
        async def m():
            if PLAIN:
                return await asyncio.sleep(0, "asyncio run")
            return (lambda: await_(asyncio.sleep(0, "asyncio run")))()
        if PLAIN:
            return asyncio.run(m())
        return greenback_loop.run(m())

    async def body():
        try:
            run(inner)
        except RuntimeError as e:
            out("same thread:", "RuntimeError", e)
        out("other thread:", in_thread())
        out("asyncio in this thread:", asyncio_inside())
        out("still in Trio:", await sleep0("yes"))

    run(body)
    """,
    stderr_ok=(r"RuntimeWarning: coroutine '[\\w.]+' was never awaited", r"^  ", r"tracemalloc"),
)

add(
    "keyboardinterrupt_while_parked",
    """
    # SIGINT while tasks are parked in await_: Trio delivers
    # KeyboardInterrupt to the main task at its await_ (as at an await), or,
    # when the main task waits in its nursery, there, and the children
    # parked in await_ are cancelled; finally blocks run; KeyboardInterrupt
    # leaves the run.
    import signal

    def sigint_soon():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    def sync_layer(who, ev):
        try:
            await_(ev.wait())
        except BaseException as e:
            out(who, "at await_:", ename(e))
            raise
        finally:
            out(who, "finally")

    async def parked(who, ev):
        if PLAIN:
            try:
                await ev.wait()
            except BaseException as e:
                out(who, "at await_:", ename(e))
                raise
            finally:
                out(who, "finally")
        else:
            sync_layer(who, ev)

    async def main_parked():
        sigint_soon()
        await parked("main", trio.Event())

    async def children_parked():
        ev = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(parked, f"child {i}", ev)
                await trio.testing.wait_all_tasks_blocked()
                sigint_soon()
        finally:
            out("main: nursery finally")

    for fn in (main_parked, children_parked):
        try:
            run(fn)
        except BaseException as e:
            out(fn.__name__, show(e))
    """,
    check=check_same_lines,  # the children unwind in Trio's (random) order
)

add(
    "weird_awaitables",
    """
    # Awaitables that misbehave, through await_ and through await. Trio's
    # foreign-yield rule: a value it does not know gets a TypeError thrown
    # back where it was yielded.
    import asyncio

    class BadYield:
        def __await__(self):
            yield 42

    class NextOnly:
        # an iterator with no send() or throw(), yielding Trio's own trap
        def __await__(self):
            return self
        def __next__(self):
            c = trio.sleep_forever()
            try:
                return c.send(None)
            finally:
                c.close()

    class SwallowsCancel:
        def __await__(self):
            try:
                yield from trio.sleep_forever().__await__()
            except trio.Cancelled:
                return "swallowed"

    class ImmediateStop:
        def __await__(self):
            return iter(())

    class CheckpointThenValue:
        def __await__(self):
            yield from trio.lowlevel.checkpoint().__await__()
            return "after a checkpoint"

    class AsyncioSleep:
        def __await__(self):
            return (yield from asyncio.sleep(0).__await__())

    class AsyncioFuture:
        def __await__(self):
            loop = asyncio.new_event_loop()
            try:
                return (yield from loop.create_future().__await__())
            finally:
                loop.close()

    async def via(obj, res):
        try:
            if PLAIN:
                r = await obj
            else:
                r = (lambda: await_(obj))()
            res.append(r)
        except BaseException as e:
            res.append(ename(e) + " " + str(e).split(" at 0x")[0])
            if isinstance(e, trio.Cancelled):
                raise

    async def main():
        for label, make, cancel in (("bad yield", BadYield, False),
                                    ("next only, cancelled", NextOnly, True),
                                    ("swallows cancel", SwallowsCancel, True),
                                    ("empty iterator", ImmediateStop, False),
                                    ("checkpoint then value", CheckpointThenValue, False),
                                    ("asyncio.sleep", AsyncioSleep, False),
                                    ("asyncio future", AsyncioFuture, False),
                                    ("portal of a coroutine", lambda: portal_of(sleep0("portal")), False)):
            res = []
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(via, make(), res)
                    await trio.testing.wait_all_tasks_blocked()
                    if cancel:
                        nursery.cancel_scope.cancel()
            except BaseException as e:
                res.append("nursery: " + ename(e))
            out(label, "->", *res)

    run(main)
    """,
    stderr_ok=(r"RuntimeWarning: coroutine '[\\w.]+' was never awaited", r"^  ", r"tracemalloc"),
)

add(
    "coroutine_resumed_by_hand",
    """
    # A task's coroutine resumed by hand: from another task while parked,
    # and from inside its own step.
    def park(ev):
        return await_(ev.wait())

    async def victim(ev, res):
        try:
            if PLAIN:
                res.append(await ev.wait())
            else:
                res.append(park(ev))
        except BaseException as e:
            res.append(ename(e) + ": " + str(e))
            raise

    async def self_sender():
        try:
            this_task().coro.send(None)
        except BaseException as e:
            return ename(e) + ": " + str(e)

    async def main():
        ev = trio.Event()
        res = []
        try:
            async with trio.open_nursery() as nursery:
                t = spawn(nursery, victim, ev, res)
                await trio.testing.wait_all_tasks_blocked()
                try:
                    t.coro.send(None)
                    out("manual send: no error")
                except BaseException as e:
                    out("manual send:", ename(e), e)
                ev.set()
        except BaseException as e:
            out("nursery:", show(e))
        out("victim:", *res)
        out("self send:", *(await gather(self_sender)))

    run(main)
    """,
)

add(
    "recursion_limit_games",
    """
    # await_ right at the recursion limit, and recursion limits lowered
    # and raised while tasks run: no crash, and afterwards tasks recurse
    # as deep as under plain Trio.
    def deep_await(n):
        try:
            return deep_await(n + 1)
        except RecursionError:
            try:
                return (PLAIN and n) or await_(sleep0(n))
            except RecursionError:
                return n

    async def at_limit():
        return deep_await(0) > 500

    async def lowered():
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(300)
        try:
            if not PLAIN:
                await_(trio.sleep(0))
            else:
                await trio.sleep(0)
            return depth()
        finally:
            sys.setrecursionlimit(old)

    async def measure():
        return depth()

    async def main():
        out("at limit", *(await gather(at_limit)))
        low = (await gather(lowered))[0]
        out("lowered limit honoured", 200 < low < 300)
        out("depth after", min(await gather(*(measure for _ in range(5)))))

    run(main)
    """,
    check=check_depths,
)


# -- running them -------------------------------------------------------------------

CORES = ("c", "python")


def script_for(sc: Scenario, core: str, plain: bool) -> str:
    return PRELUDE.format(plain=plain, core=core) + "\n" + sc.script


def run_scenario(sc: Scenario, core: str, plain: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1" if core == "python" else "0"
    env["PYTHONFAULTHANDLER"] = "1"
    try:
        return subprocess.run(
            [sys.executable, "-c", script_for(sc, core, plain)],
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


class _Results:
    """Every subprocess the collected tests of this module need, started
    together on first use (test_hostile's _Results, for one loop, Trio)."""

    def __init__(self) -> None:
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.futures: dict[tuple[str, str], concurrent.futures.Future[Any]] = {}

    def start(self, wanted: list[tuple[str, str]]) -> None:
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, (os.cpu_count() or 2) * 2)
            )
        for name, core in wanted:
            sc = SCENARIOS[name]
            jobs = [core] + (["plain"] if sc.expected is None else [])
            for c in jobs:
                if (name, c) not in self.futures:
                    self.futures[(name, c)] = self.pool.submit(
                        run_scenario, sc, "c" if c == "plain" else c, c == "plain"
                    )

    def get(self, name: str, core: str) -> subprocess.CompletedProcess[str]:
        if (name, core) not in self.futures:
            self.start([(name, "c" if core == "plain" else core)])
        return self.futures[(name, core)].result()  # type: ignore[no-any-return]


_results = _Results()


def _under_asan(sc: Scenario) -> bool:
    return bool(sc.not_under_asan) and "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest) -> _Results:
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        params = callspec.params
        if "name" in params and not _under_asan(SCENARIOS[params["name"]]):
            wanted.append((params["name"], params["core"]))
    wanted.sort(key=lambda w: -SCENARIOS[w[0]].timeout)  # the slow ones first
    _results.start(wanted)
    return _results


@pytest.mark.once
@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_hostile_trio(
    name: str, core: str, results: _Results, request: pytest.FixtureRequest
) -> None:
    """Each scenario runs in subprocesses on both cores (whatever core this
    process uses), compared with plain Trio where it has a reference."""
    sc = SCENARIOS[name]
    if sc.not_under_asan and _under_asan(sc):
        pytest.skip(sc.not_under_asan)
    reason = sc.xfail_reason(core, "trio")
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=sc.xfail_strict, reason=reason))
    proc = results.get(name, core)
    info = describe(proc)
    assert proc.returncode == sc.returncode, info
    check_stderr(sc, proc.stderr)
    if sc.expected is not None:
        expected = sc.expected
    else:
        plain = results.get(name, "plain")
        assert plain.returncode == sc.returncode, "plain run: " + describe(plain)
        expected = plain.stdout
    if sc.check is not None:
        sc.check(proc.stdout, expected)
    else:
        assert proc.stdout == expected, info


def main(argv: list[str]) -> None:
    """Print each named scenario's output on both cores (and plain Trio)."""
    names = argv or sorted(SCENARIOS)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = {}
        for name in names:
            sc = SCENARIOS[name]
            if sc.expected is None:
                jobs[(name, "plain")] = pool.submit(run_scenario, sc, "c", True)
            for core in CORES:
                jobs[(name, core)] = pool.submit(run_scenario, sc, core, False)
        for (name, core), fut in jobs.items():
            proc = fut.result()
            err = proc.stderr if len(proc.stderr) < 1500 else "[...]" + proc.stderr[-1500:]
            print(f"===== {name} [{core}] exit {proc.returncode}\n{proc.stdout}--- stderr\n{err}")


if __name__ == "__main__":
    main(sys.argv[1:])
