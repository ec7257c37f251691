"""Workers on a real local cluster: timers fire once, through a failover, with the listener on
the node that holds the namespace and notifications configured on every node."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.crc import key_slot

from delayq import ConfigurationError, Delayq, Worker
from delayq._cluster_server import ClusterNode, LocalCluster
from tests.conftest import FAST, WorkerThread, wait_until


class Ledger:
    """Which timer ids ran, how often, and how late (by this machine's clock)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.lateness: list[float] = []
        self.lock = threading.Lock()

    def app(self, url: str, namespace: str) -> tuple[Delayq, Any]:
        app = Delayq(url, namespace=namespace)

        @app.task(name="ledger.note")
        def note(timer_id: str, due: float) -> None:
            with self.lock:
                self.runs[timer_id] += 1
                self.lateness.append(time.time() - due)

        return app, note

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


def _flags(node: ClusterNode) -> str:
    reply = node.query("CONFIG", "GET", "notify-keyspace-events")
    return str(reply["notify-keyspace-events"] if isinstance(reply, dict) else reply[1])


def _owner(cluster: LocalCluster, app: Delayq) -> ClusterNode:
    slot = key_slot(app.keys.index.encode())
    for node in cluster.nodes:
        rows = node.query("CLUSTER", "SLOTS")
        for row in rows:
            if int(row[0]) <= slot <= int(row[1]):
                port = int(row[2][1])
                return next(n for n in cluster.nodes if n.port == port)
    raise AssertionError("no node serves the namespace")


def _schedule(app: Delayq, note: Any, prefix: str, count: int, spread: float) -> None:
    now = time.time()
    requests = []
    for i in range(count):
        delay = 0.3 + spread * i / count
        timer_id = f"{prefix}{i}"
        requests.append(note.request((timer_id, now + delay), {}, delay=delay, timer_id=timer_id))
    app.schedule_many(requests)


def test_two_workers_fire_each_timer_once_through_a_failover(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    cluster.wait_ready(timeout=60.0)
    namespace = "w" + uuid.uuid4().hex[:10]
    ledger = Ledger()
    producer, note = ledger.app(cluster.url, namespace)
    for _ in range(2):
        start_worker(ledger.app(cluster.url, namespace)[0])
    # Every node, replicas included, publishes expiries now.
    for node in cluster.nodes:
        flags = _flags(node)
        assert {"E", "x"} <= set(flags) or "A" in flags, (node, flags)
    _schedule(producer, note, "t", 600, spread=3.0)
    owner_index = cluster.primary_urls().index(_owner(cluster, producer).url)
    wait_until(lambda: ledger.count() > 100, timeout=30)
    cluster.failover(owner_index)
    try:
        _schedule(producer, note, "u", 200, spread=1.0)
        wait_until(lambda: ledger.count() == 800, timeout=60)
        time.sleep(0.5)  # a duplicate would come within the visibility timeout
        assert max(ledger.runs.values()) == 1
        assert producer.pending_count() == 0
    finally:
        cluster.failover(owner_index)
        producer.close()
    lateness = sorted(ledger.lateness)
    assert lateness[0] > -0.01  # never early


def test_listener_follows_the_namespace_to_its_new_node(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    cluster.wait_ready(timeout=60.0)
    app = Delayq(cluster.url, namespace="l" + uuid.uuid4().hex[:10])
    start_worker(app)
    before = _owner(cluster, app)

    def subscribed(node: ClusterNode) -> bool:
        # Only this test's worker subscribes to patterns on the cluster now.
        return int(node.query("PUBSUB", "NUMPAT")) > 0

    wait_until(lambda: subscribed(before), timeout=10)
    index = cluster.primary_urls().index(before.url)
    promoted = cluster.failover(index)
    try:
        wait_until(lambda: subscribed(promoted), timeout=15)
    finally:
        cluster.failover(index)
    wait_until(lambda: subscribed(before), timeout=15)
    app.close()


def test_watchers_are_refused_on_a_cluster_with_a_clear_error(cluster: LocalCluster) -> None:
    app = Delayq(cluster.url, namespace="x" + uuid.uuid4().hex[:10])

    @app.on_expire("session:*")
    def gone(key: str, suffix: str, data: Any) -> None:
        del key, suffix, data

    worker = Worker(app, FAST)
    with pytest.raises(ConfigurationError, match="on_expire watchers do not run on a Redis"):
        worker.run(install_signal_handlers=False)
    assert worker.stopped.is_set()
