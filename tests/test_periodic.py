"""Periodic tasks: deadline arithmetic (no waiting), then real ticks with two workers."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
import redis

from delayq import ConfigurationError, Delayq, WorkerSettings, current_job
from delayq._periodic import PeriodicOptions
from delayq._schedules import CronSchedule, EverySchedule
from tests.conftest import WorkerThread, wait_until

UTC = dt.UTC


def ticks(schedule: CronSchedule, start: dt.datetime, count: int) -> list[dt.datetime]:
    found, at = [], start
    for _ in range(count):
        at = schedule.next_after(at)
        found.append(at)
    return found


def local(instants: list[dt.datetime], tz: str) -> list[str]:
    return [i.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M%z") for i in instants]


@pytest.mark.parametrize(
    ("tz", "spring", "fall", "repeated"),
    [
        ("Europe/Paris", dt.datetime(2027, 3, 27, 12, tzinfo=UTC),
         dt.datetime(2027, 10, 30, 12, tzinfo=UTC), "02:30"),
        ("America/New_York", dt.datetime(2027, 3, 13, 12, tzinfo=UTC),
         dt.datetime(2027, 11, 6, 12, tzinfo=UTC), "01:30"),
    ],
)  # fmt: skip
def test_daily_tick_in_skipped_and_repeated_hour(
    tz: str, spring: dt.datetime, fall: dt.datetime, repeated: str
) -> None:
    # 02:30 does not exist on the spring-forward day (the next day's tick comes first).
    schedule = CronSchedule("30 2 * * *", tz)
    got = local(ticks(schedule, spring, 3), tz)
    assert [g[6:11] for g in got] == ["03:00", "02:30", "02:30"]  # skipped: at the jump
    # The repeated wall time happens twice on the fall-back day: it runs once.
    hour, minute = repeated.split(":")
    got = ticks(CronSchedule(f"{int(minute)} {int(hour)} * * *", tz), fall, 3)
    assert [g[6:11] for g in local(got, tz)] == [repeated] * 3
    assert got[1] - got[0] == dt.timedelta(hours=25)  # runs once on the long day


def test_hourly_ticks_across_both_transitions_of_paris() -> None:
    schedule = CronSchedule("0 * * * *", "Europe/Paris")
    spring = ticks(schedule, dt.datetime(2027, 3, 27, 23, 30, tzinfo=UTC), 4)
    assert local(spring, "Europe/Paris") == [
        "03-28 01:00+0100", "03-28 03:00+0200", "03-28 04:00+0200", "03-28 05:00+0200"
    ]  # fmt: skip
    fall = ticks(schedule, dt.datetime(2027, 10, 30, 22, 30, tzinfo=UTC), 4)
    assert local(fall, "Europe/Paris") == [
        "10-31 01:00+0200", "10-31 02:00+0200", "10-31 03:00+0100", "10-31 04:00+0100"
    ]  # fmt: skip
    assert len(set(fall)) == 4


def test_weekday_report_and_seconds_field() -> None:
    schedule = CronSchedule("0 9 * * MON-FRI", "Europe/Paris")
    friday_evening = dt.datetime(2027, 1, 8, 18, tzinfo=UTC)
    (monday,) = ticks(schedule, friday_evening, 1)
    assert local([monday], "Europe/Paris") == ["01-11 09:00+0100"]
    every_20s = CronSchedule("*/20 * * * * *")
    assert [t.second for t in ticks(every_20s, dt.datetime(2027, 1, 1, tzinfo=UTC), 3)] == [
        20, 40, 0
    ]  # fmt: skip


def test_every_is_aligned_and_catch_up_policies(app: Delayq) -> None:
    every = EverySchedule(dt.timedelta(seconds=30))
    at = dt.datetime(2027, 1, 1, 0, 0, 7, tzinfo=UTC)
    assert every.next_after(at) == dt.datetime(2027, 1, 1, 0, 0, 30, tzinfo=UTC)

    def make(catch_up: str, max_catch_up: int = 100):  # type: ignore[no-untyped-def]
        @app.periodic(every=dt.timedelta(minutes=1), catch_up=catch_up,  # type: ignore[arg-type]
                      max_catch_up=max_catch_up, name=f"p-{catch_up}-{max_catch_up}")  # fmt: skip
        def job() -> None: ...

        return job

    minute = 60_000
    tick, now = 10 * minute, 15 * minute + 5_000  # five ticks were missed
    assert make("latest").chained_tick_ms(tick, now) == 16 * minute
    assert make("none").chained_tick_ms(tick, now) == 16 * minute
    assert make("all").chained_tick_ms(tick, now) == 11 * minute
    assert make("all", 3).chained_tick_ms(tick, now) == 16 * minute  # bounded


def test_declaration_errors(app: Delayq) -> None:
    for kwargs, message in [
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"cron": "* * *"}, "3 fields"),
        ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": None}, "needs a cron string or every="),
        ({"cron": "0 9 * * *", "every": dt.timedelta(seconds=5)}, "not both"),
        ({"cron": None, "every": dt.timedelta(seconds=5), "tz": "Europe/Paris"}, "cron"),
        ({"cron": "0 9 * * *", "catch_up": "some"}, "catch_up"),
        ({"cron": "0 9 * * *", "overlap": "sometimes"}, "overlap"),
    ]:
        cron = kwargs.pop("cron")
        with pytest.raises(ConfigurationError, match=message):
            PeriodicOptions.build(
                cron, every=kwargs.get("every"), tz=kwargs.get("tz", "UTC"), jitter=None,
                catch_up=kwargs.get("catch_up", "latest"), overlap=kwargs.get("overlap", "skip"),
                max_catch_up=100,
            )  # fmt: skip
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        app.periodic("0 9 * * *", tz="Nowhere/Land")


SECOND_TICKS = WorkerSettings(visibility_timeout=5.0, sweep_interval=1.0, shutdown_timeout=5.0)


def test_two_workers_run_each_second_tick_once(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    runs: list[float] = []
    lock = threading.Lock()

    @app.periodic("* * * * * *")  # every second
    def every_second() -> None:
        with lock:
            runs.append(time.time())

    start_worker(app, SECOND_TICKS)
    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len(runs) >= 5, timeout=20)
    seconds = Counter(int(r) for r in runs)
    assert max(seconds.values()) == 1, f"a tick ran twice: {seconds}"
    assert all(r - int(r) < 0.5 for r in runs), (
        f"ticks should run close to the whole second: {runs}"
    )
    state = rclient.hgetall(app.keys.periodic_state(every_second.name))
    assert b"last_run" in state and b"armed" in state


def test_schedule_change_replaces_pending_tick_and_removed_task_stops(
    server: object, namespace: str, start_worker: Callable[..., WorkerThread]
) -> None:
    url = server.url  # type: ignore[attr-defined]
    first = Delayq(url, namespace=namespace)

    @first.periodic("0 0 1 1 *", name="report")  # yearly: far away
    def report_v1() -> None: ...

    @first.periodic("0 0 1 1 *", name="obsolete")
    def obsolete() -> None: ...

    runner = start_worker(first, SECOND_TICKS)
    assert first.pending_count() == 2
    runner.stop()

    ran: list[float] = []
    second = Delayq(url, namespace=namespace)

    @second.periodic(every=dt.timedelta(seconds=1), name="report")
    def report_v2() -> None:
        ran.append(time.time())

    start_worker(second, SECOND_TICKS)
    ids = [t.id for t in second.timers()]
    assert not any("obsolete" in i for i in ids), "a removed periodic task must stop"
    assert all(not i.endswith("@" + str(_next_new_year_ms())) for i in ids)
    wait_until(lambda: len(ran) >= 2, timeout=10)
    assert second.pending_count() == 1  # only the new schedule's next tick
    first.close()
    second.close()


def _next_new_year_ms() -> int:
    now = dt.datetime.now(UTC)
    return round(dt.datetime(now.year + 1, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_overlap_skip_and_allow(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    slow_runs: list[float] = []
    fast_runs: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1), overlap="skip")
    def slow() -> None:
        slow_runs.append(time.time())
        time.sleep(2.5)

    @app.periodic(every=dt.timedelta(seconds=1), overlap="allow")
    def slow_allowed() -> None:
        fast_runs.append(time.time())
        time.sleep(2.5)

    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len(fast_runs) >= 4, timeout=15)
    # While one slow run lasts 2.5 s, the ticks during it are skipped, not piled up.
    assert len(slow_runs) <= 2
    starts = sorted(fast_runs)
    assert starts[3] - starts[0] < 3.6  # overlapping runs started every second


def test_catch_up_latest_runs_once_after_downtime(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    runs: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1))
    def beat() -> None:
        runs.append(time.time())

    runner = start_worker(app, SECOND_TICKS)
    wait_until(lambda: runs, timeout=10)
    runner.stop()
    count = len(runs)
    time.sleep(3.5)  # downtime: three or four ticks are missed (not a correctness wait)
    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len(runs) >= count + 2, timeout=10)
    # One catch-up run right away, then back on the schedule (not 3-4 runs at once).
    assert runs[count + 1] - runs[count] > 0.3


def test_periodic_list_command(
    server: object, namespace: str, start_worker: Callable[..., WorkerThread]
) -> None:
    from typer.testing import CliRunner

    from delayq.cli import cli
    from tests.periodic_app import app as module_app

    url = server.url  # type: ignore[attr-defined]
    module_app.override(url=url, namespace=namespace)
    start_worker(module_app, SECOND_TICKS)
    result = CliRunner().invoke(
        cli,
        [
            "periodic",
            "list",
            "-A",
            "tests.periodic_app:app",
            "--url",
            url,
            "--namespace",
            namespace,
        ],
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "weekday_report" in x)
    assert "[0 9 * * MON-FRI]" in line and "zone=Europe/Paris" in line
    assert "next=" in line and " 09:00:00 CE" in line and "last=-" in line


def test_tick_of_a_killed_worker_runs_again_despite_its_lock(
    server: object, namespace: str, rclient: redis.Redis, tmp_path: object
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    url = server.url  # type: ignore[attr-defined]
    # Make the first tick due now: arm the schedule's state by hand as a worker would.
    args = [sys.executable, "-m", "delayq", "worker", "-A", "tests.periodic_slow_app:app",
            "--url", url, "--namespace", namespace, "--visibility-timeout", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    second = None
    try:
        app = Delayq(url, namespace=namespace)
        wait_until(lambda: app.timers(), timeout=20)
        (tick,) = app.timers()
        assert tick.reschedule(delay=0)  # the 30 s tick, due now
        started = f"test:{namespace}:started"
        wait_until(lambda: rclient.llen(started) == 1, timeout=20)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        # Taken over after the visibility timeout; its own lock must not make it skip.
        wait_until(lambda: rclient.llen(f"test:{namespace}:done") == 1, timeout=30)
        assert rclient.llen(started) == 2
        app.close()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_catch_up_all_runs_every_missed_tick(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    runs: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1), catch_up="all")
    def each() -> None:
        runs.append(time.time())

    runner = start_worker(app, SECOND_TICKS)
    wait_until(lambda: runs, timeout=10)
    runner.stop()
    stopped = time.time()
    time.sleep(3.2)  # downtime: three ticks are missed (not a correctness wait)
    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len([r for r in runs if r > stopped]) >= 4, timeout=10)
    caught_up = [r for r in runs if r > stopped]
    assert caught_up[2] - caught_up[0] < 0.9, "missed ticks run one after another at once"


def test_catch_up_all_with_slow_runs_skips_no_missed_tick(
    app: Delayq, start_worker: Callable[..., WorkerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Runs longer than the sweeps' interval: while a catch-up run is in flight, a sweep must
    not arm the next missed tick early (it would meet the overlap lock and be skipped, and the
    skip would chain through every missed tick)."""
    runs: list[int] = []

    @app.periodic(every=dt.timedelta(seconds=1), catch_up="all")
    def slow() -> None:
        job = current_job()
        assert job is not None
        runs.append(job.due_ms)
        time.sleep(0.6)

    settings = WorkerSettings(visibility_timeout=3.0, sweep_interval=0.1, shutdown_timeout=5.0)
    runner = start_worker(app, settings)
    wait_until(lambda: runs, timeout=10)
    runner.stop()
    last = runs[-1]
    time.sleep(4.5)  # downtime: four ticks are missed (not a correctness wait)
    start_worker(app, settings)
    wait_until(lambda: len([r for r in runs if r > last]) >= 6, timeout=20)
    caught_up = [r for r in runs if r > last][:6]
    assert caught_up == [last + 1000 * i for i in range(1, 7)], caught_up
    assert "skipping a tick" not in caplog.text


