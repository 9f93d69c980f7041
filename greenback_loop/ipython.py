"""An IPython extension: cells, and the synchronous code they call, can use
:func:`greenback_loop.await_`, in the terminal shell and in a Jupyter kernel.

Load it in a session::

    %load_ext greenback_loop.ipython

or for every session, in ``ipython_config.py`` (the terminal) or
``ipython_kernel_config.py`` (ipykernel), or on the command line
(``ipython --ext greenback_loop.ipython``)::

    c.InteractiveShellApp.extensions = ["greenback_loop.ipython"]

What it does depends on who runs the cells:

* The shell runs them itself (the terminal ``ipython``, an
  ``InteractiveShell`` driven by ``run_cell()``): it becomes the shell's
  ``loop_runner``, and every cell, with or without a top-level ``await``,
  runs as a task of one greenback_loop event loop kept for the session.
  (IPython's own runner puts only the cells that contain an ``await`` on a
  loop, a plain one, and runs the others with no loop at all.)
* The cells run on an event loop that is already running (a Jupyter
  kernel's): from then on, every task created on that loop gets a portal,
  through a task factory installed on the loop over the one it had. That
  covers the kernel's tasks for the cells after the one that loaded the
  extension, and the tasks the cells create; the task running the loading
  cell is given one too, with the C core (ipykernel 6 runs every cell
  without an ``await`` in that task). Loaded at the kernel's start, before its loop runs, it
  takes the loop the kernel is about to run, or, if there is none yet,
  makes a greenback_loop loop the one the kernel runs.

``%unload_ext greenback_loop.ipython`` undoes either.
"""

from __future__ import annotations

import asyncio
import contextvars
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from . import _impl
from ._api import bestow_portal
from ._greenback import ensure_hooked
from ._loop import is_portal_loop, new_event_loop, wrap

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


class PortalTaskFactory:
    """A task factory for an event loop that greenback_loop did not make:
    each task created on the loop gets a portal, then is made by the factory
    this one replaced (or as the loop makes tasks without one)."""

    __slots__ = ("active", "previous")

    def __init__(self, previous: Callable[..., Any] | None) -> None:
        self.previous = previous
        self.active = True

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if self.active:
            coro = wrap(coro)
        if self.previous is not None:
            return self.previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)


