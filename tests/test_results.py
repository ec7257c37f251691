"""Outcomes: results, failures, cancellations and states, waited for without polling, against a
real server (and a real cluster), with a worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import redis

from delayq import (
    ConfigurationError,
    Delayq,
    JobFailed,
    ResultUnavailable,
    TimerCancelled,
)
from delayq._cluster_server import LocalCluster
from delayq._server import EmbeddedServer
from tests.conftest import WorkerThread, wait_until


def _tasks(app: Delayq) -> Any:
    class Tasks:
        calls: ClassVar[dict[str, int]] = {}
        gate = threading.Event()

    @app.task(name="res.echo")
    def echo(value: Any) -> Any:
        return value

    @app.task(name="res.flaky", retries=2, retry_backoff=0.05)
    def flaky(key: str) -> str:
        Tasks.calls[key] = Tasks.calls.get(key, 0) + 1
        if Tasks.calls[key] < 3:
            raise ValueError(f"attempt {Tasks.calls[key]}")
        return f"done after {Tasks.calls[key]}"

    @app.task(name="res.bad", retries=1, retry_backoff=0.05)
    def bad() -> None:
        raise KeyError("missing thing")

    @app.task(name="res.blocked")
    def blocked() -> str:
        Tasks.gate.wait(10)
        return "unblocked"

    @app.task(name="res.forget", result_ttl=0)
    def forget() -> int:
        return 1

    Tasks.echo, Tasks.flaky, Tasks.bad, Tasks.blocked, Tasks.forget = (  # type: ignore[attr-defined]
        echo, flaky, bad, blocked, forget)  # fmt: skip
    return Tasks


def _quick(call: Callable[[], Any], error: type[BaseException]) -> float:
    started = time.monotonic()
    with pytest.raises(error):
        call()
    return time.monotonic() - started


def test_results_failures_and_states(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    tasks = _tasks(app)
    start_worker(app)
    value = {"a": [1, 2.5, "x", b"\x00"], "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}
    timer = tasks.echo.delay(value)
    assert timer.state == "scheduled"
    assert timer.result(timeout=10) == value
    assert timer.refresh() == "succeeded" and timer.outcome.attempts == 1
    assert timer.outcome.finished_at >= timer.outcome.started_at

    # A job that fails twice, then succeeds: the last attempt's result, its attempts, and
    # the last error it met.
    flaky = tasks.flaky.delay("k")
    assert flaky.result(timeout=10) == "done after 3"
    outcome = app.outcome(flaky.id)
    assert outcome is not None and outcome.attempts == 3 and outcome.error == "attempt 2"

    # Failed for good: JobFailed with the remote type, message and traceback, once the
    # retries are exhausted; asked again, at once.
    bad = tasks.bad.delay()
    with pytest.raises(JobFailed, match="missing thing") as failed:
        bad.result(timeout=10)
    assert failed.value.type_name == "KeyError" and failed.value.attempts == 2
    assert "raise KeyError" in failed.value.traceback
    assert _quick(lambda: bad.result(timeout=10), JobFailed) < 0.1

    # Cancelled, unknown: at once, never after waiting out the timeout.
    later = tasks.echo.schedule(1, delay=60)
    assert later.cancel()
    assert _quick(lambda: later.result(timeout=10), TimerCancelled) < 0.1
    assert app.outcome(later.id).state == "cancelled"  # type: ignore[union-attr]
    assert _quick(lambda: app.result("never-scheduled", timeout=10), ResultUnavailable) < 0.1

    # Not ended within the timeout.
    pending = tasks.echo.schedule(1, delay=60)
    assert _quick(lambda: pending.result(timeout=0.3), TimeoutError) >= 0.3
    assert pending.pause() and pending.refresh() == "paused"

    # result_ttl=0: nothing is kept, so nothing can be waited for.
    forgotten = tasks.forget.delay()
    wait_until(lambda: app.outcome(forgotten.id) is None, timeout=10)
    assert _quick(lambda: forgotten.result(timeout=10), ResultUnavailable) < 0.1
    with pytest.raises(ConfigurationError, match="timeout"):
        app.result("x", timeout=-1)


def test_a_running_job_says_so_and_its_waiters_wake_when_it_ends(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    tasks = _tasks(app)
    start_worker(app)
    timer = tasks.blocked.delay()
    wait_until(lambda: timer.refresh() == "running", timeout=10)
    assert timer.outcome.worker and timer.outcome.started_at is not None
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(timer.result(timeout=20)))
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    tasks.gate.set()
    waiter.join(20)
    assert got == ["unblocked"] and time.monotonic() - started < 2


def test_a_result_that_landed_before_the_wait_is_read(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    tasks = _tasks(app)
    start_worker(app)
    timer = tasks.echo.delay("early")
    wait_until(lambda: timer.refresh() == "succeeded", timeout=10)
    assert timer.result(timeout=1) == "early"

    async def main() -> Any:
        async with app:
            return await timer.aresult(timeout=1)

    assert asyncio.run(main()) == "early"


def test_retention_ends(server: EmbeddedServer, start_worker: Callable[..., WorkerThread]) -> None:
    app = Delayq(server.url, namespace="r" + uuid.uuid4().hex[:8], result_ttl=0.5)
    tasks = _tasks(app)
    start_worker(app)
    timer = tasks.echo.delay(7)
    assert timer.result(timeout=10) == 7
    wait_until(lambda: app.outcome(timer.id) is None, timeout=5)
    with pytest.raises(ResultUnavailable):
        timer.result(timeout=1)
    with pytest.raises(ConfigurationError, match="result_ttl"):
        Delayq(server.url, result_ttl=-1)
    app.close()


def test_many_async_waiters_each_get_their_own_result(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    tasks = _tasks(app)
    start_worker(app)

    async def main() -> None:
        async with app:
            timers = await asyncio.gather(*(tasks.echo.adelay(i) for i in range(2000)))
            results = await asyncio.gather(*(t.aresult(timeout=60) for t in timers))
            assert results == list(range(2000))
            waiters = await app._waiters()
            assert all(not w.waiting for w in waiters.shards.values())  # nothing kept

    asyncio.run(main())


def test_a_waiter_whose_connection_is_killed_still_gets_the_result(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    tasks = _tasks(app)
    start_worker(app)

    async def main() -> Any:
        async with app:
            timer = await tasks.blocked.adelay()
            waiting = asyncio.ensure_future(timer.aresult(timeout=30))
            await asyncio.sleep(0.3)
            killed = rclient.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed >= 1
            await asyncio.sleep(0.2)
            tasks.gate.set()
            return await waiting

    assert asyncio.run(main()) == "unblocked"
    tasks.gate.clear()
    timer = tasks.blocked.delay()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(timer.result(timeout=30)))
    waiter.start()
    time.sleep(0.3)
    rclient.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    time.sleep(0.2)
    tasks.gate.set()
    waiter.join(30)
    assert got == ["unblocked"]


def test_results_on_a_cluster_from_every_shard(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    cluster.wait_ready(timeout=60.0)
    app = Delayq(cluster.url, namespace="r" + uuid.uuid4().hex[:8])
    tasks = _tasks(app)
    start_worker(app)
    layout = app._run(app.store.layout())
    ids: dict[int, str] = {}
    for i in range(2000):
        ids.setdefault(layout.shard_of(f"c{i}"), f"c{i}")
    assert len(ids) == layout.count
    timers = [tasks.echo.schedule(timer_id, delay=0.1, id=timer_id) for timer_id in ids.values()]
    assert [t.result(timeout=20) for t in timers] == list(ids.values())

    async def main() -> list[Any]:
        async with app:
            again = [await tasks.echo.aschedule(f"a-{t}", delay=0.1, id=f"a-{t}")
                     for t in ids.values()]  # fmt: skip
            return list(await asyncio.gather(*(t.aresult(timeout=20) for t in again)))

    assert asyncio.run(main()) == [f"a-{t}" for t in ids.values()]
    app.close()


def test_async_waiting_recovers_from_a_failed_connection_and_tells_a_refusal(
    fresh_server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    """A first aresult() while the server is down fails; once it is back, the next works (the
    failed connection is not kept). A subscription the server refuses (an ACL user without
    the outcomes channel) raises its error at once instead of waiting out the timeout."""
    app = Delayq(fresh_server.url, namespace="r" + uuid.uuid4().hex[:8])
    tasks = _tasks(app)
    timer = tasks.echo.delay("back")
    fresh_server.stop()

    async def wait() -> Any:
        return await timer.aresult(timeout=20)

    async def main() -> Any:
        try:  # not `async with app`: it would connect first
            with pytest.raises(redis.ConnectionError):
                await wait()
            fresh_server.start()
            start_worker(app)
            return await wait()
        finally:
            await app.aclose()

    assert asyncio.run(main()) == "back"
    admin = redis.Redis.from_url(fresh_server.url)
    admin.acl_setuser("deaf", enabled=True, passwords=["+pw"], keys=["*"], channels=["wake*"],
                      commands=["+@all"])  # fmt: skip
    deaf = Delayq(fresh_server.url.replace("redis://", "redis://deaf:pw@"), namespace=app.namespace)
    done = tasks.echo.delay("done")
    assert done.result(timeout=20) == "done"

    async def refused() -> float:
        async with deaf:
            began = time.monotonic()
            with pytest.raises(redis.exceptions.NoPermissionError):
                await deaf.aresult(done.id, timeout=10)
            return time.monotonic() - began

    assert asyncio.run(refused()) < 5
    admin.close()
    app.close()
