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

LOOPS = ("asyncio", "uvloop", "trio")

#: Both cores on CPython, where the C core is built (and this process or the
#: harness's workers select each in turn); the twin alone elsewhere.
CORES = (
    ["c", "python"]
    if sys.implementation.name == "cpython" and importlib.util.find_spec("greenback_loop._cportal")
    else ["python"]
)


def expected_rows(loop: str) -> dict[str, set[str]]:
    """Case id -> the row labels it must report on *loop*."""
    gbl = {f"greenback_loop[{name}]" for name in CORES}
    hooked = {"greenback (on greenback_loop)"}
    if loop == "trio":  # no SQLAlchemy, no memory or deep-stack cases; both cores retrofit
        bridges = {"plain", "greenback"} | gbl
        retrofit = {f"greenback_loop[{name}] (retrofit)" for name in CORES}
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
            "g": bridges,
        }
    bridges = {"plain", "greenback", "sqlalchemy"} | gbl
    retrofit = {"greenback_loop[c] (retrofit)"} if "c" in CORES else set()
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

    assert data["metadata"]["loops"] == list(LOOPS)

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
    want = {(case, loop): labels for loop in LOOPS for case, labels in expected_rows(loop).items()}
    assert got == want
    for rec in data["results"]:  # vs greenback: wherever greenback has a row of its own
        vs_gb = rec["vs_greenback"]
        if "greenback" in got[rec["case"], rec["loop"]] or rec["case"] == "e":
            assert vs_gb is not None and math.isfinite(vs_gb) and vs_gb > 0, rec
        else:
            assert vs_gb is None, rec

    # re-render the saved results: the tables and the dependency-free SVG plot
    rst, svg = tmp_path / "table.rst", tmp_path / "plot.svg"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--from-json", str(out)]
        + ["--rst", str(rst), "--plot", str(svg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = rst.read_text()
    for loop in LOOPS:
        assert f".. list-table:: {loop} (plain: " in text
    assert "vs greenback" in text
    plot = svg.read_text()
    assert plot.startswith("<svg ") and plot.rstrip().endswith("</svg>")
    for loop in LOOPS:
        assert f"{loop}: cost relative to plain {loop}" in plot