def test_replaced_or_removed_schedules_leave_nothing_behind(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """A paused tick replaced by a new schedule leaves no paused entry; a run ending after its
    task was removed does not bring the task's state back."""

    @app.periodic(every=dt.timedelta(seconds=60), name="report")
    def report() -> None: ...

    start_worker(app).stop()
    (tick,) = app.timers()
    assert tick.pause()
    changed = Delayq(app.url, namespace=app.namespace)

    @changed.periodic(every=dt.timedelta(seconds=120), name="report")
    def report_v2() -> None: ...

    start_worker(changed).stop()
    assert not rclient.hexists(app.keys.paused, tick.id)
    # Both schedules fall on epoch multiples, so the new tick's id may equal the old one's:
    # what shows the replacement is a live tick on the new grid.
    (armed,) = app.timers()
    assert not armed.paused and armed.due_ms % 120_000 == 0

    async def run_ends_after_removal() -> None:
        from delayq._runners import AsyncRunner
        from delayq.worker._engine import Engine

        engine = Engine(AsyncRunner.from_url(app.url, {}), app.keys, "w")
        rclient.delete(app.keys.periodic_state("gone"))
        await engine.run(engine.record_run("gone", 1000, 2000))
        await engine.io.close()

    asyncio.run(run_ends_after_removal())
    assert not rclient.exists(app.keys.periodic_state("gone"))
    changed.close()


def test_cancelled_tick_is_re_armed_by_the_sweeper(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    runs: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1))
    def beat() -> None:
        runs.append(time.time())

    start_worker(app, SECOND_TICKS)
    wait_until(lambda: app.timers(), timeout=10)
    for timer in app.timers():
        timer.cancel()  # the pending tick is gone: the schedule must not stop
    count = len(runs)
    wait_until(lambda: len(runs) >= count + 2, timeout=10)


def test_overlap_queue_runs_late_ticks_after_the_previous_run(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    spans: list[tuple[float, float]] = []

    @app.periodic(every=dt.timedelta(seconds=1), overlap="queue")
    def queued() -> None:
        start = time.time()
        time.sleep(1.5)
        spans.append((start, time.time()))

    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len(spans) >= 3, timeout=20)
    ordered = sorted(spans)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end - 0.05, "a queued tick ran while the previous run was running"


def test_overlap_lock_left_by_a_finished_run_does_not_skip_ticks(
    app: Delayq, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    """A run whose lock release failed (server unreachable, or restored from a snapshot taken
    mid-run) leaves the lock behind; the next tick must see that its holder is over."""
    runs: list[float] = []

    @app.periodic(every=dt.timedelta(seconds=1), overlap="skip")
    def beat() -> None:
        runs.append(time.time())

    # Held by a delivery that is not pending (finished long ago), for a minute.
    rclient.set(app.keys.periodic_lock(beat.name), "1-0", px=60_000)
    start_worker(app, SECOND_TICKS)
    wait_until(lambda: len(runs) >= 3, timeout=10)
    assert rclient.get(app.keys.periodic_lock(beat.name)) != b"1-0"
