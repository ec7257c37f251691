"""An app with an on_expire task for worker child processes in watched-key tests.

WATCH_TEST_PREFIX (set by the test) namespaces the watched keys; each firing is reported to
the Redis list `<prefix>:fired` as `suffix|data`.
"""

from __future__ import annotations

import os

import redis

from delayq import Delayq

app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
PREFIX = os.environ.get("WATCH_TEST_PREFIX", "watch-test")


@app.on_expire(PREFIX + ":seen:*", data=PREFIX + ":data:{suffix}", name="offline")
def offline(key: str, suffix: str, data: bytes | None) -> None:
    client = redis.Redis.from_url(app.url)
    client.rpush(f"{PREFIX}:fired", f"{suffix}|{(data or b'').decode()}")
    client.close()
