"""Metadata and output: terminal tables, JSON, reStructuredText, plot (PNG
by matplotlib, or SVG written here without it)."""

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
    "trio": "trio (plain: trio.run; greenback_loop: greenback_loop.trio.run)",
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
            "trio": dist_version("trio"),
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
        f"SQLAlchemy {ver('sqlalchemy')}, Trio {ver('trio')}",
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
    """(case, title, label, median, min, max, unit, ratio, vs greenback, note)
    for one loop."""
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
                fmt_ratio(r.get("vs_greenback")),
                note_for(r, by_key),
            )
        )
    return rows


def terminal_tables(records: list[dict[str, Any]], loops: list[str]) -> str:
    out: list[str] = []
    head = ("case / contender", "median", "min", "max", "unit", "ratio", "vs gb", "note")
    for loop in loops:
        rows = table_rows(records, loop)
        if not rows:
            continue
        lines: list[tuple[str, ...]] = []
        last_case = None
        for case, title, label, med, lo, hi, unit, ratio, vs_gb, note in rows:
            if case != last_case:
                lines.append((f"{case}  {title}", "", "", "", "", "", "", ""))
                last_case = case
            lines.append((f"    {label}", med, lo, hi, unit, ratio, vs_gb, note))
        w = [max(len(x[i]) for x in [head, *lines] if x[1] or i) for i in range(7)]
        out.append(f"== loop: {LOOP_DESCRIPTIONS.get(loop, loop)}")
        fmt_line = (
            f"{{:<{w[0]}}}  {{:>{w[1]}}}  {{:>{w[2]}}}  {{:>{w[3]}}}  {{:<{w[4]}}}  "
            f"{{:>{w[5]}}}  {{:>{w[6]}}}  {{}}"
        )
        out.append(fmt_line.format(*head).rstrip())
        out.append("-" * (sum(w) + 2 * 7 + 4))
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
    head = (
        "case",
        "what",
        "contender",
        "median",
        "min",
        "max",
        "unit",
        "ratio",
        "vs greenback",
        "note",
    )
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


class PlotData:
    """What both plot writers draw: per loop, per case, one bar per row label
    with the ratio to plain."""

    KIND_ORDER = ("greenback", "sqlalchemy", "greenback_loop")
    PALETTE = {
        "greenback": ("#4c72b0", "#7f9fd0", "#aac0e6", "#2b4c7e"),
        "sqlalchemy": ("#55a868",),
        "greenback_loop": ("#dd8452", "#c44e52", "#8172b3", "#937860"),
    }

    def __init__(self, records: list[dict[str, Any]], loops: list[str]) -> None:
        self.plotted = [r for r in records if r["ratio"] is not None and r["contender"] != "plain"]
        self.loops = [lp for lp in loops if any(r["loop"] == lp for r in self.plotted)]
        if not self.loops:
            raise SystemExit("--plot: no ratios to plot (is the plain contender measured?)")

        def label_key(r: dict[str, Any]) -> tuple[int, str]:
            kind = r["contender"].split("[")[0]
            order = self.KIND_ORDER
            return (order.index(kind) if kind in order else len(order), r["label"])

        self.labels = sorted(
            {r["label"] for r in self.plotted},
            key=lambda lb: label_key(next(r for r in self.plotted if r["label"] == lb)),
        )
        self.cases: list[str] = []
        for r in self.plotted:
            if r["case"] not in self.cases:
                self.cases.append(r["case"])
        ratios = [r["ratio"] for r in self.plotted]
        self.log = max(ratios) / min(ratios) > 8
        used: dict[str, int] = {}
        self.colors: dict[str, str] = {}
        for lb in self.labels:
            kind = lb.split("[")[0].split(" ")[0]
            shades = self.PALETTE.get(kind, ("#777777",))
            self.colors[lb] = shades[used.get(kind, 0) % len(shades)]
            used[kind] = used.get(kind, 0) + 1

    def bars(self, loop: str) -> list[tuple[int, float, float, str, float]]:
        """(case index, x, width, label, ratio) of every bar of *loop*."""
        out = []
        for i, case in enumerate(self.cases):
            here = {
                r["label"]: r["ratio"]
                for r in self.plotted
                if r["loop"] == loop and r["case"] == case
            }
            labels = [lb for lb in self.labels if lb in here]
            if not labels:
                continue
            width = min(0.8 / len(labels), 0.22)
            for j, lb in enumerate(labels):
                x = i + (j - (len(labels) - 1) / 2) * width
                out.append((i, x, width, lb, here[lb]))
        return out


def footer(meta: dict[str, Any]) -> str:
    v = meta["versions"]
    return (
        f"Python {meta['python']}, greenlet {v.get('greenlet')}, uvloop {v.get('uvloop')}, "
        f"greenback {v.get('greenback')}, SQLAlchemy {v.get('sqlalchemy')}, "
        f"Trio {v.get('trio')}; {meta['cpu']}" + ("; QUICK MODE" if meta.get("quick") else "")
    )


def panel_title(loop: str) -> str:
    return f"{loop}: cost relative to plain {loop} (1.0 = no overhead, lower is better)"


