"""greenback's own test suite, run against greenback_loop.

Downloads greenback's sdist with pip (nothing of it is committed here),
takes its ``greenback/_tests`` package and runs it with pytest against a
stand-in package named ``greenback`` that re-exports greenback_loop's public
API (plus the ``current_task()`` helper the tests import from
``greenback._impl``), so every ``greenback.*`` call in the tests lands on
greenback_loop. The tests run as greenback runs them: its asyncio tests,
through anyio's asyncio backend, on each of four loops in turn (``--loop``
picks some): plain asyncio and plain uvloop, where portals are given to
existing tasks, and greenback_loop's own loops over asyncio and over
uvloop, where every task has one already (the loop is chosen by an event
loop policy set from a small pytest plugin, as a program that cannot change
its ``asyncio.run()`` call would); then its Trio tests (parametrized
``[trio]``, or not parametrized by library), under plain ``trio.run``.

Left out, and counted in the summary:

* the tests of greenback's private internals: its pointer-probing helper
  (``test_find_ptr_in_object``), its private portal map
  (``test_portal_map_does_not_leak``), and the frames its ``await_`` leaves
  when it drives a ``collections.abc.Coroutine`` by calling ``send()``
  directly (``test_uncleanable_traceback``: greenback_loop's ``await_``
  awaits such an object through ``__await__``, as ``await`` does, so the
  object under test, whose ``send()`` takes no argument, is awaited without
  error there, exactly as ``await obj`` would);
* ``test_misuse`` (Trio), which asserts limits of greenback's that
  greenback_loop lifts (see ``NOT_ON_TRIO``);
* on greenback_loop's loops, the 3 asyncio tests that assert a task starts
  without a portal (see ``NO_PORTAL_FIRST``).

Usage::

    python -m tests.conformance.run_greenback_suite [--version 1.3.0] [--loop NAME ...]
        [-- pytest args]

Exits 0 when every selected test passed on every loop, 1 when any failed,
2 when the sdist cannot be fetched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

PRIVATE = ("test_find_ptr_in_object", "test_portal_map_does_not_leak", "test_uncleanable_traceback")
#: Trio tests left out, because they assert limits of greenback's that
#: greenback_loop lifts: ``test_misuse`` expects with_portal_run_tree() to
#: refuse under asyncio (greenback_loop's works there) and await_() to find
#: its async library through sniffio's thread-local name (greenback_loop's
#: finds the running task itself). Its other checks (await_(42) outside any
#: loop raises sniffio's AsyncLibraryNotFoundError, await_(42) in a task
#: raises await's TypeError) are in greenback_loop's own tests.
NOT_ON_TRIO: tuple[str, ...] = ("test_misuse",)
#: Tests not parametrized by library that run on asyncio anyway.
ASYNCIO_ONLY = ("test_aio_context_without_active_task",)

SHIM = {
    "__init__.py": '''
        """Stand-in for greenback: greenback_loop's API under greenback's name."""
        from greenback_loop import *  # noqa: F403
        from greenback_loop import __all__ as _all

        from . import _impl, _util  # noqa: F401

        __all__ = list(_all)
        ''',
    "_impl.py": """
        import asyncio

        from greenback_loop import (  # noqa: F401
            await_,
            bestow_portal,
            ensure_portal,
            has_portal,
            with_portal_run,
            with_portal_run_sync,
            with_portal_run_tree,
            portals_for_children,
            portals_for_tree,
        )


        def current_task():
            # greenback's: the running Trio or asyncio task
            try:
                import trio

                return trio.lowlevel.current_task()
            except (ImportError, RuntimeError):
                pass
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("No asyncio task is running")
            return task
        """,
    "_util.py": """
        from greenback_loop import async_context, async_iter, autoawait, decorate_as_sync  # noqa: F401
        """,
}


#: Tests that assert a task has no portal before ensure_portal(): on
#: greenback_loop's loops every task has one, by design, so they are left
#: out there (and run on the plain loops).
NO_PORTAL_FIRST = ("test_simple", "test_with_portal_run", "test_bestow")

#: --loop names: the policy the plugin sets (None: asyncio's default).
LOOPS = {
    "asyncio": None,
    "uvloop": "uvloop.EventLoopPolicy()",
    "greenback_loop": "greenback_loop.GreenbackPolicy()",
    "greenback_loop-uvloop": "greenback_loop.GreenbackPolicy(uvloop=True)",
}

PLUGIN = """
import asyncio
import warnings

import greenback_loop  # noqa: F401


def pytest_configure(config):
    policy = {policy}
    if policy is not None:
        with warnings.catch_warnings():  # policies are deprecated from 3.14
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(policy)
    loop = asyncio.new_event_loop()  # what anyio's asyncio.Runner will get
    print(f"loop class: {{type(loop).__module__}}.{{type(loop).__qualname__}}", flush=True)
    loop.close()
