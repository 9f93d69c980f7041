"""Selects the portal core, once, at import: the C extension or its twin.

On CPython the C core (``greenback_loop._cportal``) is the default; setting
``GREENBACK_LOOP_NO_EXTENSIONS=1``, or running on another interpreter,
selects the pure-Python twin (``greenback_loop._portal_py``), which is
imported only then. A CPython install whose C core is missing is an error,
not a silent fallback to the slower twin.
"""

from __future__ import annotations

import atexit
import os
import sys
from types import ModuleType

from . import _exit

NO_EXTENSIONS: bool = os.environ.get("GREENBACK_LOOP_NO_EXTENSIONS", "") not in ("", "0") or (
    sys.implementation.name != "cpython"
)


def _load() -> tuple[str, ModuleType]:
    if NO_EXTENSIONS:
        from . import _portal_py

        return "python", _portal_py
    try:
        from . import _cportal
    except ImportError as exc:
        raise ImportError(
            f"greenback_loop's C core failed to import ({exc}). Reinstall greenback_loop "
            "so that it is built, or set GREENBACK_LOOP_NO_EXTENSIONS=1 to use the "
            "pure-Python core."
        ) from exc
    return "c", _cportal


implementation: str
core: ModuleType
#: ``"c"`` or ``"python"``, and the module that implements Portal, await_,
#: in_portal and portal_create_task.
implementation, core = _load()

# Registered now, so it runs after the program's own atexit handlers.
atexit.register(_exit.close_parked, core.Portal)
