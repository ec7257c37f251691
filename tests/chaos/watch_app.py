"""The chaos app with a watched-key task: the workers of the watched-key churn scenario.

Each firing of ``chaos.offline`` appends a ``watched`` line (tag: the device) to the process's
run file, like the other chaos tasks.
"""

from __future__ import annotations

from delayq import current_job
from tests.chaos.app import app, record, tasks

WATCH_PREFIX = "chaos-dev:"


@app.on_expire(WATCH_PREFIX + "*", name="chaos.offline")
def offline(key: str, suffix: str, data: bytes | None) -> None:
    assert current_job() is not None
    record("watched", suffix)


__all__ = ["app", "offline", "tasks"]
