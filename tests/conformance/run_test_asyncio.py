"""CPython's own test_asyncio as a conformance suite for greenback_loop.

Runs the interpreter's ``test.test_asyncio`` package one module per
subprocess (two at a time by default) in these runs:

``plain``
    unmodified: the baseline.
``loop-c``, ``loop-python``
    every loop class test_asyncio runs tasks on is one of greenback_loop's
    (see ``_worker.py`` for exactly which), with the C core or the
    pure-Python twin (``GREENBACK_LOOP_NO_EXTENSIONS=1``).
``policy-c``, ``policy-python``
    ``greenback_loop.GreenbackPolicy()`` is the event loop policy.

Every test that passes on plain must pass in each other run, with no new
unraisable exceptions, thread exceptions or asyncio ERROR log records. Tests
that fail or are skipped on plain are left out of the comparison. A
regression is rerun once, alone, in a fresh process; one that does not come
back is reported as flaky and does not fail the run. Regressions listed in
``known_failures.txt`` are reported but do not fail the run; a listed test
that now passes is reported so that its entry can go.

A census counts, per test, the tasks whose coroutine is a greenback_loop
Portal, so the table says how much of test_asyncio really ran through
portals.

Usage::

    python -m tests.conformance.run_test_asyncio            # all five runs
    python -m tests.conformance.run_test_asyncio --runs plain,loop-c \\
        --modules test_tasks,test_locks --jobs 2

Exits 1 on unexpected regressions (or when test_asyncio cannot be found),
0 otherwise. Logs and a JSON report go to ``build/conformance/``.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKER = HERE / "_worker.py"
KNOWN_FAILURES = HERE / "known_failures.txt"

RUNS = ("plain", "loop-c", "loop-python", "policy-c", "policy-python")
PASSING = frozenset({"pass", "xfail"})
FAILING = frozenset({"fail", "error", "uxpass", "crash", "timeout"})

# Modules left out, with the reason. (Windows-only modules skip themselves.)
SKIPPED_MODULES: dict[str, str] = {}

# Measured on plain 3.11, seconds, so the long modules start first; modules
# not listed go after these, in name order.
EXPECTED_SECONDS = {
    "test_tasks": 45,
    "test_events": 24,
    "test_subprocess": 23,
    "test_ssl": 19,
    "test_futures": 7,
    "test_taskgroups": 7,
    "test_sock_lowlevel": 6,
    "test_sslproto": 6,
    "test_sendfile": 5,
    "test_base_events": 3,
}


@dataclass
class Record:
    id: str
    outcome: str
    duration: float = 0.0
    details: list[str] = field(default_factory=list)
    unraisable: list[dict[str, str]] = field(default_factory=list)
    log_errors: list[dict[str, str]] = field(default_factory=list)
    tasks: int = 0
    portal_tasks: int = 0
    fixture: bool = False


@dataclass
class ModuleResult:
    module: str
    records: dict[str, Record] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    census: bool = False
    seconds: float = 0.0
    restarts: int = 0


@dataclass
class Regression:
    run: str
    id: str
    kind: str  # "fail", "unraisable", "log", "missing"
    summary: str
    detail: str
    known: str | None = None  # the reason from known_failures.txt
    flaky: bool = False


@dataclass
class RunResult:
    name: str
    modules: dict[str, ModuleResult] = field(default_factory=dict)
    seconds: float = 0.0
    regressions: list[Regression] = field(default_factory=list)

    def records(self) -> dict[str, Record]:
        out: dict[str, Record] = {}
        for m in self.modules.values():
            out.update(m.records)
        return out


# -- finding test_asyncio ----------------------------------------------------


def find_modules(python: str) -> list[str]:
    """The ``test_*`` modules of *python*'s ``test.test_asyncio``."""
    if python == sys.executable:
        spec = importlib.util.find_spec("test.test_asyncio")
        where = list(spec.submodule_search_locations or []) if spec else []
    else:
        code = (
            "import importlib.util as u; s = u.find_spec('test.test_asyncio'); "
            "print(s.submodule_search_locations[0] if s else '')"
        )
        out = subprocess.run([python, "-c", code], capture_output=True, text=True)
        where = [out.stdout.strip()] if out.stdout.strip() else []
    if not where:
        raise SystemExit(
            f"{python} has no test.test_asyncio package: CPython's test suite is "
            "not installed (on Debian and Ubuntu it is the libpython3.X-testsuite "
            "package; pyenv and python.org builds ship it)."
        )
    return sorted(p.stem for p in Path(where[0]).glob("test_*.py"))


