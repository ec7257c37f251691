"""Firing on time and exactly once, at scale, with several workers."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import redis

from delayq import Delayq, EmbeddedServer
from tests.conftest import WorkerProcess, WorkerThread, wait_until


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_two_workers_fire_2000_timers_exactly_once(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    from tests.worker_app import record

    app = Delayq(server.url, namespace=namespace)
    record._app_ref = lambda: app  # schedule into this test's namespace
    workers = [worker_process(server.url, namespace) for _ in range(2)]
    ran_key = f"test:{namespace}:ran"
    # Both workers up: each one's consumer group member shows in XINFO once it reads.
    wait_until(lambda: rclient.exists(app.keys.ready), timeout=20)
    wait_until(lambda: len(rclient.xinfo_consumers(app.keys.ready, "workers")) == 2, timeout=20)

    timers = app.schedule_many(
        [record.prepare(f"t{i}", delay=1.0 + (i % 200) * 0.01) for i in range(2000)]
    )
    due = {f"t{i}": t.due_ms for i, t in enumerate(timers)}
    wait_until(lambda: rclient.llen(ran_key) >= 2000, timeout=60)
    time.sleep(0.5)  # a duplicate would show up right after; give it a moment to appear
    rows = [r.decode().split("|") for r in rclient.lrange(ran_key, 0, -1)]
    counts = collections.Counter(tag for tag, _, _ in rows)
    assert len(counts) == 2000 and max(counts.values()) == 1, "a timer fired twice"
    lateness = [float(at) - due[tag] for tag, at, _ in rows]
    assert min(lateness) >= -5  # never early (allow clock read jitter)
    assert percentile(lateness, 0.99) < 1000, f"p99 lateness {percentile(lateness, 0.99)} ms"
    assert len({pid for _, _, pid in rows}) == 2, "both workers should have run jobs"
    wait_until(lambda: not list(rclient.scan_iter(app.keys.data_pattern())), timeout=10)
    for proc in workers:
        proc.signal(__import__("signal").SIGTERM)
        assert proc.wait(30) == 0
    app.close()


def test_near_timers_on_time_behind_200k_far_timers(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """The case where expiry notifications alone fail: many TTL keys not yet due."""
    ran: dict[int, float] = {}
    lock = threading.Lock()

    @app.task
    def near(i: int) -> None:
        with lock:
            ran[i] = time.time() * 1000

    @app.task
    def far(i: int) -> None:
        raise AssertionError("a far-future timer fired")

    app.schedule_many((far.prepare(i, delay=7200) for i in range(200_000)), chunk=5000)
    assert app.pending_count() == 200_000
    start_worker(app)
    timers = app.schedule_many([near.prepare(i, delay=1.0 + (i % 100) * 0.02) for i in range(1000)])
    wait_until(lambda: len(ran) == 1000, timeout=30)
    lateness = [ran[i] - t.due_ms for i, t in enumerate(timers)]
    assert percentile(lateness, 0.99) < 1000, f"p99 lateness {percentile(lateness, 0.99)} ms"
    assert max(lateness) < 2000
    assert app.pending_count() == 200_000
