"""The whole suite again, against a C core built with AddressSanitizer and
UndefinedBehaviorSanitizer (GREENBACK_LOOP_SANITIZE=1), in a subprocess.

Python objects go through malloc (PYTHONMALLOC=malloc) so ASan sees their
use after free; leak detection is off (the interpreter itself keeps memory
until exit); the leak check of our own objects is tests/test_leaks.py.

The rerun is the suite's longest test (minutes) and waits on nothing of this
process, so conftest.py starts it when collection ends (``start_in_background``)
and it runs beside the rest of the suite, on the machine's other core; the test
waits for it and checks what it found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import suite_command

from greenback_loop import _impl

ROOT = Path(__file__).resolve().parent.parent
APPLIES = (
    sys.implementation.name == "cpython" and not _impl.NO_EXTENSIONS and sys.platform == "linux"
)
#: the rerun's own limit, in seconds (the build, then the suite)
RERUN_TIMEOUT = 1800
#: What the rerun runs: the whole suite, or the test files named (space
#: separated, relative to the checkout) by GREENBACK_LOOP_SANITIZED_TESTS
#: (``.ci/versions.sh --sanitize-fast``: CI's second CPython reruns its quick
#: subset, the whole suite being rerun under the sanitizers on 3.11).
SANITIZED_TESTS = os.environ.get("GREENBACK_LOOP_SANITIZED_TESTS", "").split() or ["tests"]


def runtime(name: str) -> str:
    out = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(out), f"gcc has no {name}: install gcc's sanitizer runtimes"
    return out


@dataclass
class Rerun:
    """The sanitized rerun, on a thread of its own (it only waits on
    subprocesses); ``failure`` says why it could not be made, ``proc`` and
    the ``out``/``err`` files hold the suite's run once ``done`` is set."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gbl-asan-")))
    done: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    module: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Rerun:
        threading.Thread(target=self._main, name="asan-rerun", daemon=True).start()
        return self

    def _main(self) -> None:
        try:
            self.failure = self._run()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def _run(self) -> str | None:
        copy = self.dir / "src"
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
                shutil.copytree(
                    src, copy / part, ignore=shutil.ignore_patterns("*.so", "__pycache__")
                )
            else:
                shutil.copy2(src, copy / part)
        for path in SANITIZED_TESTS:
            if not (copy / path).exists():
                return f"GREENBACK_LOOP_SANITIZED_TESTS names {path!r}: no such test path"
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
        if build.returncode != 0:
            return "the sanitizer build failed:\n" + build.stdout + build.stderr
        env.update(
            PYTHONPATH=str(copy),
            PYTHONMALLOC="malloc",
            ASAN_OPTIONS="detect_leaks=0",
            UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
            LD_PRELOAD=f"{runtime('libasan.so')} {runtime('libubsan.so')}",
        )
        probe = subprocess.run(
            [sys.executable, "-c", "import greenback_loop._cportal as m; print(m.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode != 0:
            return "the sanitized module does not import:\n" + probe.stderr
        self.module = Path(probe.stdout.strip())
        with open(self.dir / "out", "wb") as out, open(self.dir / "err", "wb") as err:
            self.proc = subprocess.Popen(
                suite_command(
                    "-x",
                    *SANITIZED_TESTS,
                    "-k",
                    # (not the lint tools: ruff is no Python program to preload ASan into)
                    "not sanitizers and not twin_suite and not docs and not benchmarks "
                    "and not leak and not lint and not stub",
                ),
                cwd=copy,
                env=env,
                stdout=out,
                stderr=err,
            )
            self.proc.wait(timeout=RERUN_TIMEOUT)
        return None

    def output(self) -> tuple[str, str]:
        read = lambda name: (self.dir / name).read_text(errors="replace")  # noqa: E731
        return read("out"), read("err")

    def stop(self) -> None:
        """Kill the rerun if it still runs (the session ended first) and
        remove its copy."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_started: Rerun | None = None


def start_in_background() -> Rerun | None:
    """Called by conftest.py when collection ends and this test was
    selected: start the rerun now."""
    global _started
    if APPLIES and _started is None:
        _started = Rerun().start()
    return _started


@pytest.mark.timeout(RERUN_TIMEOUT + 600)
@pytest.mark.skipif(not APPLIES, reason="the sanitizer build is the C core's, on Linux with gcc")
def test_suite_under_asan_and_ubsan() -> None:
    rerun = start_in_background()
    assert rerun is not None
    assert rerun.done.wait(RERUN_TIMEOUT + 300), "the sanitized rerun did not end"
    assert rerun.failure is None, rerun.failure
    # The instrumented module is the one the suite imports.
    so = rerun.module
    assert so is not None and so.is_relative_to(rerun.dir), so
    assert b"__asan_" in so.read_bytes() and b"__ubsan_" in so.read_bytes(), so
    assert rerun.proc is not None
    stdout, stderr = rerun.output()
    failed = [line for line in stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(failed) + "\n" + (stdout + stderr)[-6000:]
    assert rerun.proc.returncode == 0, tail
    assert "ERROR: AddressSanitizer" not in stderr, tail
    assert "runtime error:" not in stderr, tail
    assert " passed" in stdout, tail
