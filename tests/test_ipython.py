"""IPython and Jupyter: ``%load_ext greenback_loop.ipython`` and the one-line
``await greenback_loop.ensure_portal()``.

Cells run three ways here, as users run them:

* in IPython's in-process ``InteractiveShell`` through ``run_cell()``, which
  runs its cells itself, as the terminal ``ipython`` does (and the terminal
  ``ipython`` itself, in a child process with its input piped);
* on a running plain asyncio or uvloop loop, each cell in a task of its own
  (a cell with a top-level ``await`` in one more), as ipykernel runs them;
* in a real ipykernel started by jupyter_client's ``KernelManager`` in a
  child process, its output read from the iopub channel (skipped, saying
  why, where no kernel can start).

The child processes choose their portal core from their environment, so
those tests cover both cores themselves and are marked ``once``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import platform
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import greenback_loop

pytest.importorskip("IPython", minversion="8.0", reason="needs IPython 8 or later")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

EXT = "greenback_loop.ipython"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60

#: The first cell of every session: a synchronous helper that awaits, and a
#: coroutine function for the tasks the cells create.
HELPERS = """\
import asyncio, contextvars, greenback_loop

def legacy(n):                       # a synchronous helper
    return greenback_loop.await_(asyncio.sleep(0, n * 2))

async def spawned(n):                # what a task created by a cell runs
    await asyncio.sleep(0)
    return legacy(n)
"""

NO_LOOP = "no event loop running in this thread"
NO_PORTAL = "which has no portal"


# -- running cells -------------------------------------------------------------


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh in-process IPython shell, with the helpers defined; its
    history in memory, its profile in a temporary directory, its user
    module not ``__main__``."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # what a shell sets for good, undone after the test
    for name in ("__IPYTHON__", "display"):
        monkeypatch.setattr(builtins, name, getattr(builtins, name, None), raising=False)
    for name in ("ps1", "ps2"):
        monkeypatch.setattr(sys, name, getattr(sys, name, None), raising=False)
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    user_module = types.ModuleType("greenback_loop_test_cells")
    sh = InteractiveShell(config=config, user_module=user_module)
    ok(sh, HELPERS)
    try:
        yield sh
    finally:
        sh.extension_manager.unload_extension(EXT)
        sys.modules.pop(user_module.__name__, None)


def cell(shell: Any, code: str) -> Any:
    """Run *code* as the next cell of *shell*; its ExecutionResult."""
    return shell.run_cell(code, store_history=True)


def ok(shell: Any, code: str) -> Any:
    """Run a cell that must succeed; the value it displayed."""
    result = cell(shell, code)
    assert result.success, result.error_before_exec or result.error_in_exec
    return result.result


def fails(shell: Any, code: str) -> BaseException:
    """Run a cell that must fail; the exception it raised."""
    result = cell(shell, code)
    assert not result.success
    assert result.error_in_exec is not None
    return result.error_in_exec  # type: ignore[no-any-return]


def load(shell: Any) -> None:
    ok(shell, f"%load_ext {EXT}")


# -- without the extension -----------------------------------------------------


def test_without_the_extension_await_in_a_cell_says_why_it_cannot(shell: Any, impl: str) -> None:
    # a cell without an await runs with no event loop at all
    exc = fails(shell, "legacy(21)")
    assert isinstance(exc, RuntimeError) and NO_LOOP in str(exc)
    # one with an await runs as a task of IPython's own (plain) loop
    exc = fails(shell, "await asyncio.sleep(0)\nlegacy(21)")
    assert isinstance(exc, RuntimeError) and NO_PORTAL in str(exc)
    if impl == "c":
        assert "await greenback_loop.ensure_portal()" in str(exc)
    else:
        assert "ensure_portal() would refuse too" in str(exc)


def test_the_one_liner_gives_its_cell_a_portal(shell: Any, impl: str) -> None:
    if impl == "python":
        # IPython's loop makes C Tasks, which only the C core can retrofit
        exc = fails(shell, "await greenback_loop.ensure_portal()\nlegacy(21)")
        assert "only the C core can replace" in str(exc)
        return
    assert ok(shell, "await greenback_loop.ensure_portal()\nlegacy(21)") == 42
    # each such cell is a task of its own: the next one has no portal
    assert NO_PORTAL in str(fails(shell, "await asyncio.sleep(0)\nlegacy(1)"))
    # nor have the tasks the cell creates
    exc = fails(
        shell, "await greenback_loop.ensure_portal()\nawait asyncio.create_task(spawned(1))"
    )
    assert NO_PORTAL in str(exc)


def test_portals_for_children_in_a_cell(shell: Any) -> None:
    code = """\
with greenback_loop.portals_for_children():
    t = asyncio.create_task(spawned(4))
