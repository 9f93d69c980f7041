"""Portals for Trio tasks.

A Trio task's coroutine is ``trio.lowlevel.Task.coro``, a public, writable
attribute: Trio reads it each time it schedules a step (``task.coro.send``,
or ``task.coro.throw`` after a foreign yield) and steps it in the task's
context. A portal is ``Portal(coro)`` put there. The portal passes Trio's
traps up and the outcomes Trio sends down untouched, as it passes asyncio's
futures, so nothing else of Trio needs to know.

* ``give_portal(task)`` swaps it in, from the task's next step on: a step
  Trio has already scheduled was bound to the old coroutine's method, and
  is rebound to the portal's (``Task._next_send_fn``, the one private name
  used here; without it the portal would start one step later).
* :class:`PortalInstrument` gives every task of a run its portal when it is
  spawned, before its first step; ``tree_portals()`` does so for the tasks
  spawned below one call (greenback's ``portals_for_children``), through
  one instrument per run kept in a RunVar.
* ``give_back()`` undoes a portal that ``portals_for_tree()`` installed,
  at its exit, as greenback's does.

This module imports Trio: the rest of the package imports it only once a
Trio task is running (or for ``greenback_loop.trio``).
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from . import _impl
from ._errors import is_portal
from ._greenback import ensure_hooked
from ._retrofit import awaited_directly_by, refuse_greenback_shim, trio_task_has_portal

checkpoint = trio.lowlevel.checkpoint
cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_Portal = _impl.core.Portal
_CoroutineType = types.CoroutineType


def _asyncgen_finalizer_code() -> Any:
    """The code of the coroutine Trio runs, in a system task, to close an
    async generator abandoned during the run (its cleanup is the user's
    code), or None if this Trio has no such thing."""
    try:
        from trio._core._asyncgens import AsyncGenerators

        return AsyncGenerators._finalize_one.__code__
    except (ImportError, AttributeError):
        return None


_ASYNCGEN_FINALIZER = _asyncgen_finalizer_code()


task_has_portal = trio_task_has_portal


def _root(task: Any) -> Any:
    while task.parent_nursery is not None:
        task = task.parent_nursery.parent_task
    return task


def give_portal(task: Any, what: str, *, check_run: bool = True) -> bool:
    """Make *task*'s coroutine a portal around it, from its next step on.

    Returns whether a portal was installed now (False: it had one, or its
    coroutine has finished).

    Raises:
        RuntimeError: *task* belongs to no Trio run of this thread, or its
            coroutine is no coroutine.
    """
    coro = task.coro
    if is_portal(coro):
        return False
    if getattr(coro, "cr_frame", True) is None:
        return False  # it finished: it never steps again
    refuse_greenback_shim(task.name, coro, what)
    if check_run:
        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            root = None
        if root is None or _root(task) is not root:
            raise RuntimeError(
                f"{what}: Trio task {task.name!r} belongs to a Trio run other than the "
                "one running in this thread (or to one that has finished); give it a "
                "portal from inside its own run"
            )
    try:
        portal = _impl.core.Portal(coro)
    except TypeError as exc:
        raise RuntimeError(
            f"{what}: Trio task {task.name!r} has no coroutine to give a portal to "
            f"(its coro is {type(coro).__name__})"
        ) from exc
    task.coro = portal
    portal._own()  # the task's coroutine now: closing it is the portal's
    _rebind_scheduled_step(task, coro, portal)
    return True


def _rebind_scheduled_step(task: Any, old: Any, new: Any) -> None:
    """A step Trio already scheduled calls ``old.send`` or ``old.throw``:
    make it call *new*'s instead."""
    fn = getattr(task, "_next_send_fn", None)
    if fn is not None and getattr(fn, "__self__", None) is old:
        name = getattr(fn, "__name__", None)
        if name in ("send", "throw"):
            task._next_send_fn = getattr(new, name)


async def give_back(task: Any, coro: Any, portal: Any) -> None:
    """Undo the portal *portal* around *coro*, which *task* got earlier in
    this run: from its next step Trio resumes *coro* directly. A
    schedule point, not a cancellation point. If the coroutine's frames
    still depend on the portal's greenlets (sync code it runs started a
    greenlet that is still alive), the portal stays."""
    if task.coro is not portal or not awaited_directly_by(coro):
        # gone already, or left from sync code through await_ (its greenlet
        # holds the coroutine's frames): the portal stays
        await cancel_shielded_checkpoint()
        return
    task.coro = coro
    try:
        await cancel_shielded_checkpoint()  # the step through the portal ends here
    finally:
        detached = portal._detach()
        if not detached:
            task.coro = portal
    if not detached:
        await cancel_shielded_checkpoint()  # back in the portal from the next step on


