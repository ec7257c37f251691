"""Lifecycle events (``app.events()`` / ``aevents()``) against a real server, with workers."""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis

from delayq import Delayq, JobEvent, current_job
from delayq._calls import command
from delayq._cluster_server import LocalCluster
from delayq._events import EVENT_KINDS
from delayq._server import EmbeddedServer
from tests.conftest import WorkerProcess, WorkerThread, wait_until


def _kinds(events: list[JobEvent]) -> dict[str, list[str]]:
    per_job: dict[str, list[str]] = defaultdict(list)
    for event in events:
        per_job[event.timer_id].append(event.kind)
    return dict(per_job)


def _tasks(app: Delayq) -> Any:
    calls: dict[str, int] = {}

    @app.task(name="ev.ok")
    def ok(value: int) -> int:
        return value

    @app.task(name="ev.flaky", retries=1, retry_backoff=0.05)
    def flaky() -> str:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] == 1:
            raise ValueError("first attempt")
        return "second"

    @app.task(name="ev.bad", retries=0)
    def bad() -> None:
        raise KeyError("gone")

    @app.task(name="ev.steps")
    def steps() -> None:
        job = current_job()
        assert job is not None
        job.progress(0.5, "half")
        assert told_progress.wait(10)

    @app.task(name="ev.rated", rate_limit="2/s")
    def rated(value: int) -> int:
        return value

    told_progress = threading.Event()
    return ok, flaky, bad, steps, rated, told_progress


def test_each_job_tells_its_life_in_order(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8], events=True)
    ok, flaky, bad, steps, rated, told_progress = _tasks(app)
    start_worker(app)
    leading = rated.delay(4)
    throttled = rated.schedule(5, delay=0.05)  # within the same half second: it waits
    done = ok.delay(1)
    retried = flaky.delay()
    failed = bad.delay()
    cancelled = ok.schedule(2, delay=60)
    moved = ok.schedule(3, delay=60)
    progressed = steps.delay()
    assert cancelled.cancel() and moved.reschedule(delay=0.05)
    for timer, value in ((done, 1), (retried, "second"), (moved, 3), (leading, 4),
                         (throttled, 5)):  # fmt: skip
        assert timer.result(timeout=20) == value
    wait_until(lambda: progressed.refresh() == "running" and progressed.progress, timeout=10)
    told_progress.set()
    progressed.result(timeout=20)
    with pytest.raises(Exception, match="gone"):
        failed.result(timeout=20)

    events = list(app.events(follow=False))
    run = ["fired", "started", "succeeded"]
    assert _kinds(events) == {
        done.id: ["scheduled", *run],
        retried.id: ["scheduled", "fired", "started", "retried", *run],
        failed.id: ["scheduled", "fired", "started", "failed"],
        cancelled.id: ["scheduled", "cancelled"],
        moved.id: ["scheduled", "rescheduled", *run],
        progressed.id: ["scheduled", "fired", "started", "progress", "succeeded"],
        leading.id: ["scheduled", *run],
        throttled.id: ["scheduled", "fired", "throttled", *run],
    }
    assert {e.kind for e in events} == set(EVENT_KINDS)  # every kind, each in its place
    by = {(e.timer_id, e.kind, e.attempt): e for e in events}
    assert by[(retried.id, "retried", 1)].error_type == "ValueError"
    assert by[(retried.id, "succeeded", 2)].task == "ev.flaky"
    assert by[(failed.id, "failed", 1)].error == "'gone'"
    assert by[(progressed.id, "progress", 1)].fraction == 0.5
    assert by[(progressed.id, "progress", 1)].message == "half"
    assert by[(done.id, "started", 1)].worker
    assert by[(moved.id, "rescheduled", 1)].due_ms is not None
    assert by[(throttled.id, "throttled", 1)].message == "rate 2/s for the task of 'ev.rated'"
    assert all(a.at_ms <= b.at_ms for a, b in itertools.pairwise(events))
    # Filtered by task, and read from a later position.
    assert {e.task for e in app.events(follow=False, tasks=["ev.bad"])} == {"ev.bad"}
    assert list(app.events(since=events[-1].position, follow=False)) == []
    # A re-driven dead letter is scheduled again, and fails again.
    assert app.retry_dead(app.dead_letters()[0])
    again = iter(app.events(since=events[-1].position))
    assert [next(again).kind for _ in range(4)] == ["scheduled", "fired", "started", "failed"]
    app.close()