await t
"""
    assert ok(shell, code) == 8


# -- the extension, in a shell that runs its cells itself (the terminal's way) --


def test_every_cell_runs_in_a_task_with_a_portal(shell: Any) -> None:
    load(shell)
    assert ok(shell, "legacy(21)") == 42  # no await in the cell
    assert ok(shell, "await asyncio.sleep(0)\nlegacy(22)") == 44
    assert ok(shell, "greenback_loop.has_portal()") is True
    assert ok(shell, "x = legacy(5)\nx + 1") == 11
    # one greenback_loop loop for the session
    assert ok(shell, "loop = asyncio.get_running_loop(); type(loop)") is greenback_loop.EventLoop
    assert ok(shell, "asyncio.get_running_loop() is loop") is True
    assert ok(shell, "await asyncio.sleep(0); asyncio.get_running_loop() is loop") is True


def test_state_persists_between_cells(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    load(shell)
    ok(shell, "n = legacy(1)")
    assert ok(shell, "n + legacy(2)") == 6
    # context variables set in a cell stay set, with or without an await in it
    ok(shell, "var = contextvars.ContextVar('var', default=0)\nvar.set(1)")
    assert ok(shell, "var.get()") == 1
    ok(shell, "await asyncio.sleep(0)\nvar.set(2)")
    assert ok(shell, "await asyncio.sleep(0)\nvar.get()") == 2
    capsys.readouterr()
    ok(shell, "%autoawait")
    assert "set to use `greenback_loop`" in capsys.readouterr().out


def test_tasks_a_cell_creates_have_portals(shell: Any) -> None:
    load(shell)
    ok(shell, "t = asyncio.create_task(spawned(5))")
    assert ok(shell, "greenback_loop.has_portal(t)") is True
    # the loop runs while a cell runs: a later cell sees the task finish
    assert ok(shell, "await t") == 10
    code = """\
async with asyncio.TaskGroup() as tg:
    ts = [tg.create_task(spawned(i)) for i in range(3)]
[t.result() for t in ts]
"""
    assert ok(shell, code) == [0, 2, 4]
    assert ok(shell, "sorted(await asyncio.gather(*(spawned(i) for i in range(3))))") == [0, 2, 4]


def test_a_cell_run_from_a_cell(shell: Any) -> None:
    load(shell)
    # %paste, %rerun and macros run cells this way: in the outer cell's task
    ok(shell, "get_ipython().run_cell('y = legacy(50)')")
    assert ok(shell, "y") == 100


def test_ctrl_c_while_a_cell_waits_cancels_it(shell: Any) -> None:
    load(shell)
    shell.user_ns["unwound"] = []

    def interrupt() -> None:  # what Ctrl-C does while the loop waits
        raise KeyboardInterrupt

    shell.user_ns["interrupt"] = interrupt
    code = """\
asyncio.get_running_loop().call_later(0.01, interrupt)
try:
    await asyncio.sleep(30)
finally:
    unwound.append(legacy(1))
"""
    exc = fails(shell, code)
    assert isinstance(exc, asyncio.CancelledError)
    assert str(exc) == "interrupted by KeyboardInterrupt"
    assert shell.user_ns["unwound"] == [2]  # the cell unwound, with its portal
    assert ok(shell, "legacy(3)") == 6
    assert ok(shell, "len(asyncio.all_tasks())") == 1  # nothing left behind
    # Ctrl-C while the cell runs Python code: KeyboardInterrupt there, as in IPython
    assert isinstance(fails(shell, "raise KeyboardInterrupt"), KeyboardInterrupt)
    assert ok(shell, "legacy(4)") == 8


def test_unload_and_reload(shell: Any) -> None:
    default_runner = shell.loop_runner
    load(shell)
    assert shell.loop_runner is not default_runner
    ok(shell, "pending = asyncio.create_task(asyncio.sleep(60))\nloop = asyncio.get_running_loop()")
    ok(shell, f"%unload_ext {EXT}")
    # IPython's own way back, the tasks left on the loop cancelled, the loop closed
    assert shell.loop_runner is default_runner
    assert "should_run_async" not in vars(shell)
    assert shell.user_ns["pending"].cancelled()
    assert shell.user_ns["loop"].is_closed()
    assert NO_LOOP in str(fails(shell, "legacy(1)"))
    load(shell)
    assert ok(shell, "legacy(1)") == 2
    ok(shell, f"%reload_ext {EXT}")
    assert ok(shell, "legacy(2)") == 4
    assert ok(shell, "await asyncio.sleep(0); legacy(3)") == 6


def test_another_runner_takes_over(shell: Any) -> None:
    load(shell)
    ok(shell, "%autoawait asyncio")  # IPython's own runner again
    assert NO_LOOP in str(fails(shell, "legacy(1)"))
    assert NO_PORTAL in str(fails(shell, "await asyncio.sleep(0)\nlegacy(1)"))


# -- the extension, on a loop that runs the cells (a kernel's way) -------------


async def execute(shell: Any, code: str) -> Any:
    """Run *code* as ipykernel runs a cell: each request in a task of its
    own; a cell with a top-level await in a task of its own, the others
    through run_cell() inside the request's task. Its ExecutionResult."""

    async def request() -> Any:
        transformed = shell.transform_cell(code)
        if shell.should_run_async(code, transformed_cell=transformed, preprocessing_exc_tuple=None):
            coro = shell.run_cell_async(
                code, transformed_cell=transformed, preprocessing_exc_tuple=None
            )
            return await asyncio.ensure_future(coro)
        return shell.run_cell(code)

    return await asyncio.create_task(request())


