"""Watched keys whose events meet stalls, restarts, lagging workers and every kind of removal.

The expiry of a life fires once, even when the key is written again before any worker could
act; a removal that is not an expiry never fires; a re-driven dead letter runs with its data.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from delayq import Delayq, EmbeddedServer, InvalidTimerId, WorkerSettings
from delayq._keys import Keys
from tests.conftest import WorkerProcess, WorkerThread, wait_until

LEASE = WorkerSettings(visibility_timeout=3.0, sweep_interval=1.0, shutdown_timeout=5.0,
                       watch_lease=1.0)  # fmt: skip
# Long enough that nothing in these tests fires from its own deadline by accident.
NEW_LIFE_MS = 60_000


@pytest.fixture
def prefix(namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The watched keys of tests/watch_app.py, for worker processes of this test."""
    monkeypatch.setenv("WATCH_TEST_PREFIX", namespace)
    return namespace


@pytest.fixture
def watch_process(
    worker_process: Callable[..., WorkerProcess], app: Delayq, prefix: str
) -> Callable[..., WorkerProcess]:
    def start(*extra: str) -> WorkerProcess:
        return worker_process(app.url, app.namespace, *extra, app="tests.watch_app:app")

    return start


def fired(rclient: redis.Redis, prefix: str) -> list[str]:
    return [v.decode() for v in rclient.lrange(f"{prefix}:fired", 0, -1)]


def watch_id(key: str) -> str:
    return Keys.watch_timer_id("offline", key)


def armed_until(app: Delayq, key: str) -> int | None:
    timer = app.timer(watch_id(key))
    return None if timer is None else timer.due_ms


def in_process_watcher(app: Delayq, prefix: str) -> list[str]:
    """The same on_expire task as tests/watch_app.py, for workers in this process."""
    calls: list[str] = []
    lock = threading.Lock()

    @app.on_expire(prefix + ":seen:*", data=prefix + ":data:{suffix}", name="offline")
    def offline(key: str, suffix: str, data: bytes | None) -> None:
        with lock:
            calls.append(f"{suffix}|{(data or b'').decode()}")

    return calls


@pytest.fixture
def stopped() -> Iterator[list[WorkerProcess]]:
    """Processes to SIGCONT at the end, whatever happens in the test."""
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.signal(signal.SIGCONT)


def test_expiry_while_the_leader_is_stopped_then_a_new_life_fires_once(
    app: Delayq, watch_process: Callable[..., WorkerProcess], rclient: redis.Redis,
    prefix: str, stopped: list[WorkerProcess],
) -> None:  # fmt: skip
    """The worker is stopped across the key's deadline, and the key is written again before
    it resumes: its events are applied in order, so the first life fires, once."""
    key = f"{prefix}:seen:dev"
    worker = watch_process()
    rclient.set(f"{prefix}:data:dev", "v1")
    rclient.set(key, "1", px=1500)
    wait_until(lambda: armed_until(app, key), timeout=15)
    worker.signal(signal.SIGSTOP)
    stopped.append(worker)
    wait_until(lambda: not rclient.exists(key), timeout=10)  # the first life expired
    rclient.set(key, "2", px=NEW_LIFE_MS)  # and a second one began
    worker.signal(signal.SIGCONT)
    wait_until(lambda: fired(rclient, prefix), timeout=15)
    wait_until(lambda: (armed_until(app, key) or 0) > time.time() * 1000 + 30_000, timeout=10)
    time.sleep(1.0)  # no second firing may follow (not a correctness wait)
    assert fired(rclient, prefix) == ["dev|v1"]


def test_a_stopped_leader_is_replaced_and_the_expiry_it_missed_fires_once(
    app: Delayq, watch_process: Callable[..., WorkerProcess], rclient: redis.Redis,
    prefix: str, stopped: list[WorkerProcess], start_worker: Callable[..., WorkerThread],
) -> None:  # fmt: skip
    """The leader stops for longer than its lease: another worker takes over. The expiry it
    never heard (the key was written again meanwhile) fires from the overdue watch timer, and
    the old leader, when it resumes, applies nothing it buffered."""
    key = f"{prefix}:seen:dev"
    leader = watch_process("--watch-lease", "1")
    wait_until(lambda: "leading the watched keys" in leader.output(), timeout=15)
    calls = in_process_watcher(app, prefix)
    standby = start_worker(app, LEASE)
    assert not standby.worker.leads_watched_keys
    rclient.set(key, "1", px=1500)
    wait_until(lambda: armed_until(app, key), timeout=10)
    leader.signal(signal.SIGSTOP)
    stopped.append(leader)
    wait_until(lambda: not rclient.exists(key), timeout=10)
    rclient.set(key, "2", px=NEW_LIFE_MS)
    wait_until(lambda: standby.worker.leads_watched_keys, timeout=10)
    wait_until(lambda: calls or fired(rclient, prefix), timeout=15)
    leader.signal(signal.SIGCONT)
    wait_until(lambda: "lost the watch lease" in leader.output(), timeout=15)
    time.sleep(1.0)  # the old leader's buffered events must come to nothing
    assert calls + fired(rclient, prefix) == ["dev|"]
    assert (armed_until(app, key) or 0) > time.time() * 1000 + 30_000  # the new life


