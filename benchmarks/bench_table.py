"""What the benchmark scripts share: a row of results, the table they print, the run around it.

Each script yields rows while it measures; :func:`report` prints each as it comes, then the
table, and returns the exit status (1 when a row missed its target).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from delayq.testing import format_table, scratch_server, verdict


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    figure: str
    target: str = "-"
    ok: bool | None = None  # None: a figure with nothing to check


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "result", "target", "")
    cells = [(r.measurement, r.figure, r.target, verdict(r.ok)) for r in rows]
    print("\n".join(format_table([header, *cells], "<><<", rule=True)))


def report(prefix: str, run: Callable[[str, Path], Iterator[Row]]) -> int:
    """Run ``run(url, workdir)`` against a scratch server and print its rows, then the table."""
    started = time.perf_counter()
    rows: list[Row] = []
    with scratch_server(prefix) as (server, workdir):
        for row in run(server.url, workdir):
            rows.append(row)
            print(f"  {row.measurement}: {row.figure}", flush=True)
    print()
    print_table(rows)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 1 if any(r.ok is False for r in rows) else 0


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux only)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
