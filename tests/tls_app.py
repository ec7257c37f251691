"""An app for ``delayq worker`` child processes in the TLS tests. Jobs report to a Redis list."""

from __future__ import annotations

import os

import redis

from delayq import Delayq

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))


@app.task(name="tls.record", retries=0)
def record(tag: str) -> None:
    # Its own connection, built as the worker's are: the (overridden) URL and redis_options.
    client = redis.Redis.from_url(app.url, **app.redis_options)
    try:
        client.rpush(f"test:{app.namespace}:tls", f"{tag}|{os.getpid()}")
    finally:
        client.close()
