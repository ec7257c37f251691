"""The worker side of examples/heartbeat_demo.py: device-offline alerts, two ways.

- ``device_offline`` watches keys written by devices themselves with plain Redis commands
  (``SET last_connection_time_of_device<N> <ts> EX 3``) and runs when one expires.
- ``device_quiet`` is a debounced task the application touches on every heartbeat; it runs
  once, 2 s after a device's last touch.

Both record what they got into a Redis list that the demo reads. The demo starts the worker as

    delayq worker -A heartbeat_tasks:app --url URL --namespace NS     (from examples/)

Task names are explicit so that payloads name the same task whatever the module is imported as.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from delayq import Delayq
from delayq.testing import LazyRedis

NAMESPACE = "heartbeat-demo"
HEARTBEAT_PREFIX = "last_connection_time_of_device"
DATA_PREFIX = "device_data_id"
QUIET_SECONDS = 2.0

# The CLI's --url/--namespace override these before the app first connects.
app = Delayq(
    os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE") or NAMESPACE
)

# A client for app.url, made on first use: the URL is only final once the CLI applied --url.
# Thread-safe: handlers run in the worker's thread pool.
_redis = LazyRedis(app)


def alerts_key(namespace: str) -> str:
    return f"{namespace}:alerts"


def ping_key(namespace: str) -> str:
    return f"{namespace}:ping"


def _record(alert: dict[str, Any]) -> None:
    _redis().rpush(alerts_key(app.namespace), json.dumps(alert))


@app.on_expire(f"{HEARTBEAT_PREFIX}*", data=DATA_PREFIX + "{suffix}", name="heartbeat.offline")
def device_offline(key: str, suffix: str, data: bytes | None) -> None:
    """A device's heartbeat key expired: it has been silent for the key's whole TTL."""
    fired = time.time()  # first thing: the demo measures lateness from this
    _record({"kind": "watched", "device": int(suffix), "key": key, "fired": fired,
             "data": None if data is None else data.decode()})  # fmt: skip


@app.debounced(seconds=QUIET_SECONDS, key="device:{device_id}", name="heartbeat.quiet")
def device_quiet(device_id: int, seq: int) -> None:
    """No touch for this device in QUIET_SECONDS; ``seq`` is its last heartbeat's number."""
    fired = time.time()
    _record({"kind": "debounced", "device": device_id, "seq": seq, "fired": fired})


@app.task(name="heartbeat.ping", retries=0)
def ping() -> None:
    """Run once at start: the worker is connected, subscribed and running jobs."""
    _redis().rpush(ping_key(app.namespace), "1")
