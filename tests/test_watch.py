"""Reacting to keys written by other programs with plain Redis commands (on_expire)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from delayq import ConfigurationError, Delayq
from tests.conftest import WorkerThread, wait_until


def watcher_app(app: Delayq, *, delete_data: bool = False, fail_first: bool = False) -> list:
    fired: list[tuple[str, str, bytes | None, float]] = []
    lock = threading.Lock()
    attempts: dict[str, int] = {}
    prefix = f"{app.namespace}:last_seen:"

    @app.on_expire(prefix + "*", data=app.namespace + ":device_data:{suffix}",
                   delete_data=delete_data, retry_backoff=0.05)  # fmt: skip
    def device_silent(key: str, suffix: str, data: bytes | None) -> None:
        attempts[suffix] = attempts.get(suffix, 0) + 1
        if fail_first and attempts[suffix] == 1:
            raise RuntimeError("first attempt fails")
        with lock:
            fired.append((key, suffix, data, time.time()))

    return fired


def test_expiry_fires_once_with_companion_data(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app)
    start_worker(app)
    start_worker(app)  # two workers: still one firing per expiry
    ns = app.namespace
    for i in range(20):
        rclient.set(f"{ns}:device_data:{i}", f"payload-{i}")
        rclient.set(f"{ns}:last_seen:{i}", str(time.time()), px=500 + i * 20)
    wait_until(lambda: len(fired) == 20, timeout=20)
    time.sleep(1.0)  # late expired notifications must not fire anything again
    assert len(fired) == 20
    assert sorted(s for _, s, _, _ in fired) == sorted(str(i) for i in range(20))
    for key, suffix, data, _ in fired:
        assert key == f"{ns}:last_seen:{suffix}" and data == f"payload-{suffix}".encode()
    assert rclient.exists(f"{ns}:device_data:3")  # delete_data=False keeps it


def test_refreshed_key_never_fires_and_comeback_rearms(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app, delete_data=True)
    start_worker(app)
    ns = app.namespace
    rclient.set(f"{ns}:device_data:alive", "x")
    rclient.set(f"{ns}:device_data:comeback", "first life")
    rclient.set(f"{ns}:last_seen:comeback", "1", px=400)
    deadline = time.time() + 3
    while time.time() < deadline:  # a producer that keeps refreshing its key
        rclient.set(f"{ns}:last_seen:alive", "1", px=400)
        time.sleep(0.1)
    wait_until(lambda: [s for _, s, _, _ in fired] == ["comeback"], timeout=10)
    wait_until(lambda: not rclient.exists(f"{ns}:device_data:comeback"))  # delete_data
    # The device comes back, then goes silent again: a second expiry, a second firing.
    rclient.set(f"{ns}:device_data:comeback", "second life")
    rclient.set(f"{ns}:last_seen:comeback", "2", px=300)
    # 'alive' expires too, once its producer stops refreshing it.
    wait_until(lambda: len(fired) >= 3, timeout=10)
    time.sleep(0.5)
    assert sorted((s, d) for _, s, d, _ in fired) == [
        ("alive", b"x"),
        ("comeback", b"first life"),
        ("comeback", b"second life"),
    ], fired


def test_keys_set_before_the_worker_starts_are_found_by_scan(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app)
    ns = app.namespace
    rclient.set(f"{ns}:last_seen:early", "1", px=1500)
    rclient.set(f"{ns}:last_seen:forever", "1")  # no TTL: never fires
    start_worker(app)
    wait_until(lambda: fired, timeout=10)
    time.sleep(0.5)
    assert [s for _, s, _, _ in fired] == ["early"]
    assert fired[0][2] is None  # no companion key


def test_deleted_key_does_not_fire_and_retry_keeps_data(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app, fail_first=True)
    start_worker(app)
    ns = app.namespace
    rclient.set(f"{ns}:last_seen:deleted", "1", px=600)
    rclient.set(f"{ns}:device_data:flaky", "kept")
    rclient.set(f"{ns}:last_seen:flaky", "1", px=300)
    time.sleep(0.1)
    rclient.delete(f"{ns}:last_seen:deleted")
    wait_until(lambda: fired, timeout=10)
    time.sleep(1.0)
    assert [(s, d) for _, s, d, _ in fired] == [("flaky", b"kept")]  # retried, with its data


def test_on_time_with_200k_unrelated_ttl_keys(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app)
    ns = app.namespace
    pipe = rclient.pipeline(transaction=False)
    for i in range(200_000):
        pipe.set(f"{ns}:unrelated:{i}", "x", ex=3600)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    start_worker(app)
    expected: dict[str, float] = {}
    for i in range(200):
        ttl_ms = 1000 + i * 10
        expected[str(i)] = time.time() + ttl_ms / 1000
        rclient.set(f"{ns}:last_seen:{i}", "1", px=ttl_ms)
    wait_until(lambda: len(fired) == 200, timeout=30)
    lateness = sorted((at - expected[s]) * 1000 for _, s, _, at in fired)
    assert lateness[int(0.99 * len(lateness))] < 1000, lateness[-5:]
    unrelated = list(rclient.scan_iter(f"{ns}:unrelated:*", count=10_000))
    assert len(unrelated) == 200_000


def test_watch_declaration_errors(app: Delayq) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        app.on_expire("a*b*")
    with pytest.raises(ConfigurationError, match="exactly one"):
        app.on_expire("plain")
    with pytest.raises(ConfigurationError, match="needs data="):
        app.on_expire("a*", delete_data=True)
    with pytest.raises(ConfigurationError, match="suffix"):
        app.on_expire("a*", data="x{other}")


def test_key_expired_early_fires_at_once_and_odd_companion_is_absent(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    fired = watcher_app(app)
    start_worker(app)
    ns = app.namespace
    rclient.rpush(f"{ns}:device_data:listy", "not a string")
    rclient.set(f"{ns}:last_seen:listy", "1", px=60_000)
    wait_until(lambda: app.pending_count() == 1, timeout=10)
    start = time.time()
    rclient.pexpire(f"{ns}:last_seen:listy", 1)  # expires now, long before its deadline
    wait_until(lambda: fired, timeout=10)
    assert time.time() - start < 5
    assert fired[0][1:3] == ("listy", None)


def test_comeback_right_after_an_alert_alerts_again(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """An expiry and the key's next life can arrive together: both must count."""
    fired = watcher_app(app)
    start_worker(app)
    ns = app.namespace
    keys = [f"{ns}:last_seen:{i}" for i in range(300)]
    pipe = rclient.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.set(key, "1", px=400 + i * 2)
    pipe.execute()
    wait_until(lambda: len(fired) == 300, timeout=20)
    for key in keys:  # every device comes back at once, then goes silent again
        pipe.set(key, "2", px=300)
    pipe.execute()
    wait_until(lambda: len(fired) == 600, timeout=20)
    time.sleep(0.5)
    assert len(fired) == 600


def test_a_namespace_of_several_shards_watches_keys_in_its_first_shard(
    server: Any, namespace: str, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """Watch timers, and the plain timers of their retries, live in shard 0 with the watch
    index; the other shards serve plain timers as usual."""
    app = Delayq(server.url, namespace=namespace, shards=4)
    fired = watcher_app(app, fail_first=True)
    start_worker(app)
    ns = app.namespace
    rclient.set(f"{ns}:device_data:flaky", "kept")
    rclient.set(f"{ns}:last_seen:flaky", "1", px=300)
    wait_until(lambda: fired, timeout=10)
    time.sleep(0.5)
    assert [(s, d) for _, s, d, _ in fired] == [("flaky", b"kept")]  # retried, with its data
    wait_until(lambda: app.pending_count() == 0, timeout=5)
    app.close()
