"""Faults: lost notifications, killed workers, worker shutdown, downtime, server restarts.

Every scenario checks that each timer fires exactly once (its job runs at least once where a
worker dies mid-job) and that nothing is left behind once the work is done: no data key, no
due-index entry, no entry in the ready stream, nothing pending in its consumer group.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
import redis

from delayq import Delayq, EmbeddedServer, ServerOutOfMemory, Timer, WorkerSettings
from delayq._keys import Keys
from delayq._task import Task
from tests import worker_app
from tests.conftest import WorkerProcess, WorkerThread, payload_ids, wait_until

P = ParamSpec("P")
R = TypeVar("R")


# -- helpers ------------------------------------------------------------------------------------


def bound(task: Task[P, R], app: Delayq) -> Task[P, R]:
    """The same task (same name, so a worker process finds it) scheduling into ``app``."""
    return Task(task.fn, task.options, lambda: app)


class Runs:
    """What the in-process jobs ran: tag -> the local times (ms) of each run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, tag: str) -> None:
        with self._lock:
            self.at[tag].append(time.time() * 1000)

    def total(self) -> int:
        with self._lock:
            return sum(len(times) for times in self.at.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {tag: len(times) for tag, times in self.at.items()}

    def first(self, tag: str) -> float:
        with self._lock:
            return self.at[tag][0]


def reports(client: redis.Redis, namespace: str, name: str) -> list[list[str]]:
    """The rows a worker_app job pushed to ``test:<ns>:<name>``, split on ``|``."""
    raw: list[bytes] = client.lrange(f"test:{namespace}:{name}", 0, -1)  # type: ignore[assignment]
    return [row.decode().split("|") for row in raw]


def shards(app: Delayq) -> tuple[Keys, ...]:
    """The keys of each of the namespace's shards (one for a namespace of one shard)."""
    return app._run(app.store.layout()).shards


def leftovers(client: Any, app: Delayq) -> dict[str, Any]:
    """Whatever of the namespace's timers and jobs is still stored, in every shard.
    ``client``: a redis.Redis, or a RedisCluster (whose SCAN covers every primary)."""
    every = shards(app)
    data = sorted(i for k in every for i in payload_ids(client, k))
    return {
        "data": data,
        "indexed": sum(int(client.zcard(k.index)) for k in every),
        "ready": sum(int(client.xlen(k.ready)) for k in every),
        "pending": in_flight(client, app),
    }


def in_flight(client: Any, app: Delayq) -> int:
    """Jobs delivered to a worker and not yet settled (the consumer groups' pending count)."""
    pending = 0
    for k in shards(app):
        if client.exists(k.ready):
            summary: Any = client.xpending(k.ready, "workers")
            pending += int(summary["pending"])
    return pending


NOTHING_LEFT: dict[str, Any] = {"data": [], "indexed": 0, "ready": 0, "pending": 0}


def wait_drained(client: Any, app: Delayq, timeout: float = 15.0) -> None:
    """Wait until the namespace holds nothing: the last acknowledgements are asynchronous."""
    try:
        # Not too often: on a cluster each look is a round trip per shard and node.
        wait_until(lambda: leftovers(client, app) == NOTHING_LEFT, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"left behind: {leftovers(client, app)}") from None


def assert_once_each(counts: dict[str, int], expected: set[str]) -> None:
    missing, unexpected = sorted(expected - set(counts)), sorted(set(counts) - expected)
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected}"
    twice = {tag: n for tag, n in counts.items() if n != 1}
    assert not twice, f"ran more than once: {twice}"


def pubsub_clients(client: redis.Redis) -> int:
    return len(client.client_list(_type="pubsub"))


def aof_settled(client: redis.Redis) -> bool:
    info: dict[str, Any] = client.info("persistence")
    return bool(info["aof_buffer_length"] == 0 and info["aof_pending_bio_fsync"] == 0)


@pytest.fixture
def fresh_client(fresh_server: EmbeddedServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fresh_server.url)
    yield client
    client.close()


def recording_task(app: Delayq, runs: Runs) -> Task[[str], None]:
    @app.task(name="faults.tick")
    def tick(tag: str) -> None:
        runs.add(tag)

    return tick