def write_plot(
    path: Path, meta: dict[str, Any], records: list[dict[str, Any]], loops: list[str]
) -> None:
    """The ratios as grouped bars per case, one panel per loop: an SVG
    (written here, no dependency) if *path* ends with ``.svg``, else a PNG
    by matplotlib."""
    data = PlotData(records, loops)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".svg":
        path.write_text(svg_plot(data, meta))
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases, labels = data.cases, data.labels
    fig, axes = plt.subplots(
        len(data.loops),
        1,
        figsize=(max(10.0, 1.2 * len(cases) + 3), 4.6 * len(data.loops)),
        squeeze=False,
    )
    for ax, loop in zip(axes[:, 0], data.loops, strict=True):
        seen: set[str] = set()
        for _, x, width, lb, ratio in data.bars(loop):
            ax.bar(
                x,
                ratio,
                width=width * 0.95,
                color=data.colors[lb],
                label=None if lb in seen else lb,
            )
            ax.annotate(
                f"{ratio:.1f}",
                (x, ratio),
                ha="center",
                va="bottom",
                fontsize=6.5,
                xytext=(0, 1),
                textcoords="offset points",
            )
            seen.add(lb)
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        if data.log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases)
        ax.set_xlim(-0.6, len(cases) - 0.4)
        ax.set_ylabel(f"median / median of plain {loop}")
        ax.set_title(panel_title(loop))
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
    fig.text(0.01, 0.005, footer(meta), fontsize="x-small")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Tick values covering [lo, hi]."""
    if log:
        ticks = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            ticks += [m * 10.0**e for m in (1, 2, 5)]
        return [t for t in ticks if lo <= t <= hi]
    raw = (hi - lo) / 6
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def svg_plot(data: PlotData, meta: dict[str, Any]) -> str:
    """The plot as an SVG document (the matplotlib layout, drawn by hand)."""
    from xml.sax.saxutils import escape

    ncases = len(data.cases)
    left, legend_w, top_pad, bottom_pad = 70.0, 250.0, 34.0, 30.0
    plot_w = max(640.0, 100.0 * ncases + 80)
    panel_h, plot_h = 400.0, 400.0 - top_pad - bottom_pad
    width = left + plot_w + legend_w
    height = panel_h * len(data.loops) + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
    ]
    ratios = [float(r["ratio"]) for r in data.plotted]
    if data.log:
        lo, hi = min(min(ratios), 1.0) / 1.3, max(ratios) * 1.6
    else:
        lo, hi = 0.0, max(max(ratios), 1.0) * 1.12

    def scale(v: float) -> float:  # 0 at the bottom of the plot, 1 at its top
        if data.log:
            return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (v - lo) / (hi - lo)

    def xpos(x: float) -> float:  # case index -0.6 .. ncases-0.4 across the plot
        return left + (x + 0.6) / ncases * plot_w

    for k, loop in enumerate(data.loops):
        y0 = k * panel_h + top_pad  # top of the plot area
        yb = y0 + plot_h

        def ypos(v: float, y0: float = y0) -> float:
            return y0 + plot_h * (1 - scale(v))

        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{y0 - 12:.1f}" font-size="13" '
            f'text-anchor="middle">{escape(panel_title(loop))}</text>'
        )
        for t in _ticks(lo, hi, data.log):
            y = ypos(t)
            out.append(
                f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#cccccc" stroke-width="0.8"/>'
            )
            out.append(
                f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" font-size="10" '
                f'text-anchor="end">{t:g}</text>'
            )
        for _, x, w, lb, ratio in data.bars(loop):
            bx, bw = xpos(x - w * 0.475), w * 0.95 / ncases * plot_w
            top = ypos(ratio)
            base = yb if data.log else ypos(0.0)
            out.append(
                f'<rect x="{bx:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{base - top:.1f}" '
                f'fill="{data.colors[lb]}"><title>{escape(lb)}: {ratio:.2f}</title></rect>'
            )
            out.append(
                f'<text x="{xpos(x):.1f}" y="{top - 2:.1f}" font-size="8" '
                f'text-anchor="middle">{ratio:.1f}</text>'
            )
        y1 = ypos(1.0)
        out.append(
            f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{y1:.1f}" y2="{y1:.1f}" '
            'stroke="black" stroke-width="1" stroke-dasharray="5,3"/>'
        )
        out.append(
            f'<rect x="{left:.1f}" y="{y0:.1f}" width="{plot_w:.1f}" height="{plot_h:.1f}" '
            'fill="none" stroke="black" stroke-width="0.8"/>'
        )
        for i, case in enumerate(data.cases):
            out.append(
                f'<text x="{xpos(i):.1f}" y="{yb + 16:.1f}" font-size="11" '
                f'text-anchor="middle">{escape(case)}</text>'
            )
        out.append(
            f'<text transform="translate({left - 46:.1f},{y0 + plot_h / 2:.1f}) rotate(-90)" '
            f'font-size="11" text-anchor="middle">median / median of plain {escape(loop)}</text>'
        )
        here = [lb for lb in data.labels if any(b[3] == lb for b in data.bars(loop))]
        for j, lb in enumerate(here):
            ly = y0 + 6 + j * 17
            lx = left + plot_w + 12
            out.append(
                f'<rect x="{lx:.1f}" y="{ly:.1f}" width="18" height="11" fill="{data.colors[lb]}"/>'
            )
            out.append(
                f'<text x="{lx + 24:.1f}" y="{ly + 10:.1f}" font-size="11">{escape(lb)}</text>'
            )
    out.append(f'<text x="6" y="{height - 8:.0f}" font-size="9">{escape(footer(meta))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
