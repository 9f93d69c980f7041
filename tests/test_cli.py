"""``python -m greenback_loop``: unchanged programs get portals, and run as
``python`` runs them; the REPL, driven through a pseudo-terminal.

Every case runs in a child process (``sys.executable -m greenback_loop``);
the child's core is chosen by its environment (``core``: the C core, or the
twin with GREENBACK_LOOP_NO_EXTENSIONS=1), so these tests cover both cores
themselves and are marked ``once``. Parity cases run the same program under
plain ``python`` and compare the two runs' outputs.
"""

from __future__ import annotations

import os
import platform
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import greenback_loop

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = str(ROOT / "greenback_loop")
TIMEOUT = 60


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> str:
    """The portal core of the child process."""
    if request.param == "c" and platform.python_implementation() != "CPython":
        pytest.skip("the C core is CPython's")
    return request.param  # type: ignore[no-any-return]


def child_env(core: str = "c", **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    env.pop("PYTHONSTARTUP", None)
    if core == "python":
        env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(
    cmd: list[str], cwd: Path, core: str = "c", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=child_env(core),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ours(
    *args: str, cwd: Path, core: str = "c", stdin: str | None = None, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, *flags, "-m", "greenback_loop", *args], cwd, core, stdin)


def plain(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, *args], cwd, stdin=stdin)


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def loop_flags(loop_kind: str) -> list[str]:
    return ["--uvloop"] if loop_kind == "uvloop" else []


# -- unchanged programs get portals ------------------------------------------

