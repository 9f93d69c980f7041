"""The portal core in pure Python: the twin of the C core in ``csrc/``.

It holds three things, each mirrored one to one by the C core:

``Portal``
    Wraps a task's coroutine and speaks the coroutine protocol. Every step of
    the real coroutine runs in a *runner* greenlet, so synchronous code
    anywhere below it can suspend the step with :func:`await_`.

the runner pool
    Per thread, a bounded list of idle runner greenlets, all children of the
    thread's main greenlet (the hub). A step takes a runner and switches in.
    When the step ends normally the runner goes back to the pool holding
    nothing of the task, unless something outside the portal still
    references it (a greenlet that sync code started with the runner as its
    parent, say): then it stays pinned to the portal, so that greenlet's
    parent chain stays valid, until the references go. A runner that carries
    anything of its task (attributes, weak references, another parent, a
    deep start) is dropped instead of pooled.

:func:`await_`
    Drives an awaitable in place, in the calling greenlet, and only switches
    to the greenlet doing the step when the awaitable really suspends; the
    portal then hands the yielded value to the task as if the coroutine had
    yielded it.

The switch protocol: a step writes its job into the portal and switches into
its target with a one-item list holding the portal; the target empties the
list and checks the portal (a step of it in progress, entering this very
greenlet) before reading the job. Messages go back the same way. greenlet
hands switch arguments to the target before any Python code (a settrace
callback, a dead greenlet's deletion, the collector) can run, so a step of
another portal in that window can neither see nor overwrite this step's job
or message; the list, emptied at once, keeps nothing alive in the frame that
stays suspended after the switch. Anything else that switches into a
portal's greenlet is refused: the greenlet stays as it was, and the caller
gets a RuntimeError.
"""

from __future__ import annotations

import collections.abc
import gc
import itertools
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NoReturn, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet
from greenlet import error as greenlet_error

from ._errors import await_outside_portal, redeliver_interrupt

__all__ = ["Portal", "await_", "in_portal", "portal_call_soon", "portal_create_task"]

T = TypeVar("T")

#: Idle runners kept per thread; more are created on demand and dropped
#: when they come back to a full pool.
POOL_MAX = 64

# Message kinds, first item of the tuple left in ``Portal._msg``.
_YIELD = 0  # (kind, value): the coroutine yielded value; the step ended
_RETURN = 1  # (kind, value): the coroutine returned value
_RAISE = 2  # (kind, exception): the coroutine raised
_SUSPEND = 3  # (kind, value, greenlet, awaitable): await_ suspended the step

_CO_ITERABLE_COROUTINE = 0x100
_HAS_CR_SUSPENDED = hasattr(types.CoroutineType, "cr_suspended")
_HAS_CR_STATE = hasattr(types.CoroutineType, "cr_state")  # 3.15+
_CLOSE_RETURNS_VALUE = sys.version_info >= (3, 13)
# 3.15 words a bad __await__() result "T.__await__() must return an iterator, not U"
_AWAIT_MUST_RETURN_ITERATOR = sys.version_info >= (3, 15)
_NO_ARGUMENT: Any = object()  # send() called without its argument
_getrefcount = getattr(sys, "getrefcount", None)

_FOREIGN_SWITCH = (
    "greenback_loop: a greenlet that belongs to a task's portal was switched into (or "
    "thrown into) from outside the task's step, e.g. by greenlet.switch() or "
    "greenlet.throw() on it; it cannot run from there, and stays as it was"
)
_CLOSING = (
    "greenback_loop.await_() cannot suspend while the task's coroutine is being closed "
    "(close(), or its finalizer): like await in a closing coroutine"
)
_IN_SWITCH = (
    "greenback_loop.await_() cannot suspend while the greenlet is being switched into "
    "(a greenlet.settrace callback runs there): the step resuming it has not handed it "
    "its job yet"
)
_IN_GC = (
    "greenback_loop.await_() cannot suspend in code the garbage collector runs (a "
    "finalizer, __del__ or weakref callback): it would suspend the task whose step the "
    "collection runs in, where that task never awaited"
)
_WRONG_THREAD = "a task's portal can only be stepped in the thread whose event loop runs the task"
_KILLED = (
    "greenback_loop: the greenlet this task was parked in await_() in was killed from "
    "outside (greenlet.throw()?); the task cannot continue"
)
_LEFT = (
    "greenback_loop: the task's step was left by an unexpected greenlet switch; the "
    "task cannot continue"
)


#: The coroutines left on the stacks of runners of threads that ended (see
#: _ThreadState.sending): never resumed, never finalized, like the C core's.
_ENDED_THREADS_SENDING: list[dict[int, Any]] = []


