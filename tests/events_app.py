"""The app of worker child processes in tests/test_events.py: events on for every task."""

from __future__ import annotations

import os
import time

from delayq import Delayq
from delayq.testing import LazyRedis

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"),
             events=True)  # fmt: skip
_redis = LazyRedis(app)


@app.task(name="ev.slow", retries=0)
def slow(seconds: float) -> str:
    _redis().rpush(f"test:{app.namespace}:started", os.getpid())
    time.sleep(seconds)
    return "slept"


@app.task(name="ev.noted")
def noted(outcome: dict[str, object]) -> None:
    _redis().rpush(f"test:{app.namespace}:noted", str(outcome["timer_id"]))