# -- 1. the notification listener loses its connection ------------------------------------------


def test_listener_connection_killed_repeatedly_loses_and_duplicates_nothing(
    app: Delayq,
    rclient: redis.Redis,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = Runs()
    tick = recording_task(app, runs)
    start_worker(app)
    # 300 timers falling due over 0.5 .. 5.5 s while the listener is killed again and again.
    timers = app.schedule_many(
        [tick.prepare(f"a{i}", delay=0.5 + (i % 100) * 0.05) for i in range(300)]
    )
    due = {f"a{i}": t.due_ms for i, t in enumerate(timers)}
    kills = 0
    stop_at = time.monotonic() + 6.0
    n = 0
    while time.monotonic() < stop_at:
        # The listener is back (it resubscribes by itself); kill it again.
        wait_until(lambda: pubsub_clients(rclient) >= 1, timeout=15)
        kills += int(rclient.client_kill_filter(_type="pubsub"))
        # Armed while the listener is away: the wake nudge for it may be lost.
        armed = tick.schedule(f"b{n}", delay=0.1)
        due[f"b{n}"] = armed.due_ms
        n += 1
        time.sleep(0.25)  # pacing of the faults, not a wait for a result
    assert kills >= 10, f"only {kills} pub/sub connection(s) were killed"

    wait_until(lambda: runs.total() >= len(due), timeout=30)
    wait_drained(rclient, app)
    assert_once_each(runs.counts(), set(due))
    lateness = {tag: runs.first(tag) - due[tag] for tag in due}
    assert min(lateness.values()) >= -5, "a timer fired before its deadline"
    assert max(lateness.values()) < 3000, f"max lateness {max(lateness.values()):.0f} ms"
    assert app.stats()["fired"] == len(due)
    assert "notification listener reconnected" in caplog.text


# -- 2. a worker process dies mid-job ------------------------------------------------------------


def test_worker_killed_mid_job_job_runs_again_on_another_worker(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    app = Delayq(server.url, namespace=namespace)
    slow = bound(worker_app.slow, app)
    first = worker_process(server.url, namespace)
    timer = slow.schedule("crash", 2.0, delay=0.2)
    wait_until(lambda: reports(rclient, namespace, "started"), timeout=30)
    assert first.proc is not None
    assert reports(rclient, namespace, "started") == [["crash", str(first.proc.pid)]]

    second = worker_process(server.url, namespace)
    wait_until(lambda: "ready" in second.output(), timeout=30)
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    # Nobody heart-beats the job now: the second worker takes it over after the visibility
    # timeout (2 s) and runs it to the end.
    wait_until(lambda: reports(rclient, namespace, "done"), timeout=30)
    assert second.proc is not None
    pids = (str(first.proc.pid), str(second.proc.pid))
    assert reports(rclient, namespace, "started") == [["crash", pids[0]], ["crash", pids[1]]]
    assert reports(rclient, namespace, "done") == [["crash", pids[1]]]
    wait_drained(rclient, app)
    assert not rclient.exists(app.keys.data(timer.id))
    assert app.timer(timer.id) is None
    assert app.dead_letters() == []

    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert "took over 1 job(s)" in second.output()
    assert len(reports(rclient, namespace, "started")) == 2, "the job ran a third time"
    assert app.stats()["fired"] == 1
    app.close()


# -- 3. SIGTERM: finish the running job, or hand it back -----------------------------------------


def test_sigterm_lets_a_short_job_finish_and_exits_0(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    app = Delayq(server.url, namespace=namespace)
    slow, record = bound(worker_app.slow, app), bound(worker_app.record, app)
    proc = worker_process(server.url, namespace)  # --shutdown-timeout 10
    slow.schedule("short", 2.0, delay=0.2)
    wait_until(lambda: reports(rclient, namespace, "started"), timeout=30)
    # Falls due while the worker shuts down (or after): it must not be lost.
    later = record.schedule("later", delay=0.5)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.output()
    assert proc.proc is not None
    pid = str(proc.proc.pid)
    assert reports(rclient, namespace, "started") == [["short", pid]]
    assert reports(rclient, namespace, "done") == [["short", pid]]
    assert "stopped" in proc.output()
    # The job's outcome was recorded before the process exited.
    assert in_flight(rclient, app) == 0

    successor = worker_process(server.url, namespace)
    wait_until(lambda: reports(rclient, namespace, "ran"), timeout=30)
    assert [row[0] for row in reports(rclient, namespace, "ran")] == ["later"]
    wait_drained(rclient, app)
    assert app.timer(later.id) is None
    successor.signal(signal.SIGTERM)
    assert successor.wait(30) == 0
    assert len(reports(rclient, namespace, "ran")) == 1
    assert len(reports(rclient, namespace, "started")) == 1
    assert app.stats()["fired"] == 2
    app.close()


def test_sigterm_hands_back_a_job_longer_than_the_shutdown_timeout(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    app = Delayq(server.url, namespace=namespace)
    slow = bound(worker_app.slow, app)
    first = worker_process(server.url, namespace, "--shutdown-timeout", "1")
    timer = slow.schedule("long", 4.0, delay=0.2)
    wait_until(lambda: reports(rclient, namespace, "started"), timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.output()
    out = first.output()
    assert "handing back unfinished job" in out and "handed_back=1" in out, out
    assert reports(rclient, namespace, "done") == []  # it left before the job could finish
    # Handed back: a new stream entry that no worker holds, ready for the next one.
    assert int(rclient.xlen(app.keys.ready)) == 1
    assert in_flight(rclient, app) == 0

    second = worker_process(server.url, namespace)
    wait_until(lambda: reports(rclient, namespace, "done"), timeout=30)
    assert first.proc is not None and second.proc is not None
    pids = (str(first.proc.pid), str(second.proc.pid))
    assert reports(rclient, namespace, "started") == [["long", pids[0]], ["long", pids[1]]]
    assert reports(rclient, namespace, "done") == [["long", pids[1]]]
    wait_drained(rclient, app)
    assert app.timer(timer.id) is None
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert len(reports(rclient, namespace, "started")) == 2
    assert app.dead_letters() == []
    assert app.stats()["fired"] == 1
    app.close()


# -- 4. downtime: no worker at all while timers fall due -----------------------------------------


def test_timers_due_while_no_worker_runs_fire_once_when_one_starts(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    runs = Runs()
    tick = recording_task(app, runs)
    timers = app.schedule_many([tick.prepare(f"d{i}", delay=0.1 + i * 0.004) for i in range(200)])
    far = tick.schedule("far", delay=3600)
    last_due = max(t.due_ms for t in timers)
    # Every deadline passes (and every expired event goes out) with nobody listening.
    wait_until(lambda: app.server_time_ms() > last_due + 300, timeout=15)
    assert app.pending_count() == 201 and runs.total() == 0

    runner = start_worker(app)
    wait_until(lambda: runs.total() >= 200, timeout=30)
    wait_until(lambda: leftovers(rclient, app)["ready"] == 0, timeout=15)
    assert_once_each(runs.counts(), {f"d{i}" for i in range(200)})
    assert leftovers(rclient, app) == {"data": [far.id], "indexed": 1, "ready": 0, "pending": 0}
    assert app.timer(far.id) is not None
    assert app.stats()["fired"] == 200
    assert runner.worker.fired == 200


# -- 5. the server restarts (AOF): stopped cleanly, or crashed -----------------------------------


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_server_restart_with_aof_keeps_timers_and_repairs_orphans(
    fresh_server: EmbeddedServer,
    fresh_client: redis.Redis,
    namespace: str,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
    crash: bool,
) -> None:
    app = Delayq(fresh_server.url, namespace=namespace)
    client, k = fresh_client, app.keys
    runs = Runs()
    tick = recording_task(app, runs)
    holding, release = threading.Event(), threading.Event()

    @app.task(name="faults.hold", retries=0)
    def hold(tag: str) -> None:
        runs.add(tag + ":start")
        holding.set()
        assert release.wait(30), "never released"
        runs.add(tag)

    runner = start_worker(app)
    # Let the start-up sweeps (with their orphan scans) finish: the orphans made below must be
    # found by the scan that follows the listener's reconnect, not by these.
    first_sweeps = runner.worker.sweep_counters.sweeps
    wait_until(lambda: runner.worker.sweep_counters.sweeps >= first_sweeps + 2, timeout=15)

    early = app.schedule_many([tick.prepare(f"e{i}", delay=0.2 + i * 0.05) for i in range(10)])
    late = app.schedule_many([tick.prepare(f"l{i}", delay=6.0 + i * 0.1) for i in range(20)])
    hold.schedule("hold", delay=0.2)  # a job still running while the server restarts
    # Orphans: data keys with valid payloads but no due-index entry. The first one's shadow
    # key will have expired by the restart (due at once when repaired); the second one's is
    # still armed (repaired at its own deadline).
    orphan_now = tick.schedule("orphan-now", delay=0.3)
    orphan_later = tick.schedule("orphan-later", delay=7.0)
    assert client.zrem(k.index, orphan_now.id, orphan_later.id) == 2
    wait_until(lambda: runs.total() == len(early) + 1 and holding.is_set(), timeout=15)
    pending = {t.id for t in late} | {orphan_now.id, orphan_later.id}
    wait_until(lambda: set(leftovers(client, app)["data"]) == pending, timeout=15)

    # appendfsync everysec: make sure the last writes reached the AOF before a crash.
    written = time.monotonic()
    wait_until(lambda: time.monotonic() - written > 1.2 and aof_settled(client), timeout=15)
    assert app.server_time_ms() < min(t.due_ms for t in late) - 1000, "test ran too slow"
    assert client.zmscore(k.index, [orphan_now.id, orphan_later.id]) == [None, None]
    assert runner.worker.sweep_counters.repaired_data == 0
    fresh_server.restart(kill=crash)

    members: list[bytes] = client.zrange(k.index, 0, -1)  # type: ignore[assignment]
    indexed = {m.decode() for m in members}
    assert {t.id for t in late} <= indexed, "pending timers were lost"
    # The worker works again (the orphan due at once was repaired and ran); the job that was
    # running all along finishes now.
    wait_until(lambda: runs.counts().get("orphan-now") == 1, timeout=20)
    release.set()
    expected = {f"e{i}" for i in range(10)} | {f"l{i}" for i in range(20)}
    expected |= {"orphan-now", "orphan-later", "hold", "hold:start"}
    wait_until(lambda: runs.total() >= len(expected), timeout=30)
    wait_drained(client, app)
    assert_once_each(runs.counts(), expected)
    for tag, timer in [(f"l{i}", t) for i, t in enumerate(late)] + [("orphan-later", orphan_later)]:
        lateness = runs.first(tag) - timer.due_ms
        assert -5 <= lateness < 3000, f"{tag} ran {lateness:.0f} ms after its deadline"
    stats = app.stats()
    assert stats["repaired_data"] == 2, stats
    assert stats["fired"] == len(expected) - 1, stats  # hold:start is not a timer of its own
    assert runner.worker.sweep_counters.repaired_data == 2
    assert "notification listener reconnected" in caplog.text
    app.close()


def test_job_finished_while_the_server_is_down_runs_once(
    fresh_server: EmbeddedServer,
    fresh_client: redis.Redis,
    namespace: str,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its acknowledgement is kept and sent once the server is back: the job must not be taken
    over and run again (the outage is far shorter than the visibility timeout)."""
    app = Delayq(fresh_server.url, namespace=namespace)
    runs = Runs()
    holding, release = threading.Event(), threading.Event()

    @app.task(name="faults.hold", retries=0)
    def hold(tag: str) -> None:
        runs.add(tag + ":start")
        holding.set()
        assert release.wait(30), "never released"
        runs.add(tag)

    settings = WorkerSettings(
        visibility_timeout=6.0, heartbeat_interval=0.5, sweep_interval=1.0, shutdown_timeout=5.0
    )
    start_worker(app, settings)
    hold.schedule("outage", delay=0.1)
    wait_until(holding.is_set, timeout=15)
    fresh_server.stop()
    release.set()  # the job finishes while the server is down
    wait_until(lambda: runs.counts().get("outage") == 1, timeout=15)
    # The worker tried to record the outcome, and could not (so the outage is really seen).
    wait_until(lambda: logged(caplog, "acknowledg"), timeout=15)
    fresh_server.start()

    wait_drained(fresh_client, app, timeout=20)
    assert runs.counts() == {"outage:start": 1, "outage": 1}, "the finished job ran again"
    assert app.stats()["fired"] == 1
    app.close()


def logged(caplog: pytest.LogCaptureFixture, fragment: str) -> bool:
    """A warning (or worse) from delayq mentions ``fragment``."""
    return any(
        record.name.startswith("delayq")
        and record.levelno >= logging.WARNING
        and fragment in record.getMessage().lower()
        for record in list(caplog.records)
    )


# -- 6. a shadow key lost as a restart from RDB drops it ------------------------------------------


def test_timer_whose_shadow_key_was_lost_fires_from_the_index_on_time(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    runs = Runs()
    tick = recording_task(app, runs)
    start_worker(app)
    lost = tick.schedule("lost", delay=1.5)
    kept = tick.schedule("kept", delay=1.5)
    assert rclient.delete(app.keys.shadow(lost.id)) == 1
    assert app.timer(lost.id) is not None  # still pending: the index holds its deadline

    wait_until(lambda: runs.total() >= 2, timeout=15)
    wait_drained(rclient, app)
    assert_once_each(runs.counts(), {"lost", "kept"})
    lateness = runs.first("lost") - lost.due_ms
    assert -5 <= lateness < 1500, f"lateness {lateness:.0f} ms"
    assert runs.first("kept") - kept.due_ms < 1500
    assert app.stats()["fired"] == 2


# -- 7. the server's memory is full ---------------------------------------------------------------


def test_full_server_refuses_new_work_clearly_and_loses_no_pending_timer(
    tmp_path: Path, namespace: str, start_worker: Callable[..., WorkerThread]
) -> None:
    limits = ("--maxmemory", "10mb", "--maxmemory-policy", "noeviction")
    with EmbeddedServer(data_dir=tmp_path / "valkey", extra_args=limits) as server:
        app = Delayq(server.url, namespace=namespace)
        client = redis.Redis.from_url(server.url)
        runs = Runs()

        @app.task(name="faults.bulky")
        def bulky(tag: str, blob: str) -> None:
            runs.add(tag)

        @app.debounced(seconds=1.0, key="{tag}")
        def quiet(tag: str) -> None:
            runs.add("quiet:" + tag)

        armed: list[Timer] = []
        with pytest.raises(ServerOutOfMemory, match="memory is full") as full:
            for i in range(100_000):
                armed.append(bulky.schedule(f"b{i}", "x" * 2000, delay=1.0))
        assert 1000 < len(armed) < 100_000
        assert "refused, and nothing stored before was changed" in str(full.value)
        # The refused timer left nothing behind: every stored key belongs to an armed timer.
        ids = {t.id for t in armed}
        assert {m.decode() for m in client.zrange(app.keys.index, 0, -1)} == ids
        assert len(payload_ids(client, app.keys)) == len(ids)
        with pytest.raises(ServerOutOfMemory) as batch:
            app.schedule_many([bulky.prepare(f"m{i}", "x", delay=1.0) for i in range(10)])
        assert batch.value.completed == 0 and "10 of a batch of 10 were" in str(batch.value)
        with pytest.raises(ServerOutOfMemory, match="touch of timer"):
            quiet.touch("door")
        with pytest.raises(ServerOutOfMemory, match="reschedule of timer"):
            armed[1].reschedule(delay=5.0)
        assert armed[0].cancel()  # cancelling frees memory: always allowed

        # A worker starts on the full server (its consumer group is created there too), fires
        # every pending timer and frees the memory.
        start_worker(app)
        expected = {f"b{i}" for i in range(1, len(armed))}
        wait_until(lambda: runs.total() >= len(expected), timeout=60)
        wait_drained(client, app, timeout=30)
        assert_once_each(runs.counts(), expected)
        assert app.dead_letters() == []
        bulky.schedule("after", "x", delay=0.05)  # room again
        wait_until(lambda: runs.counts().get("after") == 1, timeout=15)
        client.close()
        app.close()
