"""``python -m greenback_loop``: run an unchanged program, or an asyncio
REPL, with a portal in every task.

The program's own ``asyncio.run()``, ``asyncio.Runner``,
``asyncio.new_event_loop()`` and ``asyncio.get_event_loop()`` make their
loops through the event loop policy, so installing
:class:`greenback_loop.GreenbackPolicy` before the program starts is all it
takes (asyncio deprecates ``set_event_loop_policy`` from 3.14: that one
warning, of our one call, is silenced). Everything else is about running the
program exactly as ``python`` would: its own ``__main__`` module,
``sys.argv``, ``sys.path[0]``, its tracebacks without our frames on top, and
python's exit status (1 for an uncaught exception, death by SIGINT for an
uncaught ``KeyboardInterrupt``, a ``SystemExit`` code as it is). For ``-m``
and for directories and zip files this is ``runpy._run_module_as_main``, the
function python's own ``-m`` calls.

The REPL follows ``python -m asyncio``'s design: the loop runs in the main
thread (so Ctrl-C reaches the running statement and signal handlers work),
the prompt in a daemon thread; each statement runs as a task of the loop,
so top-level ``await`` works and so does ``await_()`` in synchronous code it
calls.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import builtins
import code
import concurrent.futures
import contextvars
import importlib.machinery
import inspect
import linecache
import os
import pkgutil
import platform
import runpy
import sys
import threading
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, NoReturn

import greenback_loop

from ._loop import new_event_loop, policy_class

PROG = "python -m greenback_loop"

_USAGE = f"{PROG} [--uvloop] [script | -m module | -c command | -] [args ...]"

_DESCRIPTION = """\
Run a Python program, unchanged, so that synchronous code in any of its
asyncio tasks can call greenback_loop.await_(awaitable). The program's own
asyncio.run(), asyncio.Runner, asyncio.new_event_loop() and (where Python
still allows it) asyncio.get_event_loop() make greenback_loop event loops,
whose every task has a portal.

With no program: an asyncio REPL. Top-level "await" works, and so does
greenback_loop.await_() in synchronous functions called at the prompt."""

_EPILOG = f"""\
the program:
  script        a Python file, as in `python script.py` (or a directory or
                zip file with a __main__.py)
  -m module     a module, as in `python -m module`
  -c command    a string of code, as in `python -c command`
  -             the program read from standard input
  args ...      the program's sys.argv[1:]. Everything after the script,
                module or command goes to the program unread, options
                included: put this command's options before it.

sys.argv, __main__, sys.path[0], tracebacks and the exit status are what
plain `python` gives. A program that sets its own event loop policy, or
passes its own loop_factory, gets the loops it asks for: those have no
portals.

examples:
  {PROG} app.py --port 8080
  {PROG} --uvloop -m mypackage.server
  {PROG}               (the REPL; Ctrl-D exits)
"""


def _version() -> str:
    return (
        f"greenback_loop {greenback_loop.__version__} "
        f"({greenback_loop.implementation} core, Python {platform.python_version()})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=_USAGE,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run the program's event loops over uvloop (pip install 'greenback_loop[uvloop]')",
    )
    return parser


class Target(NamedTuple):
    """What to run: *kind* is ``"script"``, ``"module"``, ``"command"`` or
    ``"stdin"``; *args* become ``sys.argv[1:]``."""

    kind: str
    name: str
    args: list[str]


def split_argv(
    argv: Sequence[str], parser: argparse.ArgumentParser
) -> tuple[list[str], Target | None]:
    """Split *argv* as python splits its own: this command's options, then
    the program (the first argument that is not an option, ``-``, or
    ``-m``/``-c`` with its value) and everything after it, unread."""
    ours: list[str] = []
    for i, arg in enumerate(argv):
        rest = list(argv[i + 1 :])
        if arg == "--":
            if not rest:
                return ours, None
            return ours, Target("script", rest[0], rest[1:])
        if arg == "-":
            return ours, Target("stdin", arg, rest)
        if arg[:2] in ("-m", "-c") and not arg.startswith("--"):
            kind = "module" if arg[1] == "m" else "command"
            if len(arg) > 2:  # -mpackage.module, as python accepts
                return ours, Target(kind, arg[2:], rest)
            if not rest:
                parser.error(f"argument {arg}: expected one argument")
            return ours, Target(kind, rest[0], rest[1:])
        if arg.startswith("-"):
            ours.append(arg)
            continue
        return ours, Target("script", arg, rest)
    return ours, None


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``python -m greenback_loop`` with *argv* (``sys.argv[1:]`` by
    default): parse this command's options, install the policy, then run
    the program or the REPL. Returns when the program ends normally; an
    uncaught exception, ``SystemExit`` or ``KeyboardInterrupt`` ends the
    process as python would end it."""
    parser = _parser()
    ours, target = split_argv(sys.argv[1:] if argv is None else argv, parser)
    options = parser.parse_args(ours)
    use_uvloop: bool = options.uvloop
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error(
                "--uvloop needs uvloop, which is not installed: "
                "pip install 'greenback_loop[uvloop]'"
            )
    main_has_annotations = "__annotations__" in vars(sys.modules["__main__"])
    install_policy(use_uvloop)
    if target is None:
        repl(use_uvloop, main_has_annotations, [""])
        return
    if target.kind == "stdin" and sys.stdin.isatty():  # python -: interactive then
        repl(use_uvloop, main_has_annotations, ["-", *target.args])
        return
    run_target(target, main_has_annotations)


