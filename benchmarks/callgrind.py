"""Instructions per operation, by callgrind: the hot path's deterministic cost.

``python -m benchmarks.callgrind`` runs each case twice under
``valgrind --tool=callgrind`` (N and 3N operations) and prints the
difference divided by 2N, which removes start-up and teardown, with a fixed
hash seed so that runs of one build agree. Trio's scheduler draws random
numbers (its clock's offset, the order of a batch of runnable tasks), and a
plain Trio step's count depends on them (35,067 to 35,768 instructions in
runs of one build), so each Trio case seeds that generator
(``trio._core._run._r``) and runs once per seed, ``--trio-seeds K`` seeds
(default 3): the first column is the median over the seeds, the bracket
their range. Cases: a
plain ``await sleep(0)`` step on a plain loop, the same step in a portal
task, ``await_(sleep(0))`` from sync code, and spawning a task
(``await create_task(noop())``) on a plain loop and on ours, on asyncio and
uvloop. ``--hook`` adds the spawn without our loops' ``call_soon`` hook
(the piece that gives ``asyncio.Task()`` its portal), to isolate its cost.

On Trio (``--loops trio``): an ``await trio.sleep(0)`` step under plain
``trio.run`` (``plain``) and under ``greenback_loop.trio.run``, where every
task has a portal (``step``), ``await_(trio.sleep(0))`` from sync code there
(``await_``), the same step and ``await_`` with greenback's portal (``await
greenback.ensure_portal()`` under plain ``trio.run``: ``gb-step``,
``gb-await_``), and spawning (``nursery.start_soon(noop)``, all into one
nursery) under each run (``plain-spawn``, ``spawn``).

Last, the floor of a portal step: a bare greenlet switch round trip
(``greenlet switch-pair``), measured from C by the debug build's
``_cportal._debug_switch_roundtrip`` where it is built (``make debug``),
else from Python (``greenlet switch-py``: ``g.switch()`` into a
greenlet that switches straight back; two Python calls and loop turns more).
Requires valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

SCRIPT = r"""
import asyncio, sys
kind, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if case.startswith("plain"):
    if kind == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
else:
    import greenback_loop
    factory = lambda: greenback_loop.new_event_loop(uvloop=kind == "uvloop")

async def steps():
    for _ in range(n):
        await asyncio.sleep(0)

def sync_sleep():
    greenback_loop.await_(asyncio.sleep(0))

async def awaits():
    for _ in range(n):
        sync_sleep()

async def noop():
    pass

async def spawns():
    for _ in range(n):
        await asyncio.create_task(noop())

async def main():
    if case == "spawn-nohook":  # our loop's call_soon hook taken out
        cls = type(asyncio.get_running_loop())
        cls.call_soon = cls.call_soon.__wrapped__
    if case.startswith("spawn") or case == "plain-spawn":
        body = spawns()
    else:
        body = awaits() if case == "await_" else steps()
    await asyncio.create_task(body)

with asyncio.Runner(loop_factory=factory) as r:
    r.run(main())
"""

TRIO_SCRIPT = r"""
import sys, trio
kind, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if len(sys.argv) > 4:  # the scheduler's random numbers, seeded
    import trio._core._run
    trio._core._run._r.seed(int(sys.argv[4]))
if case in ("step", "await_", "spawn"):
    import greenback_loop, greenback_loop.trio
    run, await_ = greenback_loop.trio.run, greenback_loop.await_
else:
    run = trio.run
    if case.startswith("gb-"):
        import greenback
        await_ = greenback.await_

async def steps():
    for _ in range(n):
        await trio.sleep(0)

def sync_sleep():
    await_(trio.sleep(0))

async def awaits():
    for _ in range(n):
        sync_sleep()

async def noop():
    pass

async def spawns():
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(noop)

async def main():
    if case.startswith("gb-"):
        await greenback.ensure_portal()
    if case.endswith("spawn"):
        await spawns()
    elif case.endswith("await_"):
        await awaits()
    else:
        await steps()

run(main)
"""

SWITCH_SCRIPT = r"""
import sys
kind, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if case == "switch-pair":
    from greenback_loop import _cportal
    _cportal._debug_switch_roundtrip(n)
else:
    import greenlet
    main = greenlet.getcurrent()

    def bounce():
        back = main.switch
        while True:
            back()

    switch = greenlet.greenlet(bounce).switch
    for _ in range(n):
        switch()
"""

LOOP_CASES = {
    "asyncio": ["plain", "step", "await_", "plain-spawn", "spawn"],
    "uvloop": ["plain", "step", "await_", "plain-spawn", "spawn"],
    "trio": [
        "plain",
        "step",
        "await_",
        "gb-step",
        "gb-await_",
        "plain-spawn",
        "spawn",
    ],
}


def switch_case() -> str:
    """``switch-pair`` where the debug build's helper exists, else
    ``switch-py``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from greenback_loop import _cportal; print(hasattr(_cportal, '_debug_switch_roundtrip'))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GREENBACK_LOOP_NO_EXTENSIONS": "0"},
    )
    return "switch-pair" if proc.stdout.strip() == "True" else "switch-py"


def instructions(kind: str, case: str, n: int, seed: int | None = None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                {"trio": TRIO_SCRIPT, "greenlet": SWITCH_SCRIPT}.get(kind, SCRIPT),
                kind,
                case,
                str(n),
                *([] if seed is None else [str(seed)]),
            ],
            capture_output=True,
            text=True,
            check=True,
            # a fixed hash seed: string hashes decide dict layouts, and with
            # a random seed the same build varies by hundreds of
            # instructions per operation from run to run
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if m is None:
            raise RuntimeError(proc.stderr[-2000:])
        return int(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--hook", action="store_true", help="also spawn without the call_soon hook")
    parser.add_argument(
        "--loops",
        default="asyncio,uvloop,trio",
        help="comma-separated: asyncio,uvloop,trio (default all three)",
    )
    parser.add_argument(
        "--no-switch", action="store_true", help="skip the bare greenlet switch round trip"
    )
    parser.add_argument(
        "--trio-seeds",
        type=int,
        default=3,
        help="Trio cases: runs, one per seed of Trio's scheduler (default 3)",
    )
    args = parser.parse_args()
    n = args.n
    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    bad = [x for x in loops if x not in LOOP_CASES]
    if bad:
        parser.error(f"unknown loop(s) {bad}; known: {list(LOOP_CASES)}")
    print(f"Python {sys.version.split()[0]}, instructions per operation (N={n} vs {3 * n})")
    rows = [
        (kind, case)
        for kind in loops
        for case in LOOP_CASES[kind] + (["spawn-nohook"] if args.hook and kind != "trio" else [])
    ]
    if not args.no_switch:
        rows.append(("greenlet", switch_case()))
    for kind, case in rows:
        seeds: list[int | None] = list(range(max(1, args.trio_seeds))) if kind == "trio" else [None]
        pers = [
            (instructions(kind, case, 3 * n, seed) - instructions(kind, case, n, seed)) / (2 * n)
            for seed in seeds
        ]
        spread = f"  [{min(pers):,.0f}-{max(pers):,.0f}]" if len(pers) > 1 else ""
        print(f"{kind:8} {case:12} {statistics.median(pers):10,.0f}{spread}", flush=True)


if __name__ == "__main__":
    main()
