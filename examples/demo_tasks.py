"""The worker side of examples/demo.py: the tasks, and the app the worker is started with.

    delayq worker -A demo_tasks:app --url URL --namespace NS     (from examples/)

Each job records the moment it ran in a Redis list, which the demo reads to print every firing
and measure how late it was. Task names are explicit so that a payload names the same task
whatever the module is imported as (``demo_tasks`` in the worker and in the demo alike).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

from delayq import Delayq
from delayq.testing import LazyRedis

# The CLI's --url/--namespace override these before the app first connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE") or "demo")

# A client for app.url, made on first use: once the CLI has applied --url. Thread-safe: plain
# functions run in the worker's thread pool.
_redis = LazyRedis(app)


def ran_key(namespace: str) -> str:
    """The list the jobs append to: one JSON document per run."""
    return f"{namespace}:demo:ran"


def ping_key(namespace: str) -> str:
    return f"{namespace}:demo:ping"


def _record(label: str) -> None:
    ran_ms = time.time() * 1000  # first thing: the demo measures lateness from this
    _redis().rpush(ran_key(app.namespace), json.dumps({"label": label, "ran_ms": ran_ms}))


@app.task(name="demo.ring", retries=0)
def ring(label: str) -> None:
    """The job behind almost every timer of the demo."""
    _record(label)


@app.delayed(seconds=dt.timedelta(seconds=5), name="demo.reminder", retries=0)
def reminder(label: str) -> None:
    """A task with a default delay: ``reminder.delay(label)`` runs it 5 s later."""
    _record(label)


@app.task(name="demo.ping", retries=0)
def ping() -> None:
    """Run once before the demo starts: proves the worker is connected and running jobs."""
    _redis().rpush(ping_key(app.namespace), "1")