class PortalInstrument(trio.abc.Instrument):
    """A Trio instrument that gives tasks a portal when they are spawned,
    before their first step, so that sync code in them can call
    :func:`greenback_loop.await_` with no ``ensure_portal()``.

    Pass it to ``trio.run(..., instruments=[PortalInstrument()])`` (or a
    guest run's, or anyio's Trio backend's ``backend_options``, from anyio
    4.14 on): the main
    task gets a portal, and so does every task spawned by a task that has
    one. Trio's system tasks (and what they spawn) are left alone unless
    *system_tasks* is true; then every task of the run has one, the root
    task included. :func:`greenback_loop.trio.run` does all of this.
    """

    def __init__(self, *, system_tasks: bool = False) -> None:
        self.system_tasks = bool(system_tasks)
        # Root tasks of the runs this instrument was present from the start
        # of, whose main task (the first task a root spawns) is to come: per
        # run, so one instrument may serve runs in several threads at once.
        self._roots: weakref.WeakSet[Any] = weakref.WeakSet()
        ensure_hooked()  # greenback's own functions, if installed, see these portals

    @trio.lowlevel.enable_ki_protection
    def task_spawned(self, task: Any) -> None:
        # Trio disables an instrument that raises, for the rest of the run:
        # a task this cannot give a portal keeps none (its await_ says so).
        try:
            self._give(task)
        except Exception:
            pass

    def _give(self, task: Any) -> None:
        nursery = task.parent_nursery
        if nursery is None:  # the root task
            self._roots.add(task)
            if self.system_tasks:
                give_portal(task, "PortalInstrument", check_run=False)
            return
        parent = nursery.parent_task
        if type(parent.coro) is _Portal:
            # The common case, kept short (it runs for every task spawned):
            # a task just spawned has Trio's own coroutine, and no step
            # scheduled yet to rebind.
            coro = task.coro
            if type(coro) is _CoroutineType:
                task.coro = _Portal(coro)
            else:
                give_portal(task, "PortalInstrument", check_run=False)
        elif parent in self._roots:
            self._roots.discard(parent)  # this is the main task
            give_portal(task, "PortalInstrument", check_run=False)
        elif (
            self.system_tasks
            or is_portal(parent.coro)
            or getattr(task.coro, "cr_code", None) is _ASYNCGEN_FINALIZER is not None
        ):
            # (a system task closing an abandoned async generator runs the
            # generator's cleanup: user code, which may use await_ as await)
            give_portal(task, "PortalInstrument", check_run=False)


class _TreeInstrument(trio.abc.Instrument):
    """Gives portals to the tasks spawned below active tree_portals()
    calls: a task registered with depth d has its children spawned into
    its nurseries from the d-th open one on given a portal (and registered
    with depth 0, so theirs get one too)."""

    def __init__(self) -> None:
        self.depths: dict[Any, int] = {}
        self.users = 0

    @trio.lowlevel.enable_ki_protection
    def task_spawned(self, task: Any) -> None:
        try:  # never raise: Trio would disable the instrument (see above)
            self._give(task)
        except Exception:
            pass

    def _give(self, task: Any) -> None:
        nursery = task.parent_nursery
        if nursery is None:
            return
        parent = nursery.parent_task
        depth = self.depths.get(parent)
        if depth is None:
            return
        nurseries = parent.child_nurseries
        if nursery in nurseries and nurseries.index(nursery) >= depth:
            give_portal(task, "with_portal_run_tree()", check_run=False)
            self.depths[task] = 0

    def task_exited(self, task: Any) -> None:
        self.depths.pop(task, None)


_tree_instrument: trio.lowlevel.RunVar[_TreeInstrument | None] = trio.lowlevel.RunVar(
    "greenback_loop_tree", default=None
)


@contextmanager
def tree_portals(task: Any) -> Iterator[None]:
    """While active, the tasks *task* spawns into nurseries it opens from
    now on (and theirs, recursively) are given portals when spawned."""
    instrument = _tree_instrument.get()
    if instrument is None:
        instrument = _TreeInstrument()
        trio.lowlevel.add_instrument(instrument)
        _tree_instrument.set(instrument)
    depth = len(task.child_nurseries)
    previous = instrument.depths.get(task)
    instrument.depths[task] = depth if previous is None else min(previous, depth)
    instrument.users += 1
    try:
        yield
    finally:
        if previous is None:
            instrument.depths.pop(task, None)
        else:
            instrument.depths[task] = previous
        instrument.users -= 1
        if not instrument.users:
            _tree_instrument.set(None)
            trio.lowlevel.remove_instrument(instrument)
