"""The decorators are typed: mypy sees the wrapped function's signature."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).parent / "typing" / "cases.py"


def test_mypy_sees_wrapped_signatures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", str(CASES)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    found = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"cases\.py:(\d+): error: .*\[([\w-]+)\]", result.stdout)
    }
    expected = {
        (number, code)
        for number, line in enumerate(CASES.read_text().splitlines(), start=1)
        for code in re.findall(r"# E: ([\w-]+)", line)
    }
    assert found == expected, result.stdout