# -- running one module ------------------------------------------------------


def _env(run: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    if run.endswith("-python"):
        env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    return env


def _mode_core(run: str) -> tuple[str, str | None]:
    mode, _, core = run.partition("-")
    return mode, core or None


def run_module(
    python: str,
    run: str,
    module: str,
    logdir: Path,
    *,
    only: set[str] | None = None,
    test_timeout: float,
    module_timeout: float,
    max_restarts: int = 8,
    package: str = "test.test_asyncio",
) -> ModuleResult:
    """Run *module* under *run* in a subprocess, restarting it past a test
    that crashed or hung the process."""
    result = ModuleResult(module)
    mode, core = _mode_core(run)
    done: set[str] = set()
    started = time.monotonic()
    attempt = 0
    with tempfile.TemporaryDirectory(prefix=f"conform-{run}-{module}-") as tmp:
        tmpdir = Path(tmp)
        while True:
            results = tmpdir / f"results.{attempt}.jsonl"
            skipfile = tmpdir / "skip.txt"
            skipfile.write_text("\n".join(sorted(done)) + "\n")
            cmd = [
                python,
                str(WORKER),
                "--mode",
                mode,
                "--module",
                f"{package}.{module}" if package else module,
                "--results",
                str(results),
                "--skip",
                str(skipfile),
                "--test-timeout",
                str(test_timeout),
            ]
            if core:
                cmd += ["--core", core]
            if only is not None:
                onlyfile = tmpdir / "only.txt"
                onlyfile.write_text("\n".join(sorted(only)) + "\n")
                cmd += ["--only", str(onlyfile)]
            log = logdir / f"{module}.{attempt}.log"
            cwd = tmpdir / "cwd"
            cwd.mkdir(exist_ok=True)
            remaining = module_timeout - (time.monotonic() - started)
            timed_out = False
            with open(log, "wb") as logf:
                proc = subprocess.Popen(
                    cmd,
                    cwd=cwd,
                    env=_env(run),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    proc.wait(timeout=max(remaining, 1.0))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc)
            events = _read_events(results)
            finished, collected, last_started = _absorb(result, events)
            done |= finished
            if result.skipped is not None or result.error is not None or collected is None:
                if collected is None and result.skipped is None and result.error is None:
                    result.error = f"worker exited with {proc.returncode}:\n{_log_tail(log)}"
                break
            if any(e.get("event") == "done" for e in events):
                break
            # the process died (or hung past the module timeout) in a test
            tail = _log_tail(log)
            if last_started is not None and last_started not in finished:
                hung = timed_out or "Timeout (" in tail
                result.records[last_started] = Record(
                    last_started,
                    "timeout" if hung else "crash",
                    details=[f"process exit code {proc.returncode}\n{tail}"],
                )
                done.add(last_started)
            wanted = [i for i in collected if only is None or i in only]
            left = [i for i in wanted if i not in done]
            attempt += 1
            if timed_out or not left or attempt > max_restarts:
                for i in left:
                    result.records[i] = Record(
                        i, "timeout" if timed_out else "crash", details=["not run: " + tail]
                    )
                break
    result.restarts = attempt
    result.seconds = time.monotonic() - started
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            pass
    return events


def _absorb(
    result: ModuleResult, events: list[dict[str, Any]]
) -> tuple[set[str], list[str] | None, str | None]:
    finished: set[str] = set()
    collected: list[str] | None = None
    last_started: str | None = None
    for e in events:
        kind = e.get("event")
        if kind == "collected":
            collected = e["ids"]
            result.census = bool(e.get("census"))
        elif kind == "start":
            last_started = e["id"]
        elif kind == "test":
            rec = Record(
                e["id"],
                e["outcome"],
                e.get("duration", 0.0),
                e.get("details", []),
                e.get("unraisable", []),
                e.get("log_errors", []),
                e.get("tasks", 0),
                e.get("portal_tasks", 0),
                e.get("fixture", False),
            )
            if rec.fixture and rec.id in result.records:
                result.records[rec.id].details += rec.details
            else:
                result.records[rec.id] = rec
            finished.add(rec.id)
        elif kind == "late":
            target = result.records.get(e["id"])
            if target is None:
                target = result.records.setdefault(e["id"], Record(e["id"], "pass", fixture=True))
            target.unraisable += e.get("unraisable", [])
            target.log_errors += e.get("log_errors", [])
        elif kind == "module_skip":
            result.skipped = e["reason"]
        elif kind == "module_error":
            result.error = e["error"]
    return finished, collected, last_started


def _log_tail(path: Path, limit: int = 2500) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def run_all(
    python: str,
    run: str,
    modules: list[str],
    logroot: Path,
    *,
    jobs: int,
    test_timeout: float,
    module_timeout: float,
    only: dict[str, set[str]] | None = None,
) -> RunResult:
    logdir = logroot / run
    logdir.mkdir(parents=True, exist_ok=True)
    order = sorted(modules, key=lambda m: (-EXPECTED_SECONDS.get(m, 0), m))
    out = RunResult(run)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            m: pool.submit(
                run_module,
                python,
                run,
                m,
                logdir,
                only=None if only is None else only[m],
                test_timeout=test_timeout,
                module_timeout=module_timeout,
            )
            for m in order
        }
        for m, fut in futures.items():
            out.modules[m] = fut.result()
    out.seconds = time.monotonic() - started
    return out