# -- the policy ---------------------------------------------------------------


def install_policy(use_uvloop: bool) -> None:
    """Make greenback_loop's policy asyncio's, so that the program's loops
    have portals, without the warning asyncio gives for this call on 3.14
    and 3.15 (and only that warning, of only this call)."""
    try:
        policy = policy_class()(uvloop=use_uvloop)
    except AttributeError as exc:  # pragma: no cover - Python 3.16+
        sys.exit(f"{PROG}: {exc}")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"'asyncio\.set_event_loop_policy' is deprecated",
            category=DeprecationWarning,
        )
        asyncio.set_event_loop_policy(policy)


# -- running a program as python would ---------------------------------------


#: Before 3.15, python sets ``__cached__`` (to None) in a script's ``__main__``.
_CACHED: dict[str, Any] = {"__cached__": None} if sys.version_info < (3, 15) else {}


def _interpreter_name() -> str:
    """The interpreter's name as typed, which python's own messages use."""
    return sys.orig_argv[0] if sys.orig_argv else sys.executable


def _set_path0(entry: str, *, always: bool = False) -> None:
    """Put *entry* where python puts the program's ``sys.path[0]``. Under
    ``python -m greenback_loop``, python put the working directory there
    (unless ``-P``/``PYTHONSAFEPATH``): the program's entry replaces it."""
    if not sys.flags.safe_path:
        sys.path[0] = entry
    elif always:
        sys.path.insert(0, entry)


def fresh_main(has_annotations: bool, **attrs: Any) -> dict[str, Any]:
    """Install a new ``__main__`` module, with what python's starts with and
    *attrs*, and return its namespace."""
    module = types.ModuleType("__main__")
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    if has_annotations:  # the interpreter gives __main__ one before 3.14
        namespace["__annotations__"] = {}
    namespace.update(attrs)
    sys.modules["__main__"] = module
    return namespace


def run_target(target: Target, main_has_annotations: bool) -> None:
    """Run *target* as python runs a program; see :func:`main`."""
    builtin_loader = importlib.machinery.BuiltinImporter
    if target.kind == "module":
        sys.argv[:] = ["-m", *target.args]  # python's argv while it finds the module
        fresh_main(main_has_annotations, __loader__=builtin_loader)
        _run_reporting(partial(_run_module, target.name))
        return
    if target.kind == "command":
        sys.argv[:] = ["-c", *target.args]
        _set_path0("")
        namespace = fresh_main(main_has_annotations, __loader__=builtin_loader)
        _run_reporting(partial(_exec, target.name, "<string>", namespace, register=True))
        return
    if target.kind == "stdin":
        sys.argv[:] = ["-", *target.args]
        _set_path0("")
        namespace = fresh_main(
            main_has_annotations, __file__="<stdin>", __loader__=builtin_loader, **_CACHED
        )
        source = sys.stdin.buffer.read()
        _run_reporting(partial(_exec, source, "<stdin>", namespace))
        return
    _run_script(target, main_has_annotations)


