"""The example programs of the docs (docs/examples/*.py) run and print what
the docs show: each ``print(...)  # output`` line's comment is that line's
output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.py"))


def expected_output(source: str) -> list[str]:
    return re.findall(r"^print\(.*\)\s+# (.*)$", source, re.M)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_prints_what_the_docs_show(path: Path, impl: str) -> None:
    source = path.read_text()
    expected = expected_output(source)
    assert expected, f"{path.name} shows no output"
    env = dict(os.environ, GREENBACK_LOOP_NO_EXTENSIONS="1" if impl == "python" else "0")
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected, proc.stdout
