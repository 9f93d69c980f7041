"""Selects the portal core, once, at import: the C extension or its twin.

On CPython the C core (``greenback_loop._cportal``) is the default; setting
``GREENBACK_LOOP_NO_EXTENSIONS=1``, running on another interpreter, or an
install built without the C core (a pure-Python wheel) selects the pure-Python twin (``greenback_loop._portal_py``), which is
imported only then. A CPython install whose C core is missing is an error,
not a silent fallback to the slower twin.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
from types import ModuleType

from . import _exit


def _no_extensions() -> bool:
    """Whether to use the twin: always off CPython; on CPython,
    GREENBACK_LOOP_NO_EXTENSIONS decides when set (``0``: the C core), else
    the twin is used only in an install built
    without the C core (a wheel built with GREENBACK_LOOP_NO_EXTENSIONS=1
    carries the marker module ``_pure_build``)."""
    if sys.implementation.name != "cpython":
        return True
    flag = os.environ.get("GREENBACK_LOOP_NO_EXTENSIONS", "")
    if flag:
        return flag != "0"
    return importlib.util.find_spec(f"{__package__}._pure_build") is not None


NO_EXTENSIONS: bool = _no_extensions()


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