PORTALS_PROGRAM = """\
    import asyncio, sys, warnings
    import greenback_loop

    def legacy(n):                      # sync code, calling async code
        return greenback_loop.await_(asyncio.sleep(0, n * 10))

    async def child(n):
        return legacy(n)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(child(1))
        gathered = await asyncio.gather(child(2), child(3))
        return [legacy(0), await task, *gathered], type(loop).__module__

    if sys.version_info < (3, 14):      # 3.14 no longer makes a loop here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop()
        print("get_event_loop", *loop.run_until_complete(main()))
        loop.close()
    else:
        print("get_event_loop", *asyncio.run(main()))
    print("run", *asyncio.run(main()))
    with asyncio.Runner() as runner:
        print("runner", *runner.run(main()))
    loop = asyncio.new_event_loop()
    print("run_until_complete", *loop.run_until_complete(main()))
    loop.close()
    import uvloop
    loop = asyncio.new_event_loop()
    print("uvloop-based", isinstance(loop, uvloop.Loop), greenback_loop.implementation)
    loop.close()
    print(__name__, sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_program_gets_portals(tmp_path: Path, core: str, loop_kind: str, how: str) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "main.py", PORTALS_PROGRAM)
    target = ["app/main.py"] if how == "script" else ["-m", "app.main"]
    # -W error: asyncio's deprecation of the policy call (3.14+) is ours to silence.
    proc = ours(
        *loop_flags(loop_kind),
        *target,
        "a",
        "--uvloop",
        cwd=tmp_path,
        core=core,
        flags=("-W", "error"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    module = "greenback_loop.uvloop" if loop_kind == "uvloop" else "greenback_loop._loop"
    results = f"[0, 10, 20, 30] {module}"
    assert proc.stdout.splitlines() == [
        f"get_event_loop {results}",
        f"run {results}",
        f"runner {results}",
        f"run_until_complete {results}",
        f"uvloop-based {loop_kind == 'uvloop'} {core}",
        "__main__ ['a', '--uvloop']",  # options after the program are the program's
    ]


def test_programs_own_loops_are_theirs(tmp_path: Path) -> None:
    # A program that sets its own policy or passes its own loop factory gets
    # the loops it asks for (no portals there); its own GreenbackPolicy works.
    write(
        tmp_path / "own.py",
        """\
        import asyncio, warnings
        import greenback_loop

        def legacy():
            try:
                return greenback_loop.await_(asyncio.sleep(0, "portal"))
            except RuntimeError:
                return "no portal"

        async def main():
            return legacy(), type(asyncio.get_running_loop()).__name__

        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            print("loop_factory", *runner.run(main()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(greenback_loop.GreenbackPolicy(uvloop=True))
        print("own GreenbackPolicy", *asyncio.run(main()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(None)
        print("default policy", *asyncio.run(main()))
        """,
    )
    proc = ours("own.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "loop_factory no portal _UnixSelectorEventLoop",
        "own GreenbackPolicy portal Loop",
        "default policy no portal _UnixSelectorEventLoop",
    ]


# -- as python runs it ----------------------------------------------------------

SHOW_MAIN = """\
    '''The docstring.'''
    import sys
    print("argv", sys.argv)
    print("path", sys.path)
    print("file", globals().get("__file__"))
    print("name", __name__, "package", __package__, "doc", __doc__)
    print("spec", getattr(__spec__, "name", None), "cached", globals().get("__cached__", "-"))
    print("loader", type(__loader__).__name__, getattr(__loader__, "name", None))
    print("globals", sorted(globals()))
    print("main", sys.modules["__main__"].__dict__ is globals())
    import warnings
    print("filters", warnings.filters)
    warnings.warn("shown for __main__ by default", DeprecationWarning)
"""


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    write(tmp_path / "sub" / "show.py", SHOW_MAIN)
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "show.py", SHOW_MAIN)
    write(tmp_path / "pkg" / "__main__.py", SHOW_MAIN)
    write(tmp_path / "zipped" / "__main__.py", SHOW_MAIN)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as archive:
        archive.writestr("__main__.py", textwrap.dedent(SHOW_MAIN))
    (tmp_path / "link.py").symlink_to(tmp_path / "sub" / "show.py")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["sub/show.py", "a", "-b", "--help"],
        ["sub/../sub/show.py"],
        ["link.py", "x"],  # sys.path[0] is the real file's folder, __file__ the link
        ["-m", "pkg.show", "-m", "x"],
        ["-mpkg.show"],
        ["-m", "pkg"],  # a package's __main__
        ["zipped", "y"],  # a directory with __main__.py
        ["app.zip"],
        ["-c", SHOW_MAIN.replace("    ", "").replace("'''The docstring.'''", ""), "z"],
        ["-", "w"],
    ],
    ids=[
        "script",
        "relative",
        "symlink",
        "module",
        "module-attached",
        "package",
        "dir",
        "zip",
        "c",
        "stdin",
    ],
)
def test_main_module_argv_and_path_as_python(programs: Path, args: list[str]) -> None:
    stdin = textwrap.dedent(SHOW_MAIN) if args[0] == "-" else None
    expected = plain(*args, cwd=programs, stdin=stdin)
    got = ours(*args, cwd=programs, stdin=stdin)
    assert expected.returncode == 0, expected.stderr
    assert "DeprecationWarning: shown for __main__ by default" in expected.stderr
    assert (got.returncode, got.stdout, got.stderr) == (0, expected.stdout, expected.stderr)


def test_safe_path_as_python(programs: Path) -> None:
    for args in (["sub/show.py"], ["zipped"], ["-m", "pkg.show"]):
        expected = plain("-P", *args, cwd=programs)
        got = ours(*args, cwd=programs, flags=("-P",))
        assert (got.returncode, got.stdout, got.stderr) == (
            expected.returncode,
            expected.stdout,
            expected.stderr,
        )
    assert "No module named 'pkg'" in got.stderr  # -P: no working directory for -m


EXITS = {
    "code": "import sys\nsys.exit(3)\n",
    "message": "import sys\nsys.exit('stopped: bad input')\n",
    "none": "raise SystemExit\n",
    "error": "def f():\n    raise ValueError('boom')\nf()\n",
    "syntax": "def (:\n",
    "keyboard": "import atexit\natexit.register(print, 'atexit ran')\nraise KeyboardInterrupt\n",
    "chained": "try:\n    1/0\nexcept ZeroDivisionError:\n    raise LookupError('x')\n",
    "hook": (
        "import sys\n"
        "def hook(t, v, tb):\n"
        "    print('hook', t.__name__, sys.exc_info()[0], tb.tb_frame.f_code.co_name)\n"
        "sys.excepthook = hook\n"
        "1/0\n"
    ),
}


@pytest.mark.parametrize(
    ("case", "how"),
    [(case, how) for case in sorted(EXITS) for how in ("script", "module")]
    + [(case, how) for case in ("error", "keyboard", "syntax") for how in ("c", "stdin")],
)
def test_exit_status_and_traceback_as_python(tmp_path: Path, case: str, how: str) -> None:
    write(tmp_path / "prog" / "__init__.py", "")
    write(tmp_path / "prog" / "main.py", EXITS[case])
    target = {
        "script": ["prog/main.py"],
        "module": ["-m", "prog.main"],
        "c": ["-c", EXITS[case]],
        "stdin": ["-"],
    }[how]
    stdin = EXITS[case] if how == "stdin" else None
    expected = plain(*target, cwd=tmp_path, stdin=stdin)
    got = ours(*target, cwd=tmp_path, stdin=stdin)
    assert (got.returncode, got.stdout, got.stderr) == (
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
    if case == "keyboard":
        assert got.returncode == -signal.SIGINT  # killed by SIGINT, as python
        assert got.stdout == "atexit ran\n"


ASYNC_ERROR = """\
    import asyncio
    import greenback_loop

    def legacy():
        greenback_loop.await_(asyncio.sleep(0))
        raise ValueError("boom")

    async def main():
        legacy()

    asyncio.run(main())
"""

ASYNC_ERROR_PLAIN = ASYNC_ERROR.replace("greenback_loop.await_(asyncio.sleep(0))", "pass    ")


def traceback_entries(stderr: str) -> list[str]:
    """The traceback's entries ("File ..." line with its source lines) and
    its other lines, each one string."""
    entries: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("    ") and entries and entries[-1].startswith("  File "):
            entries[-1] += "\n" + line
        else:
            entries.append(line)
    return entries


def without_loop_internals(stderr: str) -> list[str]:
    """The entries that are the same on any loop and core: all but the
    portal core's and the event loop's own frames."""
    return [
        entry
        for entry in traceback_entries(stderr)
        if PACKAGE_DIR not in entry
        and "uvloop/loop.pyx" not in entry
        and "asyncio/base_events.py" not in entry
    ]


@pytest.mark.parametrize("how", ["script", "module"])
def test_uncaught_exception_in_a_task_as_python(
    tmp_path: Path, core: str, loop_kind: str, how: str
) -> None:
    write(tmp_path / "prog" / "__init__.py", "")
    # The same lines, the same line numbers: one calls await_ before raising.
    write(tmp_path / "prog" / "main.py", ASYNC_ERROR)
    write(tmp_path / "ref" / "__init__.py", "")
    write(tmp_path / "ref" / "main.py", ASYNC_ERROR_PLAIN)
    target = ["prog/main.py"] if how == "script" else ["-m", "prog.main"]
    reference = ["ref/main.py"] if how == "script" else ["-m", "ref.main"]
    expected = plain(*reference, cwd=tmp_path)
    got = ours(*loop_flags(loop_kind), *target, cwd=tmp_path, core=core)
    assert got.returncode == expected.returncode == 1
    expected_entries = traceback_entries(expected.stderr.replace("ref", "prog"))
    got_entries = traceback_entries(got.stderr)
    assert got_entries[0] == "Traceback (most recent call last):"
    assert got_entries[-1] == expected_entries[-1] == "ValueError: boom"
    assert without_loop_internals(got.stderr) == without_loop_internals(
        expected.stderr.replace("ref", "prog")
    )
    assert "_cli.py" not in got.stderr
    if core == "c" and loop_kind == "asyncio":
        # No frame of the C core: the very same traceback as python's.
        assert got_entries == expected_entries


SIGINT_PROGRAM = """\
    import asyncio, atexit, os, signal
    atexit.register(print, "atexit ran")

    async def main():
        os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C
        await asyncio.sleep(10)

    asyncio.run(main())
"""


def test_ctrl_c_in_asyncio_run_as_python(tmp_path: Path, core: str, loop_kind: str) -> None:
    write(tmp_path / "prog.py", SIGINT_PROGRAM)
    expected = plain("prog.py", cwd=tmp_path)
    got = ours(*loop_flags(loop_kind), "prog.py", cwd=tmp_path, core=core)
    assert got.returncode == expected.returncode == -signal.SIGINT
    assert got.stdout == expected.stdout == "atexit ran\n"
    assert without_loop_internals(got.stderr) == without_loop_internals(expected.stderr)
    if core == "c" and loop_kind == "asyncio":
        assert got.stderr == expected.stderr


def test_missing_programs_reported_as_python(programs: Path) -> None:
    write(programs / "empty" / "x.txt", "")
    for args in (["nosuch.py"], ["-m", "nosuch"], ["-m", "sub"], ["empty"]):
        expected = plain(*args, cwd=programs)
        got = ours(*args, cwd=programs)
        assert (got.returncode, got.stdout, got.stderr) == (
            expected.returncode,
            expected.stdout,
            expected.stderr,
        ), args
    assert ours("nosuch.py", cwd=programs).stderr == (
        f"{sys.executable}: can't open file {str(programs / 'nosuch.py')!r}: "
        "[Errno 2] No such file or directory\n"
    )
    assert ours("nosuch.py", cwd=programs).returncode == 2


# -- this command's own options ------------------------------------------------


def test_help(tmp_path: Path) -> None:
    proc = ours("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith(
        "usage: python -m greenback_loop [--uvloop] [script | -m module | -c command | -] [args ...]"
    )
    for text in ("greenback_loop.await_(awaitable)", "--uvloop", "-m module", "asyncio REPL"):
        assert text in proc.stdout
    assert ours("-h", cwd=tmp_path).stdout == proc.stdout


def test_version(tmp_path: Path, core: str) -> None:
    proc = ours("--version", cwd=tmp_path, core=core)
    assert proc.returncode == 0
    assert proc.stdout == (
        f"greenback_loop {greenback_loop.__version__} ({core} core, "
        f"Python {platform.python_version()})\n"
    )


def test_bad_options(tmp_path: Path) -> None:
    proc = ours("--frobnicate", "x.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: unrecognized arguments: --frobnicate" in proc.stderr
    proc = ours("-m", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: argument -m: expected one argument" in proc.stderr


# -- the REPL --------------------------------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal: type lines, wait for output."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, replica = pty.openpty()
        self.proc = subprocess.Popen(
            cmd, stdin=replica, stdout=replica, stderr=replica, env=env, cwd=cwd
        )
        os.close(replica)
        self.output = ""
        self.seen = 0

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child closed the terminal
            return False
        self.output += data.decode(errors="replace").replace("\r\n", "\n")
        return bool(data)

    def expect(self, text: str, timeout: float = 20) -> str:
        """Wait for *text* after what was expected last; return what came
        between."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.seen :]:
            if time.monotonic() > deadline or not self.read(0.05):
                raise AssertionError(f"no {text!r} in {self.output[self.seen :]!r}")
        start = self.seen
        self.seen = self.output.index(text, self.seen) + len(text)
        return self.output[start : self.seen]

    def send(self, *lines: str) -> None:
        for line in lines:
            os.write(self.master, line.encode())

    def finish(self) -> int:
        try:
            returncode = self.proc.wait(TIMEOUT)
        finally:
            while self.read(0):
                pass
            os.close(self.master)
        return returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def repl(tmp_path: Path) -> Iterator[Callable[[str, str], Terminal]]:
    started: list[Terminal] = []

    def start(core: str, loop_kind: str) -> Terminal:
        # TERM=dumb and no inputrc: plain line editing, no escape sequences.
        env = child_env(core, TERM="dumb", INPUTRC=os.devnull)
        cmd = [sys.executable, "-m", "greenback_loop", *loop_flags(loop_kind)]
        terminal = Terminal(cmd, env, tmp_path)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.kill()


def test_repl(repl: Callable[[str, str], Terminal], core: str, loop_kind: str) -> None:
    term = repl(core, loop_kind)
    banner = term.expect(">>> import asyncio, greenback_loop\n>>> ")
    assert f"on {loop_kind} ({core} core)" in banner
    term.send("await asyncio.sleep(0, 5)\n")
    assert term.expect(">>> ").endswith("\n5\n>>> ")
    term.send(
        "def legacy(n):\n",
        "    return greenback_loop.await_(asyncio.sleep(0.01, n * 2))\n",
        "\n",
    )
    term.expect(">>> ")
    term.send("legacy(21)\n")  # a sync helper called at the prompt awaits
    assert term.expect(">>> ").endswith("\n42\n>>> ")
    term.send("import uvloop; isinstance(asyncio.get_running_loop(), uvloop.Loop)\n")
    assert term.expect(">>> ").endswith(f"\n{loop_kind == 'uvloop'}\n>>> ")
    term.send("async def twice(n):\n", "    return legacy(n) * 2\n", "\n")
    term.expect(">>> ")
    term.send("await asyncio.gather(twice(1), asyncio.create_task(twice(2)))\n")
    assert term.expect(">>> ").endswith("\n[4, 8]\n>>> ")
    term.send("legacy(None)\n")
    shown = term.expect(">>> ")
    assert 'Traceback (most recent call last):\n  File "<stdin>", line 1, in <module>\n' in shown
    assert "TypeError: unsupported operand type(s) for *: 'NoneType' and 'int'" in shown
    assert "_cli.py" not in shown and "concurrent" not in shown
    term.send("\x04")  # Ctrl-D
    assert term.finish() == 0


def test_repl_ctrl_c_and_exit(repl: Callable[[str, str], Terminal], loop_kind: str) -> None:
    term = repl("c", loop_kind)
    term.expect(">>> import asyncio, greenback_loop\n>>> ")
    term.send(
        "import contextvars; var = contextvars.ContextVar('var'); _ = var.set('kept')\n",
        "def park():\n",
        "    return greenback_loop.await_(asyncio.sleep(30))\n",
        "\n",
    )
    term.expect(">>> ", timeout=20)
    term.expect(">>> ")
    term.send("park()\n")
    term.expect("park()\n")
    time.sleep(0.3)
    term.proc.send_signal(signal.SIGINT)  # Ctrl-C cancels the statement
    assert term.expect(">>> ").endswith("\nKeyboardInterrupt\n>>> ")
    term.send("var.get()\n")  # context variables persist between statements
    assert term.expect(">>> ").endswith("\n'kept'\n>>> ")
    term.send("import sys; sys.exit(3)\n")
    assert term.finish() == 3


def test_repl_reads_piped_statements(tmp_path: Path) -> None:
    # Like python -m asyncio, the REPL also runs with its input piped.
    proc = ours(
        cwd=tmp_path,
        stdin="print(await asyncio.sleep(0, 'piped'))\n"
        "print(greenback_loop.await_(asyncio.sleep(0, 'sync')))\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [">>>", "piped", ">>>", "sync", ">>>"]
    assert re.match(r"greenback_loop \S+ REPL on asyncio", proc.stderr)
