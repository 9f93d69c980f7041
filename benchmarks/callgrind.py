"""Instructions per operation, by callgrind: the hot path's deterministic cost.

``python -m benchmarks.callgrind`` runs each case twice under
``valgrind --tool=callgrind`` (N and 3N operations) and prints the
difference divided by 2N, which removes start-up and teardown, with a fixed
hash seed so that runs of one build agree. Cases: a
plain ``await sleep(0)`` step on a plain loop, the same step in a portal
task, and ``await_(sleep(0))`` from sync code, on asyncio and uvloop.
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
if case == "plain":
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

async def main():
    await asyncio.create_task(awaits() if case == "await_" else steps())

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
    args = parser.parse_args()
    n = args.n
    print(f"Python {sys.version.split()[0]}, instructions per operation (N={n} vs {3 * n})")
    for kind in ("asyncio", "uvloop"):
        for case in ("plain", "step", "await_"):
            per = (instructions(kind, case, 3 * n) - instructions(kind, case, n)) / (2 * n)
            print(f"{kind:8} {case:7} {per:10,.0f}")


if __name__ == "__main__":
    main()
