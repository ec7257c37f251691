"""Holes found by trying to break things: ownership, lost groups, odd handlers, bad input."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Callable

import pytest
import redis

from delayq import Delayq, EmbeddedServer, InvalidTimerId, PayloadError, ScheduleError, Task
from delayq._defaults import find_task
from delayq._keys import GROUP
from delayq._outcomes import Failure, Ran
from delayq._runners import AsyncRunner
from delayq.worker._engine import DeadLetterBound, Done, Engine
from delayq.worker._executor import Executor
from delayq.worker._settings import WorkerSettings
from tests.conftest import WorkerThread, wait_until

BOUND = DeadLetterBound(maxlen=10, max_bytes=1 << 20)


def test_only_the_owner_settles_a_delivery(app: Delayq, server: EmbeddedServer) -> None:
    """A worker whose job was taken over may not retry, bury or hand it back any more."""

    @app.task
    def job() -> None: ...

    async def scenario() -> None:
        app._run(app.store.layout())  # before the engine's first key: a new namespace's layout
        io = AsyncRunner.from_url(server.url, {})
        first, second = Engine(io, app.keys, "first"), Engine(io, app.keys, "second")
        await first.run(first.ensure_group())
        timer = job.schedule(delay=0)
        await first.run(first.fire([timer.id]))
        (delivery,) = await first.run(first.read(10, 100))
        taken = await second.run(second.reclaim(0, 10))  # the second worker takes it over
        assert [d.entry_id for d in taken] == [delivery.entry_id]
        bury = first.bury(delivery, task="", reason="x", traceback="", bound=BOUND,
                          failure=Failure("", "x", 0))  # fmt: skip
        assert await first.run(bury) is None
        assert await first.run(first.retry(delivery, delivery.raw, 1.0)) is None
        assert await first.run(first.handback(delivery)) is False
        lost = await first.run(first.heartbeat([delivery]))
        assert lost == [delivery.entry_id]
        bury = second.bury(delivery, task="", reason="x", traceback="", bound=BOUND,
                           failure=Failure("", "x", 0))  # fmt: skip
        assert await second.run(bury)
        await io.close()

    asyncio.run(scenario())
    assert [letter.reason for letter in app.dead_letters()] == ["x"]


def test_heartbeat_tells_a_takeover_from_an_outcome_recorded_meanwhile(
    app: Delayq, server: EmbeddedServer, rclient: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose entry left the stream because this worker settled it is not "taken over"."""
    release = threading.Event()

    @app.task
    def job() -> None:
        release.wait(10)

    async def scenario() -> None:
        app._run(app.store.layout())  # before the engine's first key: a new namespace's layout
        io = AsyncRunner.from_url(server.url, {})
        engine = Engine(io, app.keys, "first")
        executor = Executor(engine, WorkerSettings(), lambda name: find_task(app, name),
                            max_payload_bytes=1 << 20, dead_letters=BOUND,
                            stopping=asyncio.Event())  # fmt: skip
        await engine.run(engine.ensure_group())
        for timer in (job.schedule(delay=0), job.schedule(delay=0)):
            await engine.run(engine.fire([timer.id]))
        mine, taken = await engine.run(engine.read(10, 100))
        executor.admit([mine, taken])
        rclient.xclaim(app.keys.ready, GROUP, "second", 0, [taken.entry_id], justid=True)
        with caplog.at_level(logging.WARNING, "delayq.worker"):
            await executor.heartbeat()
        assert "1 running job(s) were taken over" in caplog.text
        # `mine` is still running when its outcome is recorded (a periodic task's lock is
        # released after it): its entry is gone, and that is no takeover.
        executor.settled.add(mine.entry_id)
        await engine.run(engine.ack([Done(mine, Ran(0, 1))]))
        caplog.clear()
        with caplog.at_level(logging.WARNING, "delayq.worker"):
            await executor.heartbeat()
        assert "1 running job(s) were taken over" in caplog.text  # `taken` only, not `mine`
        release.set()
        executor.shutdown_pool()
        await io.close()

    asyncio.run(scenario())


