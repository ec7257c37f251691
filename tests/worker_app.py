"""An app for worker child processes in tests. Jobs report to Redis lists of the namespace."""

from __future__ import annotations

import os
import time

import redis

from delayq import Delayq

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(app.url)
    return _client


def report(list_name: str, value: str) -> None:
    _redis().rpush(f"test:{app.namespace}:{list_name}", value)


@app.task
def record(tag: str) -> None:
    report("ran", f"{tag}|{time.time() * 1000:.1f}|{os.getpid()}")


@app.task(retries=0)
def slow(tag: str, seconds: float) -> None:
    report("started", f"{tag}|{os.getpid()}")
    time.sleep(seconds)
    report("done", f"{tag}|{os.getpid()}")


@app.task(retries=0)
def die(tag: str) -> None:
    """Takes its worker process down, as a segfault or the OOM killer would."""
    report("started", f"{tag}|{os.getpid()}")
    os._exit(17)
