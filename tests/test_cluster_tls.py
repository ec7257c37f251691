"""A cluster over TLS: producers and workers given a ``rediss://`` URL reach every node with it.

The bundled Valkey has no TLS, so the nodes are the system's ``redis-server`` (Debian's 7.0
supports cluster mode with ``tls-cluster``), or the binary named by ``DELAYQ_TLS_SERVER``, as in
tests/test_tls.py: TLS port only (``--port 0``), client certificates required, the cluster bus
over TLS too. Skipped without such a binary, unless ``DELAYQ_REQUIRE_TLS=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from delayq._cluster_server import LocalCluster
from tests.cluster_fixtures import exactly_once, owner, schedule_spread, start_ledger
from tests.conftest import WorkerThread
from tests.test_tls import started_or_unavailable, tls_setup


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 primaries, no replicas: Redis 7.0 lists a new replica in CLUSTER SLOTS only ~8 s
    after it joined, and replication is the server's own business."""
    directory = tmp_path_factory.mktemp("tls-cluster")
    binary, files = tls_setup(directory, "a TLS cluster")
    cluster = LocalCluster(3, 0, data_dir=directory / "nodes", binary=binary, tls=files)
    started_or_unavailable(lambda: cluster.start(timeout=60.0), binary, "a TLS cluster node")
    yield cluster
    cluster.cleanup()


def test_timers_fire_once_on_every_primary_over_tls(
    tls_cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    assert tls_cluster.url.startswith("rediss://")
    for node in tls_cluster.nodes:  # no plain port: every connection that works is TLS
        assert node.query("CONFIG", "GET", "port") in (["port", "0"], {"port": "0"})
    ledger, producer, note = start_ledger(tls_cluster, start_worker)
    schedule_spread(producer, note, "t", 500, spread=2.0)
    shards = producer._run(producer.store.layout()).shards
    assert len({owner(tls_cluster, keys.index).port for keys in shards}) == 3
    exactly_once(ledger, producer, 500)
    lateness = sorted(ledger.lateness)
    assert lateness[0] > -0.01 and lateness[int(len(lateness) * 0.99)] < 1.0
    producer.close()