class _KeepAtThreadExit:
    """Owned by a thread's _ThreadState: when the thread's state goes (its
    end), moves the coroutines still in the middle of a send on its runners
    to _ENDED_THREADS_SENDING, so the collector does not finalize them once
    greenlet lets it look into the dead thread's suspended greenlets (3.15,
    greenlet 3.5): finalized, they report "coroutine already executing"."""

    __slots__ = ("sending",)

    def __init__(self, sending: dict[int, Any]) -> None:
        self.sending = sending

    def __del__(self, _keep: list[dict[int, Any]] = _ENDED_THREADS_SENDING) -> None:
        if self.sending:
            _keep.append(self.sending)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        #: The innermost portal whose step is running in this thread. Steps
        #: nest and unnest like calls, so it is always a portal whose step
        #: is on some greenlet's stack.
        self.current: Portal | None = None
        #: While a garbage collection runs in this thread, the portal whose
        #: step it runs in (None otherwise, or if none): that step must not
        #: be suspended until the collection is over (see _gc_callback).
        self.gc_portal: Portal | None = None
        #: Idle runner greenlets.
        self.pool: list[greenlet] = []
        #: id()s of runners first started outside the hub, deeper than the
        #: loop: they are used for one step and dropped, so no later task
        #: inherits their recursion depth (the C core resets it instead).
        self.deep: set[int] = set()
        #: The coroutines whose send() or throw() is on a runner's stack.
        #: The C core holds those on the C stack, out of the garbage
        #: collector's sight; rooting them here does the same, so the
        #: collector never finalizes a coroutine in the middle of a step
        #: (it would report "coroutine already executing").
        self.sending: dict[int, Any] = {}
        #: When the thread ends, what ``sending`` still holds (tasks parked
        #: in await_ there, whose greenlets can never run again) moves to a
        #: process-wide list: the C core's C stacks keep those coroutines
        #: out of the collector's sight for good, this does the same.
        self._at_exit = _KeepAtThreadExit(self.sending)
        hub = getcurrent()
        while hub.parent is not None:
            hub = hub.parent
        #: This thread's main greenlet: the parent of every runner.
        self.hub: greenlet = hub


_state = _ThreadState()


def _suspended(coro: Any, frame: Any, running: bool, name: str) -> bool:
    """Whether a coroutine or generator is suspended at an await or yield
    (started, not running, not finished)."""
    if _HAS_CR_SUSPENDED:
        return bool(getattr(coro, name))
    return frame is not None and not running and frame.f_lasti >= 0  # pragma: no cover


def _gc_callback(phase: str, info: Any, _state: _ThreadState = _state) -> None:
    """In gc.callbacks: note the portal whose step a collection runs in.
    Code the collector runs (finalizers, ``__del__``, weakref callbacks)
    runs in the middle of that step, where the task never awaited: await_
    must not suspend it there (nor the collection, which would hold every
    other collection off until resumed). (What it uses is bound as defaults:
    collections run while modules are torn down too.)"""
    _state.gc_portal = _state.current if phase == "start" else None


def _watch_collections() -> None:
    """Put _gc_callback in gc.callbacks unless it is there (checked again
    whenever a runner is made: a program may clear the list)."""
    if not any(cb is _gc_callback for cb in gc.callbacks):
        gc.callbacks.append(_gc_callback)


_watch_collections()

# References an idle runner has when nothing outside the portal machinery
# refers to it, as seen at the check in Portal._step; measured at import.
_RUNNER_REFS: int = -1
# What _refs_of_current() reads in a greenlet that greenlet is killing
# because its last reference went away; measured at import.
_KILLED_REFS: int = -1


def _refs_of_current() -> int:
    return _getrefcount(getcurrent()) if _getrefcount is not None else 0


def _being_killed(exc: BaseException) -> bool:
    """Whether the current greenlet, thrown into with *exc*, is being killed
    by greenlet because its last reference went away: such a throw must
    unwind. Any other throw came from code that holds a reference to it."""
    if not isinstance(exc, GreenletExit):
        return False
    return _getrefcount is None or _refs_of_current() <= _KILLED_REFS


def _take_job(ret: Any, me: int) -> Portal | None:
    """The portal whose step hands greenlet *me* (an id) its job, if *ret*
    (what a switch into *me* brought) is such a step's, else None."""
    if type(ret) is not list or len(ret) != 1:
        return None
    p = ret[0]
    if type(p) is not Portal or p._stepper is None or p._job is None or id(p._target) != me:
        return None
    ret.clear()
    return p


def _step_entering(me: int) -> Portal | None:
    """After a switch into *me* raised: the portal whose step was entering
    *me*, when the switch was that step's (a settrace callback that raises
    turns the step's switch into a throw), else None."""
    p = _state.current
    if p is not None and p._stepper is not None and p._job is not None and id(p._target) == me:
        return p
    return None


def _bounce(me: int) -> tuple[Any, BaseException | None]:
    """Greenlet *me* was switched or thrown into from outside any step: stay
    as it was and raise a RuntimeError in the greenlet that most likely made
    the foreign call (the greenlet the innermost running step entered, else
    the hub). Returns what the next switch into *me* brings."""
    st = _state
    to = st.hub
    p = st.current
    if p is not None and p._stepper is not None:
        target = p._target
        if target is not None and id(target) != me and not target.dead:
            to = target
    p = target = None
    try:
        return to.throw(RuntimeError(_FOREIGN_SWITCH)), None
    except BaseException as exc:
        return None, exc


def _run_job(sending: dict[int, Any], coro: Any, throw: bool, arg: Any) -> tuple[Any, ...]:
    """Send or throw *arg* into *coro*; the message for the step: what it
    yielded, returned or raised. (A frame of its own, made for each job, is
    where the coroutine's StopIteration or error lands, not the runner's
    long-lived one: CPython 3.15 with greenlet 3.5.6 crashes when an
    exception enters a frame that was suspended in a greenlet when a tracer
    was turned on; see docs/limits.rst.)"""
    key = id(coro)
    sending[key] = coro
    try:
        if throw:
            value = coro.throw(arg)
        else:
            value = coro.send(arg)
    except StopIteration as exc:
        return (_RETURN, exc.value)
    except BaseException as exc:
        if exc.__traceback__ is not None:
            exc.__traceback__ = exc.__traceback__.tb_next  # hide this frame
        return (_RAISE, exc)
    finally:
        del sending[key]
        coro = arg = None
    return (_YIELD, value)


