"""Selects the portal core: the C extension or its pure-Python twin.

On CPython the C core (``greenback_loop._cportal``) is the default; setting
``GREENBACK_LOOP_NO_EXTENSIONS=1``, or running on another interpreter,
selects the twin (``greenback_loop._portal_py``). A CPython install whose C
core is missing is an error, not a silent fallback to the slower twin.
"""

from __future__ import annotations

import atexit
import os
import sys
from types import ModuleType

from . import _exit, _portal_py

NO_EXTENSIONS = os.environ.get("GREENBACK_LOOP_NO_EXTENSIONS", "") not in ("", "0") or (
    sys.implementation.name != "cpython"
)

_cores: dict[str, ModuleType] = {}
if not NO_EXTENSIONS:
    try:
        from . import _cportal
    except ImportError as exc:
        raise ImportError(
            f"greenback_loop's C core failed to import ({exc}). Reinstall greenback_loop "
            "so that it is built, or set GREENBACK_LOOP_NO_EXTENSIONS=1 to use the "
            "pure-Python core."
        ) from exc
    _cores["c"] = _cportal
_cores["python"] = _portal_py

#: The implementations this process can use, the default first.
AVAILABLE: tuple[str, ...] = tuple(_cores)

#: ``"c"`` or ``"python"``.
implementation: str = AVAILABLE[0]
#: The module that implements Portal, await_ and in_portal.
core: ModuleType = _cores[implementation]

# Registered now, so it runs after the program's own atexit handlers.
atexit.register(_exit.close_parked, core.Portal)


def select(name: str) -> None:
    """Switch the process to the core *name* (``"c"`` or ``"python"``).

    For the test suite, benchmarks and differential runs: portals made by one
    core are unknown to the other's ``await_``, so switch only with no loop
    running.
    """
    global core, implementation
    if name not in _cores:
        raise ValueError(f"unknown or unavailable implementation {name!r}; available: {AVAILABLE}")
    core = _cores[name]
    implementation = name
    import greenback_loop

    greenback_loop.await_ = core.await_
    greenback_loop.implementation = name
    from ._loop import reinstall_create_tasks

    reinstall_create_tasks()
