"""Queues and priorities (docs/flow-control.md): each queue is a stream of its own, a worker
runs only the queues it is given, and among jobs due together a higher priority starts first."""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from delayq import ConfigurationError, Delayq, PayloadError, ScheduleError, WorkerSettings
from delayq._cluster_server import LocalCluster
from delayq._codec import decode_payload, encode_payload
from delayq._route import Route, parse_queues
from delayq._server import EmbeddedServer
from delayq.cli import cli
from tests import queues_app
from tests.conftest import FAST, WorkerProcess, wait_until

APP = "tests.queues_app:app"


def _producer(url: str, namespace: str) -> tuple[Delayq, Any, Any]:
    """queues_app's tasks, declared the same way, on a producer of this namespace."""
    app = Delayq(url, namespace=namespace)
    report = app.task(name="q.report", queue="reports", retries=1, retry_backoff=0.05)(
        queues_app.report.fn
    )
    mail = app.task(name="q.mail", retries=0)(queues_app.mail.fn)
    return app, report, mail


def _rows(rclient: redis.Redis, namespace: str, kind: str) -> list[list[str]]:
    return [r.decode().split("|") for r in rclient.lrange(f"test:{namespace}:{kind}", 0, -1)]


def _mail_lateness(app: Delayq, mail: Any, rclient: redis.Redis, first: int) -> list[float]:
    """Lateness (ms) of 300 mail jobs due over 3 s, from job number ``first`` on."""
    start = time.time() * 1000 + 300
    dues = [round(start + 10 * n) for n in range(300)]
    for n, due in enumerate(dues):
        at = time.time() * 1000
        mail.schedule(first + n, due, delay=max(0.0, (due - at) / 1000))
    wait_until(lambda: len(_rows(rclient, app.namespace, "mail")) >= first + 300, timeout=60)
    return [float(r[1]) for r in _rows(rclient, app.namespace, "mail")[first:]]


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_a_backlog_in_one_queue_does_not_delay_another(
    server: EmbeddedServer, namespace: str, rclient: redis.Redis, worker_process: Any
) -> None:
    app, report, mail = _producer(server.url, namespace)
    worker: WorkerProcess = worker_process(server.url, namespace, "-Q", "default", app=APP)
    wait_until(lambda: "ready" in worker.output(), timeout=30)
    before = _mail_lateness(app, mail, rclient, 0)

    backlog = 100_000
    for chunk in range(0, backlog, 10_000):
        app.schedule_many([report.prepare(n) for n in range(chunk, chunk + 10_000)])
    reports = app.keys.stream("reports", 0)
    wait_until(lambda: rclient.xlen(reports) == backlog, timeout=120)
    after = _mail_lateness(app, mail, rclient, 300)

    (info,) = [q for q in app.queues() if q.name == "reports"]
    assert (info.waiting, info.in_flight) == (backlog, 0)
    assert info.oldest_wait_s is not None and info.oldest_wait_s > 0
    assert not _rows(rclient, namespace, "report")  # -Q default never runs a report
    # Unchanged: the same as without the backlog, within what a loaded machine adds.
    assert _p99(after) <= max(2 * _p99(before), _p99(before) + 25), (_p99(before), _p99(after))
    app.close()


def test_workers_run_only_their_queues_and_retries_keep_theirs(
    server: EmbeddedServer, namespace: str, rclient: redis.Redis, worker_process: Any
) -> None:
    app, report, mail = _producer(server.url, namespace)
    mails = worker_process(server.url, namespace, "-Q", "default", app=APP)
    reports = worker_process(server.url, namespace, "--queues", "reports", app=APP)
    for w in (mails, reports):
        wait_until(lambda w=w: "ready" in w.output(), timeout=30)
    assert "queues=reports" in reports.output()
    now = time.time() * 1000
    app.schedule_many([report.prepare(n, fail=n % 10 == 0) for n in range(100)])
    app.schedule_many([mail.prepare(n, now) for n in range(100)])
    wait_until(lambda: len(_rows(rclient, namespace, "report")) == 110, timeout=60)
    wait_until(lambda: len(_rows(rclient, namespace, "mail")) == 100, timeout=60)
    assert {r[1] for r in _rows(rclient, namespace, "report")} == {str(reports.proc.pid)}
    assert {r[2] for r in _rows(rclient, namespace, "mail")} == {str(mails.proc.pid)}
    wait_until(lambda: len(app.dead_letters()) == 10, timeout=30)  # retried once, on reports
    app.close()


def test_a_high_priority_job_starts_next(
    server: EmbeddedServer, namespace: str, rclient: redis.Redis, start_worker: Any
) -> None:
    app = Delayq(server.url, namespace=namespace)
    started: list[str] = []

    @app.task(name="slow")
    def slow(label: str) -> None:
        started.append(label)
        time.sleep(0.1)  # slow jobs: nothing is read ahead of a free slot

    app.schedule_many([slow.prepare(f"low{n}") for n in range(1000)])
    start_worker(app, WorkerSettings(concurrency=1, visibility_timeout=30.0))
    wait_until(lambda: len(started) >= 3, timeout=30)
    running = len(started)  # the last of them runs now (0.1 s)
    slow.schedule("high", priority=9)
    wait_until(lambda: "high" in started, timeout=10)
    # Next after the job that ran when it was scheduled (or the one after, if that one ended
    # while it fired): not behind the 990-odd lows still queued.
    assert started.index("high") <= running + 1, started[: running + 3]
    app.close()


