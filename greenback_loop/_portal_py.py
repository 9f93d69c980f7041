"""The portal core in pure Python: the twin of the C core in ``csrc/``.

It holds three things, each mirrored one to one by the C core:

``Portal``
    Wraps a task's coroutine and speaks the coroutine protocol. Every step of
    the real coroutine runs in a *runner* greenlet, so synchronous code
    anywhere below it can suspend the step with :func:`await_`.

the runner pool
    Per thread, a bounded list of idle runner greenlets. A step takes a
    runner, points its parent at the greenlet doing the step and its context
    at the step's context, and switches in. When the step ends normally the
    runner goes back to the pool holding nothing of the task, unless something
    outside the portal still references it (a greenlet that sync code started
    with the runner as its parent, say): then it stays pinned to the portal,
    so that greenlet's parent chain stays valid, until the references go.

:func:`await_`
    Drives an awaitable in place, in the calling greenlet, and only switches
    to the greenlet doing the step when the awaitable really suspends; the
    portal then hands the yielded value to the task as if the coroutine had
    yielded it.

Jobs to a runner (or to a greenlet parked in ``await_``) and messages back to
the stepping greenlet go through the per-thread ``job`` and ``msg`` slots,
never through switch arguments: a suspended frame (or greenlet's own start-up
code, which keeps the arguments of a greenlet's first switch) would otherwise
keep a coroutine, a yielded value or an exception alive.
"""

from __future__ import annotations

import collections.abc
import sys
import threading
import types
import warnings
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet
from greenlet import error as greenlet_error

from ._errors import await_outside_portal

__all__ = ["Portal", "await_", "in_portal", "portal_create_task"]

T = TypeVar("T")

#: Idle runners kept per thread; more are created on demand and dropped
#: when they come back to a full pool.
POOL_MAX = 64

# Message kinds, first item of the tuple left in ``_ThreadState.msg``.
_YIELD = 0  # (kind, value): the coroutine yielded value; the step ended
_RETURN = 1  # (kind, value): the coroutine returned value
_RAISE = 2  # (kind, exception): the coroutine raised
_SUSPEND = 3  # (kind, value, greenlet, awaitable): await_ suspended the step

_CO_ITERABLE_COROUTINE = 0x100
_HAS_CR_SUSPENDED = hasattr(types.CoroutineType, "cr_suspended")
_HAS_CR_STATE = hasattr(types.CoroutineType, "cr_state")  # 3.15+
_CLOSE_RETURNS_VALUE = sys.version_info >= (3, 13)
_getrefcount = getattr(sys, "getrefcount", None)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        #: The portal whose step is running in this thread, if any.
        self.current: Portal | None = None
        #: Idle runner greenlets.
        self.pool: list[greenlet] = []
        #: The job for the runner or parked greenlet being switched to.
        self.job: tuple[Any, ...] | None = None
        #: The message left by the runner or await_ for the stepping greenlet.
        self.msg: tuple[Any, ...] | None = None
        #: id() of the portal the message is for (a tag, not a reference).
        self.msg_portal: int = 0
        #: The coroutines whose send() or throw() is on a runner's stack.
        #: The C core holds those on the C stack, out of the garbage
        #: collector's sight; rooting them here does the same, so the
        #: collector never finalizes a coroutine in the middle of a step
        #: (it would report "coroutine already executing").
        self.sending: dict[int, Any] = {}
        hub = getcurrent()
        while hub.parent is not None:
            hub = hub.parent
        #: This thread's main greenlet: the parent of every idle runner.
        self.hub: greenlet = hub


_state = _ThreadState()
_runners_created = 0

# References an idle runner has when nothing outside the portal machinery
# refers to it, as seen at the check in Portal._step; measured at import.
_RUNNER_REFS: int = -1


_FOREIGN_SWITCH = (
    "greenback_loop: a task's greenlet was switched into from outside its "
    "portal's step (greenlet.switch() or throw() on it?); the task cannot continue"
)


