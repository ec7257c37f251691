"""A wall clock that tests can step under a running worker process (an NTP step, a resumed VM).

A worker app imports this module and calls ``install()``. With ``CLOCK_STEP_FILE`` set in its
environment, the process's ``time.time()`` and ``time.time_ns()`` read the true clock plus a skew
in seconds; ``step(proc, file, skew)`` writes a new skew to the file and sends SIGUSR1, and the
process reads it at once. ``CLOCK_SKEW`` (seconds) sets the skew from the start. ``true_ms()`` is
the true clock, for what a test records.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

_skew_s = 0.0


def true_ms() -> float:
    return time.clock_gettime(time.CLOCK_REALTIME) * 1000


def install() -> None:
    global _skew_s
    _skew_s = float(os.environ.get("CLOCK_SKEW", "0"))
    step_file = os.environ.get("CLOCK_STEP_FILE")
    if not (_skew_s or step_file):
        return
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + _skew_s
    time.time_ns = lambda: real_time_ns() + int(_skew_s * 1e9)
    if step_file:

        def read_skew(*_: Any) -> None:
            global _skew_s
            _skew_s = float(Path(step_file).read_text())

        signal.signal(signal.SIGUSR1, read_skew)


def step(pid: int, step_file: Path, skew_s: float) -> None:
    """Set the clock of the process ``pid`` (started with ``CLOCK_STEP_FILE=step_file``)."""
    tmp = step_file.with_suffix(".tmp")
    tmp.write_text(repr(skew_s))
    tmp.replace(step_file)  # the process never reads a half-written number
    os.kill(pid, signal.SIGUSR1)
