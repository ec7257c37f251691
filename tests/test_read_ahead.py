"""Read-ahead: while jobs are short, a worker reads up to ``concurrency`` deliveries ahead of
its free slots. Those stay its own (heart-beaten, never taken over), are handed back when it
stops or when every slot stays busy, and slow jobs get none, so that another worker can take
what this one cannot start."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sized
from typing import Any

import redis

from delayq import Delayq, Task, Timer
from delayq._keys import GROUP
from delayq.worker import WorkerSettings
from tests.conftest import WorkerThread, wait_until


def pending_of(rclient: redis.Redis, app: Delayq) -> dict[str, int]:
    """Deliveries held by each consumer (XPENDING's summary)."""
    summary = rclient.xpending(app.keys.ready, GROUP)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or []}


def buffer_behind(
    app: Delayq, rclient: redis.Redis, worker: WorkerThread, quick: Task[..., Any],
    busy: Task[..., Any], ran: Sized,
) -> Timer:  # fmt: skip
    """Warm ``worker`` (one slot) up with short jobs so that it reads ahead, occupy its slot
    with ``busy``, then schedule a ``quick`` job "after": it waits in the read-ahead buffer."""
    for i in range(3):
        quick.delay(f"warm-{i}")
    wait_until(lambda: len(ran) == 3)
    busy.delay()
    wait_until(lambda: sum(pending_of(rclient, app).values()) == 1)
    after = quick.delay("after")
    wait_until(lambda: pending_of(rclient, app).get(worker.worker.name) == 2)
    return after


def test_read_ahead_is_heart_beaten_then_handed_back_on_stop(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: list[tuple[str, int]] = []  # (job, thread that ran it)
    release = threading.Event()

    @app.task(retries=0)
    async def quick(name: str) -> None:
        ran.append((name, threading.get_ident()))

    @app.task(retries=0)
    async def hold() -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)
        ran.append(("hold", threading.get_ident()))

    settings = WorkerSettings(concurrency=1, heartbeat_interval=0.1, sweep_interval=1.0,
                              shutdown_timeout=0.5)  # fmt: skip
    first = start_worker(app, settings)
    after = buffer_behind(app, rclient, first, quick, hold, ran)
    time.sleep(0.5)
    entries = rclient.xpending_range(app.keys.ready, GROUP, "-", "+", 10)
    idle = {e["message_id"]: e["time_since_delivered"] for e in entries}
    fields = {eid: f for eid, f in rclient.xrange(app.keys.ready) if eid in idle}
    buffered = [eid for eid, f in fields.items() if f[b"i"].decode() == after.id]
    assert buffered and idle[buffered[0]] < 350, "the heartbeat keeps a read-ahead job its own"
    other = start_worker(app, settings)
    assert [name for name, _ in ran].count("after") == 0
    # "hold" outlives the shutdown timeout; both go back to the stream (the read-ahead one
    # maybe before, on a machine slow enough to keep the slot busy past READ_AHEAD_HOLD_S).
    first.stop()
    assert first.worker.counters.handed_back == 2
    release.set()
    wait_until(lambda: [name for name, _ in ran].count("after") == 1)
    wait_until(lambda: [name for name, _ in ran].count("hold") == 1)
    assert {thread for name, thread in ran if name in ("after", "hold")} == {other.thread.ident}
    time.sleep(0.3)
    assert [name for name, _ in ran].count("after") == 1, "a handed-back job runs once"
    assert app.pending_count() == 0


def test_slow_jobs_get_no_read_ahead(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    done: list[int] = []

    @app.task(retries=0)
    def slow(n: int) -> None:
        time.sleep(0.15)
        done.append(n)

    settings = WorkerSettings(concurrency=1, sweep_interval=1.0, shutdown_timeout=5.0)
    worker = start_worker(app, settings)
    executor = worker.worker._shards[0].executor
    assert executor is not None
    slow.delay(0)  # measured: jobs take longer than read-ahead allows
    wait_until(lambda: done == [0])
    for n in range(1, 6):
        slow.delay(n)
    held: list[int] = []  # started or read ahead, by this worker
    pending: list[int] = []  # delivered to it and not acknowledged
    while len(done) < 6:
        held.append(len(executor.running) + len(executor.buffered))
        pending.append(pending_of(rclient, app).get(worker.worker.name, 0))
        time.sleep(0.01)
    assert max(held) == 1, "a worker busy with a slow job holds no other delivery"
    # The job before may be done and its acknowledgement still on its way.
    assert max(pending) <= 2
    assert sorted(done) == list(range(6))


def test_read_ahead_goes_back_to_the_stream_when_every_slot_is_busy_with_a_slow_job(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: dict[str, tuple[int, float]] = {}  # job -> (thread, when it ended)
    release = threading.Event()

    @app.task(retries=0)
    async def quick(name: str) -> None:
        ran[name] = (threading.get_ident(), time.monotonic())

    @app.task(retries=0)
    async def slow() -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)
        ran["slow"] = (threading.get_ident(), time.monotonic())

    settings = WorkerSettings(concurrency=1, sweep_interval=1.0, shutdown_timeout=5.0)
    first = start_worker(app, settings)
    buffer_behind(app, rclient, first, quick, slow, ran)
    other = start_worker(app, settings)
    # The slow job holds the only slot: "after" goes back and runs on the other worker.
    wait_until(lambda: "after" in ran, timeout=10)
    assert ran["after"][0] == other.thread.ident
    assert "slow" not in ran
    release.set()
    wait_until(lambda: "slow" in ran)
    assert first.worker.counters.handed_back == 1
