"""Metadata and output: terminal tables, JSON, reStructuredText, PNG plot."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

LOOP_DESCRIPTIONS = {
    "asyncio": "asyncio (plain: asyncio.SelectorEventLoop; greenback_loop: new_event_loop())",
    "uvloop": "uvloop (plain: uvloop.new_event_loop; greenback_loop: new_event_loop(uvloop=True))",
}

# -- metadata --------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (x86 "model name", else the ARM or
    other architectures' names), or platform.processor()."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    for key in ("model name", "cpu model", "hardware", "cpu", "processor"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            extra = f", {fields['cpu mhz'].split('.')[0]} MHz" if fields.get("cpu mhz") else ""
            return value + extra
    return platform.processor() or platform.machine() or "unknown"


def dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_revision() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def collect_metadata() -> dict[str, Any]:
    import greenback_loop
    from benchmarks.contenders import available_cores

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_revision": git_revision(),
        "versions": {
            "greenback_loop": greenback_loop.__version__,
            "greenlet": dist_version("greenlet"),
            "uvloop": dist_version("uvloop"),
            "greenback": dist_version("greenback"),
            "sqlalchemy": dist_version("SQLAlchemy"),
        },
        "greenback_loop_cores": available_cores(),
        "greenback_loop_process_core": greenback_loop.implementation,
    }


def metadata_lines(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    p = meta["params"]

    def ver(name: str) -> str:
        return v.get(name) or "missing"

    return [
        f"Python {meta['python']} ({meta['python_implementation']}) on {meta['platform']} ({meta['machine']})",
        f"CPU: {meta['cpu']} ({meta['cpu_count']} logical CPUs)",
        f"greenback_loop {ver('greenback_loop')} (cores: {', '.join(meta['greenback_loop_cores'])}), "
        f"greenlet {ver('greenlet')}, uvloop {ver('uvloop')}, greenback {ver('greenback')}, "
        f"SQLAlchemy {ver('sqlalchemy')}",
        f"sizes: N={p['n']:,} ops (a-d, h), {p['spawn_tasks']:,} tasks (e), {p['memory_tasks']:,} tasks (f), "
        f"{p['tcp_requests']:,} requests over {p['tcp_clients']} connections (g), depth {p['depth']} (h)",
        f"samples: 1 warm-up + {meta['repeats']} per row, median/min/max; "
        f"f (memory): {meta['memory_repeats']} per row, each in a fresh subprocess, no warm-up",
        f"date {meta['date']}, git {meta.get('git_revision') or '?'}"
        + (", QUICK MODE (numbers meaningless)" if meta.get("quick") else ""),
    ]


# -- numbers ---------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def note_for(rec: dict[str, Any], by_key: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    notes = []
    if rec.get("baseline") and rec["baseline"] != f"{rec['case']}/plain":
        notes.append(f"ratio vs {rec['baseline']}")
    rps = rec.get("extra", {}).get("requests_per_s")
    if rps:
        notes.append(f"{rps['median']:,.0f} req/s")
    if rec["case"] == "h.deep":
        shallow = by_key.get(("h.0", rec["loop"], rec["label"]))
        if shallow:
            notes.append(f"x{rec['median'] / shallow['median']:.2f} of its 0-frame cost")
    return "; ".join(notes)


def table_rows(records: list[dict[str, Any]], loop: str) -> list[tuple[str, ...]]:
    """(case, title, label, median, min, max, unit, ratio, note) for one loop."""
    by_key = {(r["case"], r["loop"], r["label"]): r for r in records}
    rows: list[tuple[str, ...]] = []
    for r in records:
        if r["loop"] != loop:
            continue
        rows.append(
            (
                r["case"],
                r["title"],
                r["label"],
                fmt(r["median"]),
                fmt(r["min"]),
                fmt(r["max"]),
                r["unit"],
                fmt_ratio(r["ratio"]),
                note_for(r, by_key),
            )
        )
    return rows


def terminal_tables(records: list[dict[str, Any]], loops: list[str]) -> str:
    out: list[str] = []
    head = ("case / contender", "median", "min", "max", "unit", "ratio", "note")
    for loop in loops:
        rows = table_rows(records, loop)
        if not rows:
            continue
        lines: list[tuple[str, ...]] = []
        last_case = None
        for case, title, label, med, lo, hi, unit, ratio, note in rows:
            if case != last_case:
                lines.append((f"{case}  {title}", "", "", "", "", "", ""))
                last_case = case
            lines.append((f"    {label}", med, lo, hi, unit, ratio, note))
        w = [max(len(x[i]) for x in [head, *lines] if x[1] or i) for i in range(6)]
        out.append(f"== loop: {LOOP_DESCRIPTIONS.get(loop, loop)}")
        fmt_line = f"{{:<{w[0]}}}  {{:>{w[1]}}}  {{:>{w[2]}}}  {{:>{w[3]}}}  {{:<{w[4]}}}  {{:>{w[5]}}}  {{}}"
        out.append(fmt_line.format(*head).rstrip())
        out.append("-" * (sum(w) + 2 * 6 + 4))
        for line in lines:
            out.append(fmt_line.format(*line).rstrip())
        out.append("")
    return "\n".join(out)


# -- JSON ------------------------------------------------------------------------


def write_json(path: Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"metadata": meta, "results": records}, f, indent=1)
        f.write("\n")


# -- reStructuredText ------------------------------------------------------------

RST_MARKER = ".. benchmarks-table-start"


def rst_escape(text: str) -> str:
    for ch in "\\`*_|":
        text = text.replace(ch, "\\" + ch)
    return text


def write_rst(
    path: Path, meta: dict[str, Any], records: list[dict[str, Any]], loops: list[str]
) -> None:
    lines = [
        ":orphan:",
        "",
        ".. Generated by ``python -m benchmarks --rst``: do not edit by hand.",
        "   docs/benchmarks.rst includes what follows the marker below.",
        "",
        RST_MARKER,
        "",
        "Measured on:",
        "",
    ]
    lines += [f"- {rst_escape(m)}" for m in metadata_lines(meta)]
    lines.append("")
    head = ("case", "what", "contender", "median", "min", "max", "unit", "ratio", "note")
    for loop in loops:
        rows = table_rows(records, loop)
        if not rows:
            continue
        lines += [
            f".. list-table:: {rst_escape(LOOP_DESCRIPTIONS.get(loop, loop))}",
            "   :header-rows: 1",
            "",
        ]
        for row in [head, *rows]:
            for i, cell in enumerate(row):
                lead = "   * - " if i == 0 else "     - "
                lines.append((lead + rst_escape(cell)).rstrip())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# -- plot ------------------------------------------------------------------------


def write_plot(
    path: Path, meta: dict[str, Any], records: list[dict[str, Any]], loops: list[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in records if r["ratio"] is not None and r["contender"] != "plain"]
    loops = [lp for lp in loops if any(r["loop"] == lp for r in plotted)]
    if not loops:
        raise SystemExit("--plot: no ratios to plot (is the plain contender measured?)")
    kind_order = ("greenback", "sqlalchemy", "greenback_loop")

    def label_key(r: dict[str, Any]) -> tuple[int, str]:
        kind = r["contender"].split("[")[0]
        return (kind_order.index(kind) if kind in kind_order else len(kind_order), r["label"])

    labels = sorted(
        {r["label"] for r in plotted},
        key=lambda lb: label_key(next(r for r in plotted if r["label"] == lb)),
    )
    cases: list[str] = []
    for r in plotted:
        if r["case"] not in cases:
            cases.append(r["case"])
    ratios = [r["ratio"] for r in plotted]
    log = max(ratios) / min(ratios) > 8
    palette = {
        "greenback": ("#4c72b0", "#7f9fd0", "#aac0e6"),
        "sqlalchemy": ("#55a868",),
        "greenback_loop": ("#dd8452", "#c44e52", "#8172b3"),
    }
    used: dict[str, int] = {}
    colors = {}
    for lb in labels:
        kind = lb.split("[")[0].split(" ")[0]
        shades = palette.get(kind, ("#777777",))
        colors[lb] = shades[used.get(kind, 0) % len(shades)]
        used[kind] = used.get(kind, 0) + 1
    fig, axes = plt.subplots(
        len(loops), 1, figsize=(max(10.0, 1.2 * len(cases) + 3), 4.6 * len(loops)), squeeze=False
    )
    for ax, loop in zip(axes[:, 0], loops, strict=True):
        seen: set[str] = set()
        for i, case in enumerate(cases):
            here = [
                lb
                for lb in labels
                if any(
                    r["loop"] == loop and r["case"] == case and r["label"] == lb for r in plotted
                )
            ]
            if not here:
                continue
            width = min(0.8 / len(here), 0.22)
            for j, lb in enumerate(here):
                r = next(
                    r
                    for r in plotted
                    if r["loop"] == loop and r["case"] == case and r["label"] == lb
                )
                x = i + (j - (len(here) - 1) / 2) * width
                ax.bar(
                    x,
                    r["ratio"],
                    width=width * 0.95,
                    color=colors[lb],
                    label=None if lb in seen else lb,
                )
                ax.annotate(
                    f"{r['ratio']:.1f}",
                    (x, r["ratio"]),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
                seen.add(lb)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases)
        ax.set_xlim(-0.6, len(cases) - 0.4)
        ax.set_ylabel(f"median / median of plain {loop}")
        ax.set_title(f"{loop}: cost relative to plain {loop} (1.0 = no overhead, lower is better)")
        ax.grid(axis="y", which="both", alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        order = sorted(range(len(names)), key=lambda k: labels.index(names[k]))
        ax.legend(
            [handles[k] for k in order],
            [names[k] for k in order],
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    v = meta["versions"]
    fig.text(
        0.01,
        0.005,
        f"Python {meta['python']}, greenlet {v.get('greenlet')}, uvloop {v.get('uvloop')}, "
        f"greenback {v.get('greenback')}, SQLAlchemy {v.get('sqlalchemy')}; {meta['cpu']}"
        + ("; QUICK MODE" if meta.get("quick") else ""),
        fontsize="x-small",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