# -- comparing ---------------------------------------------------------------


def _keys(items: list[dict[str, str]]) -> Counter[str]:
    return Counter(i["key"] for i in items)


def compare(plain: RunResult, other: RunResult) -> list[Regression]:
    """What *other* does worse than *plain*, test by test."""
    base, mine = plain.records(), other.records()
    regs: list[Regression] = []
    for tid, b in base.items():
        m = mine.get(tid)
        if b.outcome in PASSING and not b.fixture:
            if m is None:
                regs.append(Regression(other.name, tid, "missing", "not run", ""))
                continue
            if m.outcome not in PASSING:
                summary = m.outcome
                detail = "\n".join(m.details)
                if m.outcome == "skip":
                    summary = f"skipped ({' '.join(m.details)[:100]})"
                else:
                    summary = f"{m.outcome}: {_last_line(detail)}"
                regs.append(Regression(other.name, tid, "fail", summary, detail))
        if m is None:
            continue
        for kind, attr in (("unraisable", "unraisable"), ("log", "log_errors")):
            new = _keys(getattr(m, attr)) - _keys(getattr(b, attr))
            if new:
                texts = [i["text"] for i in getattr(m, attr) if i["key"] in new]
                regs.append(
                    Regression(
                        other.name,
                        tid,
                        kind,
                        f"new {kind}: {next(iter(new))[:120]}",
                        "\n---\n".join(texts),
                    )
                )
    for tid, m in mine.items():
        if tid not in base and m.outcome in FAILING:
            detail = "\n".join(m.details)
            regs.append(
                Regression(other.name, tid, "fail", f"{m.outcome}: {_last_line(detail)}", detail)
            )
    return regs


def normalize(text: str) -> str:
    """As ``_worker.normalize``: addresses and numbers vary from run to run."""
    return re.sub(r"\d+", "N", re.sub(r"0x[0-9a-fA-F]+", "0x?", text))[:300]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:160] if lines else ""


# -- known failures ----------------------------------------------------------


@dataclass
class Known:
    run_glob: str
    id_glob: str
    reason: str
    line: int
    used: bool = False


def load_known(path: Path) -> list[Known]:
    """``RUN-GLOB TEST-ID-GLOB REASON...`` per line; ``#`` starts a comment."""
    out: list[Known] = []
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise SystemExit(f"{path}:{n}: expected 'RUN-GLOB TEST-ID-GLOB reason', got {raw!r}")
        out.append(Known(parts[0], parts[1], parts[2], n))
    return out


def apply_known(regs: list[Regression], known: list[Known]) -> None:
    for r in regs:
        for k in known:
            if fnmatch.fnmatchcase(r.run, k.run_glob) and fnmatch.fnmatchcase(r.id, k.id_glob):
                r.known = k.reason
                k.used = True
                break


# -- reporting ---------------------------------------------------------------