def test_a_reader_that_resumes_sees_every_event_once(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8], events=True)
    ok = _tasks(app)[0]
    start_worker(app)
    seen: list[JobEvent] = []
    position: str | None = None  # a new namespace: from its start
    timers = []
    # Read in three sittings while jobs run, each stopping mid-stream and resuming from the
    # position of the last event it handed out.
    for sitting in range(3):
        timers += [ok.delay(i) for i in range(sitting * 100, sitting * 100 + 100)]
        reader = app.events(since=position)
        for count, event in enumerate(reader, 1):
            seen.append(event)
            if count == 150:
                break
        reader.close()  # type: ignore[attr-defined]
        position = seen[-1].position
    for timer in timers:
        timer.result(timeout=30)
    seen += app.events(since=position, follow=False)
    keys = [(e.timer_id, e.kind, e.attempt) for e in seen]
    assert len(keys) == len(set(keys)) == 4 * len(timers)
    assert all(k == ["scheduled", "fired", "started", "succeeded"]
               for k in _kinds(seen).values())  # fmt: skip
    app.close()


def test_events_are_off_unless_asked_and_per_task(
    server: EmbeddedServer, rclient: redis.Redis, start_worker: Callable[..., WorkerThread]
) -> None:
    quiet = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8])
    ok = _tasks(quiet)[0]

    @quiet.task(name="ev.loud", events=True)
    def loud() -> None: ...

    start_worker(quiet)
    ok.delay(1).result(timeout=20)
    loud.delay().result(timeout=20)
    assert {e.task for e in quiet.events(follow=False)} == {"ev.loud"}
    quiet.close()

    off = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8])
    _tasks(off)[0].delay(1)
    assert not rclient.exists(off.keys.events) and list(off.events(follow=False)) == []
    off.close()

    loud_app = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8], events=True)

    @loud_app.task(name="ev.hush", events=False)
    def hush() -> None: ...

    hush.delay()
    _tasks(loud_app)[0].delay(1)
    assert {e.task for e in loud_app.events(follow=False)} == {"ev.ok"}
    with pytest.raises(ValueError, match="not a position"):
        list(loud_app.events(since="yesterday", follow=False))
    loud_app.close()
    from delayq import ConfigurationError

    with pytest.raises(ConfigurationError, match="events_maxlen"):
        Delayq(server.url, events_maxlen=0)
    with pytest.raises(ConfigurationError, match="events must be True or False"):
        Delayq(server.url, events="yes")  # type: ignore[arg-type]


def test_touches_are_told_only_when_asked(server: EmbeddedServer) -> None:
    for touches in (False, True):
        app = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8], events=True,
                     event_touches=touches)  # fmt: skip

        @app.debounced(seconds=30, key="k")
        def note(k: str) -> None: ...

        for _ in range(3):
            note.touch("a")
        kinds = [e.kind for e in app.events(follow=False)]
        assert kinds == (["scheduled", "rescheduled", "rescheduled"] if touches
                         else ["scheduled"])  # fmt: skip
        app.close()


def test_an_async_reader_follows_live(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="e" + uuid.uuid4().hex[:8], events=True)
    ok = _tasks(app)[0]
    start_worker(app)

    async def main() -> list[str]:
        async with app:
            got: list[str] = []

            async def read() -> None:
                async for event in app.aevents(since="$"):
                    got.append(event.kind)
                    if event.kind == "succeeded":
                        return

            reading = asyncio.create_task(read())
            await asyncio.sleep(0.2)  # let it start from "now"
            timer = await ok.adelay(5)
            assert await timer.aresult(timeout=20) == 5
            await asyncio.wait_for(reading, 10)
            return got

    assert asyncio.run(main()) == ["scheduled", "fired", "started", "succeeded"]
    app.close()


