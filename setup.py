"""Build greenback_loop's C core (metadata lives in pyproject.toml).

Environment switches:
  GREENBACK_LOOP_NO_EXTENSIONS=1  build no extension (pure-Python core only)
  GREENBACK_LOOP_DEBUG_BUILD=1    -O0 -g3 with assertions on
  GREENBACK_LOOP_SANITIZE=1       AddressSanitizer + UndefinedBehaviorSanitizer
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


def flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def greenlet_include() -> str:
    """The folder holding greenlet.h, from the installed greenlet."""
    import greenlet

    folder = os.path.dirname(greenlet.__file__)
    if not os.path.exists(os.path.join(folder, "greenlet.h")):
        raise RuntimeError(f"greenlet.h not found in {folder}: reinstall greenlet")
    return folder


ext_modules = []
if not flag("GREENBACK_LOOP_NO_EXTENSIONS") and platform.python_implementation() == "CPython":
    compile_args = [
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers",
        "-Werror=implicit-function-declaration",
    ]
    link_args: list[str] = []
    undef = []
    if flag("GREENBACK_LOOP_DEBUG_BUILD"):
        compile_args += ["-O0", "-g3", "-DGBL_DEBUG_BUILD"]
        undef.append("NDEBUG")
    else:
        compile_args += ["-O2"]
    if flag("GREENBACK_LOOP_SANITIZE"):
        # asan-stack=0: greenlet copies C stacks with memcpy, which would trip
        # over the redzones of our own instrumented frames.
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        compile_args += ["--param=asan-stack=0"]
        compile_args += san
        link_args += san
    if sys.platform == "win32":  # pragma: no cover
        compile_args = []
    ext_modules.append(
        Extension(
            "greenback_loop._cportal",
            sources=["csrc/_cportal.c"],
            depends=[
                "csrc/cportal.h",
                "csrc/compat.h",
                "csrc/runner.c",
                "csrc/portal.c",
                "csrc/await.c",
                "csrc/create_task.c",
                "csrc/task.c",
            ],
            include_dirs=[greenlet_include()],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            undef_macros=undef,
            libraries=["dl"] if sys.platform.startswith("linux") else [],
        )
    )


class BuildPy(build_py):
    """Marks a build without the C core, so that its install uses the
    pure-Python core with no environment variable (greenback_loop/_impl.py);
    a CPython install that lacks the C core otherwise is an error."""

    def run(self) -> None:
        super().run()
        if not ext_modules:
            path = os.path.join(self.build_lib, "greenback_loop", "_pure_build.py")
            with open(path, "w") as f:
                f.write('"""This install was built without the C core."""\n')


setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy})
