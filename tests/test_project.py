"""The project around the code: implementation choice, demo, documentation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_pytest

import greenback_loop
from greenback_loop import _impl

ROOT = Path(__file__).resolve().parent.parent


def test_implementation_attribute(impl: str) -> None:
    assert greenback_loop.implementation == impl
    assert _impl.implementation == impl


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _impl.NO_EXTENSIONS,
    reason="the C core is built on CPython unless GREENBACK_LOOP_NO_EXTENSIONS is set",
)
def test_c_core_is_loaded_and_default() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import greenback_loop; print(greenback_loop.implementation)"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "GREENBACK_LOOP_NO_EXTENSIONS"},
    )
    assert out.stdout.strip() == "c"
    from greenback_loop import _cportal

    assert _cportal.Portal.__module__ == "greenback_loop._cportal"
    assert _impl.implementation == "c" and _impl.core is _cportal
    assert greenback_loop.await_ is _cportal.await_


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _impl.NO_EXTENSIONS,
    reason="the C core is built on CPython unless GREENBACK_LOOP_NO_EXTENSIONS is set",
)
def test_c_core_does_not_import_the_twin() -> None:
    code = (
        "import greenback_loop, greenback_loop.uvloop, sys; "
        "assert greenback_loop.implementation == 'c'; "
        "assert 'greenback_loop._portal_py' not in sys.modules, 'twin imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "GREENBACK_LOOP_NO_EXTENSIONS"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_no_extensions_env_selects_python_core(impl: str) -> None:
    env = dict(os.environ, GREENBACK_LOOP_NO_EXTENSIONS="1")
    out = subprocess.run(
        [sys.executable, "-c", "import greenback_loop; print(greenback_loop.implementation)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == "python"


def test_package_modules_import_one_way() -> None:
    """Public API > loops and helpers > core selection > C core | twin;
    _errors and _exit are leaves (the C core imports only _errors). A module that imports
    its own layer or one above, at module level or in a function, fails."""
    import ast

    order: dict[str, float] = {
        "__main__": 7,
        "_cli": 6,
        "pytest_plugin": 4,
        "ipython": 5,
        "demo": 6,
        "__init__": 5,
        "_api": 4,
        "uvloop": 4,
        "trio": 4,
        "_trio": 3,
        "_loop": 3,
        "_util": 3,
        "_greenback": 2.7,
        "_retrofit": 2.5,
        "_impl": 2,
        "_portal_py": 1,
        "_exit": 0,
        "_errors": 0,
    }
    pkg = ROOT / "greenback_loop"
    for path in sorted(pkg.glob("*.py")):
        name = path.stem
        assert name in order, f"{name}: give the new module a layer in this test"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "greenback_loop":
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "greenback_loop."
            ):
                targets = [node.module.split(".", 1)[1]]  # type: ignore[union-attr]
            else:
                continue
            for target in targets:
                if target in order:
                    assert order[target] < order[name], f"greenback_loop/{name}.py imports {target}"


def test_demo_runs(impl: str) -> None:
    env = dict(os.environ)
    if impl == "python":
        env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "greenback_loop.demo",
            "--tasks",
            "20",
            "--orders",
            "3",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("same end state: yes") == 2
    assert "INCONSISTENT" not in proc.stdout


@pytest.mark.once
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.once
@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "greenback_loop", "tests", "benchmarks"),
        ("ruff", "format", "--check", "greenback_loop", "tests", "benchmarks"),
        ("mypy",),  # strict, on the package (pyproject's [tool.mypy])
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_lint(command: tuple[str, ...]) -> None:
    proc = _tool(*command)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.once
def test_c_core_stub_matches_the_module(tmp_path: Path) -> None:
    """greenback_loop/_cportal.pyi against the built module (mypy's
    stubtest): names, signatures, positional-only parameters."""
    pytest.importorskip("greenback_loop._cportal")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    proc = _tool(
        "mypy.stubtest",
        "--mypy-config-file",
        str(config),
        "--allowlist",
        str(ROOT / "tests" / "stubtest_allowlist.txt"),
        "greenback_loop._cportal",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_suite_in_asyncio_debug_mode() -> None:
    """The behaviour tests again with PYTHONASYNCIODEBUG=1: debug-mode loops
    check thread affinity, track coroutine origins and time slow callbacks.
    (On this process's core; the twin rerun runs it on the twin.)"""
    env = dict(os.environ, PYTHONASYNCIODEBUG="1")
    tests = ROOT / "tests"
    files = ["test_await.py", "test_cancel.py", "test_errors.py", "test_portal.py", "test_tasks.py"]
    proc = run_pytest(ROOT, env, *(str(tests / f) for f in files))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert " passed" in proc.stdout


def test_docstring_examples_run() -> None:
    """Every ``>>>`` example in the package's docstrings runs and prints what
    it shows (on this process's core; the twin rerun runs them on the twin)."""
    import doctest
    import importlib

    failed = attempted = 0
    for path in sorted((ROOT / "greenback_loop").glob("*.py")):
        if path.stem == "__main__":
            continue
        module = importlib.import_module(
            "greenback_loop" if path.stem == "__init__" else f"greenback_loop.{path.stem}"
        )
        result = doctest.testmod(module, verbose=False, report=True)
        failed += result.failed
        attempted += result.attempted
    assert failed == 0
    assert attempted >= 8  # the examples are found (greenback_loop and autoawait)


# -- the C module's honesty (issue 9, item 8) ------------------------------------

needs_c_core = pytest.mark.skipif(
    sys.implementation.name != "cpython" or _impl.implementation != "c",
    reason="the C core's build",
)


@needs_c_core
def test_debug_helpers_only_in_the_debug_build() -> None:
    """``_debug_*`` helpers (a switch round trip, runner counts) exist in the
    debug build (``GREENBACK_LOOP_DEBUG_BUILD=1``) only."""
    from greenback_loop import _cportal

    helpers = sorted(n for n in dir(_cportal) if n.startswith("_debug"))
    if os.environ.get("GREENBACK_LOOP_DEBUG_BUILD"):
        assert helpers
    else:
        assert helpers == []


@needs_c_core
@pytest.mark.skipif(sys.platform != "linux", reason="ELF")
def test_c_core_needs_no_static_tls() -> None:
    """The module's thread-local state uses the default TLS model: an
    initial-exec one marks the library STATIC_TLS, and loading it late (an
    import after start-up) then fails where the static TLS surplus is used
    up."""
    import shutil

    from greenback_loop import _cportal

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run(
        [readelf, "-d", _cportal.__file__], capture_output=True, text=True, check=True
    ).stdout
    assert "(NEEDED)" in dynamic  # it did read the dynamic section
    assert "STATIC_TLS" not in dynamic


@needs_c_core
@pytest.mark.skipif(sys.platform != "linux", reason="gcc, as the build uses it")
def test_free_threaded_build_is_refused_with_a_clear_message() -> None:
    """The C core does not support free-threaded CPython yet: compiling it
    for such a build stops with a message that says how to install the
    pure-Python core instead."""
    import shutil
    import sysconfig

    import greenlet

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    include = sysconfig.get_paths()["include"]
    proc = subprocess.run(
        [
            gcc,
            "-fsyntax-only",
            "-DPy_GIL_DISABLED=1",
            f"-I{include}",
            f"-I{os.path.dirname(greenlet.__file__)}",
            str(ROOT / "csrc" / "_cportal.c"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "does not support free-threaded CPython builds yet" in proc.stderr
    assert "GREENBACK_LOOP_NO_EXTENSIONS=1" in proc.stderr