def _run_script(target: Target, main_has_annotations: bool) -> None:
    path = target.name
    # python makes the name absolute without normalizing it (sub/../x.py stays)
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    sys.argv[:] = [path, *target.args]
    if pkgutil.get_importer(full) is not None:  # a directory or zip file
        _set_path0(full, always=True)
        fresh_main(main_has_annotations, __loader__=importlib.machinery.BuiltinImporter)
        _run_reporting(partial(_run_module, "__main__", alter_argv=False))
        return
    try:
        with open(full, "rb") as file:
            source = file.read()
    except OSError as exc:
        print(
            f"{_interpreter_name()}: can't open file {full!r}: [Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    _set_path0(os.path.dirname(os.path.realpath(full)))
    namespace = fresh_main(
        main_has_annotations,
        __file__=full,
        **_CACHED,
        __loader__=importlib.machinery.SourceFileLoader("__main__", full),
    )
    _run_reporting(partial(_exec, source, full, namespace))


def _exec(
    source: str | bytes, filename: str, namespace: dict[str, Any], register: bool = False
) -> None:
    program = compile(source, filename, "exec", dont_inherit=True)
    if register and isinstance(source, str):
        _register_source(program, source, filename)
    exec(program, namespace)


def _register_source(program: types.CodeType, source: str, filename: str) -> None:
    """Give linecache the ``-c`` source as python does from 3.13 on, so
    tracebacks (and, on 3.13, warnings) show its lines."""
    if sys.version_info >= (3, 14):  # by code object, as python calls it
        register_code = getattr(linecache, "_register_code", None)
        if register_code is not None:
            register_code(program, source, filename)
    elif sys.version_info >= (3, 13):  # by file name
        lines = [line + "\n" for line in source.splitlines()]
        linecache.cache[filename] = (len(source), None, lines, filename)


def _run_module(name: str, alter_argv: bool = True) -> None:
    # What python's -m calls: it runs in the __main__ module installed above,
    # reports a module it cannot find as python does, and gives tracebacks
    # the same two runpy frames on top as python -m gives.
    run_as_main = getattr(runpy, "_run_module_as_main", None)
    if run_as_main is None:  # pragma: no cover - CPython 3.11-3.15 all have it
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    else:
        run_as_main(name, alter_argv)


def _strip_our_frames(exc: BaseException) -> types.TracebackType | None:
    """Drop this module's frames from the top of *exc*'s traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    exc.__traceback__ = tb
    return tb


def _set_last(exc: BaseException, tb: types.TracebackType | None) -> None:
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc


def _run_reporting(run: Callable[[], None]) -> None:
    """Run the program; end the process as python ends it if it raises."""
    try:
        run()
    except SystemExit:
        raise  # python reports it (prints a non-integer code) and exits with it
    except BaseException as exc:
        uncaught = exc
    else:
        return
    # Out of the except clause: the excepthook runs with no exception being
    # handled, as python calls it (an error in the hook has no context).
    report_uncaught(uncaught)
    exit_after_uncaught(uncaught)


def report_uncaught(exc: BaseException) -> None:
    """Print *exc* as python prints an uncaught exception: through
    ``sys.excepthook`` (the program may have set its own), with no frame of
    ours on top, setting ``sys.last_*`` first."""
    tb = _strip_our_frames(exc)
    _set_last(exc, tb)
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        print("sys.excepthook is missing", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, tb)
        return
    try:
        hook(type(exc), exc, tb)
    except SystemExit:
        raise
    except BaseException as hook_exc:
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_exc), hook_exc, _strip_our_frames(hook_exc))
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, tb)


def exit_after_uncaught(exc: BaseException) -> NoReturn:
    """End the process as python does after printing *exc*: status 1, or,
    for ``KeyboardInterrupt``, death by SIGINT once the interpreter has shut
    down (atexit handlers run first). For the latter, *exc* is raised again
    out of ``python -m``'s own machinery, which does exactly that; the
    excepthook it calls is a one-shot no-op (the exception was printed)
    that puts the program's hook and the stripped traceback back."""
    if isinstance(exc, KeyboardInterrupt):
        program_hook = sys.excepthook
        tb = exc.__traceback__

        def already_reported(*args: object) -> None:
            sys.excepthook = program_hook
            exc.__traceback__ = tb
            _set_last(exc, tb)

        sys.excepthook = already_reported
        raise exc
    raise SystemExit(1) from None


# -- the REPL ------------------------------------------------------------------


class _Interrupted:
    """The outcome of a statement cancelled by Ctrl-C."""


_INTERRUPTED = _Interrupted()

Outcome = BaseException | _Interrupted | None


class Console(code.InteractiveConsole):
    """An interactive console whose statements run, one at a time, as tasks
    of *loop* (running in the main thread) while the prompt runs in another
    thread. Each statement's task runs in one context kept for the session,
    so context variables set at the prompt persist."""

    def __init__(self, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(namespace, filename="<stdin>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.namespace = namespace
        self.loop = loop
        self.context = contextvars.copy_context()
        self.statement: asyncio.Task[None] | None = None  # touched in the loop's thread
        self.interrupted = False
        self.exit_code: object = None
        self.exiting = False

    # The prompt's thread.

    def serve(self, banner: str) -> None:
        """Read and run statements until EOF, ``exit()`` or ``SystemExit``,
        then stop the loop."""
        try:
            self.write(banner)
            self._run_startup_file()
            if not hasattr(sys, "ps1"):
                sys.ps1 = ">>> "
            if not hasattr(sys, "ps2"):
                sys.ps2 = "... "
            more = False
            while not self.exiting:
                try:
                    line = self.raw_input(str(sys.ps2 if more else sys.ps1))
                except EOFError:
                    self.write("\n")
                    break
                more = self.push(line)
        finally:
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # the loop is closed: the program is ending
                pass

    def _run_startup_file(self) -> None:
        path = None if sys.flags.ignore_environment else os.environ.get("PYTHONSTARTUP")
        if not path:
            return
        try:
            with open(path, "rb") as file:
                startup = compile(
                    file.read(),
                    path,
                    "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                    dont_inherit=True,
                )
        except Exception as exc:
            self._show(exc)
            return
        self.runcode(startup)

    def runcode(self, code: types.CodeType) -> None:
        """Run one compiled statement as a task of the loop and show how it
        ended."""
        done: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(self._start, code, done)
        except RuntimeError:  # the loop is closed
            self.exiting = True
            return
        outcome = done.result()
        if isinstance(outcome, SystemExit):
            self.exit_code = outcome.code
            self.exiting = True
        elif isinstance(outcome, _Interrupted):
            self.write("\nKeyboardInterrupt\n")
        elif outcome is not None:
            self._show(outcome)

    def _show(self, exc: BaseException) -> None:
        tb = _strip_our_frames(exc)
        _set_last(exc, tb)
        if sys.excepthook is sys.__excepthook__:
            self.write("".join(traceback.format_exception(type(exc), exc, tb)))
            return
        try:
            sys.excepthook(type(exc), exc, tb)
        except BaseException as hook_exc:
            self.write("Error in sys.excepthook:\n")
            self.write("".join(traceback.format_exception(hook_exc)))
            self.write("\nOriginal exception was:\n")
            self.write("".join(traceback.format_exception(type(exc), exc, tb)))

    # The loop's thread.

    def _start(self, code: types.CodeType, done: concurrent.futures.Future[Outcome]) -> None:
        self.interrupted = False
        try:
            self.statement = self.loop.create_task(
                self._statement(code, done), context=self.context
            )
        except BaseException as exc:
            done.set_result(exc)

    async def _statement(
        self, code: types.CodeType, done: concurrent.futures.Future[Outcome]
    ) -> None:
        # Calling the function runs the statement in this task (a coroutine
        # when it has a top-level await), so its synchronous code has the
        # task's portal. Every ending goes to the prompt, none to the loop.
        outcome: Outcome = None
        try:
            result = types.FunctionType(code, self.namespace)()
            if inspect.iscoroutine(result):
                await result
        except GeneratorExit:
            raise
        except asyncio.CancelledError as exc:
            outcome = _INTERRUPTED if self.interrupted else exc
        except BaseException as exc:
            outcome = exc
        finally:
            self.statement = None
            done.set_result(outcome)

    def interrupt(self) -> None:
        """Ctrl-C: cancel the running statement, if there is one (at the
        prompt there is nothing to interrupt, as in ``python -m asyncio``)."""
        task = self.statement
        if task is not None and not task.done():
            self.interrupted = True
            task.cancel()


def _setup_readline(namespace: dict[str, Any]) -> None:
    if not sys.stdin.isatty():
        return
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    readline.set_completer(rlcompleter.Completer(namespace).complete)
    if "libedit" in (readline.__doc__ or ""):  # pragma: no cover - macOS
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")


def repl(use_uvloop: bool, main_has_annotations: bool, argv: list[str]) -> None:
    """The asyncio REPL with portals; see :class:`Console`. Exits with the
    code of a ``SystemExit`` raised at the prompt (``exit()``,
    ``sys.exit(n)``); on EOF returns. What the session left running is
    cancelled and the loop closed, as ``asyncio.run()`` does."""
    sys.argv[:] = argv
    _set_path0("")
    namespace = fresh_main(main_has_annotations, __loader__=importlib.machinery.BuiltinImporter)
    namespace.update(asyncio=asyncio, greenback_loop=greenback_loop)
    _setup_readline(namespace)
    loop_name = "uvloop" if use_uvloop else "asyncio"
    banner = (
        f"greenback_loop {greenback_loop.__version__} REPL on {loop_name} "
        f"({greenback_loop.implementation} core), Python {sys.version} on {sys.platform}\n"
        'Use "await" directly, and greenback_loop.await_() in synchronous code:\n'
        "every statement runs in a task with a portal. Ctrl-D exits.\n"
        f"{getattr(sys, 'ps1', '>>> ')}import asyncio, greenback_loop\n"
    )
    with asyncio.Runner(loop_factory=partial(new_event_loop, uvloop=use_uvloop)) as runner:
        loop = runner.get_loop()
        asyncio.set_event_loop(loop)
        console = Console(namespace, loop)
        prompt = threading.Thread(
            target=console.serve, args=(banner,), name="greenback_loop REPL", daemon=True
        )
        prompt.start()
        try:
            while True:
                try:
                    loop.run_forever()
                except KeyboardInterrupt:
                    console.interrupt()
                else:
                    break
        finally:
            asyncio.set_event_loop(None)
    if console.exit_code is not None:
        raise SystemExit(console.exit_code)
