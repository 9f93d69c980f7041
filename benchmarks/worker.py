"""One sample of a loop case, in this process or in a subprocess.

greenback_loop selects its core once, at import, so a ``greenback_loop[<core>]``
contender for the core this process did not select is measured by
``python -m benchmarks.worker --case ID --contender NAME --loop LOOP
[--variant V] --params JSON``, run with ``GREENBACK_LOOP_NO_EXTENSIONS`` set
for that core. The worker runs the case once to warm up (it is a fresh
process), then once more, and prints that sample as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks.cases import Case, Params, Sample, all_cases
from benchmarks.contenders import LOOPS, BenchmarkError, Contender, contender_from_name

ROOT = Path(__file__).resolve().parent.parent


def run_in_loop(case: Case, c: Contender, variant: str | None, loop: str, params: Params) -> Sample:
    """One sample of *case*, on a fresh loop (a fresh ``trio.run``) in this
    process."""
    body = case.body_for(loop)
    assert body is not None
    with c.unhooked(variant):
        gc.collect()
        if loop == "trio":
            sample = c.run_trio(body, c, variant, params, variant=variant)
            assert isinstance(sample, Sample)
            return sample
        with asyncio.Runner(loop_factory=c.loop_factory(loop, variant)) as runner:
            return runner.run(body(c, variant, params))  # type: ignore[arg-type]


def sample_in_subprocess(
    case: Case, c: Contender, variant: str | None, loop: str, params: Params
) -> Sample:
    """One sample of *case*, measured by a worker process that selects the
    contender's greenback_loop core."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--case",
        case.id,
        "--contender",
        c.name,
        "--loop",
        loop,
        "--params",
        json.dumps(asdict(params)),
    ]
    if variant is not None:
        cmd += ["--variant", variant]
    proc = subprocess.run(cmd, cwd=ROOT, env=c.env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BenchmarkError(
            f"worker failed ({' '.join(cmd[3:])}), exit {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchmarkError(f"worker printed no result: {proc.stdout!r} {proc.stderr!r}") from exc
    return Sample(float(out["value"]), {k: float(v) for k, v in out["extra"].items()})


def worker(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    ap.add_argument("--case", required=True)
    ap.add_argument("--contender", required=True)
    ap.add_argument("--loop", required=True, choices=LOOPS)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--params", required=True, help="the Params, as JSON")
    args = ap.parse_args(argv)
    params = Params(**json.loads(args.params))
    case = next((x for x in all_cases(params.depth) if x.id == args.case), None)
    if case is None or case.body_for(args.loop) is None:
        raise SystemExit(f"no loop case {args.case!r} on {args.loop}")
    c = contender_from_name(args.contender)
    if c.skip:
        raise SystemExit(c.skip)
    if not c.in_process:
        raise SystemExit(f"{c.name} cannot be measured in this process: check its environment")
    run_in_loop(case, c, args.variant, args.loop, params)  # warm-up
    sample = run_in_loop(case, c, args.variant, args.loop, params)
    print(json.dumps({"value": sample.value, "extra": sample.extra}))
    return 0


if __name__ == "__main__":
    raise SystemExit(worker())