def test_a_task_priority_and_per_call_priorities_order_due_jobs(
    server: EmbeddedServer, namespace: str, start_worker: Any
) -> None:
    app = Delayq(server.url, namespace=namespace)
    started: list[str] = []

    @app.task(name="p.urgent", priority=7)
    async def urgent(label: str) -> None:
        started.append(label)

    @app.task(name="p.normal")
    async def normal(label: str) -> None:
        started.append(label)

    reqs = [normal.prepare("n0"), urgent.prepare("u7"), normal.prepare("n3", priority=3),
            urgent.prepare("u1", priority=1), normal.prepare("n9", priority=9)]  # fmt: skip
    app.schedule_many(reqs)
    time.sleep(0.05)  # all due before the worker starts: one read takes them in order
    start_worker(app, WorkerSettings(concurrency=1, visibility_timeout=30.0))
    wait_until(lambda: len(started) == 5, timeout=30)
    assert started == ["n9", "u7", "n3", "u1", "n0"]
    app.close()


def test_queues_cli_shows_backlog_in_flight_and_oldest(
    server: EmbeddedServer, namespace: str, rclient: redis.Redis
) -> None:
    app, report, _ = _producer(server.url, namespace)
    app.schedule_many([report.prepare(n, priority=n % 2 * 5) for n in range(7)])
    wait_until(lambda: sum(q.waiting for q in app.queues()) == 7 or _fire(app), timeout=20)
    result = CliRunner().invoke(cli, ["queues", "--url", server.url, "--namespace", namespace])
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split()[:3] == ["queue", "waiting", "in"]
    row = next(line for line in lines if line.startswith("reports"))
    assert row.split()[1:3] == ["7", "0"]
    assert "p5:3 p0:4" in row
    app.close()


def _fire(app: Delayq) -> bool:
    """Fire what is due with a worker's own call (no worker runs in this test)."""
    import asyncio

    from delayq._runners import AsyncRunner
    from delayq.worker._engine import Engine

    async def fire() -> None:
        io = AsyncRunner.from_url(app.url, {})
        engine = Engine(io, app.keys, "cli-test", queues=("default", "reports"))
        ids = (await engine.run(engine.due(app.keys.index, 100))).ids
        if ids:
            await engine.run(engine.fire(ids))
        await io.close()

    asyncio.run(fire())
    return False


def test_bad_queues_and_priorities_are_refused_and_store_nothing(app: Delayq) -> None:
    with pytest.raises(ConfigurationError, match="queue name"):
        app.task(name="bad", queue="no spaces")(lambda: None)
    with pytest.raises(ConfigurationError, match="priority must be an integer from 0 to 9"):
        app.task(name="bad", priority=10)(lambda: None)

    @app.task(name="fine")
    def fine() -> None: ...

    for bad in (10, -1, 1.5, True, "9"):
        with pytest.raises(ScheduleError, match="priority"):
            fine.schedule(priority=bad)
    assert app.pending_count() == 0
    with pytest.raises(ConfigurationError, match="queue name"):
        parse_queues("reports,bad:name")
    with pytest.raises(ConfigurationError, match="no queue name"):
        parse_queues(" , ")
    with pytest.raises(ConfigurationError, match="queues must be"):
        WorkerSettings(queues="reports")  # type: ignore[arg-type]
    assert parse_queues("reports, default,reports") == ("reports", "default")


def test_routed_payloads_round_trip_and_default_ones_keep_their_format() -> None:
    plain = encode_payload("t", (1,), {}, attempt=0, created_ms=5, max_bytes=100)
    assert plain[:2] == b"\x96\x01"  # six items, format 1: as before queues
    routed = encode_payload("t", (1,), {}, attempt=2, created_ms=5, max_bytes=100,
                            route=Route("reports", 4), on_failure="cb")  # fmt: skip
    payload = decode_payload(routed)
    assert (payload.route, payload.attempt, payload.on_failure) == (Route("reports", 4), 2, "cb")
    bad = routed.replace(b"\xa7reports", b"\xa7rep:rts")
    with pytest.raises(PayloadError, match="payload route"):
        decode_payload(bad)


def test_queues_and_priorities_on_the_shards_of_a_cluster(
    cluster: LocalCluster, start_worker: Any
) -> None:
    namespace = "q" + uuid.uuid4().hex[:8]
    app = Delayq(cluster.url, namespace=namespace)
    ran: list[tuple[str, int]] = []

    @app.task(name="c.report", queue="reports", priority=2)
    async def report(n: int) -> None:
        ran.append(("report", n))

    @app.task(name="c.mail")
    async def mail(n: int) -> None:
        ran.append(("mail", n))

    timers = [report.delay(n) for n in range(40)]  # random ids: spread over the 16 shards
    timers += [mail.schedule(n, priority=n % 10) for n in range(40)]
    start_worker(app, dataclasses.replace(FAST, queues=("reports",)))
    for t in timers[:40]:
        t.result(timeout=30)
    assert sorted(ran) == [("report", n) for n in range(40)]  # no mail on a reports worker
    start_worker(app)  # every queue its app names
    for t in timers[40:]:
        t.result(timeout=30)
    assert len(ran) == 80
    (reports,) = [q for q in app.queues() if q.name == "reports"]
    assert (reports.waiting, reports.in_flight) == (0, 0)
    app.close()