def test_worker_recreates_a_lost_consumer_group(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    ran: list[int] = []

    @app.task
    def note(x: int) -> None:
        ran.append(x)

    start_worker(app)
    note.schedule(1, delay=0.05)
    wait_until(lambda: ran == [1])
    rclient.delete(app.keys.ready)  # e.g. FLUSHDB, or a restore from an old snapshot
    note.schedule(2, delay=0.05)
    wait_until(lambda: ran == [1, 2], timeout=15)
    assert rclient.xinfo_groups(app.keys.ready)[0]["name"] == GROUP.encode()


def test_handler_calling_sys_exit_is_a_failure_not_a_crash(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    after = threading.Event()

    @app.task(retries=0)
    def quits() -> None:
        sys.exit(3)

    @app.task
    def later() -> None:
        after.set()

    start_worker(app)
    quits.delay()
    wait_until(lambda: app.dead_letters())
    assert "SystemExit: 3" in app.dead_letters()[0].reason
    later.delay()
    assert after.wait(10)


def test_cancel_removes_a_timer_awaiting_repair(app: Delayq, rclient: redis.Redis) -> None:
    @app.task
    def job() -> None: ...

    timer = job.schedule(delay=60)
    rclient.zrem(app.keys.index, timer.id)  # the index entry is lost
    assert timer.cancel() is True
    assert not rclient.hexists(app.keys.data(timer.id), timer.id)


def test_refused_at_schedule_time_not_at_run_time(app: Delayq) -> None:
    @app.task
    def job(*args: object, **kwargs: object) -> None: ...

    deep: list[object] = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(PayloadError, match="nested deeper"):
        job.schedule(deep, delay=1)
    with pytest.raises(PayloadError, match="map key of type int"):
        job.schedule({1: "one"}, delay=1)
    with pytest.raises(ScheduleError, match="100 years"):
        job.schedule(at=dt.datetime(2300, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(InvalidTimerId, match="reserved"):
        job.schedule(delay=1, id="~w:looks-internal")
    assert app.pending_count() == 0


def test_bad_app_settings() -> None:
    from delayq import ConfigurationError, WorkerSettings

    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        Delayq("redis://127.0.0.1:1/0").task(timeout=0)(lambda: None)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        Delayq("redis://127.0.0.1:1/0", redis_options={"decode_responses": True})
    with pytest.raises(ConfigurationError, match="dead_letter_maxlen"):
        Delayq("redis://127.0.0.1:1/0", dead_letter_maxlen=-5)
    with pytest.raises(ConfigurationError, match="dead_letter_max_bytes"):
        Delayq("redis://127.0.0.1:1/0", dead_letter_max_bytes=0)
    with pytest.raises(ConfigurationError, match="shutdown_timeout"):
        WorkerSettings(shutdown_timeout=float("nan"))
    with pytest.raises(ConfigurationError, match="concurrency"):
        WorkerSettings(concurrency=0)
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        WorkerSettings(visibility_timeout=5, heartbeat_interval=10)


def _real_ms() -> float:
    return time.clock_gettime(time.CLOCK_REALTIME) * 1000


class SteppedClock:
    """``time.time()`` of this process, ``skew_s`` off the true clock; the skew may be changed
    while a worker runs, as an NTP step or a resumed VM does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.skew_s = 0.0
        monkeypatch.setattr(time, "time", lambda: _real_ms() / 1000 + self.skew_s)
        monkeypatch.setattr(time, "time_ns", lambda: int((_real_ms() / 1000 + self.skew_s) * 1e9))


def _lateness_of_five_timers(note: Task[[], None], ran: list[float]) -> list[float]:
    timers = [note.schedule(delay=0.3 + i * 0.1) for i in range(5)]
    wait_until(lambda: len(ran) == 5, timeout=10)
    return [at - t.due_ms for at, t in zip(sorted(ran), timers, strict=True)]


@pytest.mark.parametrize("skew_s", [-300, 300])
def test_worker_clock_minutes_off(
    app: Delayq,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
    skew_s: int,
) -> None:
    """Deadlines come from the server's clock: a worker's wrong clock changes nothing."""
    SteppedClock(monkeypatch).skew_s = skew_s
    ran: list[float] = []

    @app.task
    def note() -> None:
        ran.append(_real_ms())

    start_worker(app)
    lateness = _lateness_of_five_timers(note, ran)
    assert all(-5 <= late < 500 for late in lateness), lateness


@pytest.mark.parametrize("step_s", [-120, 120])
def test_worker_clock_stepped_while_running(
    app: Delayq,
    start_worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
    step_s: int,
) -> None:
    """A wall clock stepped under a running worker (NTP, a resumed VM) changes nothing either:
    what is due is read with the server's clock, and sleeps are timed by the monotonic clock."""
    clock = SteppedClock(monkeypatch)
    ran: list[float] = []

    @app.task
    def note() -> None:
        ran.append(_real_ms())

    start_worker(app)
    note.schedule(delay=0.05)
    wait_until(lambda: len(ran) == 1)
    ran.clear()
    clock.skew_s = step_s
    lateness = _lateness_of_five_timers(note, ran)
    # Through expiry hints alone they would be a grace (1 s) late: the deadline loop fires them.
    assert all(-5 <= late < 500 for late in lateness), lateness


def test_touch_arguments_checked_at_touch_time(app: Delayq) -> None:
    from delayq import Touch

    @app.debounced(seconds=1, key="k", payload="all")
    def digest(touches: list[Touch]) -> None: ...

    with pytest.raises(PayloadError, match="map key of type int"):
        digest.touch({1: "a"})
    assert app.pending_count() == 0


def test_python_dash_m_delayq() -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "delayq", "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and "worker" in result.stdout