def _runner_main() -> None:
    """Body of a runner greenlet: run one step per job, forever.

    Jobs and messages carry the id of their portal (a tag, never a
    reference): a runner or parked greenlet woken by a foreign switch finds
    no job of its portal's and stops, instead of reporting into some other
    portal's step.
    """
    st = _state
    while True:
        if st.job is None:
            raise RuntimeError(_FOREIGN_SWITCH)  # ends the runner
        coro, throw, arg, mine = st.job
        st.job = None
        sending = st.sending
        key = id(coro)
        sending[key] = coro
        try:
            if throw:
                value = coro.throw(arg)
            else:
                value = coro.send(arg)
        except StopIteration as exc:
            msg: tuple[Any, ...] = (_RETURN, exc.value)
        except GreenletExit:
            # The runner is being killed (its last reference was dropped
            # while it was parked): end it.
            raise
        except BaseException as exc:
            if exc.__traceback__ is not None:
                exc.__traceback__ = exc.__traceback__.tb_next  # hide this frame
            msg = (_RAISE, exc)
        else:
            msg = (_YIELD, value)
        finally:
            del sending[key]
        coro = arg = value = None
        portal = st.current
        if portal is None or id(portal) != mine:
            raise RuntimeError(_FOREIGN_SWITCH)  # nowhere to report: end
        st.msg = msg
        st.msg_portal = mine
        msg = None  # type: ignore[assignment]
        stepper = portal._stepper
        portal = None
        stepper.switch()  # type: ignore[union-attr]


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
        "__weakref__",
    )

    _coro: Any
    _runner: greenlet | None
    _resume: greenlet | None
    _awaiting: Any
    _stepper: greenlet | None

    def __init__(self, coro: Any) -> None:
        self._runner = None  # the runner, while stepping, parked or pinned
        self._resume = None  # the greenlet parked in await_
        self._awaiting = None  # the awaitable await_ drives while parked
        self._stepper = None  # the greenlet doing the step: set exactly while stepping
        t = type(coro)
        if t is not types.CoroutineType and not (
            t is types.GeneratorType or isinstance(coro, collections.abc.Coroutine)
        ):
            raise TypeError(f"Portal() argument must be a coroutine, not {t.__name__}")
        self._coro = coro

    # -- the coroutine protocol ---------------------------------------------

    def send(self, value: Any) -> Any:
        return self._step(False, value)

    def throw(self, typ: Any, *rest: Any) -> Any:
        if len(rest) > 2:
            raise TypeError(
                f"throw expected at least 1 argument and at most 3, got {1 + len(rest)}"
            )
        if rest and sys.version_info >= (3, 12):
            warnings.warn(
                "the (type, exc, tb) signature of throw() is deprecated, "
                "use the single-arg signature instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        return self._step(True, _make_exception(typ, *rest))

    def close(self) -> Any:
        if self._resume is None:
            if self._stepper is not None:
                raise ValueError("coroutine already executing")
            return self._coro.close()
        try:
            self._step(True, GeneratorExit())
        except GeneratorExit:
            return None
        except StopIteration as exc:
            return exc.value if _CLOSE_RETURNS_VALUE else None
        raise RuntimeError("coroutine ignored GeneratorExit")

    def __await__(self) -> Portal:
        return self

    def __iter__(self) -> Portal:
        return self

    def __next__(self) -> Any:
        return self._step(False, None)

    def __del__(self) -> None:
        if self._resume is None or sys.is_finalizing():
            return
        try:
            self.close()
        except RuntimeError as exc:
            if isinstance(exc.__cause__, greenlet_error):
                # Collected in another thread: the runner cannot be entered
                # from here; greenlet unwinds it in its own thread.
                return
            raise

    # -- stepping -----------------------------------------------------------

    def _step(self, throw: bool, arg: Any) -> Any:
        st = _state
        if self._stepper is not None:
            raise ValueError("coroutine already executing")
        hub = st.hub
        runner = self._runner
        resume = self._resume
        if resume is not None and runner is not None and runner.parent is not hub:
            # Between steps a runner's parent is its own thread's hub.
            raise RuntimeError(
                "a task's portal can only be stepped in the thread whose event loop runs the task"
            )
        if resume is not None:
            assert runner is not None
            target = resume
            st.job = (throw, arg, id(self))
            awaiting = self._awaiting
            self._resume = self._awaiting = None
        else:
            if runner is None:
                pool = st.pool
                runner = pool.pop() if pool else _new_runner()
                self._runner = runner
            target = runner
            st.job = (self._coro, throw, arg, id(self))
        arg = None
        cur = getcurrent()
        if cur is not hub:
            runner.parent = cur
        runner.gr_context = cur.gr_context
        prev = st.current
        st.current = self
        self._stepper = cur
        try:
            ret = target.switch()
        except BaseException as exc:
            st.current = prev
            st.job = st.msg = None
            self._stepper = None
            if runner.dead:
                self._runner = None
            elif isinstance(exc, greenlet_error) and resume is not None:
                # Nothing ran: the parked greenlet belongs to another thread.
                self._resume, self._awaiting = resume, awaiting
                raise RuntimeError(
                    "a task's portal can only be stepped in the thread whose "
                    "event loop runs the task"
                ) from exc
            raise
        st.current = prev
        self._stepper = None
        if cur is not hub and not runner.dead:
            runner.parent = hub
        msg = st.msg
        if msg is not None and st.msg_portal != id(self):
            msg = None  # a message for another portal: a foreign switch
        st.job = st.msg = None
        cur = target = resume = None
        if msg is None:
            # No message: the runner ended (the coroutine raised
            # GreenletExit, which ends a greenlet and comes back as its
            # result), or a foreign greenlet switched here.
            if runner.dead:
                self._runner = None
                if isinstance(ret, BaseException):
                    raise ret
            raise RuntimeError(
                "greenback_loop: the task's step was left by an unexpected "
                "greenlet switch; the task cannot continue"
            )
        kind = msg[0]
        if kind == _SUSPEND:
            self._resume = msg[2]
            self._awaiting = msg[3]
            return msg[1]
        # The step ended: release the runner unless something else holds it.
        runner.gr_context = None
        if _getrefcount is not None and _getrefcount(runner) <= _RUNNER_REFS:
            self._runner = None
            pool = st.pool
            if len(pool) < POOL_MAX:
                pool.append(runner)
        elif kind != _YIELD:
            self._runner = None  # finished: let the pinned runner go
        if kind == _YIELD:
            return msg[1]
        if kind == _RETURN:
            raise StopIteration(msg[1])
        raise msg[1]

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


def _new_runner() -> greenlet:
    global _runners_created
    _runners_created += 1
    return greenlet(_runner_main)


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
        return base(self, *args, **kwargs)

    create_task.__doc__ = base.__doc__
    create_task.__wrapped__ = base  # type: ignore[attr-defined]
    return create_task


# -- await_ -----------------------------------------------------------------


def in_portal() -> bool:
    """Whether :func:`await_` can suspend from the calling greenlet."""
    portal = _state.current
    if portal is None:
        return False
    runner = portal._runner
    g: greenlet | None = getcurrent()
    while g is not None:
        if g is runner:
            return True
        g = g.parent
    return False


def _awaitable_iter(aw: Any) -> Any:
    """What ``await aw`` would iterate over, with ``await``'s errors."""
    t = type(aw)
    if t is types.CoroutineType:
        return aw
    if t is types.GeneratorType and aw.gi_code.co_flags & _CO_ITERABLE_COROUTINE:
        return aw
    meth = getattr(t, "__await__", None)
    if meth is None:
        raise TypeError(f"'{t.__name__}' object can't be awaited")
    it = meth(aw)
    ti = type(it)
    if ti is types.CoroutineType or (
        ti is types.GeneratorType and it.gi_code.co_flags & _CO_ITERABLE_COROUTINE
    ):
        raise TypeError("__await__() returned a coroutine")
    if not hasattr(ti, "__next__"):
        raise TypeError(f"__await__() returned non-iterator of type '{ti.__name__}'")
    return it


def await_(aw: Awaitable[T]) -> T:
    """Await *aw* from synchronous code running inside a portal.

    ``await_(aw)`` does what ``await aw`` does, but in a plain function: the
    function must run (at any depth) inside a task that has a portal, which
    every task of a greenback_loop event loop has.

    Raises:
        RuntimeError: there is no portal to suspend: no running event loop in
            this thread, no current task, or a task without a portal.
        TypeError: *aw* is not awaitable.
    """
    st = _state
    portal = st.current
    if portal is None:
        raise await_outside_portal(aw, False)
    runner = portal._runner
    g: greenlet | None = getcurrent()
    if g is not runner:
        assert g is not None
        g = g.parent
        while g is not runner:
            if g is None:
                raise await_outside_portal(aw, True)
            g = g.parent
    portal = runner = g = None

    mine = id(st.current)  # a tag: compared, never a reference
    it = _awaitable_iter(aw)
    send = getattr(it, "send", None)
    throw = False
    arg: Any = None
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
        arg = None
        portal = st.current
        if portal is None or id(portal) != mine:
            # We run outside our portal's step (a foreign switch resumed
            # us): there is no step to suspend; tell aw, and the caller.
            value = portal = None
            throw, arg = True, RuntimeError(_FOREIGN_SWITCH)
            continue
        st.msg = (_SUSPEND, value, getcurrent(), aw)
        st.msg_portal = mine
        value = None
        stepper = portal._stepper
        portal = None
        try:
            stepper.switch()  # type: ignore[union-attr]
        except BaseException as exc:  # killed, or thrown into by greenlet.throw
            throw, arg = True, exc
            continue
        finally:
            stepper = None
        job = st.job
        st.job = None
        portal = st.current
        if job is None or portal is None or id(portal) != mine:
            throw, arg = True, RuntimeError(_FOREIGN_SWITCH)
        else:
            throw, arg, _ = job
        portal = job = None


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


def _debug_runners_created() -> int:
    """How many runner greenlets this process has created (for tests)."""
    return _runners_created


def _calibrate() -> None:
    """Measure the references an unshared idle runner has at the check in
    ``Portal._step``: step a coroutine once through a fresh runner."""
    global _RUNNER_REFS
    if _getrefcount is None:
        return  # no reference counts (PyPy): runners stay with their portal

    measured: list[int] = []

    @types.coroutine
    def checkpoint() -> Generator[None, None, None]:
        yield None

    async def probe() -> None:
        await checkpoint()

    _RUNNER_REFS = sys.maxsize  # pool the probe's runner whatever its count
    portal = Portal(probe())
    portal.send(None)
    runner = _state.pool[-1]
    measured.append(_getrefcount(runner))  # pool + local + argument
    del runner
    # At the check the runner had: the local in _step, getrefcount's
    # argument, and whatever greenlet itself holds; here: the pool, the
    # local, the argument, and the same greenlet-held references.
    _RUNNER_REFS = measured[0]
    portal.close()


_calibrate()