def _runner_main(box: list[Any]) -> None:
    """Body of a runner greenlet: run one job per switch, forever."""
    st = _state
    me = id(getcurrent())
    ret: Any = box
    thrown: BaseException | None = None
    del box
    while True:
        p = _take_job(ret, me) if thrown is None else None
        ret = None
        if p is None:
            if thrown is not None:
                p = _step_entering(me)
            if p is not None and not redeliver_interrupt(thrown):  # type: ignore[arg-type]
                p._job = (True, thrown)  # the step's switch raised: throw that
            elif thrown is not None and _being_killed(thrown):
                raise thrown  # dropped while idle: end
            else:
                thrown = None
                ret, thrown = _bounce(me)
                continue
        thrown = None
        throw, arg = p._job  # type: ignore[misc]
        p._job = None
        coro = p._coro
        p = None
        msg = _run_job(st.sending, coro, throw, arg)
        coro = arg = None
        # Report to the portal whose step runs on this runner now (after a
        # park in await_, the one that resumed it).
        p = st.current
        if p is None or p._stepper is None or id(p._runner) != me:
            # No step of ours is running: a foreign switch resumed the
            # coroutine, or greenlet killed the runner while parked. Nobody
            # can take the result: end the runner.
            p = None
            if msg[0] == _RAISE and isinstance(msg[1], GreenletExit):
                raise msg[1]
            raise RuntimeError(_FOREIGN_SWITCH)
        p._msg = msg
        msg = None  # type: ignore[assignment]
        stepper = p._stepper()  # alive: it is in the middle of the step
        box = [p]
        p = None
        try:
            ret = stepper.switch(box)  # type: ignore[union-attr]
        except BaseException as exc:
            thrown = exc
        stepper = box = None  # type: ignore[assignment]


def _is_provider_request(p: Portal, sender: greenlet, ret: Any) -> bool:
    """Whether *ret*, what came into the stepping greenlet from the step's
    greenlet *sender*, is a request in SQLAlchemy's greenlet-provider
    convention: the runner, marked as a provider while the hub does the step
    (``_PROVIDER``), switched to its parent with one awaitable to await."""
    if sender is not p._runner or type(ret) is list or type(ret) is Portal:
        return False
    return (
        isinstance(ret, types.CoroutineType)
        or hasattr(type(ret), "__await__")
        or (
            type(ret) is types.GeneratorType and bool(ret.gi_code.co_flags & _CO_ITERABLE_COROUTINE)
        )
    )


#: SQLAlchemy's greenlet-provider mark. A runner has it in its dict, except
#: during a step made from a greenlet other than the hub (Portal._step).
#: SQLAlchemy's ``await_only(aw)`` in a provider switches to its parent, the
#: hub, with *aw*; the hub is then the greenlet doing the step, and the step
#: awaits *aw* for the runner (Portal._await_for). Elsewhere the hub is not
#: waiting in a step, so the runner is no provider and SQLAlchemy refuses
#: with its own error. (The C core explains why not a greenlet subclass.)
_PROVIDER = "__sqlalchemy_greenlet_provider__"
_MARKED = {_PROVIDER: True}


def _runner_is_clean(st: _ThreadState, runner: greenlet) -> bool:
    """Whether an idle runner carries nothing a later task could see (no
    attribute but the provider mark)."""
    return (
        not runner.dead
        and runner.parent is st.hub
        and id(runner) not in st.deep
        and runner.__dict__ == _MARKED
        and weakref.getweakrefcount(runner) == 0
    )


def _give_back(st: _ThreadState, runner: greenlet) -> None:
    """Keep an idle runner for later steps, or let it go."""
    if len(st.pool) < POOL_MAX and _runner_is_clean(st, runner):
        st.pool.append(runner)
    else:
        st.deep.discard(id(runner))


def _from_pool(st: _ThreadState) -> greenlet | None:
    pool = st.pool
    while pool:
        runner = pool.pop()
        if not runner.dead:
            return runner
    return None


# greenlet aborts the process when it cannot allocate the copy of a stack
# slice in a switch. Under an address-space or data-size limit (the only
# place malloc fails in practice), a step and a park first check that a
# generous slice can be had, so that running out raises MemoryError in the
# task that needed the memory. Looked up again at every runner creation.
_HEADROOM = 256 * 1024
# What `await x` says when x is not awaitable (reworded in 3.14).
_NOT_AWAITABLE = (
    "'%s' object can't be awaited"
    if sys.version_info >= (3, 14)
    else "object %s can't be used in 'await' expression"
)
_memory_limited = False


def _refresh_memory_limit() -> None:
    global _memory_limited
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    limits = [resource.RLIMIT_AS, getattr(resource, "RLIMIT_DATA", resource.RLIMIT_AS)]
    _memory_limited = any(resource.getrlimit(r)[0] != resource.RLIM_INFINITY for r in limits)


def _switch_headroom() -> None:
    """Raise MemoryError if a switch's stack copy could not be had."""
    if _memory_limited:
        bytearray(_HEADROOM)


def _new_runner(st: _ThreadState, cur: greenlet) -> greenlet:
    _refresh_memory_limit()
    _watch_collections()
    # Off the hub, the stepper is its parent for its first switch, so that
    # failing before it takes its job (no memory) fails that step, not the
    # hub; Portal._step then gives it to the hub, as every runner.
    runner = greenlet(_runner_main, st.hub if cur is st.hub else cur)
    setattr(runner, _PROVIDER, True)
    if cur is not st.hub:
        st.deep.add(id(runner))
    return runner