async def kernel_ok(shell: Any, code: str) -> Any:
    result = await execute(shell, code)
    assert result.success, result.error_before_exec or result.error_in_exec
    return result.result


async def kernel_fails(shell: Any, code: str) -> BaseException:
    result = await execute(shell, code)
    assert not result.success and result.error_in_exec is not None
    return result.error_in_exec  # type: ignore[no-any-return]


def test_on_a_running_loop_every_new_task_has_a_portal(
    shell: Any, run_plain: Callable[..., Any]
) -> None:
    made: list[Any] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made.append(coro)  # a factory of the program's own, which stays in use
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        shell.user_ns["loop_type"] = type(loop)
        assert NO_PORTAL in str(await kernel_fails(shell, "legacy(1)"))
        await kernel_ok(shell, f"%load_ext {EXT}")
        assert await kernel_ok(shell, "legacy(21)") == 42
        assert await kernel_ok(shell, "await asyncio.sleep(0)\nlegacy(22)") == 44
        await kernel_ok(shell, "t = asyncio.create_task(spawned(5))")
        assert await kernel_ok(shell, "await t") == 10
        assert await kernel_ok(shell, "type(asyncio.get_running_loop()) is loop_type") is True
        assert made, "the program's own task factory was bypassed"
        await kernel_ok(shell, f"%unload_ext {EXT}")
        assert loop.get_task_factory() is factory
        assert NO_PORTAL in str(await kernel_fails(shell, "legacy(1)"))

    run_plain(main())


def test_on_a_running_loop_the_task_that_loads_it_gets_a_portal(
    shell: Any, run_plain: Callable[..., Any], impl: str
) -> None:
    async def dispatcher() -> Any:
        # one task for many cells, as ipykernel 6 runs those without an await
        assert shell.run_cell(f"%load_ext {EXT}").success
        await asyncio.sleep(0)  # its portal works from the task's next step
        return shell.run_cell("legacy(21)")

    result = run_plain(dispatcher())
    if impl == "c":
        assert result.success and result.result == 42
    else:  # the pure-Python core cannot retrofit a C Task, and says so
        assert "ensure_portal() would refuse too" in str(result.error_in_exec)


# -- child processes: the terminal ipython, a Jupyter kernel -------------------


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> str:
    """The portal core of the child process."""
    if request.param == "c" and platform.python_implementation() != "CPython":
        pytest.skip("the C core is CPython's")
    return request.param  # type: ignore[no-any-return]


