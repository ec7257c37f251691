"""A slow periodic task for worker child processes (killed mid-run in a test)."""

from __future__ import annotations

import datetime as dt
import os
import time

import redis

from delayq import Delayq

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))


@app.periodic(every=dt.timedelta(seconds=30), overlap="skip", name="slow_tick")
def slow_tick() -> None:
    client = redis.Redis.from_url(app.url)
    client.rpush(f"test:{app.namespace}:started", str(os.getpid()))
    time.sleep(4)
    client.rpush(f"test:{app.namespace}:done", str(os.getpid()))
