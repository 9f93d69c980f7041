"""Selects the portal core: the C extension or its pure-Python twin.

``GREENBACK_LOOP_NO_EXTENSIONS=1`` (or any interpreter other than CPython)
selects the twin. The C core does not exist yet, so the twin is always used;
see CHANGELOG.md.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from . import _portal_py

NO_EXTENSIONS = bool(os.environ.get("GREENBACK_LOOP_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)

#: The module that implements Portal, await_ and in_portal.
core: ModuleType = _portal_py
#: ``"c"`` or ``"python"``.
implementation: str = "python"

AVAILABLE: tuple[str, ...] = ("python",)


def select(name: str) -> None:
    """Switch the process to the core *name* (``"c"`` or ``"python"``).

    For the test suite and differential runs: portals made by one core are
    unknown to the other's ``await_``, so switch only with no loop running.
    """
    global core, implementation
    if name == "python":
        new = _portal_py
    else:
        raise ValueError(f"unknown or unavailable implementation {name!r}; available: {AVAILABLE}")
    core = new
    implementation = name
    import greenback_loop

    greenback_loop.await_ = new.await_
    greenback_loop.implementation = name
