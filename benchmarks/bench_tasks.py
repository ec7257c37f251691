"""Tasks run by the benchmark's worker process (``delayq worker -A benchmarks.bench_tasks:app``).

Task names are explicit: the benchmark script imports this module as ``bench_tasks`` while the
worker imports it as ``benchmarks.bench_tasks``, and both must agree on what a payload names.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from delayq import Delayq, Task
from delayq.testing import BatchPusher

# The worker's app; the CLI's --url/--namespace override these before it connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
REPORT_EVERY_S = 0.05


def lateness_key(namespace: str) -> str:
    return f"bench:{namespace}:lateness"


def ping_key(namespace: str) -> str:
    return f"bench:{namespace}:ping"


# Lateness figures go to Redis in batches: one RPUSH per interval over one connection, made
# inside the worker's event loop, rather than a round trip (and, in a burst, a new pooled
# connection) per job, which would disturb the worker being measured.
_reporter = BatchPusher(app, lateness_key, REPORT_EVERY_S)


async def noop(n: int = 0) -> None:
    """Does nothing: what remains is the framework's own cost per job."""


def noop_sync(n: int = 0) -> None:
    """A plain function doing nothing: it runs on the worker's handler threads."""


async def stamp() -> float:
    """Returns the moment it ends: its waiter measures how long the result took to reach it."""
    return time.time()


async def record(due_ms: int) -> None:
    """Notes how late the job started (ms); the reporter pushes the figures to Redis."""
    _reporter.add(f"{time.time() * 1000 - due_ms:.3f}")


async def paced() -> None:
    """A rate-limited job: notes when it started (ms); the n-th start of a saturated
    limit may come n intervals after the first, no sooner (the benchmark compares)."""
    _reporter.add(f"{time.time() * 1000:.3f}")


_serial_end = [0.0]  # concurrency=1 and one worker: the runs follow one another here


async def serial() -> None:
    """A job of a task limited to one run at a time: the gap since the previous run ended
    (its slot's release) to this start (ms)."""
    if _serial_end[0]:
        _reporter.add(f"{(time.time() - _serial_end[0]) * 1000:.3f}")
    _serial_end[0] = time.time()


async def ping() -> None:
    """Tells the benchmark the worker is up and runs jobs end to end."""
    await _reporter.rpush(ping_key(app.namespace), "1")


@dataclass(frozen=True, slots=True)
class BenchTasks:
    noop: Task[..., Any]
    noop_sync: Task[..., Any]
    noop_unkept: Task[..., Any]  # result_ttl=0: no outcome kept
    noop_sync_unkept: Task[..., Any]
    noop_events: Task[..., Any]  # events=True: each step told on the events stream
    noop_sync_events: Task[..., Any]
    stamp: Task[..., Any]
    record: Task[..., Any]
    ping: Task[..., Any]
    # Limits that never bind (far above what a worker runs): what a limited job costs.
    noop_concurrency: Task[..., Any]
    noop_sync_concurrency: Task[..., Any]
    noop_rate: Task[..., Any]
    noop_sync_rate: Task[..., Any]
    paced: Task[..., Any]  # 500/s: throttled jobs, each started at its token's time
    serial: Task[..., Any]  # concurrency=1: each run waits for the previous one's slot
    # Another queue, at another level: what a job of a routed payload costs.
    noop_routed: Task[..., Any]
    noop_sync_routed: Task[..., Any]


def register(target: Delayq) -> BenchTasks:
    """Declare the benchmark's tasks on ``target`` (the worker's app, or one of the bench's)."""
    # retries=0: a failing benchmark job should show up as a dead letter, not run again.
    return BenchTasks(
        noop=target.task(name="bench.noop", retries=0)(noop),
        noop_sync=target.task(name="bench.noop_sync", retries=0)(noop_sync),
        noop_unkept=target.task(name="bench.noop_unkept", retries=0, result_ttl=0)(noop),
        noop_sync_unkept=target.task(name="bench.noop_sync_unkept", retries=0, result_ttl=0)(
            noop_sync
        ),
        noop_events=target.task(name="bench.noop_events", retries=0, events=True)(noop),
        noop_sync_events=target.task(name="bench.noop_sync_events", retries=0, events=True)(
            noop_sync
        ),
        stamp=target.task(name="bench.stamp", retries=0)(stamp),
        record=target.task(name="bench.record", retries=0)(record),
        ping=target.task(name="bench.ping", retries=0)(ping),
        noop_concurrency=target.task(name="bench.noop_conc", retries=0, concurrency=100_000)(noop),
        noop_sync_concurrency=target.task(
            name="bench.noop_sync_conc", retries=0, concurrency=100_000
        )(noop_sync),
        noop_rate=target.task(
            name="bench.noop_rate", retries=0, rate_limit="10000000/s", rate_burst=10_000_000
        )(noop),
        noop_sync_rate=target.task(
            name="bench.noop_sync_rate", retries=0, rate_limit="10000000/s", rate_burst=10_000_000
        )(noop_sync),
        paced=target.task(name="bench.paced", retries=0, rate_limit="500/s")(paced),
        serial=target.task(name="bench.serial", retries=0, concurrency=1)(serial),
        noop_routed=target.task(name="bench.noop_routed", retries=0, queue="bench", priority=5)(
            noop
        ),
        noop_sync_routed=target.task(
            name="bench.noop_sync_routed", retries=0, queue="bench", priority=5
        )(noop_sync),
    )


register(app)
