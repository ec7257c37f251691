"""Watched keys (on_expire) on a real local cluster: the keys, their companions and the
namespace's watch index on different nodes; each expiry fires once and on time, through a
failover, with expiry left to the probes, and after a time with no worker."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis

from delayq import Delayq
from delayq._cluster_server import LocalCluster
from tests.cluster_fixtures import owner
from tests.conftest import WorkerThread, wait_until


@dataclass
class Fired:
    """What the on_expire handler was called with, and when (this machine's clock)."""

    runs: Counter[str] = field(default_factory=Counter)
    data: dict[str, bytes | None] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self, url: str, namespace: str, prefix: str) -> Delayq:
        app = Delayq(url, namespace=namespace)

        @app.on_expire(prefix + ":seen:*", data=prefix + ":data:{suffix}", name="offline")
        def offline(key: str, suffix: str, data: bytes | None) -> None:
            with self.lock:
                self.runs[suffix] += 1
                self.data[suffix] = data
                self.at.setdefault(suffix, time.time())

        return app

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


@dataclass
class Watched:
    cluster: LocalCluster
    client: redis.RedisCluster
    prefix: str
    fired: Fired
    namespace: str

    def seen(self, suffix: str) -> str:
        return f"{self.prefix}:seen:{suffix}"

    def data(self, suffix: str) -> str:
        return f"{self.prefix}:data:{suffix}"

    def app(self) -> Delayq:
        return self.fired.app(self.cluster.url, self.namespace, self.prefix)

    def spread(self, count: int) -> list[str]:
        """Suffixes whose keys fall on every primary, half with their companion elsewhere."""

        def apart(suffix: str) -> bool:
            return owner(self.cluster, self.seen(suffix)) != owner(self.cluster, self.data(suffix))

        pool = [f"d{i}" + "x" * (i % 7) for i in range(40 * count)]
        chosen = [s for s in pool if apart(s)][: count // 2]
        chosen += [s for s in pool if not apart(s)][: count - len(chosen)]
        primaries = {owner(self.cluster, self.seen(s)).port for s in chosen}
        assert len(primaries) == 3 and len(chosen) == count, primaries
        return chosen

    def exactly_once(self, suffixes: list[str], timeout: float = 60) -> None:
        try:
            wait_until(lambda: self.fired.count() == len(suffixes), timeout=timeout)
        except AssertionError:
            missing = sorted(set(suffixes) - set(self.fired.runs))
            keys = {s: (self.client.pttl(self.seen(s)), owner(self.cluster, self.seen(s)).port)
                    for s in missing}  # fmt: skip
            app = self.app()
            index = app._run(app.store.layout()).shards[0].watch_index
            armed = self.client.zrange(index, 0, -1, withscores=True)
            app.close()
            raise AssertionError(f"never fired: {keys}; armed: {armed}") from None
        time.sleep(0.5)  # a second firing would come soon after
        assert set(self.fired.runs) == set(suffixes)
        assert max(self.fired.runs.values()) == 1, self.fired.runs


@pytest.fixture
def watched(cluster: LocalCluster) -> Iterator[Watched]:
    cluster.wait_ready(timeout=60.0)
    client = redis.RedisCluster.from_url(cluster.url)
    prefix = "cw" + uuid.uuid4().hex[:8]
    flags = {n.port: n.query("CONFIG", "GET", "notify-keyspace-events") for n in cluster.nodes}
    yield Watched(cluster, client, prefix, Fired(), "x" + uuid.uuid4().hex[:10])
    client.close()
    # Workers add keyspace events for watched keys; the cluster's other tests expect the
    # narrower flags, under which a listener takes its hints from a pattern.
    for node in cluster.nodes:
        reply = flags[node.port]
        value = reply["notify-keyspace-events"] if isinstance(reply, dict) else reply[1]
        node.query("CONFIG", "SET", "notify-keyspace-events", value)


def _leader(workers: list[WorkerThread]) -> WorkerThread:
    return wait_until(
        lambda: next((w for w in workers if w.worker._watching and w.worker._watching.leading),
                     None), timeout=15)  # fmt: skip


def test_keys_and_companions_on_other_nodes_fire_once_on_time(
    watched: Watched, start_worker: Callable[..., WorkerThread]
) -> None:
    workers = [start_worker(watched.app()) for _ in range(2)]
    _leader(workers)
    suffixes = watched.spread(60)
    client, deadline = watched.client, {}
    for i, s in enumerate(suffixes):
        client.set(watched.data(s), f"v-{s}")
        ttl_ms = 600 + 20 * i
        client.set(watched.seen(s), "1", px=ttl_ms)
        deadline[s] = time.time() + ttl_ms / 1000
    # A heartbeat moves a key's expiry later; a deleted key never fires.
    reset, deleted = suffixes[:10], suffixes[10:15]
    for s in reset:
        client.set(watched.seen(s), "1", px=3000)
        deadline[s] = time.time() + 3.0
    for s in deleted:
        client.delete(watched.seen(s))
    expected = [s for s in suffixes if s not in deleted]
    watched.exactly_once(expected)
    for s in expected:
        assert watched.fired.data[s] == f"v-{s}".encode(), s
        late = watched.fired.at[s] - deadline[s]
        assert -0.05 < late < 1.0, (s, late)


def test_probes_expire_keys_on_their_own_nodes(
    watched: Watched, start_worker: Callable[..., WorkerThread]
) -> None:
    """With active expiry off, a key expires only when read: the leader's look at its due
    timers, on the key's node, makes it expire there, and it fires once."""
    nodes = watched.cluster.nodes
    for node in nodes:
        node.query("DEBUG", "SET-ACTIVE-EXPIRE", "0")
    try:
        _leader([start_worker(watched.app())])
        suffixes = watched.spread(30)
        for s in suffixes:
            watched.client.set(watched.seen(s), "1", px=500)
        watched.exactly_once(suffixes, timeout=30)
    finally:
        for node in nodes:
            node.query("DEBUG", "SET-ACTIVE-EXPIRE", "1")


def test_keys_that_expired_while_no_worker_ran_fire_once_after(
    watched: Watched, start_worker: Callable[..., WorkerThread]
) -> None:
    first = start_worker(watched.app())
    _leader([first])
    suffixes = watched.spread(30)
    for s in suffixes:
        watched.client.set(watched.seen(s), "1", px=1500)
    producer = watched.app()
    wait_until(lambda: producer.pending_count() >= len(suffixes), timeout=15)
    first.stop()
    # Their expiry events are published to nobody: the watch timers, due, are judged later.
    wait_until(lambda: watched.client.exists(*map(watched.seen, suffixes)) == 0, timeout=15)
    assert watched.fired.count() == 0
    start_worker(watched.app())
    watched.exactly_once(suffixes)
    producer.close()


def test_a_failover_mid_run_fires_every_key_once(
    watched: Watched, start_worker: Callable[..., WorkerThread]
) -> None:
    workers = [start_worker(watched.app()) for _ in range(2)]
    _leader(workers)
    suffixes = watched.spread(60)
    for i, s in enumerate(suffixes):
        watched.client.set(watched.seen(s), "1", px=1500 + 50 * i)
    home = owner(watched.cluster, watched.seen(suffixes[0]))
    index = watched.cluster.primary_urls().index(home.url)
    watched.cluster.failover(index)
    try:
        watched.exactly_once(suffixes)
    finally:
        watched.cluster.failover(index)