def test_a_killed_workers_job_shows_its_redelivery(
    server: EmbeddedServer, rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    namespace = "e" + uuid.uuid4().hex[:8]
    from tests import events_app

    app = Delayq(server.url, namespace=namespace, events=True)
    slow = app.task(name="ev.slow", retries=0)(events_app.slow.fn)
    first = worker_process(server.url, namespace, app="tests.events_app:app")
    timer = slow.delay(1.5)
    started = f"test:{namespace}:started"
    wait_until(lambda: rclient.llen(started) == 1, timeout=30)
    second = worker_process(server.url, namespace, app="tests.events_app:app")
    wait_until(lambda: "ready" in second.output(), timeout=30)
    first.signal(signal.SIGKILL)
    assert timer.result(timeout=60) == "slept"
    events = list(app.events(follow=False))
    assert [e.kind for e in events] == ["scheduled", "fired", "started", "started", "succeeded"]
    first_run, second_run = events[2], events[3]
    assert first_run.worker != second_run.worker and first_run.attempt == second_run.attempt == 1
    app.close()


def test_the_cli_prints_and_follows_events(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from delayq.cli import cli
    from tests.conftest import ROOT

    namespace = "e" + uuid.uuid4().hex[:8]
    app = Delayq(server.url, namespace=namespace, events=True)
    ok, flaky = _tasks(app)[:2]
    start_worker(app)
    base = ["--url", server.url, "--namespace", namespace]
    readers_before = _blocked_readers(app)
    follower = subprocess.Popen(
        [sys.executable, "-c", "from delayq.cli import main; main()", "events", "--follow",
         "--task", "ev.flaky", "--since", "$", *base],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        # Ctrl-C as in a terminal, even if this process was started with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        wait_until(lambda: app.server_time_ms() and follower.poll() is None, timeout=5)
        lines: list[str] = []

        def read_until_succeeded() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                lines.append(line)
                if " succeeded " in line:
                    return

        reading = threading.Thread(target=read_until_succeeded, daemon=True)
        reading.start()
        wait_until(lambda: _blocked_readers(app) > readers_before, timeout=10)
        ok.delay(1).result(timeout=20)
        flaky.delay().result(timeout=20)
        reading.join(20)
        if reading.is_alive():
            follower.kill()
            pytest.fail(f"no end seen; printed: {lines} {follower.communicate()}")
        kinds = [line.split()[2] for line in lines]
        assert kinds == ["scheduled", "fired", "started", "retried", "fired", "started",
                         "succeeded"], lines  # fmt: skip
        assert "ValueError: first attempt" in lines[3] and "@" in lines[-1]
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            code = follower.wait(30)
        except subprocess.TimeoutExpired:
            follower.kill()
            code = -1
        assert follower.stdout is not None
        rest = follower.stdout.read()
        follower.stdout.close()
        assert code in (0, 130), f"Ctrl-C did not stop it ({code}): {rest[-2000:]}"
    printed = CliRunner().invoke(cli, ["events", *base])
    assert printed.exit_code == 0 and printed.output.count(" succeeded ") == 2
    position = printed.output.splitlines()[-1].rpartition("@")[2]
    after = CliRunner().invoke(cli, ["events", "--since", position, *base])
    assert after.exit_code == 0 and after.output == ""
    bad = CliRunner().invoke(cli, ["events", "--since", "nowhere", *base])
    assert bad.exit_code == 2 and "not a position" in bad.output
    app.close()


def _blocked_readers(app: Delayq) -> int:
    """Clients of the server blocked in an XREAD (not XREADGROUP), as CLIENT LIST shows: a
    client's last command stays listed after it returned, its b flag only while it blocks."""
    clients = app._run(command("CLIENT", "LIST")).splitlines()
    return sum(b"cmd=xread " in c and b" flags=b " in c for c in clients)


def test_events_from_every_shard_of_a_cluster(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    cluster.wait_ready(timeout=60.0)
    app = Delayq(cluster.url, namespace="e" + uuid.uuid4().hex[:8], events=True)
    ok = _tasks(app)[0]
    start_worker(app)
    layout = app._run(app.store.layout())
    ids: dict[int, str] = {}
    for i in range(2000):
        ids.setdefault(layout.shard_of(f"c{i}"), f"c{i}")
    half = list(ids.values())[: len(ids) // 2]
    rest = list(ids.values())[len(ids) // 2 :]
    for timer_id in half:
        ok.schedule(1, id=timer_id).result(timeout=20)
    first = list(app.events(follow=False))
    assert len(first) == 4 * len(half) and len(first[-1].position.split(",")) == layout.count

    async def main() -> list[JobEvent]:
        async with app:
            got: list[JobEvent] = []
            reader = app.aevents(since=first[-1].position)
            for timer_id in rest:
                await (await ok.aschedule(2, id=timer_id)).aresult(timeout=20)
            async for event in reader:
                got.append(event)
                if len(got) == 4 * len(rest):
                    return got
            return got

    later = asyncio.run(main())
    assert {e.timer_id for e in later} == set(rest)
    assert {e.shard for e in first + later} == set(range(layout.count))
    assert all(k == ["scheduled", "fired", "started", "succeeded"]
               for k in _kinds(first + later).values())  # fmt: skip
    app.close()