def child_env(tmp_path: Path, core: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    env.pop("PYTHONSTARTUP", None)
    if core == "python":
        env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


@pytest.mark.once
def test_terminal_ipython(tmp_path: Path, core: str) -> None:
    lines = [
        "import asyncio, greenback_loop",
        "def legacy(n): return greenback_loop.await_(asyncio.sleep(0, n * 2))",
        "",
        "legacy(21)",
        "await asyncio.sleep(0); legacy(22)",
        "t = asyncio.create_task(asyncio.sleep(0, 23)); await t",
        "type(asyncio.get_running_loop()).__name__",
        f"%unload_ext {EXT}",
        "legacy(24)",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "IPython",
            "--simple-prompt",
            "--no-banner",
            "--colors=nocolor",
            "--HistoryManager.hist_file=:memory:",
            "--TerminalInteractiveShell.confirm_exit=False",
            f"--ext={EXT}",
        ],
        input="\n".join(lines) + "\n",
        env=child_env(tmp_path, core),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    shown = re.findall(r"Out\[\d+\]: (.*)", out)
    assert shown == ["42", "44", "23", "'EventLoop'"], out
    assert NO_LOOP in out, out  # after %unload_ext


class Kernel:
    """A Jupyter kernel in a child process, and a client of it."""

    def __init__(self, argv: list[str], tmp_path: Path, core: str) -> None:
        pytest.importorskip("ipykernel", reason="a Jupyter kernel needs ipykernel")
        manager_mod = pytest.importorskip("jupyter_client.manager")
        kernelspec_mod = pytest.importorskip("jupyter_client.kernelspec")
        spec_dir = tmp_path / "kernels" / "gbl"
        spec_dir.mkdir(parents=True)
        spec = {"argv": argv, "display_name": "greenback_loop test", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        specs = kernelspec_mod.KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
        self.manager = manager_mod.KernelManager(kernel_name="gbl", kernel_spec_manager=specs)
        try:
            self.manager.start_kernel(env=child_env(tmp_path, core))
            self.client = self.manager.client()
            self.client.start_channels()
            self.client.wait_for_ready(timeout=TIMEOUT)
        except (RuntimeError, OSError, TimeoutError) as exc:
            self.close()
            pytest.skip(f"no Jupyter kernel could be started here: {exc!r}")

    def run(self, code: str) -> tuple[str, str]:
        """Run a cell: its status ("ok" or "error") and its output (streams,
        result, or the error's name and message)."""
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "execute_result":
                out.append(content["data"]["text/plain"])
            elif kind == "error":
                out.append(f"{content['ename']}: {content['evalue']}")

        reply = self.client.execute_interactive(code, timeout=TIMEOUT, output_hook=hook)
        return reply["content"]["status"], "".join(out).strip()

    def ok(self, code: str) -> str:
        status, out = self.run(code)
        assert status == "ok", out
        return out

    def fails(self, code: str) -> str:
        status, out = self.run(code)
        assert status == "error", out
        return out

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=True)


KERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@pytest.fixture
def kernel(tmp_path: Path, core: str) -> Iterator[Callable[[list[str]], Kernel]]:
    started: list[Kernel] = []

    def start(argv: list[str]) -> Kernel:
        k = Kernel(argv, tmp_path, core)
        started.append(k)
        k.ok(HELPERS)
        return k

    yield start
    for k in started:
        k.close()


def check_portals_everywhere(k: Kernel) -> None:
    assert k.ok("legacy(21)") == "42"  # a cell without an await
    assert k.ok("await asyncio.sleep(0)\nlegacy(22)") == "44"
    # a task a cell creates keeps running between cells, with its portal
    k.ok("t = asyncio.create_task(spawned(23))")
    assert k.ok("await asyncio.sleep(0.05)\nt.result()") == "46"
    assert k.ok("greenback_loop.has_portal()") == "True"


@pytest.mark.once
def test_kernel_without_the_extension(kernel: Callable[[list[str]], Kernel], core: str) -> None:
    k = kernel(KERNEL)
    assert NO_PORTAL in k.fails("legacy(1)")
    assert NO_PORTAL in k.fails("await asyncio.sleep(0)\nlegacy(1)")
    status, out = k.run("await greenback_loop.ensure_portal()\nlegacy(21)")
    if core == "c":
        assert (status, out) == ("ok", "42")
        code = "await greenback_loop.ensure_portal()\nawait asyncio.create_task(spawned(1))"
        assert NO_PORTAL in k.fails(code)
    else:
        assert status == "error" and "only the C core can replace" in out


@pytest.mark.once
def test_kernel_load_ext_in_a_cell(kernel: Callable[[list[str]], Kernel], core: str) -> None:
    k = kernel(KERNEL)
    k.ok(f"%load_ext {EXT}")
    import ipykernel

    if core == "python" and int(ipykernel.__version__.split(".")[0]) < 7:
        # ipykernel 6 runs the cells without an await in a task made at its
        # start, which the pure-Python core cannot give a portal to
        assert NO_PORTAL in k.fails("legacy(1)")
        assert k.ok("await asyncio.sleep(0)\nlegacy(22)") == "44"
        return
    check_portals_everywhere(k)


@pytest.mark.once
def test_kernel_with_the_extension_from_its_start(
    kernel: Callable[[list[str]], Kernel],
) -> None:
    check_portals_everywhere(kernel([*KERNEL, f"--ext={EXT}"]))


@pytest.mark.once
@pytest.mark.parametrize(("options", "loop_class"), [([], "EventLoop"), (["--uvloop"], "Loop")])
def test_kernel_run_by_python_m_greenback_loop(
    kernel: Callable[[list[str]], Kernel], options: list[str], loop_class: str
) -> None:
    if options:
        pytest.importorskip("uvloop")
    k = kernel([sys.executable, "-m", "greenback_loop", *options, *KERNEL[1:]])
    check_portals_everywhere(k)
    assert k.ok("type(asyncio.get_running_loop()).__name__") == repr(loop_class)
    k.ok(f"%load_ext {EXT}")  # changes nothing there
    assert k.ok("asyncio.get_running_loop().get_task_factory() is None") == "True"
    assert k.ok("legacy(24)") == "48"
