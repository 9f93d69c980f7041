"""Instructions per operation, by callgrind: the hot path's deterministic cost.

``python -m benchmarks.callgrind`` runs each case twice under
``valgrind --tool=callgrind`` (N and 3N operations) and prints the
difference divided by 2N, which removes start-up and teardown, with a fixed
hash seed so that runs of one build agree. Cases: a
plain ``await sleep(0)`` step on a plain loop, the same step in a portal
task, ``await_(sleep(0))`` from sync code, and spawning a task
(``await create_task(noop())``) on a plain loop and on ours, on asyncio and
uvloop. ``--hook`` adds the spawn without our loops' ``call_soon`` hook
(the piece that gives ``asyncio.Task()`` its portal), to isolate its cost.
Requires valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
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


def instructions(kind: str, case: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                SCRIPT,
                kind,
                case,
                str(n),
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
    args = parser.parse_args()
    n = args.n
    print(f"Python {sys.version.split()[0]}, instructions per operation (N={n} vs {3 * n})")
    for kind in ("asyncio", "uvloop"):
        cases = ["plain", "step", "await_", "plain-spawn", "spawn"]
        for case in cases + (["spawn-nohook"] if args.hook else []):
            per = (instructions(kind, case, 3 * n) - instructions(kind, case, n)) / (2 * n)
            print(f"{kind:8} {case:12} {per:10,.0f}")


if __name__ == "__main__":
    main()