_serials = itertools.count(1)  # Portal._serial


class Portal:
    """A coroutine wrapper whose steps can be suspended by :func:`await_`.

    ``Portal(coro)`` behaves like *coro* for whoever drives it (an asyncio
    Task, ``await``, ``yield from``): ``send``, ``throw``, ``close``,
    ``__await__`` and iteration, and the ``cr_*`` attributes, ``__name__``
    and ``__qualname__`` of *coro*, so ``repr(task)`` and ``task.get_stack()``
    read as if there were no portal. While the step is parked in
    :func:`await_` it reports itself suspended, and ``cr_await`` is the
    awaitable being driven.
    """

    __slots__ = (
        "_coro",
        "_runner",
        "_resume",
        "_awaiting",
        "_stepper",
        "_target",
        "_job",
        "_msg",
        "_closing",
        "_unmarked",
        "_detached",
        "_owned",
        "_serial",
        "__weakref__",
    )

    _coro: Any
    _runner: greenlet | None  # while stepping, parked, or pinned by outside refs
    _resume: greenlet | None  # the greenlet parked in await_, between steps
    _awaiting: Any  # what await_ drives while parked
    # The greenlet doing the step, weakly (set exactly while stepping): no
    # reference to a stepping greenlet stays on its own suspended stack, so
    # dropping a greenlet that hosts a loop mid-step kills and unwinds it.
    _stepper: weakref.ref[greenlet] | None
    _target: greenlet | None  # the greenlet the step entered
    _job: tuple[bool, Any] | None  # (throw, arg), until the target takes it
    _msg: tuple[Any, ...] | None  # the step's message, for the stepper
    _closing: bool  # while close() unwinds the coroutine: no suspending then
    _unmarked: bool  # the runner's provider mark is off (a step off the hub)
    _detached: bool  # _detach(): the coroutine is no longer ours to step or close
    _serial: int  # creation order in the process, for closing at exit

    def __new__(cls, *args: Any, **kwargs: Any) -> Portal:
        if kwargs:
            raise TypeError("Portal() takes no keyword arguments")
        if len(args) != 1:
            raise TypeError(f"Portal expected 1 argument, got {len(args)}")
        (coro,) = args
        t = type(coro)
        if t is not types.CoroutineType and not (
            t is types.GeneratorType or isinstance(coro, collections.abc.Coroutine)
        ):
            raise TypeError(f"Portal() argument must be a coroutine, not {t.__name__}")
        self = object.__new__(cls)
        self._coro = coro
        self._runner = self._resume = self._awaiting = None
        self._stepper = self._target = None
        self._job = self._msg = None
        self._closing = False
        self._unmarked = False
        self._detached = False
        #: Set by the first step: from then on closing the coroutine when the
        #: portal is dropped is the portal's business (one made around a
        #: coroutine something else runs leaves it alone).
        self._owned = False
        self._serial = next(_serials)
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError(f"type '{__name__}.Portal' is not an acceptable base type")

    # -- the coroutine protocol ---------------------------------------------

    def send(self, value: Any = _NO_ARGUMENT) -> Any:
        if value is _NO_ARGUMENT:
            raise TypeError("Portal.send() takes exactly one argument (0 given)")
        ok, value = self._step(False, value)
        if ok:
            return value
        try:
            raise value
        finally:
            value = None

    def throw(self, *args: Any) -> Any:
        if not args:
            raise TypeError("throw expected at least 1 argument, got 0")
        if len(args) > 3:
            raise TypeError(f"throw expected at most 3 arguments, got {len(args)}")
        typ, *rest = args
        if rest and sys.version_info >= (3, 12):
            warnings.warn(
                "the (type, exc, tb) signature of throw() is deprecated, "
                "use the single-arg signature instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        exc = _make_exception(typ, *rest)
        # This frame lands in the traceback of what the step raises, which
        # is often the very exception thrown in: it must not refer to it.
        args = rest = typ = None  # type: ignore[assignment]
        ok, value = self._step(True, exc)
        exc = None  # type: ignore[assignment]
        if ok:
            return value
        try:
            raise value
        finally:
            value = None

    def _holds_greenlets(self) -> bool:
        """Whether the coroutine's frames depend on the portal's greenlets:
        parked in await_, or run by a runner something else pins."""
        return self._resume is not None or self._runner is not None

    def _close_runs_code(self) -> bool:
        """Whether closing the coroutine runs its code: it holds greenlets,
        or it is a coroutine (or generator) suspended at an await. close()
        then runs as a step of the portal, in its runner, marked as closing:
        the code never runs on the caller's stack (which may be another
        task's step, when the collector or a dropped reference finalizes the
        portal) and cannot suspend."""
        if self._resume is not None or self._runner is not None:
            return True
        if self._detached:
            return False
        coro = self._coro
        t = type(coro)
        if t is types.CoroutineType:
            return _suspended(coro, coro.cr_frame, coro.cr_running, "cr_suspended")
        if t is types.GeneratorType:
            return _suspended(coro, coro.gi_frame, coro.gi_running, "gi_suspended")
        return False

    def close(self) -> Any:
        if self._stepper is not None:
            raise ValueError("coroutine already executing")
        if not self._close_runs_code():
            return None if self._detached else self._coro.close()
        self._closing = True  # (no close nests in another: the stepper check)
        try:
            ok, value = self._step(True, GeneratorExit())
        except GeneratorExit:
            return None
        finally:
            self._closing = False
        if ok:
            raise RuntimeError("coroutine ignored GeneratorExit")
        if isinstance(value, GeneratorExit):
            return None
        if isinstance(value, StopIteration):
            return value.value if _CLOSE_RETURNS_VALUE else None
        try:
            raise value
        finally:
            value = None

    def _own(self) -> None:
        """Make the coroutine's closing the portal's: it is now a task's
        coroutine (ensure_portal(), bestow_portal()), even before its first
        step."""
        self._owned = True

    def _detach(self) -> bool:
        """Give the coroutine back to whoever resumes it directly from now
        on (a Trio task whose ``Task.coro`` was set back to it): the portal
        no longer steps or closes it. Only between steps, and only while
        the coroutine's frames depend on none of the portal's greenlets;
        returns whether it detached."""
        if self._stepper is not None:
            raise ValueError("coroutine already executing")
        if self._holds_greenlets():
            return False
        self._detached = True
        return True

    def __await__(self) -> Portal:
        # as await on the coroutine itself: refused while it awaits
        # something (a task's coroutine between steps), here or parked
        coro = self._coro
        if self._resume is not None or (
            type(coro) is types.CoroutineType and coro.cr_await is not None
        ):
            raise RuntimeError("coroutine is being awaited already")
        return self

    def __iter__(self) -> Portal:
        return self

    def __next__(self) -> Any:
        ok, value = self._step(False, None)
        if ok:
            return value
        try:
            raise value
        finally:
            value = None

    def __del__(self) -> None:
        if (
            self._stepper is not None
            or not self._owned
            or sys.is_finalizing()
            or not self._close_runs_code()
        ):
            return
        try:
            self.close()
        except RuntimeError as exc:
            if isinstance(exc.__cause__, greenlet_error):
                # Collected in another thread: greenlet unwinds the
                # greenlets in their own thread when they are dropped.
                return
            raise

    # -- stepping -----------------------------------------------------------

    def _step(self, throw: bool, arg: Any) -> tuple[bool, Any]:
        """Run one step: ``(True, value)`` when the coroutine yielded,
        ``(False, exception)`` for what the calling method is to raise (a
        StopIteration when it returned). The method raises it, so no frame
        of this one lands in the exception's traceback, nor in a cycle with
        it: a task's traceback shows one frame of the twin, as little as a
        pure-Python function can."""
        st = _state
        made = None  # a runner made for this step
        if self._stepper is not None:
            raise ValueError("coroutine already executing")
        if self._detached:
            raise RuntimeError("greenback_loop: this portal was detached from its coroutine")
        _switch_headroom()
        cur: greenlet | None = getcurrent()
        assert cur is not None
        resume = self._resume
        awaiting = None
        if resume is not None:
            awaiting = self._awaiting
            self._resume = self._awaiting = None
            if resume.dead:
                self._runner = None
                raise RuntimeError(_KILLED)
            target = resume
        else:
            runner = self._runner
            if runner is not None and runner.dead:
                runner = self._runner = None
            if runner is None:
                runner = _from_pool(st)
                if runner is None:
                    runner = made = _new_runner(st, cur)
                self._runner = runner
            target = runner
            runner = None
            # The step runs in the very context object of the caller.
            target.gr_context = cur.gr_context
        if cur is not st.hub or self._unmarked:
            self._mark_runner(cur is not st.hub)
        self._owned = True
        self._job = (throw, arg)
        arg = None
        self._target = target
        stepper: weakref.ref[greenlet] | None = weakref.ref(cur)
        self._stepper = stepper
        cur = None
        prev = st.current
        st.current = self
        ret: Any = None
        thrown: BaseException | None = None
        try:
            ret = target.switch([self])
        except BaseException as exc:
            thrown = exc
        ret, thrown = self._wait(stepper, ret, thrown)  # type: ignore[arg-type]
        if made is not None:
            # made off the hub and still the stepper's child (_new_runner);
            # sync code may have reparented it: then it is not pooled
            if made.parent is not st.hub and made.parent is stepper() and not made.dead:  # type: ignore[misc]
                made.parent = st.hub
            made = None
        if type(ret) is list and ret == [self]:
            ret.clear()  # the message's box: the sender's frame keeps it
        st.current = prev
        self._stepper = self._target = None
        msg = self._msg
        self._msg = None
        if msg is None:
            try:
                self._failed(ret, thrown, resume, awaiting)
            finally:
                # What raised holds this frame in its traceback: the frame
                # must not hold it back (a cycle through the portal, which
                # __del__ would then leave alive past its collection).
                ret = thrown = None
        job_left, self._job = self._job, None
        del job_left
        ret = stepper = target = resume = awaiting = None
        kind = msg[0]
        if kind == _SUSPEND:
            self._resume = msg[2]
            self._awaiting = msg[3]
        else:
            self._release_runner(st, kind != _YIELD)
        if thrown is not None and not redeliver_interrupt(thrown):
            # A message came, but the switch back raised (a settrace
            # callback): the step's state is kept, that error raised.
            return False, thrown
        value = msg[1]
        msg = None
        if kind == _YIELD or kind == _SUSPEND:
            return True, value
        if kind == _RETURN:
            return False, StopIteration(value)
        return False, value

    def _wait(self, stepper: weakref.ref[greenlet], ret: Any, thrown: BaseException | None) -> Any:
        """While the step runs, wait for its message; refuse anything else
        that switches or throws into the stepping greenlet (it came from
        inside the step), and unwind the step's greenlet if the stepping one
        is being killed."""
        while self._msg is None:
            if thrown is not None and self._job is not None:
                return ret, thrown  # nothing was entered: the switch failed
            to = self._target
            if to is None or to.dead:
                to = self._runner
            if to is None or to is stepper() or to.dead:
                return ret, thrown  # the runner ended
            if thrown is None and _is_provider_request(self, to, ret):
                ret, thrown = self._await_for(to, ret)
                continue
            if thrown is not None and _being_killed(thrown):
                exc = thrown
            else:
                exc = RuntimeError(_FOREIGN_SWITCH)
            ret = thrown = None
            try:
                ret = to.throw(exc)
            except BaseException as e:
                thrown = e
            exc = to = None  # type: ignore[assignment]
        return ret, thrown

    def _await_for(self, runner: greenlet, aw: Any) -> tuple[Any, BaseException | None]:
        """Await *aw* for the runner, suspended in its switch to the stepping
        greenlet (a provider request): on a helper greenlet, a child of the
        runner in its context, that calls :func:`await_`. The helper
        suspends the step as any await_ does; when it ends, greenlet hands
        its result (or raises its exception) in the runner, where the
        switch returns it. Returns what next comes into the stepping
        greenlet."""
        try:
            helper = greenlet(await_, runner)
            helper.gr_context = runner.gr_context
        except BaseException as exc:
            aw = None
            try:
                return runner.throw(exc), None
            except BaseException as e:
                return None, e
        self._target = helper
        try:
            return helper.switch(aw), None
        except BaseException as e:
            return None, e
        finally:
            aw = None
            if self._target is helper:
                self._target = runner
            helper = None  # a parked helper is the portal's, in its message

    def _mark_runner(self, off_hub: bool) -> None:
        """Turn the runner's provider mark off for a step made from a
        greenlet other than the hub, back on for a step from the hub."""
        runner = self._runner
        if runner is None:
            return
        if off_hub:
            self._unmarked = True
            runner.__dict__.pop(_PROVIDER, None)
        else:
            setattr(runner, _PROVIDER, True)
            self._unmarked = False

    def _failed(
        self, ret: Any, thrown: BaseException | None, resume: greenlet | None, awaiting: Any
    ) -> NoReturn:
        """Raise the error of a step that brought no message. (Its frame,
        in the traceback, lets go of what it raises: no cycle holds the
        portal.)"""
        try:
            if thrown is not None and self._job is not None:
                # Nothing ran: put the parked greenlet back.
                self._job = None
                if resume is not None:
                    self._resume, self._awaiting = resume, awaiting
                if isinstance(thrown, greenlet_error):
                    raise RuntimeError(_WRONG_THREAD) from thrown
                raise thrown
            self._job = None
            runner = self._runner
            if runner is not None and runner.dead:
                self._runner = None  # the runner ended: the coroutine is lost with it
            if thrown is not None:
                raise thrown
            if isinstance(ret, BaseException):
                raise ret
            raise RuntimeError(_LEFT)
        finally:
            ret = thrown = resume = awaiting = runner = None

    def _release_runner(self, st: _ThreadState, finished: bool) -> None:
        """Give the runner back to the pool unless something outside the
        portal still refers to it; a pinned runner stays with the portal
        until the coroutine finishes."""
        runner = self._runner
        assert runner is not None
        runner.gr_context = None
        if self._unmarked:
            self._unmarked = False
            setattr(runner, _PROVIDER, True)
        if _getrefcount is not None and _getrefcount(runner) <= _RUNNER_REFS:
            self._runner = None
            _give_back(st, runner)
        elif finished:
            self._runner = None

    # -- introspection, forwarded to the real coroutine ----------------------

    @property
    def cr_code(self) -> Any:
        return self._coro.cr_code

    @property
    def cr_frame(self) -> Any:
        return self._coro.cr_frame

    @property
    def cr_origin(self) -> Any:
        return self._coro.cr_origin

    @property
    def cr_running(self) -> bool:
        return self._resume is None and bool(self._coro.cr_running)

    @property
    def cr_await(self) -> Any:
        if self._resume is not None:
            return self._awaiting
        return self._coro.cr_await

    if _HAS_CR_SUSPENDED:

        @property
        def cr_suspended(self) -> bool:
            return self._resume is not None or bool(self._coro.cr_suspended)

    if _HAS_CR_STATE:

        @property
        def cr_state(self) -> str:
            if self._resume is not None:
                return "CORO_SUSPENDED"
            return self._coro.cr_state  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # Reached for what Portal itself lacks: __name__, __qualname__ (a
        # class cannot define those for its instances) and anything else
        # the real coroutine has.
        if name.startswith("_") and name not in ("__name__", "__qualname__"):
            raise AttributeError(name)
        return getattr(self._coro, name)

    def __repr__(self) -> str:
        return f"<greenback_loop._portal_py.Portal for {self._coro!r}>"


collections.abc.Coroutine.register(Portal)


def _make_exception(typ: Any, val: Any = None, tb: Any = None) -> BaseException:
    """Normalize ``throw()``'s arguments the way coroutines do."""
    if tb is not None and not isinstance(tb, types.TracebackType):
        raise TypeError("throw() third argument must be a traceback object")
    if isinstance(typ, type) and issubclass(typ, BaseException):
        if isinstance(val, typ):
            exc = val
        elif val is None:
            exc = typ()
        elif isinstance(val, tuple):
            exc = typ(*val)
        else:
            exc = typ(val)
        if not isinstance(exc, BaseException):
            raise TypeError(
                f"calling {typ!r} should have returned an instance of BaseException, "
                f"not {type(exc).__name__}"
            )
    elif isinstance(typ, BaseException):
        if val is not None:
            raise TypeError("instance exception may not have a separate value")
        exc = typ
    else:
        raise TypeError(
            "exceptions must be classes or instances deriving from "
            f"BaseException, not {type(typ).__name__}"
        )
    if tb is not None:
        exc = exc.with_traceback(tb)
    return exc


def _drop_own_frame(obj: Any) -> Any:
    """In debug mode, the creation point a task or handle records is our
    caller's, as with the C core (asyncio's own methods drop their frame
    likewise): our wrapper's frame is removed from it, and so is the
    runner's at its bottom (a step's stack starts at the task's coroutine
    there, as the C core's does)."""
    tb = getattr(obj, "_source_traceback", None)
    if tb:
        if tb[-1].filename == __file__:
            del tb[-1]
        own = 0
        while own < len(tb) and tb[own].filename == __file__:
            own += 1
        del tb[:own]
    return obj


def portal_create_task(base: Callable[..., Any], wrap: Callable[[Any], Any]) -> Callable[..., Any]:
    """A ``create_task`` method for a loop class: wraps the coroutine in a
    portal (native coroutines here, anything else through ``wrap(coro)``) and
    calls ``base(loop, portal, ...)`` with the other arguments untouched."""

    def create_task(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args:
            coro = args[0]
            coro = Portal(coro) if type(coro) is types.CoroutineType else wrap(coro)
            args = (coro, *args[1:])
        elif "coro" in kwargs:
            kwargs["coro"] = wrap(kwargs["coro"])
        return _drop_own_frame(base(self, *args, **kwargs))

    create_task.__doc__ = base.__doc__
    create_task.__wrapped__ = base  # type: ignore[attr-defined]
    return create_task


def portal_call_soon(
    base: Callable[..., Any], hook: Callable[[Any], Any], pytask_type: type
) -> Callable[..., Any]:
    """A ``call_soon`` method for a loop class: a pure-Python Task scheduling
    a step is handed to ``hook(task)`` (which gives it a portal if it has
    none) before ``base(loop, ...)`` is called. (The C core's also sees C
    Tasks, whose coroutine only it can replace.)"""

    def call_soon(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if type(callback) is types.MethodType and isinstance(callback.__self__, pytask_type):
            hook(callback.__self__)
        return _drop_own_frame(base(self, callback, *args, **kwargs))

    call_soon.__doc__ = base.__doc__
    call_soon.__wrapped__ = base  # type: ignore[attr-defined]
    return call_soon


# -- await_ -----------------------------------------------------------------


def in_portal() -> bool:
    """Whether :func:`await_` can suspend from the calling greenlet."""
    portal = _state.current
    if portal is None or portal._stepper is None:
        return False
    runner = portal._runner
    g: greenlet | None = getcurrent()
    while g is not None:
        if g is runner:
            return True
        g = g.parent
    return False


def _on_this_stack(frame: Any) -> bool:
    """Whether *frame* runs on the current greenlet's stack."""
    f: types.FrameType | None = sys._getframe(1)
    while f is not None:
        if f is frame:
            return True
        f = f.f_back
    return False


def _awaitable_iter(aw: Any) -> Any:
    """What ``await aw`` would iterate over, with ``await``'s errors."""
    t = type(aw)
    if t is types.CoroutineType:
        if aw.cr_await is not None or (aw.cr_running and not _on_this_stack(aw.cr_frame)):
            # awaiting something, maybe from a greenlet parked in await_
            raise RuntimeError("coroutine is being awaited already")
        return aw
    if t is types.GeneratorType and aw.gi_code.co_flags & _CO_ITERABLE_COROUTINE:
        return aw
    meth = getattr(t, "__await__", _NO_ARGUMENT)
    if meth is _NO_ARGUMENT:
        raise TypeError(_NOT_AWAITABLE % t.__name__)
    it = meth(aw)
    ti = type(it)
    coroutine = ti is types.CoroutineType or (
        ti is types.GeneratorType and it.gi_code.co_flags & _CO_ITERABLE_COROUTINE
    )
    if coroutine or not hasattr(ti, "__next__"):
        if _AWAIT_MUST_RETURN_ITERATOR:
            raise TypeError(
                f"{_qualified(t)}.__await__() must return an iterator, not {_qualified(ti)}"
            )
        if coroutine:
            raise TypeError("__await__() returned a coroutine")
        raise TypeError(f"__await__() returned non-iterator of type '{ti.__name__}'")
    return it


def _qualified(t: type) -> str:
    """A type's name as CPython's ``%T`` formats it."""
    module = getattr(t, "__module__", None)
    if not isinstance(module, str) or module in ("builtins", "__main__"):
        return t.__qualname__
    return f"{module}.{t.__qualname__}"


def _chain_handled(exc: BaseException) -> BaseException:
    """Give *exc*, about to be thrown into a parked await_, the exception
    being handled there as its ``__context__``, as a coroutine thrown into
    does (breaking a cycle the way CPython does)."""
    handled = sys.exception()
    if handled is None or handled is exc:
        return exc
    o: BaseException | None = handled
    while o is not None:
        nxt = o.__context__
        if nxt is exc:
            o.__context__ = None
            break
        o = nxt
    exc.__context__ = handled
    return exc


def _park(box: list[Any], aw: Any, me: int) -> tuple[Portal | None, bool, Any]:
    """Park the current greenlet (*me*, an id) in the step of the portal in
    *box*, whose message holds what the awaitable yielded, and wait to be
    resumed. Returns the portal whose step resumes it with its job
    ``(portal, throw, arg)``, or ``(None, True, exc)`` when no step can take
    this greenlet any more (it is being killed)."""
    p = box[0]
    stepper = p._stepper()
    p = None
    ret: Any = None
    thrown: BaseException | None = None
    try:
        ret = stepper.switch(box)
    except BaseException as exc:
        thrown = exc
    stepper = box = None  # type: ignore[assignment]
    while True:
        if thrown is None:
            q = _take_job(ret, me)
            if q is not None:
                throw, arg = q._job  # type: ignore[misc]
                q._job = None
                return q, throw, arg
        else:
            q = _step_entering(me)
            if q is not None:
                if redeliver_interrupt(thrown):
                    throw, arg = q._job  # type: ignore[misc]
                    q._job = None
                    return q, throw, arg
                q._job = None
                return q, True, thrown  # the step's switch raised: throw that
            if _being_killed(thrown):
                return None, True, thrown
        ret = thrown = None
        ret, thrown = _bounce(me)


def await_(aw: Awaitable[T], /) -> T:
    """Await *aw* from synchronous code running inside a portal.

    ``await_(aw)`` does what ``await aw`` does, but in a plain function: the
    function must run (at any depth) inside a task that has a portal, which
    every task of a greenback_loop event loop has.

    Raises:
        RuntimeError: there is no portal to suspend: no running event loop in
            this thread, no current task, or a task without a portal; or *aw*
            must suspend where the task cannot be: while its coroutine is being
            closed, or in code the garbage collector runs.
        TypeError: *aw* is not awaitable.
    """
    st = _state
    portal = st.current
    if portal is None:
        raise await_outside_portal(aw, False)
    runner = portal._runner
    g: greenlet | None = getcurrent()
    me = id(g)
    if g is not runner:
        assert g is not None
        g = g.parent
        while g is not runner:
            if g is None:
                raise await_outside_portal(aw, True)
            g = g.parent
    portal = runner = g = None

    it = _awaitable_iter(aw)
    send = getattr(it, "send", None)
    throw = False
    arg: Any = None
    p: Portal | None = None
    while True:
        try:
            if throw:
                value = _throw_into(it, arg)
            elif send is None:
                value = next(it) if arg is None else it.send(arg)
            else:
                value = send(arg)
        except StopIteration as exc:
            return exc.value  # type: ignore[no-any-return]
        except BaseException:
            # What was sent or thrown in may hold the exception raised now
            # (Trio sends an outcome.Error): not kept by this frame, which
            # the exception's traceback holds, it makes no cycle.
            arg = None
            raise
        arg = None
        # aw waits: suspend the step this greenlet runs in.
        if p is None:
            p = st.current
        refusal: str | None = None
        if p is None or p is not st.current or p._stepper is None:
            # no step of ours to suspend (killed while parked, or resumed
            # from outside)
            refusal = _FOREIGN_SWITCH
        elif p._closing:
            refusal = _CLOSING
        elif st.gc_portal is p:
            refusal = _IN_GC
        elif _step_entering(me) is not None:
            refusal = _IN_SWITCH
        if refusal is not None:
            # close aw, and raise
            p = value = None
            err = RuntimeError(refusal)
            try:
                _throw_into(it, GeneratorExit())
            except BaseException:
                pass
            raise err
        assert p is not None
        try:
            _switch_headroom()
        except MemoryError as exc:
            p = value = None
            throw, arg = True, exc
            continue
        p._msg = (_SUSPEND, value, getcurrent(), aw)
        box = [p]
        p = value = None  # the parked frame keeps nothing of the task
        p, throw, arg = _park(box, aw, me)
        if throw:
            arg = _chain_handled(arg)


def _throw_into(it: Any, exc: BaseException) -> Any:
    """``yield from``'s handling of an exception thrown into the delegator."""
    if isinstance(exc, GeneratorExit):
        close = getattr(it, "close", None)
        if close is not None:
            close()
        raise exc
    throw = getattr(it, "throw", None)
    if throw is None:
        raise exc
    return throw(exc)


def _calibrate() -> None:
    """Measure, at import, the references an unshared idle runner has at the
    check in ``Portal._step``, and what :func:`_refs_of_current` reads in a
    greenlet that greenlet kills because its last reference went away."""
    global _RUNNER_REFS, _KILLED_REFS
    if _getrefcount is None:
        return  # no reference counts (PyPy): runners stay with their portal

    def kill_probe() -> None:
        global _KILLED_REFS
        try:
            getcurrent().parent.switch()
        except GreenletExit:
            _KILLED_REFS = _refs_of_current()

    g = greenlet(kill_probe)
    g.switch()
    del g  # kills it

    @types.coroutine
    def checkpoint() -> Generator[None, None, None]:
        yield None

    async def probe() -> None:
        await checkpoint()

    _RUNNER_REFS = sys.maxsize  # pool the probe's runner whatever its count
    portal = Portal(probe())
    portal.send(None)
    runner = _state.pool[-1]
    # At the check the runner had: the local in _release_runner,
    # getrefcount's argument, and whatever greenlet itself holds; here: the
    # pool, the local, the argument, and the same greenlet-held references.
    _RUNNER_REFS = _getrefcount(runner)
    del runner
    portal.close()


_refresh_memory_limit()
_calibrate()
