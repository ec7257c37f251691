"""Tasks run by bench_load.py's worker (``delayq worker -A benchmarks.bench_load_tasks:app``).

Each handler does what the workloads in bench_load.py ask of a real job: one Redis write. It
pushes how late it started (ms after its deadline) to a list; that push is the write. Each
kind of timer (plain, debounced, watched) has a plain-function and an ``async def`` handler,
since they take different paths through the worker (its thread pool, or its event loop).

Task names are explicit: the benchmark imports this module as ``bench_load_tasks`` while the
worker imports it as ``benchmarks.bench_load_tasks``, and both must agree on what a payload names.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis.asyncio as aredis

from delayq import Delayq, Task, current_job
from delayq.testing import LazyRedis

DEBOUNCE_S = 1.0
WATCHED = {"sync": "bench:load:ws:", "async": "bench:load:wa:"}

# The worker's app; the CLI's --url/--namespace override these before it connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_sync_client = LazyRedis(app)
_async_clients: list[aredis.Redis] = []


def started_key(namespace: str) -> str:
    return f"bench:{namespace}:started"


def ping_key(namespace: str) -> str:
    return f"bench:{namespace}:ping"


def _async_client() -> aredis.Redis:
    # Made on first use, inside the worker's event loop, which then owns it.
    if not _async_clients:
        _async_clients.append(aredis.Redis.from_url(app.url))
    return _async_clients[0]


def _lateness() -> str:
    job = current_job()
    if job is None:
        raise RuntimeError("a benchmark handler ran outside a worker")
    return f"{time.time() * 1000 - job.due_ms:.3f}"


def _expiry_lateness(suffix: str) -> str:
    # A watched key's name ends with the ms it was set to expire at (PXAT): the job's due time
    # is when the worker heard of the expiry, which hides the server's own expiry delay.
    return f"{time.time() * 1000 - int(suffix.rsplit(':', 1)[1]):.3f}"


def _write(value: str) -> None:
    _sync_client().rpush(started_key(app.namespace), value)


async def _awrite(value: str) -> None:
    await _async_client().rpush(started_key(app.namespace), value)


# retries=0 everywhere: a failing benchmark job should show up as a dead letter, not run again.


@app.task(name="bench.load.plain_sync", retries=0)
def plain_sync(n: int) -> None:
    _write(_lateness())


@app.task(name="bench.load.plain_async", retries=0)
async def plain_async(n: int) -> None:
    await _awrite(_lateness())


@app.debounced(seconds=DEBOUNCE_S, key="ds:{n}", name="bench.load.debounced_sync", retries=0)
def debounced_sync(n: int) -> None:
    _write(_lateness())


@app.debounced(seconds=DEBOUNCE_S, key="da:{n}", name="bench.load.debounced_async", retries=0)
async def debounced_async(n: int) -> None:
    await _awrite(_lateness())


@app.on_expire(WATCHED["sync"] + "*", name="bench.load.watched_sync", retries=0)
def watched_sync(key: str, suffix: str, data: bytes | None) -> None:
    _write(_expiry_lateness(suffix))


@app.on_expire(WATCHED["async"] + "*", name="bench.load.watched_async", retries=0)
async def watched_async(key: str, suffix: str, data: bytes | None) -> None:
    await _awrite(_expiry_lateness(suffix))


# Each kind of timer and handler, by (kind, mode): what bench_load.py arms.
HANDLERS: dict[tuple[str, str], Task[..., Any]] = {
    ("plain", "sync"): plain_sync,
    ("plain", "async"): plain_async,
    ("debounced", "sync"): debounced_sync,
    ("debounced", "async"): debounced_async,
    ("watched", "sync"): watched_sync,
    ("watched", "async"): watched_async,
}


@app.debounced(seconds=3600, key="far:{n}", name="bench.load.far", retries=0)
async def far(n: int) -> None:
    """Touched by the producer runs, with no worker running: never fires."""


@app.task(name="bench.load.ping", retries=0)
async def ping() -> None:
    """Tells the benchmark the worker is up and runs jobs end to end."""
    await _async_client().rpush(ping_key(app.namespace), "1")
