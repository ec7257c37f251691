"""The producer API on a real local cluster: the same calls as on one server, through any
node, and through a failover, a script flush and a slot migration in progress."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from delayq import Delayq
from delayq._calls import command
from delayq._cluster import SyncClusterRunner
from delayq._cluster_server import LocalCluster
from delayq._layout import Layout, meta_key
from delayq._sharded import CLUSTER_SHARDS

HOUR = 3600.0


def _namespace() -> str:
    return "c" + uuid.uuid4().hex[:10]


@pytest.fixture
def capp(cluster: LocalCluster) -> Iterator[Delayq]:
    cluster.wait_ready(timeout=60.0)
    application = Delayq(cluster.url, namespace=_namespace())
    yield application
    application.close()


def _note(app: Delayq) -> Any:
    @app.task
    def note(value: int) -> None:
        del value

    return note


def _owner_index(cluster: LocalCluster, app: Delayq, slot: int | None = None) -> int:
    """Which primary (in the order of first slots) holds ``slot``, by default the one of the
    namespace's shard count (with several shards of the namespace)."""
    slot = key_slot(app.keys.index.encode()) if slot is None else slot
    return next(i for i, url in enumerate(cluster.primary_urls())
                if _serves(cluster, url, slot))  # fmt: skip


def _serves(cluster: LocalCluster, url: str, slot: int) -> bool:
    node = next(n for n in cluster.nodes if n.url == url)
    rows = node.query("CLUSTER", "SLOTS")
    return any(int(r[0]) <= slot <= int(r[1]) and int(r[2][1]) == node.port for r in rows)


def test_every_node_serves_the_producer_api(cluster: LocalCluster) -> None:
    namespace = _namespace()
    # Replicas too: the app reads the layout from whichever node it was given.
    for i, url in enumerate(cluster.urls):
        with Delayq(url, namespace=namespace) as app:
            note = _note(app)
            assert isinstance(app._runner(), SyncClusterRunner)
            timer = note.schedule(i, delay=HOUR, id=f"via-{i}")
            assert timer.created
            assert not note.schedule(i, delay=HOUR, id=f"via-{i}").created
    with Delayq(cluster.url, namespace=namespace) as app:
        assert app.pending_count() == len(cluster.urls)
        found = app.timer("via-0")
        assert found is not None and found.payload.args == (0,)
        assert found.reschedule(delay=2 * HOUR)
        assert {t.id for t in app.timers()} == {f"via-{i}" for i in range(len(cluster.urls))}
        assert app.cancel("via-0") and not app.cancel("via-0")
        assert app.pending_count() == len(cluster.urls) - 1


def test_batches_and_debounce(cluster: LocalCluster, capp: Delayq) -> None:
    note = _note(capp)
    requests = [note.request((i,), {}, delay=HOUR, timer_id=f"b{i}") for i in range(500)]
    timers = capp.schedule_many(requests)
    assert len(timers) == 500 and all(t.created for t in timers)
    assert capp.pending_count() == 500
    per_primary: Counter[int] = Counter()
    for keys in capp._run(capp.store.layout()).shards:
        held = capp._run(command("ZCARD", keys.index))
        per_primary[_owner_index(cluster, capp, key_slot(keys.index.encode()))] += held
    assert sorted(per_primary) == [0, 1, 2], per_primary  # every primary holds timers
    assert min(per_primary.values()) > 100, per_primary
    # On a cluster a new namespace keeps a key per payload (docs/cluster.md, memory per timer).
    assert capp._run(command("GET", meta_key(capp.namespace))) == b"16"
    keys = capp._run(capp.store.keys_for("b7"))
    assert keys.buckets == 0 and capp._run(command("EXISTS", keys.data("b7"))) == 1

    @capp.debounced(seconds=HOUR, key="d:{n}")
    def settle(n: int) -> None:
        del n

    for _ in range(3):
        settle.touch(7)
    assert capp.pending_count() == 501
    assert capp.stats() is not None and capp.dead_letters() == []


def test_async_producers(capp: Delayq) -> None:
    note = _note(capp)

    async def main() -> list[bool]:
        async with capp:
            timers = await asyncio.gather(
                *(note.aschedule(i, delay=HOUR, id=f"a{i}") for i in range(300))
            )
            assert await capp.apending_count() == 300
            return [t.created for t in timers]

    assert asyncio.run(main()) == [True] * 300

    async def cancel_one() -> bool:
        async with capp:
            return await capp.acancel("a0")

    # A second loop gets a runner of its own.
    assert asyncio.run(cancel_one())


def test_failover_and_lost_scripts(cluster: LocalCluster, capp: Delayq) -> None:
    note = _note(capp)
    capp.schedule_many([note.request((i,), {}, delay=HOUR, timer_id=f"f{i}") for i in range(100)])
    owner = _owner_index(cluster, capp)
    old_primaries = cluster.primary_urls()
    cluster.failover(owner)
    try:
        # The app still holds the old layout: MOVED sends it to the promoted replica, which
        # had the scripts loaded before it was promoted.
        assert note.schedule(100, delay=HOUR, id="f100").created
        assert capp.cancel("f0")
        assert capp.pending_count() == 100
        for node in cluster.nodes:
            node.query("SCRIPT", "FLUSH")
        # NOSCRIPT everywhere: loaded again on demand, in a batch as in a single call.
        capp.schedule_many(
            [note.request((i,), {}, delay=HOUR, timer_id=f"g{i}") for i in range(50)]
        )
        assert note.schedule(0, delay=HOUR, id="after-flush").created
        assert capp.pending_count() == 151
    finally:
        cluster.failover(owner)
    assert cluster.primary_urls() == old_primaries
    assert capp.pending_count() == 151


def test_calls_during_a_slot_migration(cluster: LocalCluster, capp: Delayq) -> None:
    note = _note(capp)
    capp.schedule_many([note.request((i,), {}, delay=HOUR, timer_id=f"m{i}") for i in range(300)])
    assert capp._run(capp.store.layout()).count == CLUSTER_SHARDS  # the default on a cluster
    slot = key_slot(Layout.of(capp.namespace, CLUSTER_SHARDS).shards[0].index.encode())
    owner = _owner_index(cluster, capp, slot)
    target = (owner + 1) % 3
    stop = threading.Event()
    made: list[str] = []
    failures: list[BaseException] = []

    def produce() -> None:
        # A second app, so its layout is read before the move, and it learns via ASK/TRYAGAIN.
        with Delayq(cluster.url, namespace=capp.namespace) as other:
            task = _note(other)
            n = 0
            while not stop.is_set():
                try:
                    assert task.schedule(n, delay=HOUR, id=f"during-{n}").created
                    made.append(f"during-{n}")
                    assert other.timer(f"m{n % 300}") is not None
                except BaseException as exc:  # reported by the test below
                    failures.append(exc)
                    return
                n += 1

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        # Small batches with pauses keep the slot half moved for a while.
        cluster.migrate(slot, target, batch=5, between=lambda: stop.wait(0.02))
        assert _owner_index(cluster, capp, slot) == target
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    # A script creating keys in a half-moved slot is refused (TRYAGAIN) until the move ends:
    # calls wait it out rather than fail, so few complete meanwhile.
    assert made
    assert capp.pending_count() == 300 + len(made)
    assert all(capp.timer(timer_id) is not None for timer_id in made)
    cluster.migrate(slot, owner)
    assert capp.pending_count() == 300 + len(made)
