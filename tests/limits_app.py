"""The app of worker child processes in tests/test_limits.py: limited tasks that keep a
ledger of when each run started and ended (wall clock, one machine)."""

from __future__ import annotations

import os
import time

from delayq import Delayq
from delayq.testing import LazyRedis

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_redis = LazyRedis(app)


def _note(kind: str, *fields: object) -> None:
    _redis().rpush(f"test:{app.namespace}:{kind}", "|".join(map(str, fields)))


@app.task(name="lim.tenant", retries=0, concurrency=2, concurrency_key="{tenant}")
def per_tenant(tenant: str, job: int, seconds: float) -> None:
    began = time.time()
    _note("began", tenant, job, began, os.getpid())
    time.sleep(seconds)
    _note("ran", tenant, job, began, time.time(), os.getpid())


@app.task(name="lim.rated", retries=0, rate_limit="50/s")
def rated(job: int) -> None:
    _note("rated", job, time.time())


@app.task(name="lim.both", retries=0, concurrency=1, rate_limit="20/s")
async def both(job: int) -> None:
    began = time.time()
    _note("began", "both", job, began, os.getpid())
    _note("ran", "both", job, began, time.time(), os.getpid())