def test_expired_during_a_restart_and_written_again_fires_once(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:seen:dev"
    calls = in_process_watcher(app, prefix)
    rclient.set(f"{prefix}:data:dev", "v1")
    rclient.set(key, "1", px=800)
    runner = start_worker(app)
    wait_until(lambda: armed_until(app, key), timeout=10)
    runner.stop()
    wait_until(lambda: not rclient.exists(key), timeout=10)
    rclient.set(key, "2", px=NEW_LIFE_MS)  # before any worker runs again
    start_worker(app)
    wait_until(lambda: calls, timeout=10)
    wait_until(lambda: (armed_until(app, key) or 0) > time.time() * 1000 + 30_000, timeout=10)
    time.sleep(0.5)
    assert calls == ["dev|v1"]


def test_a_stopped_worker_fires_no_expiry_twice_nor_for_a_deleted_key(
    app: Delayq, watch_process: Callable[..., WorkerProcess], rclient: redis.Redis,
    prefix: str, stopped: list[WorkerProcess],
) -> None:  # fmt: skip
    """Two workers; one of them (the leader in one round, the other in the next) is stopped
    while a key fires, comes back, and is deleted. Each life's expiry fires once, and the
    deletion never."""
    first, second = watch_process("--watch-lease", "1"), watch_process("--watch-lease", "1")
    wait_until(lambda: "leading the watched keys" in first.output() + second.output(), 15)
    for round_, lagging in enumerate((first, second)):
        key = f"{prefix}:seen:r{round_}"
        lagging.signal(signal.SIGSTOP)
        stopped.append(lagging)
        # Outlives a takeover: a key written and expired between two leaders is never seen.
        rclient.set(key, "1", px=3000)
        wait_until(lambda: f"r{round_}|" in fired(rclient, prefix), timeout=15)  # noqa: B023
        rclient.set(key, "2", px=NEW_LIFE_MS)  # a new life...
        time.sleep(0.2)
        rclient.delete(key)  # ... that ends in a deletion
        lagging.signal(signal.SIGCONT)
        time.sleep(2.5)  # longer than the lease: whatever the stopped one heard is applied
    assert sorted(fired(rclient, prefix)) == ["r0|", "r1|"]
    assert app.pending_count() == 0


def test_removals_that_are_not_expiries_never_fire(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis, prefix: str
) -> None:
    """Every event that removes or replaces a watched key: only expiries fire."""
    calls = in_process_watcher(app, prefix)
    start_worker(app)
    other_db = redis.Redis.from_url(app.url.rsplit("/", 1)[0] + "/1")
    seen = f"{prefix}:seen:"
    quiet = ["moved", "renamed", "unlinked", "getdel", "persisted", "set-no-ttl", "deleted"]
    for name in quiet:
        rclient.set(seen + name, "1", px=1500)
    wait_until(lambda: app.pending_count() == len(quiet), timeout=10)
    rclient.move(seen + "moved", 1)
    rclient.rename(seen + "renamed", f"{prefix}:elsewhere")
    rclient.unlink(seen + "unlinked")
    rclient.getdel(seen + "getdel")
    rclient.persist(seen + "persisted")
    rclient.set(seen + "set-no-ttl", "2")
    rclient.delete(seen + "deleted")
    # Keys that arrive under a watched name start a life that fires at its expiry.
    other_db.set(seen + "moved-in", "1", px=800)
    other_db.move(seen + "moved-in", 0)
    rclient.set(f"{prefix}:source", "1", px=800)
    rclient.rename(f"{prefix}:source", seen + "renamed-in")
    rclient.set(f"{prefix}:original", "1", px=800)
    rclient.copy(f"{prefix}:original", seen + "copied")
    dumped = rclient.dump(f"{prefix}:original")
    assert dumped is not None
    rclient.restore(seen + "restored", 800, dumped)
    arrived = ["copied", "moved-in", "renamed-in", "restored"]
    wait_until(lambda: sorted(c.split("|")[0] for c in calls) == arrived, timeout=10)
    time.sleep(2.0)  # past the quiet keys' old deadlines (not a correctness wait)
    assert sorted(c.split("|")[0] for c in calls) == arrived
    assert app.pending_count() == 0
    other_db.close()


def test_a_key_gone_without_an_event_fires_at_its_deadline(
    fresh_server: EmbeddedServer, start_worker: Callable[..., WorkerThread], namespace: str
) -> None:
    """SWAPDB (like FLUSHDB) publishes no event per key: a watched key that vanishes so is
    judged at its deadline by the watch timer's probe, and fires as an expiry."""
    app = Delayq(fresh_server.url, namespace=namespace)
    calls = in_process_watcher(app, namespace)
    client = redis.Redis.from_url(fresh_server.url)
    key = f"{namespace}:seen:vanished"
    client.set(key, "1", px=1500)
    start_worker(app)
    wait_until(lambda: app.pending_count() == 1, timeout=10)
    # Database 1 becomes database 0 minus the watched key, with no keyspace event in 0.
    for name in client.scan_iter(f"dq:{{{namespace}}}*"):
        assert client.copy(name, name, destination_db=1)
    client.execute_command("SWAPDB", 0, 1)
    assert not client.exists(key) and app.pending_count() == 1
    wait_until(lambda: calls, timeout=10)
    assert calls == ["vanished|"]
    client.close()
    app.close()


def test_redriving_an_on_expire_dead_letter_runs_it_with_its_data(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis, prefix: str
) -> None:
    """Whatever the watched key does afterwards (no TTL, or alive with one), the re-driven job
    runs with the companion data of its own expiry."""
    calls: list[tuple[str, bytes | None]] = []
    failing = {"on": True}

    @app.on_expire(prefix + ":seen:*", data=prefix + ":data:{suffix}", retries=0)
    def offline(key: str, suffix: str, data: bytes | None) -> None:
        if failing["on"]:
            raise RuntimeError("the pager is down")
        calls.append((suffix, data))

    start_worker(app)
    for name in ("no-ttl", "alive"):
        rclient.set(f"{prefix}:data:{name}", f"{name}-1")
        rclient.set(f"{prefix}:seen:{name}", "1", px=300)
    wait_until(lambda: len(app.dead_letters()) == 2, timeout=15)
    rclient.set(f"{prefix}:seen:no-ttl", "2")  # back, without a time-to-live
    rclient.set(f"{prefix}:seen:alive", "2", px=NEW_LIFE_MS)  # back, alive
    rclient.set(f"{prefix}:data:no-ttl", "no-ttl-2")
    rclient.set(f"{prefix}:data:alive", "alive-2")
    failing["on"] = False
    for letter in app.dead_letters():
        assert app.retry_dead(letter)
    wait_until(lambda: len(calls) == 2, timeout=10)
    assert sorted(calls) == [("alive", b"alive-1"), ("no-ttl", b"no-ttl-1")]
    assert app.dead_letters() == []
    assert (armed_until_any(app, f"{prefix}:seen:alive") or 0) > time.time() * 1000 + 30_000


def armed_until_any(app: Delayq, key: str) -> int | None:
    for timer in app.timers():
        if timer.id.endswith("|" + key):
            return timer.due_ms
    return None


def test_watch_timers_follow_their_key_and_refuse_pause_and_reschedule(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis, prefix: str
) -> None:
    in_process_watcher(app, prefix)
    start_worker(app)
    key = f"{prefix}:seen:dev"
    rclient.set(key, "1", px=NEW_LIFE_MS)
    timer = wait_until(lambda: app.timer(watch_id(key)), timeout=10)
    assert [t.id for t in app.timers()] == [watch_id(key)]
    for refused in (timer.pause, timer.restart, lambda: timer.reschedule(delay=5),
                    lambda: timer.extend(by=5)):  # fmt: skip
        with pytest.raises(InvalidTimerId, match="follows a watched key's time-to-live"):
            refused()
    assert app.timer(watch_id(key)) is not None  # nothing was lost by the refusals
    assert timer.cancel()
    assert app.pending_count() == 0
    rclient.expire(key, 120)  # the key's next write arms it again
    wait_until(lambda: app.timer(watch_id(key)), timeout=10)


def test_one_leader_at_a_time_and_a_stopped_one_is_replaced(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis, prefix: str
) -> None:
    calls = in_process_watcher(app, prefix)
    workers = [start_worker(app, LEASE) for _ in range(3)]
    wait_until(lambda: sum(w.worker.leads_watched_keys for w in workers) == 1, timeout=10)
    leader = next(w for w in workers if w.worker.leads_watched_keys)
    leader.stop()
    others = [w for w in workers if w is not leader]
    wait_until(lambda: sum(w.worker.leads_watched_keys for w in others) == 1, timeout=10)
    rclient.set(f"{prefix}:seen:dev", "1", px=300)
    wait_until(lambda: calls == ["dev|"], timeout=10)
