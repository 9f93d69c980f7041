"""The whole suite again, against a C core built with AddressSanitizer and
UndefinedBehaviorSanitizer (GREENBACK_LOOP_SANITIZE=1), in a subprocess.

Python objects go through malloc (PYTHONMALLOC=malloc) so ASan sees their
use after free; leak detection is off (the interpreter itself keeps memory
until exit); the leak check of our own objects is tests/test_leaks.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_pytest

from greenback_loop import _impl

ROOT = Path(__file__).resolve().parent.parent


def runtime(name: str) -> str:
    out = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(out), f"gcc has no {name}: install gcc's sanitizer runtimes"
    return out


@pytest.mark.timeout(1800)
@pytest.mark.skipif(
    sys.implementation.name != "cpython" or _impl.NO_EXTENSIONS or sys.platform != "linux",
    reason="the sanitizer build is the C core's, on Linux with gcc",
)
def test_suite_under_asan_and_ubsan(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    for part in (
        "greenback_loop",
        "csrc",
        "tests",
        "setup.py",
        "pyproject.toml",
        "README.md",
        "LICENSE",
    ):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, copy / part, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy2(src, copy / part)
    env = dict(os.environ, GREENBACK_LOOP_SANITIZE="1")
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--force"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    env.update(
        PYTHONPATH=str(copy),
        PYTHONMALLOC="malloc",
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        LD_PRELOAD=f"{runtime('libasan.so')} {runtime('libubsan.so')}",
    )
    # The instrumented module is the one the suite imports.
    probe = subprocess.run(
        [sys.executable, "-c", "import greenback_loop._cportal as m; print(m.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    so = Path(probe.stdout.strip())
    assert so.is_relative_to(copy), so
    assert b"__asan_" in so.read_bytes() and b"__ubsan_" in so.read_bytes(), so
    proc = run_pytest(
        copy,
        env,
        "-x",
        "tests",
        "-k",
        # (not the lint tools: ruff is no Python program to preload ASan into)
        "not sanitizers and not twin_suite and not docs and not benchmarks and not leak "
        "and not lint and not stub",
    )
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(failed) + "\n" + (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "ERROR: AddressSanitizer" not in proc.stderr, tail
    assert "runtime error:" not in proc.stderr, tail
    assert " passed" in proc.stdout, tail
