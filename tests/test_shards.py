"""Namespaces spread over shards: the layout's rules, and the producer API over the shards of
a namespace on the real server (one server here; on a cluster in test_cluster_producer)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from delayq import ConfigurationError, Delayq, EmbeddedServer
from delayq._keys import Keys
from delayq._layout import Layout, base_id, meta_key, shard_of, shard_tag
from delayq._topology import SLOTS, slot_of
from tests.conftest import FAST, WorkerThread, wait_until

HOUR = 3600.0


@pytest.mark.parametrize("count", [2, 3, 4, 7, 16, 64, 256])
def test_each_shard_sits_in_its_share_of_the_slots(count: int) -> None:
    for k in range(count):
        slot = slot_of(Keys("shop", tag=shard_tag("shop", k, count)).index)
        assert k * SLOTS // count <= slot < (k + 1) * SLOTS // count


def test_primaries_with_equal_ranges_get_as_equal_a_share_of_shards() -> None:
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]  # a 3-primary cluster's
    for count in (3, 6, 16, 64):
        held = Counter(
            next(
                i
                for i, (a, b) in enumerate(ranges)
                if a <= slot_of(Keys("shop", tag=shard_tag("shop", k, count)).index) <= b
            )
            for k in range(count)
        )
        assert max(held.values()) - min(held.values()) <= 1, (count, held)
    assert shard_tag("shop", 0, 1) == "shop"  # one shard: the layout of before


def test_derived_ids_share_their_origins_shard() -> None:
    derived = {
        "order-1": ["order-1#retry-1-0", "order-1#retry-1-0#retry-2-0", "order-1#redrive-3-0",
                    Keys.retired_cycle_id("order-1", "ab12"), "~order-1"],
        "p:report": [Keys.tick_id("report", 1_700_000_000_000), Keys.tick_id("report", 5)],
    }  # fmt: skip
    for origin, ids in derived.items():
        for timer_id in ids:
            assert base_id(timer_id) == origin, timer_id
            assert shard_of(timer_id, 16) == shard_of(origin, 16)


def test_watched_keys_timers_live_in_the_first_shard() -> None:
    watch = Keys.watch_timer_id("gone", "session:1")
    job = Keys.plain_watch_job_id(watch, "retry", "1-0")
    assert job.startswith("~j:gone|session:1#retry-1-0")
    again = Keys.plain_watch_job_id(job, "redrive", "2-0")
    ids = [watch, job, again, f"{job}#retry-3-0"]
    assert {shard_of(i, 16) for i in ids} == {0}
    assert shard_of("w:gone|session:2", 16) != 0  # a user's id that merely looks alike


def test_ids_spread_evenly() -> None:
    counts = Counter(shard_of(f"user-{i}", 16) for i in range(16_000))
    assert len(counts) == 16
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000


@pytest.mark.parametrize("bad", [0, -1, True, "4", 1.5, 100_000])
def test_bad_shard_counts_are_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="shards must be an integer"):
        Delayq("redis://127.0.0.1:1/0", shards=bad)


@pytest.fixture
def sharded(server: EmbeddedServer) -> Any:
    app = Delayq(server.url, namespace="s" + uuid.uuid4().hex[:10], shards=4)

    @app.task
    def note(n: int) -> None:
        del n

    yield app, note
    app.close()


def test_timers_spread_over_shards_and_every_call_finds_them(
    sharded: Any, rclient: redis.Redis
) -> None:
    app, note = sharded
    for i in range(200):
        note.schedule(i, delay=HOUR + i, id=f"t{i}")
    app.schedule_many([note.request((i,), {}, delay=2 * HOUR + i, timer_id=f"m{i}")
                       for i in range(200)])  # fmt: skip
    layout = Layout.of(app.namespace, 4)
    per_shard = [rclient.zcard(k.index) for k in layout.shards]
    assert sum(per_shard) == 400 and min(per_shard) > 60, per_shard
    assert rclient.get(meta_key(app.namespace)) == b"4:4096"
    assert app.pending_count() == 400
    found = app.timer("t7")
    assert found is not None and found.payload.args == (7,)
    assert found.reschedule(delay=10.0)
    listed = app.timers(limit=5)
    assert listed[0].id == "t7"
    dues = [t.due_ms for t in app.timers(limit=400)]
    assert dues == sorted(dues) and len(dues) == 400
    assert app.cancel("m3") and not app.cancel("m3")
    assert app.pending_count() == 399
    assert found.pause() and app.store is not None
    assert app.timers(limit=400)[-1].id == "t7"  # paused ones come last


def test_debounce_and_batched_touches_across_shards(sharded: Any) -> None:
    app, _ = sharded

    @app.debounced(seconds=HOUR, key="k:{n}", payload="all")
    def settle(n: int) -> None:
        del n

    for n in range(40):
        settle.touch(n=n)
    app.touch_many([settle.prepare_touch(n=n % 40) for n in range(400)])
    assert app.pending_count() == 40
    found = app.timer("k:3")
    assert found is not None


def test_the_count_is_fixed_when_the_namespace_is_created(
    server: EmbeddedServer, rclient: redis.Redis
) -> None:
    namespace = "f" + uuid.uuid4().hex[:10]
    with Delayq(server.url, namespace=namespace) as first:  # one server: one shard
        note = first.task(name="note")(lambda n: None)
        note.schedule(1, delay=HOUR, id="kept")
    with Delayq(server.url, namespace=namespace, shards=8) as other:
        other.task(name="note")(lambda n: None)
        with pytest.raises(ConfigurationError, match="has 1 shard"):
            other.timer("kept")
    with Delayq(server.url, namespace=namespace) as again:
        assert again.timer("kept") is not None


def test_a_namespace_from_before_shard_counts_stays_one_shard(
    server: EmbeddedServer, rclient: redis.Redis
) -> None:
    namespace = "o" + uuid.uuid4().hex[:10]
    rclient.set(meta_key(namespace), "1")  # the layout of before buckets: a key per payload
    with Delayq(server.url, namespace=namespace) as old:
        old.task(name="note")(lambda n: None).schedule(1, delay=HOUR, id="old")
    assert rclient.exists(old.keys.data_prefix + "old")
    rclient.delete(meta_key(namespace))  # as a namespace written before the count was kept
    with Delayq(server.url, namespace=namespace, shards=None) as app:
        assert app.timer("old") is not None
    assert rclient.get(meta_key(namespace)) == b"1"


# -- workers -----------------------------------------------------------------------------------


def test_a_worker_serves_every_shard(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="w" + uuid.uuid4().hex[:10], shards=4)
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    @app.task
    def note(timer_id: str) -> None:
        with lock:
            runs[timer_id] += 1

    @app.debounced(seconds=0.2, key="d:{n}")
    def settle(n: int) -> None:
        with lock:
            runs[f"d:{n}"] += 1

    app.schedule_many([note.request((f"t{i}",), {}, delay=0.2 + i / 400, timer_id=f"t{i}")
                       for i in range(400)])  # fmt: skip
    for n in range(20):
        settle.touch(n=n)
    start_worker(app)
    wait_until(lambda: len(runs) == 420, timeout=20)
    time.sleep(0.3)
    assert set(runs.values()) == {1}
    assert app.pending_count() == 0
    app.close()


def test_retries_and_dead_letters_stay_in_their_shard(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="r" + uuid.uuid4().hex[:10], shards=4)
    attempts: Counter[str] = Counter()

    @app.task(retries=1, retry_backoff=0.05)
    def flaky(name: str) -> None:
        attempts[name] += 1
        raise RuntimeError(f"{name} fails")

    for i in range(8):
        flaky.schedule(f"j{i}", id=f"j{i}")
    start_worker(app)
    wait_until(lambda: len(app.dead_letters()) == 8, timeout=20)
    letters = app.dead_letters()
    assert set(attempts.values()) == {2}
    layout = Layout.of(app.namespace, 4)
    assert {(d.timer_id, d.shard) for d in letters} == {
        (f"j{i}", layout.shard_of(f"j{i}")) for i in range(8)
    }
    assert len({d.shard for d in letters}) > 1
    assert app.retry_dead(letters[0])
    wait_until(lambda: attempts[letters[0].timer_id] == 4, timeout=20)
    wait_until(lambda: len(app.dead_letters()) == 8, timeout=20)
    one = app.dead_letters()[0]
    assert one.ref == f"{one.entry_id}@{one.shard}"
    assert app.purge_dead([one.ref]) == 1
    assert app.purge_dead() == 7
    app.close()


def test_shards_share_the_workers_concurrency(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="c" + uuid.uuid4().hex[:10], shards=4)
    running, most, done = [0], [0], [0]
    lock = threading.Lock()

    @app.task
    def slow(n: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            done[0] += 1

    app.schedule_many([slow.request((i,), {}, delay=0, timer_id=f"s{i}") for i in range(40)])
    start_worker(app, dataclasses.replace(FAST, concurrency=2))
    wait_until(lambda: done[0] == 40, timeout=30)
    assert most[0] <= 2
    app.close()


def test_periodic_tasks_tick_in_their_shard(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="p" + uuid.uuid4().hex[:10], shards=4)
    ticks: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1))
    def beat() -> None:
        ticks.append(time.time())

    start_worker(app)
    start_worker(app)
    wait_until(lambda: len(ticks) >= 2, timeout=15)
    assert all(b - a > 0.5 for a, b in itertools.pairwise(ticks))  # once per tick
    state = app._run(app.store.periodic_state(beat.name))
    assert state  # kept in the task's shard, where the worker found it
    app.close()
