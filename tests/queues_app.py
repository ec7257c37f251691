"""The app of worker child processes in tests/test_queues.py: tasks of two queues that note
which process ran them, and how late they started (wall clock, one machine)."""

from __future__ import annotations

import os
import time

from delayq import Delayq
from delayq.testing import LazyRedis

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_redis = LazyRedis(app)


def _note(kind: str, *fields: object) -> None:
    _redis().rpush(f"test:{app.namespace}:{kind}", "|".join(map(str, fields)))


@app.task(name="q.report", queue="reports", retries=1, retry_backoff=0.05)
def report(job: int, seconds: float = 0.0, fail: bool = False) -> None:
    _note("report", job, os.getpid())
    time.sleep(seconds)
    if fail:
        raise RuntimeError("report failed")


@app.task(name="q.mail", retries=0)
async def mail(job: int, due_ms: int) -> None:
    _note("mail", job, time.time() * 1000 - due_ms, os.getpid())
