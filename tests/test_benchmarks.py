"""The benchmark harness still runs every case (``python -m benchmarks --quick``)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from greenback_loop import _impl

ROOT = Path(__file__).resolve().parent.parent

LOOPS = ("asyncio", "uvloop")

#: Both cores on CPython, where the C core is built (and this process or the
#: harness's workers select each in turn); the twin alone elsewhere.
CORES = (
    ["c", "python"]
    if sys.implementation.name == "cpython" and importlib.util.find_spec("greenback_loop._cportal")
    else ["python"]
)


def expected_rows() -> dict[str, set[str]]:
    """Case id -> the row labels it must report on each loop."""
    gbl = {f"greenback_loop[{name}]" for name in CORES}
    bridges = {"plain", "greenback", "sqlalchemy"} | gbl
    retrofit = {"greenback_loop[c] (retrofit)"} if "c" in CORES else set()
    hooked = {"greenback (on greenback_loop)"}
    return {
        "a": {"plain"},
        "b": {"greenback"} | gbl | retrofit,
        "c": bridges | retrofit | hooked,
        "d.coro": bridges,
        "d.future": bridges,
        "e": {"plain", "greenback (with_portal_run)", "greenback (ensure_portal)"}
        | gbl
        | retrofit
        | hooked,
        "f.idle": {"plain", "greenback"} | gbl,
        "f.await_": {"greenback", "sqlalchemy"} | gbl,
        "g": bridges,
        "h.0": bridges,
        "h.deep": bridges,
    }


@pytest.mark.once  # the harness measures every core itself
def test_benchmarks_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIPPED" not in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    assert data["metadata"]["quick"] is True
    assert data["metadata"]["greenback_loop_cores"] == CORES
    assert data["metadata"]["greenback_loop_process_core"] == _impl.implementation

    got: dict[tuple[str, str], set[str]] = {}
    for rec in data["results"]:
        got.setdefault((rec["case"], rec["loop"]), set()).add(rec["label"])
        for key in ("median", "min", "max"):
            value = rec[key]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (
                key,
                rec,
            )
        assert rec["samples"] and all(math.isfinite(v) and v > 0 for v in rec["samples"]), rec
        assert rec["ratio"] is not None and math.isfinite(rec["ratio"]) and rec["ratio"] > 0, rec
    want = {(case, loop): labels for case, labels in expected_rows().items() for loop in LOOPS}
    assert got == want
