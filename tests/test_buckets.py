"""Payloads as fields of bucket hashes, and the layout of before buckets (a key per payload):
every script path that reads or writes a payload, run on both, with a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from delayq import Delayq, Touch
from delayq._keys import BUCKETS, Keys
from delayq._layout import meta_key
from delayq._server import EmbeddedServer
from tests.conftest import WorkerThread, wait_until

HOUR = 3600


@pytest.fixture(params=["buckets", "a key per payload"])
def layout_app(
    request: pytest.FixtureRequest, server: EmbeddedServer, rclient: redis.Redis
) -> Iterator[Delayq]:
    namespace = "b" + uuid.uuid4().hex[:10]
    if request.param != "buckets":
        rclient.set(meta_key(namespace), "1")  # as stored before buckets
    with Delayq(server.url, namespace=namespace) as app:
        yield app


def _keys(app: Delayq) -> Keys:
    return app._run(app.store.keys_for("any"))


def test_a_new_namespace_keeps_payloads_in_buckets(app: Delayq, rclient: redis.Redis) -> None:
    task = app.task(name="note")(lambda n: None)
    for i in range(300):
        task.schedule(i, delay=HOUR, id=f"t{i}")
    keys = _keys(app)
    assert keys.buckets == BUCKETS and rclient.get(meta_key(app.namespace)) == b"1:16384"
    names = set(rclient.scan_iter(f"{keys.prefix}*", count=1000))
    buckets = {n for n in names if n.startswith(keys.bucket_prefix.encode())}
    assert not any(n.startswith(keys.data_prefix.encode()) for n in names)
    assert sum(rclient.hlen(b) for b in buckets) == 300
    assert len(buckets) > 200  # spread over the buckets, not piled into a few
    assert rclient.hget(keys.data("t7"), "t7") == app.timer("t7").raw_payload  # type: ignore[union-attr]


def test_every_payload_path_on_both_layouts(
    layout_app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    app = layout_app
    runs: list[Any] = []

    @app.task(name="plain", retries=1, retry_backoff=0.05)
    def plain(n: int) -> None:
        if n < 0:
            raise ValueError("negative")
        runs.append(n)

    @app.debounced(seconds=0.3, key="all-{device}", payload="all")
    def every(touches: list[Touch]) -> None:
        runs.append([t.kwargs["n"] for t in touches])

    keys = _keys(app)
    legacy = rclient.get(meta_key(app.namespace)) == b"1"
    assert keys.buckets == (0 if legacy else BUCKETS)
    # schedule: a new id, and an idempotent id that finds the stored payload
    plain.schedule(5, delay=0.2)
    plain.schedule(1, delay=0.2, id="one")
    assert rclient.exists(keys.data("one"))
    kept = plain.schedule(99, delay=0.2, id="one")
    assert not kept.created and kept.payload.args == (1,)
    # cancel, and pause then resume
    assert plain.schedule(2, delay=HOUR, id="gone").cancel()
    paused = plain.schedule(3, delay=0.2, id="paused")
    assert paused.pause()
    # a debounced cycle left overdue is retired by the next touch: its payload moves
    every.touch(device="d", n=1)
    first = every.touch(device="d", n=2)
    wait_until(lambda: app.server_time_ms() > first.due_ms + 100, timeout=10)
    every.touch(device="d", n=3)
    # a lost index entry, for the sweeper to re-index
    plain.schedule(4, delay=0.2, id="lost")
    rclient.zrem(keys.index, "lost")
    # a job that fails for good, then is re-driven
    plain.schedule(-1, delay=0, id="bad")
    assert app.timers(limit=100)  # the listing reads every payload

    start_worker(app)
    wait_until(lambda: len(app.dead_letters()) == 1, timeout=20)
    assert paused.resume()
    wait_until(lambda: sorted(runs, key=repr) == sorted([1, 3, 4, 5, [1, 2], [3]], key=repr),
               timeout=20)  # fmt: skip
    letter = app.dead_letters()[0]
    assert app.retry_dead(letter)
    wait_until(lambda: app.stats().get("retried", 0) >= 2, timeout=20)
    wait_until(lambda: app.pending_count() == 0, timeout=20)
    # every payload was taken or deleted: no bucket field and no payload key is left
    assert not list(rclient.scan_iter(keys.data_pattern(), count=1000))
    assert not list(rclient.scan_iter(keys.data_prefix + "*", count=1000))
    assert not list(rclient.scan_iter(keys.bucket_prefix + "*", count=1000))
    assert app.stats().get("repaired_data") == 1
