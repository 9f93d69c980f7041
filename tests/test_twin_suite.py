"""The whole suite again on the pure-Python twin, in a subprocess.

The in-process suite runs on the core this process selected (the C core on
CPython). The twin is selected at import by GREENBACK_LOOP_NO_EXTENSIONS=1,
so it gets a process of its own: the same tests, the same fixtures, nothing
in the package switched at run time. Tests marked ``once`` are skipped in the
rerun (see conftest.py), and the rerun does not start another one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import IN_TWIN_RUN, TWIN_RUN_ENV, run_pytest

from greenback_loop import _impl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1200)
def test_suite_on_the_twin() -> None:
    if IN_TWIN_RUN:  # in the rerun: it really runs on the twin
        assert _impl.implementation == "python"
        return
    if _impl.implementation == "python":
        pytest.skip("this process runs the suite on the twin already")
    env = dict(os.environ, GREENBACK_LOOP_NO_EXTENSIONS="1", **{TWIN_RUN_ENV: "1"})
    proc = run_pytest(ROOT, env, str(ROOT / "tests"))
    tail = (proc.stdout + proc.stderr)[-8000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout, tail