class CellRunner:
    """The shell's ``loop_runner``: runs each cell as a task of one
    greenback_loop event loop, in one context kept for the session (so
    context variables set in a cell stay set, as they do in IPython's cells
    that run without a loop)."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner(loop_factory=new_event_loop)
        self._context = contextvars.copy_context()
        self._close_after_cell = False

    def __str__(self) -> str:  # what %autoawait prints
        return "greenback_loop"

    def __call__(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if asyncio._get_running_loop() is not None:
            # A cell run from inside a cell (%paste, %rerun, a macro,
            # get_ipython().run_cell()): it runs in the outer cell's task.
            return _impl.core.await_(coro)
        loop = self._runner.get_loop()
        task = loop.create_task(coro, context=self._context)
        try:
            return self._run(loop, task)
        finally:
            if self._close_after_cell:
                self._runner.close()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> Any:
        try:
            return loop.run_until_complete(task)
        except BaseException as exc:
            if task.done():
                raise
            interrupt = exc
        # Ctrl-C (or an exception of another task or callback) stopped the
        # loop while the cell waited: cancel the cell and let it unwind,
        # instead of leaving it to resume in a later cell.
        task.cancel(f"interrupted by {type(interrupt).__name__}")
        try:
            outcome = loop.run_until_complete(task)
        except BaseException:
            raise interrupt from None
        if isinstance(interrupt, KeyboardInterrupt):
            return outcome  # IPython has shown the cell's CancelledError
        raise interrupt

    def close(self) -> None:
        """Cancel the tasks still on the loop, let them unwind, and close
        it, as :func:`asyncio.run` does at its end; from inside a cell
        (``%unload_ext``), once the cell has ended."""
        try:
            running = self._runner.get_loop().is_running()
        except RuntimeError:  # closed already
            return
        if running:
            self._close_after_cell = True
        else:
            self._runner.close()


def _kernel_loop() -> asyncio.AbstractEventLoop:
    """At a kernel's start (the extension named in its configuration), before
    its event loop runs: the loop it will run its cells on, which is this
    thread's current loop (ipykernel takes it through tornado's
    ``IOLoop.current()``). If there is none yet, a new greenback_loop loop,
    made current, will be that loop."""
    with warnings.catch_warnings():
        # 3.12 and 3.13 warn where they would make one; 3.14+ raise
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return asyncio.get_event_loop()
        except (RuntimeError, DeprecationWarning):
            pass
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


class _OnLoop:
    """The extension on a loop that runs the cells (a kernel's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.factory: PortalTaskFactory | None = None
        if is_portal_loop(loop):  # every task has a portal already
            return
        self.factory = PortalTaskFactory(loop.get_task_factory())
        loop.set_task_factory(self.factory)
        task = asyncio.current_task(loop) if loop is asyncio._get_running_loop() else None
        if task is not None:
            # Loaded from a cell: the task running it may run later cells too
            # (ipykernel 6 runs every cell without a top-level await in one
            # task, made at its start). With the pure-Python core a C Task
            # cannot be given one; those cells' await_() then says so.
            try:
                bestow_portal(task)
            except RuntimeError:
                pass

    def uninstall(self) -> None:
        factory = self.factory
        if factory is None:
            return
        factory.active = False  # if another factory was put over it, it stays, inert
        previous = factory.previous
        if not self.loop.is_closed() and self.loop.get_task_factory() is factory:
            self.loop.set_task_factory(previous)


class _InShell:
    """The extension in a shell that runs its cells itself (the terminal)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.runner = CellRunner()
        self.previous_runner = shell.loop_runner
        self.previous_autoawait = shell.autoawait
        self.previous_should_run_async = shell.__dict__.get("should_run_async")
        original = shell.should_run_async
        runner = self.runner

        def should_run_async(
            raw_cell: str,
            *,
            transformed_cell: str | None = None,
            preprocessing_exc_tuple: Any = None,
        ) -> bool:
            """Every cell runs on the loop while this runner is the shell's
            (IPython's own test only sends the cells that contain an await)."""
            if shell.loop_runner is runner and shell.autoawait and preprocessing_exc_tuple is None:
                return True
            return bool(
                original(
                    raw_cell,
                    transformed_cell=transformed_cell,
                    preprocessing_exc_tuple=preprocessing_exc_tuple,
                )
            )

        self.should_run_async = should_run_async
        shell.loop_runner = runner
        shell.autoawait = True
        shell.should_run_async = should_run_async

    def uninstall(self) -> None:
        shell = self.shell
        if shell.__dict__.get("should_run_async") is self.should_run_async:
            if self.previous_should_run_async is None:
                del shell.should_run_async
            else:
                shell.should_run_async = self.previous_should_run_async
        if shell.loop_runner is self.runner:
            shell.loop_runner = self.previous_runner
            shell.autoawait = self.previous_autoawait
        self.runner.close()


#: The attribute of a shell that holds what the extension did to it.
_STATE = "_greenback_loop_extension"


def load_ipython_extension(shell: Any) -> None:
    """Let the cells of *shell* (an IPython ``InteractiveShell``) and the
    synchronous code they call use :func:`greenback_loop.await_`; called by
    ``%load_ext greenback_loop.ipython`` (again: nothing more happens).

    In a shell that runs its cells itself, this also turns IPython's
    ``autoawait`` on, as ``%autoawait`` with a runner does.
    """
    if getattr(shell, _STATE, None) is not None:
        return
    ensure_hooked()  # greenback's own functions, if installed, see our portals
    loop = asyncio._get_running_loop()
    state: _OnLoop | _InShell
    if getattr(shell, "kernel", None) is not None:  # ipykernel's shell
        state = _OnLoop(loop or _kernel_loop())
    elif loop is not None and not is_portal_loop(loop):
        # a program that runs the shell's cells on its own loop, as a kernel does
        state = _OnLoop(loop)
    else:
        # the shell runs its cells itself (from a cell of a shell that runs
        # them on a greenback_loop loop already: %reload_ext)
        state = _InShell(shell)
    setattr(shell, _STATE, state)


def unload_ipython_extension(shell: Any) -> None:
    """Undo :func:`load_ipython_extension`; called by ``%unload_ext
    greenback_loop.ipython``. In the terminal, the tasks still on the
    extension's loop are cancelled and the loop is closed."""
    state = getattr(shell, _STATE, None)
    if state is not None:
        setattr(shell, _STATE, None)
        state.uninstall()
