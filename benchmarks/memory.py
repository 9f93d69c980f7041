"""Case f: resident memory per idle task, one fresh subprocess per sample.

The harness calls :func:`sample_memory`, which runs this module as
``python -m benchmarks.memory --contender NAME --loop LOOP --variant V
--tasks M`` and reads the JSON line it prints. In the worker, a few tasks
first go through the whole path (so one-time setup is not counted), then
RSS (``/proc/self/statm``) is read, M tasks are created and left idle, RSS is
read again once all of them wait, and the difference is divided by M.

Variants: ``idle`` (tasks wait on one ``asyncio.Event`` with ``await``) and
``await_`` (tasks wait on it through ``await_`` from synchronous code).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.cases import Params, Sample
from benchmarks.contenders import (
    BenchmarkError,
    Contender,
    check,
    contender_from_name,
    process_core,
)

ROOT = Path(__file__).resolve().parent.parent
WARMUP_TASKS = 100


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


async def park_tasks(c: Contender, variant: str, m: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    waiting = [0]

    if variant == "idle":
        gb = c.greenback if c.kind == "greenback" else None

        async def body() -> int:
            if gb is not None:
                await gb.ensure_portal()
            waiting[0] += 1
            await event.wait()
            return 1

    elif variant == "await_":

        def sync_wait(await_: Any) -> int:
            waiting[0] += 1
            check(await_(event.wait()) is True, "await_(event.wait()) did not return True")
            return 1

        async def body() -> int:
            return int(await c.run_sync(sync_wait))

    else:
        raise SystemExit(f"unknown variant {variant!r}")

    async def batch(k: int) -> dict[str, Any]:
        nonlocal event
        event = asyncio.Event()
        waiting[0] = 0
        gc.collect()
        before = rss_bytes()
        tasks = [loop.create_task(body()) for _ in range(k)]
        while waiting[0] < k:
            await asyncio.sleep(0)
        for _ in range(3):  # let every task reach its wait
            await asyncio.sleep(0)
        gc.collect()
        after = rss_bytes()
        check(not any(t.done() for t in tasks), "a task finished before the event was set")
        event.set()
        results = await asyncio.gather(*tasks)
        check(sum(results) == k, f"{k} tasks returned {sum(results)}")
        return {"rss_before": before, "rss_after": after, "tasks": k}

    await batch(WARMUP_TASKS)
    return await batch(m)


def worker(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    ap.add_argument("--contender", required=True)
    ap.add_argument("--loop", required=True, choices=("asyncio", "uvloop"))
    ap.add_argument("--variant", required=True, choices=("idle", "await_"))
    ap.add_argument("--tasks", type=int, required=True)
    args = ap.parse_args(argv)
    c = contender_from_name(args.contender)
    if c.skip:
        raise SystemExit(c.skip)
    if not c.in_process:
        raise SystemExit(f"{c.name}: this process selected greenback_loop[{process_core()}]")
    with asyncio.Runner(loop_factory=c.loop_factory(args.loop)) as runner:
        out = runner.run(park_tasks(c, args.variant, args.tasks))
    out["bytes_per_task"] = (out["rss_after"] - out["rss_before"]) / out["tasks"]
    print(json.dumps(out))
    return 0


def sample_memory(c: Contender, loop: str, variant: str, p: Params) -> Sample:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--contender",
        c.name,
        "--loop",
        loop,
        "--variant",
        variant,
        "--tasks",
        str(p.memory_tasks),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=c.env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BenchmarkError(
            f"memory worker failed ({' '.join(cmd[1:])}), exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise BenchmarkError(
            f"memory worker printed no result: {proc.stdout!r} {proc.stderr!r}"
        ) from exc
    value = float(out["bytes_per_task"])
    check(value > 0, f"{c.name} {loop} {variant}: RSS did not grow ({out})")
    return Sample(value, {"rss_before": out["rss_before"], "rss_after": out["rss_after"]})


if __name__ == "__main__":
    raise SystemExit(worker())
