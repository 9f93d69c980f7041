"""The command line: pick cases, loops and contenders, measure, report."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.cases import Case, Params, Sample, all_cases
from benchmarks.contenders import (
    LOOPS,
    ON_GBL,
    BenchmarkError,
    Contender,
    all_contenders,
    loop_note,
)
from benchmarks.memory import sample_memory
from benchmarks.worker import run_in_loop, sample_in_subprocess

DEFAULT_JSON = report.ROOT / "benchmarks" / "results" / "latest.json"

# One measured row of a case: (label, contender, variant).
Row = tuple[str, Contender, "str | None"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure the cost of greenback_loop's portals against plain asyncio/uvloop/Trio, "
        "greenback 1.x and SQLAlchemy's greenlet bridge.",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="samples per row after the warm-up (default 5; 1 with --quick)",
    )
    ap.add_argument(
        "--memory-repeats",
        type=int,
        default=None,
        help="samples per row of case f, one subprocess each (default 3; 1 with --quick)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 sample: only proves every case runs"
    )
    ap.add_argument(
        "--cases",
        default=None,
        help="comma-separated case letters or ids (a,b,c,d,e,f,g,h or d.coro, h.deep, ...)",
    )
    ap.add_argument(
        "--loops", default=None, help="comma-separated: asyncio,uvloop,trio (default all three)"
    )
    ap.add_argument(
        "--contenders",
        default=None,
        help="comma-separated: plain,greenback,sqlalchemy,greenback_loop (all cores) or greenback_loop[<core>]",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"results file (default {DEFAULT_JSON.relative_to(report.ROOT)})",
    )
    ap.add_argument(
        "--plot", type=Path, default=None, help="write a PNG of the ratios (needs matplotlib)"
    )
    ap.add_argument(
        "--rst", type=Path, default=None, help="write a reStructuredText table for the docs"
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="measure nothing: print, --rst and --plot the results saved in PATH",
    )
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.memory_repeats is None:
        args.memory_repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.memory_repeats < 1:
        ap.error("--repeats and --memory-repeats must be >= 1")
    return args


def split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [x.strip() for x in value.split(",") if x.strip()]


def select_cases(spec: list[str] | None, cases: list[Case], notes: list[str]) -> list[Case]:
    if spec is None:
        return cases
    known = {c.id for c in cases} | {c.letter for c in cases}
    bad = [s for s in spec if s not in known]
    if bad:
        raise SystemExit(f"unknown case(s) {bad}; known: {sorted(known)}")
    chosen = [c for c in cases if c.id in spec or c.letter in spec]
    ids = {c.id for c in chosen}
    for c in list(chosen):  # a baseline from another case is measured too
        if c.baseline and c.baseline[0] not in ids:
            base = next(x for x in cases if x.id == c.baseline[0])
            notes.append(f"case {base.id} added: it is the baseline of case {c.id}")
            chosen.append(base)
            ids.add(base.id)
    return [c for c in cases if c.id in ids]


def select_contenders(
    spec: list[str] | None, contenders: list[Contender], notes: list[str]
) -> list[Contender]:
    if spec is not None:
        names = {c.name for c in contenders} | {"greenback_loop"}
        bad = [s for s in spec if s not in names]
        if bad:
            raise SystemExit(f"unknown contender(s) {bad}; known: {sorted(names)}")
        contenders = [
            c
            for c in contenders
            if c.name in spec or (c.kind == "greenback_loop" and "greenback_loop" in spec)
        ]
    usable = []
    for c in contenders:
        if c.skip:
            notes.append(f"SKIPPED {c.skip}")
        else:
            usable.append(c)
    return usable


def rows_for(case: Case, contenders: list[Contender], loop: str) -> list[Row]:
    rows: list[Row] = []
    if not case.runs_on(loop):
        return rows
    for kind, variant in case.rows:
        for c in contenders:
            if c.kind == kind and c.supports(variant, loop):
                label = c.name if variant is None or case.letter == "f" else f"{c.name} ({variant})"
                rows.append((label, c, variant))
    return rows


def measure(case: Case, row: Row, loop: str, params: Params) -> Sample:
    label, c, variant = row
    try:
        if case.body is None:
            return sample_memory(c, loop, "idle" if case.id == "f.idle" else "await_", params)
        if not c.in_process:
            return sample_in_subprocess(case, c, variant, loop, params)
        return run_in_loop(case, c, variant, loop, params)
    except Exception as exc:
        raise BenchmarkError(f"case {case.id} on {loop}, contender {label}: {exc}") from exc


def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "samples": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def measure_case(
    case: Case, rows: list[Row], loop: str, params: Params, repeats: int
) -> list[dict[str, Any]]:
    samples: dict[str, list[Sample]] = {label: [] for label, _, _ in rows}
    if case.body is not None:
        for row in rows:  # one warm-up run each (a subprocess sample warms up itself)
            if row[1].in_process:
                measure(case, row, loop, params)
    for _ in range(repeats):  # rounds: every row once per round
        for row in rows:
            samples[row[0]].append(measure(case, row, loop, params))
    records = []
    for label, c, variant in rows:
        got = samples[label]
        values = [s.value for s in got]
        extra = {key: summarize([s.extra[key] for s in got]) for key in got[0].extra}
        records.append(
            {
                "case": case.id,
                "title": case.title_for(loop),
                "loop": loop,
                "contender": c.name,
                "variant": variant,
                "label": label,
                "unit": case.unit,
                **summarize(values),
                "extra": extra,
            }
        )
    return records


def add_ratios(records: list[dict[str, Any]], cases: list[Case]) -> None:
    """``ratio``: median / the baseline's median (plain, same loop and case,
    unless the case names another); ``vs_greenback``: median / the lowest
    median of greenback's own rows (not ``on greenback_loop``) of the same
    case and loop, None where greenback has no row."""
    by_key = {(r["case"], r["loop"], r["contender"], r["variant"]): r for r in records}
    baseline_of = {c.id: (c.baseline or (c.id, "plain")) for c in cases}
    best_greenback: dict[tuple[str, str], float] = {}
    for r in records:
        if r["contender"] == "greenback" and r["variant"] != ON_GBL:
            key = (r["case"], r["loop"])
            best_greenback[key] = min(best_greenback.get(key, math.inf), r["median"])
    for r in records:
        base_case, base_kind = baseline_of[r["case"]]
        base = by_key.get((base_case, r["loop"], base_kind, None))
        r["baseline"] = f"{base_case}/{base_kind}"
        r["ratio"] = r["median"] / base["median"] if base else None
        gb = best_greenback.get((r["case"], r["loop"]))
        r["vs_greenback"] = r["median"] / gb if gb else None


def render(args: argparse.Namespace, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    loops = [lp for lp in LOOPS if lp in meta["loops"]]
    print(report.terminal_tables(records, loops))
    print(
        "ratio = median / median of plain on the same loop and case "
        "(b: vs a/plain; f.await_: vs f.idle/plain); vs gb = median / the lowest median "
        f"of greenback's own rows of the case and loop; total {meta['duration_s']} s"
    )
    if args.rst:
        report.write_rst(args.rst, meta, records, loops)
        print(f"wrote {args.rst}")
    if args.plot:
        report.write_plot(args.plot, meta, records, loops)
        print(f"wrote {args.plot}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        for line in report.metadata_lines(data["metadata"]):
            print(line)
        print()
        render(args, data["metadata"], data["results"])
        return 0
    started = time.perf_counter()
    params = Params.quick() if args.quick else Params()
    notes: list[str] = []
    cases = select_cases(split(args.cases), all_cases(params.depth), notes)
    contenders = select_contenders(split(args.contenders), all_contenders(), notes)
    loops = split(args.loops) or list(LOOPS)
    bad_loops = [lp for lp in loops if lp not in LOOPS]
    if bad_loops:
        raise SystemExit(f"unknown loop(s) {bad_loops}; known: {list(LOOPS)}")
    for lp in list(loops):
        why = loop_note(lp)
        if why:
            notes.append(f"SKIPPED loop {lp}: {why}")
            loops.remove(lp)

    meta = report.collect_metadata()
    meta.update(
        params=asdict(params),
        repeats=args.repeats,
        memory_repeats=args.memory_repeats,
        warmup_runs=1,
        quick=args.quick,
        loops=loops,
        cases=[c.id for c in cases],
        contenders=[c.name for c in contenders],
        notes=notes,
        command=[
            Path(sys.executable).name,
            "-m",
            "benchmarks",
            *(argv if argv is not None else sys.argv[1:]),
        ],
    )
    for line in report.metadata_lines(meta):
        print(line)
    for note in notes:
        print(f"note: {note}")
    print(flush=True)

    records: list[dict[str, Any]] = []
    try:
        for case in cases:
            reps = args.memory_repeats if case.body is None else args.repeats
            for loop in loops:
                rows = rows_for(case, contenders, loop)
                if not rows:
                    continue
                t0 = time.perf_counter()
                got = measure_case(case, rows, loop, params, reps)
                records += got
                summary = ", ".join(f"{r['label']} {report.fmt(r['median'])}" for r in got)
                print(
                    f"[{time.perf_counter() - t0:6.1f}s] {case.id} {loop}: {summary} {case.unit}",
                    file=sys.stderr,
                    flush=True,
                )
    except BenchmarkError:
        traceback.print_exc()
        print(
            "\nFAILED: a measurement produced a wrong result or raised; no results written.",
            file=sys.stderr,
        )
        return 1
    add_ratios(records, cases)
    meta["duration_s"] = round(time.perf_counter() - started, 1)

    report.write_json(args.json, meta, records)
    render(args, meta, records)
    print(f"wrote {args.json}")
    return 0
