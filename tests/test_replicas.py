"""Opt-in durability (``wait_replicas``): a producer's write returns once the replicas have it,
on one server with a replica and on a cluster; too few replicas is a clear NotReplicated."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from delayq import ConfigurationError, Delayq, NotReplicated
from delayq._cluster_server import LocalCluster
from delayq._sentinel_server import LocalSentinel
from delayq._server import EmbeddedServer
from tests.cluster_fixtures import owner
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """A primary and its replica."""
    root = tmp_path_factory.mktemp("pair")
    primary = EmbeddedServer(data_dir=root / "primary")
    primary.start()
    replica = EmbeddedServer(data_dir=root / "replica",
                             extra_args=("--replicaof", "127.0.0.1", str(primary.port),
                                         "--repl-diskless-sync-delay", "0"))  # fmt: skip
    replica.start()
    client = redis.Redis.from_url(replica.url)
    wait_until(lambda: client.info("replication")["master_link_status"] == "up", timeout=30)
    client.close()
    yield primary, replica
    replica.stop()
    primary.stop()


def _app(url: str, **options: Any) -> tuple[Delayq, Any]:
    app = Delayq(url, namespace="r" + uuid.uuid4().hex[:8], **options)

    @app.task(name="job")
    def job() -> None:
        pass

    return app, job


def _ids(client: redis.Redis, app: Delayq) -> set[str]:
    members: list[bytes] = client.zrange(app.keys.index, 0, -1)  # type: ignore[assignment]
    return {m.decode() for m in members}


def test_each_write_returns_once_the_replica_has_it(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    primary, replica = pair
    app, job = _app(primary.url, wait_replicas=1)
    seen = redis.Redis.from_url(replica.url)
    # Read from the replica the moment each call returns: with asynchronous replication some
    # of these reads would miss the write.
    for i in range(200):
        job.schedule(delay=3600, id=f"t{i}")
        assert f"t{i}" in _ids(seen, app), i
    reqs = [job.request((), {}, delay=3600, timer_id=f"m{i}") for i in range(3000)]
    app.schedule_many(reqs)
    assert len(_ids(seen, app)) == 3200
    for i in range(50):
        assert app.cancel(f"t{i}")
        assert f"t{i}" not in _ids(seen, app), i
    app.close()
    seen.close()


def test_asyncio_writes_wait_too(pair: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    primary, replica = pair
    app, job = _app(primary.url, wait_replicas=1)
    seen = redis.Redis.from_url(replica.url)

    async def main() -> None:
        async with app:
            await asyncio.gather(*(job.aschedule(delay=3600, id=f"a{i}")
                                   for i in range(500)))  # fmt: skip
            assert len(_ids(seen, app)) == 500

    asyncio.run(main())
    seen.close()


def test_too_few_replicas_is_not_replicated_and_the_write_stays(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    primary, _ = pair
    app, job = _app(primary.url, wait_replicas=2,
                 wait_timeout=0.2)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="1 of the 2 replica") as caught:
        job.schedule(delay=3600, id="lonely")
    assert 0.15 < time.monotonic() - started < 5
    assert (caught.value.acknowledged, caught.value.wanted) == (1, 2)
    assert app.timer("lonely") is not None  # stored on the primary all the same
    with pytest.raises(NotReplicated):
        app.schedule_many([job.request((), {}, delay=3600, timer_id="b")])
    app.close()


def test_a_stalled_replica_makes_writes_wait_then_fail(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> None:
    primary, replica = pair
    app, job = _app(primary.url, wait_replicas=1,
                 wait_timeout=0.3)  # fmt: skip
    job.schedule(delay=3600, id="before")
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        with pytest.raises(NotReplicated, match="0 of the 1 replica"):
            job.schedule(delay=3600, id="during")
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    wait_until(lambda: job.schedule(delay=3600, id="after") is not None, timeout=10)
    app.close()


def test_bad_settings_are_refused() -> None:
    for replicas, timeout in [(-1, 1.0), (True, 1.0), ("1", 1.0), (1, 0), (1, -2), (1, "1")]:
        with pytest.raises(ConfigurationError, match="wait_"):
            Delayq("redis://127.0.0.1:1/0", wait_replicas=replicas, wait_timeout=timeout)  # type: ignore[arg-type]


def test_on_a_cluster_every_primary_waits_for_its_replica(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster.wait_ready(timeout=60.0)
    app, job = _app(cluster.url, wait_replicas=1)
    reqs = [job.request((), {}, delay=3600, timer_id=f"c{i}") for i in range(2000)]
    app.schedule_many(reqs)
    layout = app._run(app.store.layout())
    held = 0
    for keys in layout.shards:
        home = owner(cluster, keys.index)
        replica = next(n for n in cluster.nodes if n is not home and n.live_role() == "replica"
                       and str(home.port) in str(n.query("INFO", "replication")))  # fmt: skip
        client = redis.Redis.from_url(replica.url)
        client.readonly()
        held += int(client.zcard(keys.index))
        client.close()
    assert held == 2000  # read from the replicas the moment the call returned
    app.close()


def test_through_sentinel_writes_wait_for_the_replica(tmp_path: Path) -> None:
    with LocalSentinel(1, 3, data_dir=tmp_path / "sentinel") as deployment:
        primary = deployment.primary()
        replica = next(s for s in deployment.servers if s is not primary)
        app, job = _app(deployment.url, wait_replicas=1)
        seen = redis.Redis.from_url(replica.url)
        for i in range(100):
            job.schedule(delay=3600, id=f"s{i}")
            assert f"s{i}" in _ids(seen, app), i
        app.close()
        seen.close()
        lonely, job = _app(deployment.url, wait_replicas=2, wait_timeout=0.2)
        with pytest.raises(NotReplicated, match="1 of the 2 replica"):
            job.schedule(delay=3600, id="lonely")
        lonely.close()
