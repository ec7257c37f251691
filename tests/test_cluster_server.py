"""LocalCluster and ``delayq server --cluster``: real valkey-server processes, no mocks.

The tests share the session's ``cluster`` fixture; those that move roles put them back or
wait until the cluster is ready again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from delayq._cluster_server import LocalCluster
from delayq._server import free_port
from tests.conftest import ROOT, process_gone, wait_until


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[RedisCluster]:
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield rc
    rc.close()


def _slot_counts(rc: RedisCluster) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for (first, last), owners in rc.cluster_slots(target_nodes=RedisCluster.RANDOM).items():
        counts[owners["primary"]] += last - first + 1
    return counts


def _write_and_read(rc: RedisCluster, prefix: str, count: int = 300) -> set[int]:
    for i in range(count):
        rc.set(f"{prefix}:{i}", str(i))
    assert [rc.get(f"{prefix}:{i}") for i in range(count)] == [str(i) for i in range(count)]
    return {key_slot(f"{prefix}:{i}".encode()) for i in range(count)}


def test_constructing_does_nothing() -> None:
    local = LocalCluster(2, 0)
    assert local.nodes == []
    with pytest.raises(RuntimeError):
        _ = local.url


def test_keys_in_many_slots(client: RedisCluster) -> None:
    slots = _write_and_read(client, "many")
    assert len(slots) > 250
    assert {client.get_node_from_key(f"many:{i}").port for i in range(300)} == {
        node.port for node in client.get_primaries()
    }


def test_slots_split_evenly(cluster: LocalCluster, client: RedisCluster) -> None:
    counts = _slot_counts(client)
    assert len(counts) == 3
    assert sum(counts.values()) == 16384
    assert all(abs(n - 16384 / 3) < 2 for n in counts.values()), counts
    assert sorted(port for _, port in counts) == sorted(
        int(url.rsplit(":", 1)[1].split("/")[0]) for url in cluster.primary_urls()
    )


def test_each_primary_has_one_connected_replica(client: RedisCluster) -> None:
    replication = client.info("replication", target_nodes=RedisCluster.PRIMARIES)
    assert len(replication) == 3
    for info in replication.values():
        assert info["role"] == "master"
        assert info["connected_slaves"] == 1
        assert info["slave0"]["state"] == "online"
    assert len(client.get_replicas()) == 3


def test_failover_swaps_roles_and_writes_go_on(cluster: LocalCluster) -> None:
    before = cluster.primary_urls()
    old = next(node for node in cluster.nodes if node.url == before[0])
    early = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        promoted = cluster.failover(0)
        assert promoted.live_role() == "primary"
        assert old.live_role() == "replica"
        after = cluster.primary_urls()
        assert after == [promoted.url, *before[1:]]
        # A client that knew the old layout follows MOVED; a new one reads the new layout.
        _write_and_read(early, "after-failover")
        with RedisCluster.from_url(cluster.url, decode_responses=True) as fresh:
            _write_and_read(fresh, "after-failover-fresh")
    finally:
        early.close()
    assert cluster.failover(0) is old
    assert cluster.primary_urls() == before


def test_killed_primary_restarts_and_rejoins(cluster: LocalCluster) -> None:
    victim = next(node for node in cluster.nodes if node.url == cluster.primary_urls()[1])
    old_pid = victim.pid
    victim.stop(kill=True)
    victim.start()
    assert victim.pid != old_pid
    cluster.wait_ready(timeout=60.0)
    with RedisCluster.from_url(cluster.url, decode_responses=True) as rc:
        states = rc.cluster_info(target_nodes=RedisCluster.ALL_NODES)
        assert {info["cluster_state"] for info in states.values()} == {"ok"}
        assert len(states) == 6
        _write_and_read(rc, "after-restart")


def _free_port_run(count: int) -> int:
    """A port that is free together with the ``count - 1`` ports after it."""

    def usable(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    while True:
        first = free_port()
        if first + count <= 65536 and all(usable(first + i) for i in range(1, count)):
            return first


def _cluster_ok(url: str) -> bool:
    try:
        rc = RedisCluster.from_url(url, decode_responses=True, socket_timeout=1)
    except (RedisError, RedisClusterException):
        return False
    try:
        states = rc.cluster_info(target_nodes=RedisCluster.ALL_NODES)
        return len(states) == 3 and all(s["cluster_state"] == "ok" for s in states.values())
    except (RedisError, RedisClusterException):
        return False
    finally:
        rc.close()


def _run_server(port: int, data_dir: Path) -> list[int]:
    """Run ``delayq server --cluster 3``, wait for it, stop it with SIGTERM; its node pids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "delayq", "server", "--cluster", "3", "--replicas", "0",
         "--port", str(port), "--dir", str(data_dir)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: proc.poll() is not None or _cluster_ok(url), timeout=60.0)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert f"connect a cluster client to redis://127.0.0.1:{port}/0" in output
    nodes = re.findall(r"node redis://127\.0\.0\.1:(\d+)/0 primary \(pid (\d+)\)", output)
    assert [int(p) for p, _ in nodes] == [port, port + 1, port + 2], output
    return [int(pid) for _, pid in nodes]


def test_cli_cluster_runs_stops_and_resumes(tmp_path: Path) -> None:
    port = _free_port_run(3)
    pids = _run_server(port, tmp_path)
    assert all(process_gone(pid) for pid in pids)
    with pytest.raises(redis.ConnectionError), redis.Redis(port=port) as plain:
        plain.ping()
    # The same command again finds the node state in --dir and resumes that cluster.
    again = _run_server(port, tmp_path)
    assert all(process_gone(pid) for pid in again)
