"""The contenders (how sync code reaches the loop) and the loops they run on.

A contender knows three things: which event loop to build for a loop kind
(or, on Trio, which ``run`` function starts the program), whether it can be
measured in this process, and how to run a synchronous function that awaits
through its bridge (:meth:`Contender.run_sync`).

greenback_loop picks its core once, at import (``GREENBACK_LOOP_NO_EXTENSIONS``),
so a ``greenback_loop[<core>]`` contender whose core is not this process's
is measured in a subprocess that selects it (:mod:`benchmarks.worker`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

LOOPS = ("asyncio", "uvloop", "trio")

#: A synchronous benchmark body: its last argument is the ``await_`` function.
SyncFn = Callable[..., Any]


def loop_note(loop: str) -> str | None:
    """Why *loop* cannot run here, or None."""
    if loop == "uvloop":
        try:
            importlib.import_module("uvloop")
        except ImportError as exc:
            return f"uvloop is not installed ({exc})"
    if loop == "trio":
        try:
            importlib.import_module("trio")
        except ImportError as exc:
            return f"trio is not installed ({exc})"
    return None


def plain_loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return,unused-ignore]
    return asyncio.SelectorEventLoop


def available_cores() -> list[str]:
    """The greenback_loop cores a process can select here: the C core where
    it is built (CPython), and the pure-Python twin."""
    cores = ["python"]
    if sys.implementation.name == "cpython" and importlib.util.find_spec("greenback_loop._cportal"):
        cores.insert(0, "c")
    return cores


def process_core() -> str:
    """The greenback_loop core this process selected."""
    import greenback_loop

    return str(greenback_loop.implementation)


def core_env(core: str) -> dict[str, str]:
    """The environment of a subprocess that selects *core*."""
    return dict(os.environ, GREENBACK_LOOP_NO_EXTENSIONS="1" if core == "python" else "0")


def _sqlalchemy_bridge() -> tuple[Any, Any]:
    """``(greenlet_spawn, await_only)`` from the installed SQLAlchemy 2.x."""
    for modname in (
        "sqlalchemy.util",
        "sqlalchemy.util.concurrency",
        "sqlalchemy.util._concurrency_py3k",
    ):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        spawn = getattr(mod, "greenlet_spawn", None)
        await_only = getattr(mod, "await_only", None)
        if spawn is not None and await_only is not None:
            return spawn, await_only
    raise ImportError("SQLAlchemy has no greenlet_spawn/await_only (is it 2.x, with greenlet?)")


#: Row variant: greenback_loop on a plain asyncio/uvloop loop (or under a
#: plain ``trio.run``), each task given its portal by
#: ``await greenback_loop.ensure_portal()`` (a retrofit; on asyncio and uvloop
#: the C core only, the twin cannot retrofit a C Task; on Trio both cores).
RETROFIT = "retrofit"
#: Row variant: the greenback package's own functions, called in the tasks of
#: a greenback_loop loop (or of ``greenback_loop.trio.run``), through the
#: hook that makes greenback see our portals.
ON_GBL = "on greenback_loop"


@dataclass
class Contender:
    #: ``plain``, ``greenback``, ``sqlalchemy`` or ``greenback_loop[<core>]``.
    name: str
    #: ``plain``, ``greenback``, ``sqlalchemy`` or ``greenback_loop``.
    kind: str
    #: The greenback_loop core, for kind ``greenback_loop``.
    impl: str | None = None

    # -- set by probe() -------------------------------------------------------
    skip: str | None = None
    _mod: Any = None
    _spawn: Any = None
    _await_only: Any = None

    def probe(self) -> Contender:
        """Import what the contender needs; set ``skip`` if it is missing."""
        try:
            if self.kind == "greenback":
                self._mod = importlib.import_module("greenback")
            elif self.kind == "sqlalchemy":
                self._spawn, self._await_only = _sqlalchemy_bridge()
            elif self.kind == "greenback_loop":
                self._mod = importlib.import_module("greenback_loop")
        except ImportError as exc:
            self.skip = f"{self.name}: package missing ({exc})"
        return self

    def version(self) -> str | None:
        dist = {"greenback": "greenback", "sqlalchemy": "SQLAlchemy"}.get(self.kind)
        if dist is None:
            return None
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    @property
    def in_process(self) -> bool:
        """Whether this process can measure the contender (False for a
        greenback_loop core this process did not select)."""
        return self.kind != "greenback_loop" or self.impl == process_core()

    def env(self) -> dict[str, str]:
        """The environment of a subprocess that measures this contender."""
        if self.kind == "greenback_loop":
            assert self.impl is not None
            return core_env(self.impl)
        return dict(os.environ)

    def supports(self, variant: str | None, loop: str | None = None) -> bool:
        """Whether this contender can measure rows of *variant* (on *loop*)."""
        if loop == "trio" and self.kind == "sqlalchemy":
            return False  # SQLAlchemy's asyncio extension is asyncio-only
        if variant == RETROFIT:
            return self.kind == "greenback_loop" and (self.impl == "c" or loop == "trio")
        if variant == ON_GBL:
            return self.kind == "greenback"
        return True

    def loop_factory(
        self, loop: str, variant: str | None = None
    ) -> Callable[[], asyncio.AbstractEventLoop]:
        use_uvloop = loop == "uvloop"
        if variant == ON_GBL:
            import greenback_loop

            return lambda: greenback_loop.new_event_loop(uvloop=use_uvloop)
        if self.kind == "greenback_loop" and variant != RETROFIT:
            gbl = self._mod
            return lambda: gbl.new_event_loop(uvloop=use_uvloop)
        return plain_loop_factory(loop)

    def run_trio(self, fn: Callable[..., Any], *args: Any, variant: str | None = None) -> Any:
        """``trio.run(fn, *args)``, or ``greenback_loop.trio.run`` (every
        task of the run has a portal) for greenback_loop and the
        ``on greenback_loop`` rows."""
        if variant == ON_GBL or (self.kind == "greenback_loop" and variant != RETROFIT):
            gbl_trio = importlib.import_module("greenback_loop.trio")
            return gbl_trio.run(fn, *args)
        import trio

        return trio.run(fn, *args)

    @contextmanager
    def unhooked(self, variant: str | None) -> Iterator[None]:
        """For a greenback row (not ``on greenback_loop``): greenback's own
        ``task_portals`` mapping put back while the row runs.

        greenback_loop hooks greenback once per process, the first time one of
        its loops or Trio instruments is made, which in a harness run is
        before most greenback rows; the hooked mapping costs every
        ``greenback.await_`` about 80 ns (a Python ``get``), which a program
        that uses greenback alone never pays."""
        impl: Any = getattr(self._mod, "_impl", None) if self.kind == "greenback" else None
        hooked = getattr(impl, "task_portals", None)
        own = getattr(hooked, "own", None)
        if variant == ON_GBL or own is None:
            yield
            return
        impl.task_portals = own
        try:
            yield
        finally:
            impl.task_portals = hooked

    async def get_portal(self, variant: str | None) -> None:
        """Give the current task its portal, as the contender's users do
        (nothing on a greenback_loop loop), and check it has one."""
        if self.kind == "greenback" or variant == RETROFIT:
            await self._mod.ensure_portal()
        self.check_portal()

    def check_portal(self) -> None:
        """From inside a task that should be able to await_: fail loudly if not."""
        if self.kind == "greenback_loop":
            ok = self._mod.has_portal() and self._mod.implementation == self.impl
        elif self.kind == "greenback":
            ok = self._mod.has_portal()
        else:
            ok = True
        if not ok:
            raise BenchmarkError(f"{self.name}: the task has no portal")

    async def run_sync(self, fn: SyncFn, *args: Any, variant: str | None = None) -> Any:
        """Run ``fn(*args, await_)`` in the current task through the bridge."""
        if self.kind in ("greenback_loop", "greenback"):
            await self.get_portal(variant)
            return fn(*args, self._mod.await_)
        if self.kind == "sqlalchemy":
            return await self._spawn(fn, *args, self._await_only)
        raise BenchmarkError(f"{self.name} has no bridge for sync code")

    @property
    def greenback(self) -> Any:
        return self._mod


class BenchmarkError(RuntimeError):
    """A measurement produced a wrong result: its number would be nonsense."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchmarkError(f"result check failed: {what}")


def all_contenders() -> list[Contender]:
    """Every contender, probed; greenback_loop once per available core."""
    out = [
        Contender("plain", "plain"),
        Contender("greenback", "greenback"),
        Contender("sqlalchemy", "sqlalchemy"),
    ]
    for name in available_cores():
        out.append(Contender(f"greenback_loop[{name}]", "greenback_loop", name))
    return [c.probe() for c in out]


def contender_from_name(name: str) -> Contender:
    """The contender called *name* (as in ``--contenders``), probed."""
    if name.startswith("greenback_loop[") and name.endswith("]"):
        return Contender(name, "greenback_loop", name[len("greenback_loop[") : -1]).probe()
    if name in ("plain", "greenback", "sqlalchemy"):
        return Contender(name, name).probe()
    raise SystemExit(f"unknown contender {name!r}")
