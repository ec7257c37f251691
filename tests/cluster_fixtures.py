"""The ``cluster`` fixture: one local Valkey cluster (3 primaries, 1 replica each) per session;
and the ledger of the cluster tests and benchmarks."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from delayq import Delayq
from delayq._cluster_server import ClusterNode, LocalCluster
from tests.conftest import WorkerThread, wait_until


class Ledger:
    """Which timer ids ran, how often, when first, and how late (by this machine's clock)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.lateness: list[float] = []
        self.ran_at: dict[str, float] = {}
        self.due: dict[str, float] = {}
        self.lock = threading.Lock()

    def app(self, url: str, namespace: str) -> tuple[Delayq, Any]:
        app = Delayq(url, namespace=namespace)

        @app.task(name="ledger.note")
        def note(timer_id: str, due: float) -> None:
            now = time.time()
            with self.lock:
                self.runs[timer_id] += 1
                self.lateness.append(now - due)
                self.ran_at.setdefault(timer_id, now)
                self.due[timer_id] = due

        return app, note

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Tests that fail over or restart nodes leave it ready, but roles may have moved: find the
    primaries with ``primary_urls()``, not by node position."""
    local = LocalCluster(3, 1, data_dir=tmp_path_factory.mktemp("cluster"))
    # Generous: the machine has 2 cores and may be busy with other tests.
    local.start(timeout=60.0)
    yield local
    local.cleanup()


def owner(cluster: LocalCluster, key: str) -> ClusterNode:
    """The primary serving ``key``'s slot now."""
    slot = key_slot(key.encode())
    for row in cluster.nodes[0].query("CLUSTER", "SLOTS"):
        if int(row[0]) <= slot <= int(row[1]):
            return next(n for n in cluster.nodes if n.port == int(row[2][1]))
    raise AssertionError(f"no node serves slot {slot}")


def schedule_spread(app: Delayq, note: Any, prefix: str, count: int, spread: float) -> None:
    now = time.time()
    requests = []
    for i in range(count):
        delay = 0.3 + spread * i / count
        timer_id = f"{prefix}{i}"
        requests.append(note.request((timer_id, now + delay), {}, delay=delay, timer_id=timer_id))
    app.schedule_many(requests)


def start_ledger(cluster: LocalCluster, start_worker: Callable[..., WorkerThread],
         workers: int = 2) -> tuple[Ledger, Delayq, Any]:  # fmt: skip
    cluster.wait_ready(timeout=60.0)
    namespace = "w" + uuid.uuid4().hex[:10]
    ledger = Ledger()
    producer, note = ledger.app(cluster.url, namespace)
    for _ in range(workers):
        start_worker(ledger.app(cluster.url, namespace)[0])
    return ledger, producer, note


def exactly_once(ledger: Ledger, producer: Delayq, total: int) -> None:
    wait_until(lambda: ledger.count() == total, timeout=60)
    time.sleep(0.5)  # a duplicate would come soon after
    assert ledger.count() == total and max(ledger.runs.values()) == 1
    assert producer.pending_count() == 0
