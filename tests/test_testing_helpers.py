"""delayq.testing: the worker child process the examples and benchmarks use."""

from __future__ import annotations

from pathlib import Path

import redis

from delayq import Delayq, EmbeddedServer
from delayq.testing import WorkerProcess, format_table, percentile
from tests.conftest import ROOT, wait_until


def test_worker_process_runs_a_job_and_stops_with_status_0(
    server: EmbeddedServer, namespace: str, rclient: redis.Redis, tmp_path: Path
) -> None:
    from tests.worker_app import record

    app = Delayq(server.url, namespace=namespace)
    record._app_ref = lambda: app
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess("tests.worker_app:app", server.url, namespace,
                           "--shutdown-timeout", "5", cwd=ROOT, log_path=log_path)  # fmt: skip
    assert worker.pid is None and not log_path.exists()  # the constructor does no I/O
    try:
        with worker:
            record.schedule("helpers", delay=0.2)
            wait_until(lambda: rclient.llen(f"test:{namespace}:ran") == 1, timeout=20)
            worker.check_alive()
            status = worker.stop(30)
        assert status == 0, worker.tail()
        assert worker.stop() == 0  # again: the same status
        assert "ready" in worker.tail()
    finally:
        worker.stop(5)
        app.close()


def test_percentile_and_table() -> None:
    ordered = [float(i) for i in range(1, 301)]
    assert percentile(ordered, 0.5) == 150.0
    assert percentile(ordered, 0.99) == 297.0
    assert percentile([4.0], 0.99) == 4.0
    lines = format_table([("a", "bb", ""), ("ccc", "d", "ok")], "<><", rule=True)
    assert lines == ["a    bb", "-" * 11, "ccc   d  ok"]
