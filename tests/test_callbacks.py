"""Callbacks (``schedule(on_success=, on_failure=)``) against a real server, with workers."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from delayq import ConfigurationError, Delayq, JobFailed
from delayq._server import EmbeddedServer
from tests.conftest import WorkerProcess, WorkerThread, wait_until


def _app(server: EmbeddedServer, **options: Any) -> tuple[Delayq, Any]:
    app = Delayq(server.url, namespace="cb" + uuid.uuid4().hex[:8], **options)
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    @app.task(name="cb.notify")
    def notify(outcome: dict[str, Any]) -> str:
        with lock:
            seen.append(outcome)
        return "noted"

    @app.task(name="cb.work", retries=1, retry_backoff=0.05)
    def work(fail_times: int, key: str) -> str:
        tries = sum(1 for s in work_runs if s == key) + 1
        work_runs.append(key)
        if tries <= fail_times:
            raise RuntimeError(f"try {tries} fails")
        return f"{key} done"

    work_runs: list[str] = []
    return app, (notify, work, seen)


def test_each_outcome_runs_its_callback_once(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app, (notify, work, seen) = _app(server, events=True)
    start_worker(app)
    ok = work.schedule(0, "ok", on_success=notify, on_failure=notify)
    retried = work.schedule(1, "retried", on_success="cb.notify")
    failed = work.schedule(5, "failed", on_success=notify, on_failure=notify)
    silent = work.schedule(0, "silent")
    assert ok.result(timeout=20) == "ok done" and retried.result(timeout=20) == "retried done"
    with pytest.raises(JobFailed):
        failed.result(timeout=20)
    silent.result(timeout=20)
    wait_until(lambda: len(seen) == 3, timeout=20)
    by_id = {s["timer_id"]: s for s in seen}
    assert by_id[ok.id] == {"timer_id": ok.id, "task": "cb.work", "state": "succeeded",
                            "attempts": 1, "result": "ok done"}  # fmt: skip
    assert by_id[retried.id]["attempts"] == 2 and by_id[retried.id]["result"] == "retried done"
    gone = by_id[failed.id]
    assert gone["state"] == "failed" and gone["attempts"] == 2
    assert gone["error_type"] == "RuntimeError" and "try 2 fails" in gone["error"]
    assert "RuntimeError" in gone["traceback"]

    # The callbacks are jobs like any other: told as events, their own outcomes kept.
    def callbacks() -> list[Any]:  # a handler returns before its acknowledgement is told
        return [e for e in app.events(follow=False) if e.task == "cb.notify"]

    wait_until(lambda: [e.kind for e in callbacks()].count("succeeded") == 3, timeout=20)
    assert all(app.outcome(e.timer_id).state == "succeeded"  # type: ignore[union-attr]
               for e in callbacks())  # fmt: skip
    app.close()


def test_callbacks_are_checked_when_scheduling(server: EmbeddedServer) -> None:
    app, (_, work, _) = _app(server)
    with pytest.raises(ConfigurationError, match="on_success takes a task"):
        work.schedule(0, "x", on_success=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="task name must not be empty"):
        work.schedule(0, "x", on_failure="")
    assert app.pending_count() == 0
    app.close()


def test_a_killed_workers_job_runs_its_callback_once(
    server: EmbeddedServer, rclient: redis.Redis, worker_process: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    from tests import events_app

    namespace = "cb" + uuid.uuid4().hex[:8]
    app = Delayq(server.url, namespace=namespace)
    slow = app.task(name="ev.slow", retries=0)(events_app.slow.fn)
    first = worker_process(server.url, namespace, app="tests.events_app:app")
    timer = slow.schedule(1.5, on_success="ev.noted")
    wait_until(lambda: rclient.llen(f"test:{namespace}:started") == 1, timeout=30)
    second = worker_process(server.url, namespace, app="tests.events_app:app")
    wait_until(lambda: "ready" in second.output(), timeout=30)
    first.signal(signal.SIGKILL)
    assert timer.result(timeout=60) == "slept"
    noted = f"test:{namespace}:noted"
    wait_until(lambda: rclient.llen(noted) == 1, timeout=20)
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert rclient.lrange(noted, 0, -1) == [timer.id.encode()]
    app.close()