"""


def write_plugin(into: Path, loop: str) -> str:
    """A pytest plugin module in *into* that runs the suite on *loop*;
    returns its module name."""
    policy = LOOPS[loop]
    imports = "import uvloop\n" if policy and policy.startswith("uvloop") else ""
    name = "_loop_" + loop.replace("-", "_")
    (into / f"{name}.py").write_text(imports + PLUGIN.format(policy=policy))
    return name


def fetch_tests(version: str, into: Path) -> Path:
    """Download greenback's sdist and unpack its tests under a stand-in
    ``greenback`` package in *into*; returns the package folder."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"greenback=={version}",
            "-d",
            str(into),
        ],
        check=True,
    )
    (sdist,) = into.glob("greenback-*.tar.gz")
    pkg = into / "greenback"
    tests = pkg / "_tests"
    tests.mkdir(parents=True)
    prefix = f"greenback-{version}/greenback/_tests/"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                rel = member.name[len(prefix) :]
                if "/" in rel or not rel.endswith(".py"):
                    continue
                data = tar.extractfile(member)
                assert data is not None
                (tests / rel).write_bytes(data.read())
    if not (tests / "test_impl.py").exists():
        raise FileNotFoundError(f"{sdist.name} has no greenback/_tests/test_impl.py")
    for name, text in SHIM.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    return pkg


def select(pkg: Path) -> tuple[list[str], list[str], list[str]]:
    """Collect the suite; split its test ids into (run, private, trio)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *_options(pkg)],
        cwd=pkg.parent,
        capture_output=True,
        text=True,
    )
    ids = [line.strip() for line in out.stdout.splitlines() if "::" in line]
    if not ids:
        sys.stdout.write(out.stdout + out.stderr)
        raise RuntimeError("greenback's suite collected no tests")
    run, private, trio = [], [], []
    for test_id in ids:
        name = test_id.split("::")[-1]
        base = name.split("[")[0]
        if base in PRIVATE:
            private.append(test_id)
        elif "[asyncio" in name or base in ASYNCIO_ONLY:
            run.append(test_id)
        elif base not in NOT_ON_TRIO:
            trio.append(test_id)
        else:
            private.append(test_id)
    return run, private, trio


def _options(pkg: Path) -> list[str]:
    # greenback's conftest drives its async tests itself: no pytest-asyncio,
    # none of greenback_loop's own pytest settings.
    return ["-p", "no:asyncio", "-p", "no:cacheprovider", "-c", str(pkg / "pytest.ini"), str(pkg)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="1.3.0", help="greenback's version (1.3.0)")
    parser.add_argument(
        "--loop",
        action="append",
        choices=[*LOOPS, "trio"],
        help="run on this loop, or 'trio' for the Trio tests (repeatable; default: all)",
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="greenback-suite-") as tmp:
        try:
            pkg = fetch_tests(args.version, Path(tmp))
        except (subprocess.CalledProcessError, FileNotFoundError, ValueError) as exc:
            print(f"cannot fetch greenback {args.version}'s tests: {exc}", file=sys.stderr)
            return 2
        (pkg / "pytest.ini").write_text("[pytest]\n")
        run, left_out, trio = select(pkg)
        print(
            f"greenback {args.version}'s suite: {len(run) + len(left_out) + len(trio)} tests: "
            f"{len(run)} on asyncio, {len(trio)} under Trio; left out {len(left_out)} "
            "(greenback's private internals, and the limits of greenback's that "
            "greenback_loop lifts: see the module docstring)",
            flush=True,
        )
        failed = []
        passes = args.loop or [*LOOPS, "trio"]
        for loop in passes:
            ids = [str(pkg / test_id) for test_id in (trio if loop == "trio" else run)]
            note = ""
            if loop.startswith("greenback_loop"):
                ids = [i for i in ids if i.split("::")[-1].split("[")[0] not in NO_PORTAL_FIRST]
                note = (
                    f" ({len(run) - len(ids)} that assert a task starts without a portal "
                    "left out: on greenback_loop's loops every task has one)"
                )
            print(f"--- {'under' if loop == 'trio' else 'on'} {loop}: {len(ids)} tests{note} ---")
            sys.stdout.flush()
            plugin = write_plugin(Path(tmp), "asyncio" if loop == "trio" else loop)
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-rfE",
                    "-p",
                    plugin,
                    *_options(pkg)[:-1],
                    *args.pytest_args,
                    *ids,
                ],
                cwd=tmp,
                env=dict(
                    os.environ,
                    PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])),
                ),
            )
            if proc.returncode != 0:
                failed.append(loop)
        verdict = f"FAILED on {', '.join(failed)}" if failed else f"passed on {len(passes)} passes"
        print(f"greenback {args.version}'s suite: {verdict}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
