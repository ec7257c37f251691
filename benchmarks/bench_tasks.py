"""Tasks run by the benchmark's worker process (``delayq worker -A benchmarks.bench_tasks:app``).

Task names are explicit: the benchmark script imports this module as ``bench_tasks`` while the
worker imports it as ``benchmarks.bench_tasks``, and both must agree on what a payload names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis

from delayq import Delayq, Task

# The worker's app; the CLI's --url/--namespace override these before it connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_client: aredis.Redis | None = None
_late: list[str] = []  # lateness figures not yet reported
_reporter: asyncio.Task[None] | None = None
REPORT_EVERY_S = 0.05


def lateness_key(namespace: str) -> str:
    return f"bench:{namespace}:lateness"


def ping_key(namespace: str) -> str:
    return f"bench:{namespace}:ping"


def _redis() -> aredis.Redis:
    # Created on first use, inside the worker's event loop, which then owns its connections.
    global _client
    if _client is None:
        _client = aredis.Redis.from_url(app.url)
    return _client


async def noop(n: int = 0) -> None:
    """Does nothing: what remains is the framework's own cost per job."""


async def record(due_ms: int) -> None:
    """Notes how late the job started (ms); a reporter pushes the figures to Redis in batches."""
    global _reporter
    _late.append(f"{time.time() * 1000 - due_ms:.3f}")
    if _reporter is None:
        _reporter = asyncio.get_running_loop().create_task(_report_forever())


async def _report_forever() -> None:
    # One RPUSH per interval over one connection rather than one per job: a round trip (and,
    # in a burst, a new pooled connection) per job would disturb the worker being measured.
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        if not _late:
            continue
        batch = _late[:]
        del _late[:]
        try:
            await _redis().rpush(lateness_key(app.namespace), *batch)
        except Exception:
            logging.getLogger("bench").exception("cannot report lateness; retrying")
            _late[:0] = batch


async def ping() -> None:
    """Tells the benchmark the worker is up and runs jobs end to end."""
    await _redis().rpush(ping_key(app.namespace), "1")


@dataclass(frozen=True, slots=True)
class BenchTasks:
    noop: Task[..., Any]
    record: Task[..., Any]
    ping: Task[..., Any]


def register(target: Delayq) -> BenchTasks:
    """Declare the benchmark's tasks on ``target`` (the worker's app, or one of the bench's)."""
    # retries=0: a failing benchmark job should show up as a dead letter, not run again.
    return BenchTasks(
        noop=target.task(name="bench.noop", retries=0)(noop),
        record=target.task(name="bench.record", retries=0)(record),
        ping=target.task(name="bench.ping", retries=0)(ping),
    )


register(app)