def table(runs: dict[str, RunResult], plain: RunResult | None) -> str:
    head = (
        "run",
        "core",
        "tests",
        "run",
        "passed",
        "failed",
        "skipped",
        "regress",
        "known",
        "flaky",
        "portal tests",
        "portal tasks",
        "wall s",
    )
    rows = [head]
    for name, r in runs.items():
        recs = [x for x in r.records().values() if not x.fixture]
        count = Counter(x.outcome for x in recs)
        mode, core = _mode_core(name)
        unknown = [g for g in r.regressions if g.known is None and not g.flaky]
        census = any(m.census for m in r.modules.values())
        rows.append(
            (
                mode,
                core or "-",
                str(len(recs)),
                str(len(recs) - count["skip"]),
                str(count["pass"] + count["xfail"]),
                str(sum(count[k] for k in FAILING)),
                str(count["skip"]),
                "-" if r is plain else str(len({g.id for g in unknown})),
                "-" if r is plain else str(len({g.id for g in r.regressions if g.known})),
                "-" if r is plain else str(len({g.id for g in r.regressions if g.flaky})),
                str(sum(1 for x in recs if x.portal_tasks)) if census else "n/a",
                str(sum(x.portal_tasks for x in recs)) if census else "n/a",
                f"{r.seconds:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def report_json(runs: dict[str, RunResult], known: list[Known], path: Path) -> None:
    data: dict[str, Any] = {"runs": {}, "known_failures_unused": []}
    for name, r in runs.items():
        data["runs"][name] = {
            "seconds": r.seconds,
            "modules": {
                m: {
                    "seconds": mr.seconds,
                    "restarts": mr.restarts,
                    "skipped": mr.skipped,
                    "error": mr.error,
                }
                for m, mr in r.modules.items()
            },
            "tests": {
                tid: {
                    "outcome": x.outcome,
                    "duration": x.duration,
                    "tasks": x.tasks,
                    "portal_tasks": x.portal_tasks,
                }
                for tid, x in r.records().items()
            },
            "regressions": [
                {
                    "id": g.id,
                    "kind": g.kind,
                    "summary": g.summary,
                    "known": g.known,
                    "flaky": g.flaky,
                    "detail": g.detail[-4000:],
                }
                for g in r.regressions
            ],
        }
    data["known_failures_unused"] = [
        {"line": k.line, "run": k.run_glob, "id": k.id_glob} for k in known if not k.used
    ]
    path.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's test_asyncio against greenback_loop.",
        epilog="See the module docstring and docs/development.rst.",
    )
    parser.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated, from {','.join(RUNS)}"
    )
    parser.add_argument("--modules", default="", help="comma-separated test_asyncio modules")
    parser.add_argument("--jobs", type=int, default=2, help="modules run in parallel")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to test")
    parser.add_argument("--test-timeout", type=float, default=120.0, help="seconds per test")
    parser.add_argument("--module-timeout", type=float, default=600.0, help="seconds per module")
    parser.add_argument("--known", type=Path, default=KNOWN_FAILURES)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "conformance")
    parser.add_argument("-v", "--verbose", action="store_true", help="print full tracebacks")
    args = parser.parse_args(argv)

    runs_wanted = [r for r in args.runs.split(",") if r]
    for r in runs_wanted:
        if r not in RUNS:
            parser.error(f"unknown run {r!r}; choose from {', '.join(RUNS)}")
    if "plain" not in runs_wanted:
        runs_wanted.insert(0, "plain")  # the baseline is not optional
    runs_wanted.sort(key=RUNS.index)

    available = find_modules(args.python)
    modules = [m.removesuffix(".py") for m in args.modules.split(",") if m] or available
    for m in modules:
        if m not in available:
            parser.error(f"no module {m!r} in test_asyncio; have {', '.join(available)}")
    for m, why in SKIPPED_MODULES.items():
        if m in modules and not args.modules:
            print(f"skipping {m}: {why}")
            modules.remove(m)

    known = load_known(args.known)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    version = subprocess.run(
        [args.python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"test_asyncio conformance: Python {version}, {len(modules)} modules, "
        f"runs {', '.join(runs_wanted)}, {args.jobs} jobs",
        flush=True,
    )
    total_start = time.monotonic()
    runs: dict[str, RunResult] = {}
    plain: RunResult | None = None
    opts = {
        "jobs": args.jobs,
        "test_timeout": args.test_timeout,
        "module_timeout": args.module_timeout,
    }
    for name in runs_wanted:
        r = run_all(args.python, name, modules, args.out / "logs", **opts)
        runs[name] = r
        for m, mr in r.modules.items():
            if mr.error:
                print(f"  {name} {m}: ERROR {_last_line(mr.error)}")
        if plain is None:
            plain = r
            print(f"{name}: {len(r.records())} tests in {r.seconds:.0f}s", flush=True)
            continue
        r.regressions = compare(plain, r)
        apply_known(r.regressions, known)
        _confirm(args.python, plain, r, args.out / "logs", opts)
        bad = [g for g in r.regressions if g.known is None and not g.flaky]
        print(
            f"{name}: {len(r.records())} tests in {r.seconds:.0f}s, "
            f"{len(bad)} unexpected regression(s)",
            flush=True,
        )

    assert plain is not None
    print()
    print(table(runs, plain))
    print(f"\ntotal wall time {time.monotonic() - total_start:.0f}s")
    failed = _print_regressions(runs, args.verbose)
    _print_known_status(runs, known, plain)
    report_json(runs, known, args.out / "report.json")
    print(f"\nlogs and report.json in {args.out}")
    return 1 if failed else 0


def _confirm(
    python: str, plain: RunResult, r: RunResult, logroot: Path, opts: dict[str, Any]
) -> None:
    """Rerun the unexpected regressions of *r* once, each module's alone in a
    fresh process; those that do not come back are marked flaky."""
    records = r.records()
    suspects = [
        g
        for g in r.regressions
        if g.known is None and not (g.id in records and records[g.id].fixture)
    ]
    if not suspects:
        return
    by_module: dict[str, set[str]] = {}
    for g in suspects:
        mod = _module_of(g.id, r)
        if mod is not None:
            by_module.setdefault(mod, set()).add(g.id)
    rerun = run_all(
        python,
        r.name,
        sorted(by_module),
        logroot / "rerun",
        only=by_module,
        jobs=opts["jobs"],
        test_timeout=opts["test_timeout"],
        module_timeout=opts["module_timeout"],
    )
    again = {(g.id, g.kind) for g in compare(_restrict(plain, by_module), rerun)}
    for g in suspects:
        if (g.id, g.kind) not in again:
            g.flaky = True


def _module_of(test_id: str, r: RunResult) -> str | None:
    for m, mr in r.modules.items():
        if test_id in mr.records or test_id.startswith(f"test.test_asyncio.{m}."):
            return m
    return None


def _restrict(plain: RunResult, only: dict[str, set[str]]) -> RunResult:
    out = RunResult(plain.name)
    for m, ids in only.items():
        mr = ModuleResult(m)
        mr.records = {i: x for i, x in plain.modules[m].records.items() if i in ids}
        out.modules[m] = mr
    return out


def _signature(g: Regression) -> str:
    """What regressions with one cause share: the kind and the error's last line."""
    if g.kind == "fail":
        return f"fail: {normalize(_last_line(g.detail) or g.summary)}"
    return normalize(g.summary)


def _print_regressions(runs: dict[str, RunResult], verbose: bool, limit: int = 8) -> bool:
    """Print each run's regressions, grouped by cause (one traceback per
    group); return whether any was unexpected."""
    failed = False
    for name, r in runs.items():
        if not r.regressions:
            continue
        print(f"\n== {name}: regressions against plain ==")
        sections: tuple[tuple[str, Any], ...] = (
            ("UNEXPECTED", lambda g: g.known is None and not g.flaky),
            ("flaky (did not come back on a rerun)", lambda g: g.known is None and g.flaky),
            ("known (known_failures.txt)", lambda g: g.known is not None),
        )
        for label, pick in sections:
            chosen = [g for g in r.regressions if pick(g)]
            if not chosen:
                continue
            failed = failed or label == "UNEXPECTED"
            print(f"  {label}: {len(chosen)}")
            groups: dict[str, list[Regression]] = {}
            for g in chosen:
                key = g.known if g.known is not None else _signature(g)
                groups.setdefault(key, []).append(g)
            for key, members in groups.items():
                first = members[0]
                if first.known is not None:
                    print(f"    [{len(members)}] {key}")
                else:
                    print(f"    [{len(members)}] {first.summary}")
                shown = members if verbose else members[:limit]
                for g in shown:
                    print(f"      {g.id} [{g.kind}]")
                if len(members) > len(shown):
                    print(f"      ... and {len(members) - len(shown)} more (report.json)")
                if first.known is None and first.detail.strip():
                    detail = first.detail if verbose else first.detail[-1500:]
                    print(_indent(detail.rstrip(), "        | "))
    return failed


def _print_known_status(runs: dict[str, RunResult], known: list[Known], plain: RunResult) -> None:
    """Report known-failure entries that matched no regression in a run they
    cover although tests they name ran there: those tests pass now."""
    fixed = []
    for k in known:
        for name, r in runs.items():
            if r is plain or not fnmatch.fnmatchcase(name, k.run_glob):
                continue
            if any(
                g.known is not None
                and fnmatch.fnmatchcase(g.run, k.run_glob)
                and fnmatch.fnmatchcase(g.id, k.id_glob)
                for g in r.regressions
            ):
                continue
            ran = [t for t in r.records() if fnmatch.fnmatchcase(t, k.id_glob)]
            if ran:
                fixed.append(f"  {name}: {k.id_glob} (line {k.line}, {len(ran)} test(s) ran)")
    if fixed:
        print("\nknown failures that passed this time (drop or narrow their entries):")
        print("\n".join(fixed))


if __name__ == "__main__":
    sys.exit(main())
