"""Fixtures: the bundled Valkey server, an app per test (its own namespace), workers."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from delayq import Delayq, EmbeddedServer, Worker, WorkerSettings
from delayq._keys import Keys

pytest_plugins = ["tests.cluster_fixtures"]

ROOT = Path(__file__).resolve().parent.parent


def payload_ids(client: redis.Redis, keys: Keys) -> list[str]:
    """The ids of the payloads stored in one shard (fields of its buckets, or its data keys)."""
    names = [n.decode() for n in client.scan_iter(keys.data_pattern(), 1000)]
    if not keys.buckets:
        return [n[len(keys.data_prefix) :] for n in names]
    return [f.decode() for n in names for f in client.hkeys(n)]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def expiring_outcomes(client: Any, names: set[str], result_ttl: float) -> set[str]:
    """The outcome records among ``names`` that expire within ``result_ttl``: kept by design
    for that long after their job ended, and not left behind."""
    records = {n for n in names if ":o:" in n}
    return {n for n in records if 0 < int(client.pttl(n)) <= result_ttl * 1000}


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer(data_dir=tmp_path_factory.mktemp("valkey"))
    embedded.start()
    yield embedded
    embedded.cleanup()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of the test's own, for tests that restart or break it."""
    embedded = EmbeddedServer(data_dir=tmp_path / "valkey")
    embedded.start()
    yield embedded
    embedded.cleanup()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def app(server: EmbeddedServer, namespace: str) -> Iterator[Delayq]:
    application = Delayq(server.url, namespace=namespace)
    yield application
    application.close()


@pytest.fixture
def rclient(server: EmbeddedServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


FAST = WorkerSettings(visibility_timeout=3.0, sweep_interval=1.0, shutdown_timeout=5.0)


class WorkerThread:
    """A Worker running in a thread of the test process."""

    def __init__(self, app: Delayq, settings: WorkerSettings) -> None:
        self.worker = Worker(app, settings)
        self.thread = threading.Thread(
            target=self.worker.run, kwargs={"install_signal_handlers": False}, daemon=True
        )

    def start(self) -> WorkerThread:
        self.thread.start()
        assert self.worker.ready.wait(15), "worker did not start"
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker did not stop; its tasks:\n{self.tasks()}"

    def tasks(self) -> str:
        """Where each of the worker's asyncio tasks waits (for a worker that hangs)."""
        loop, out = self.worker._loop, io.StringIO()
        if loop is None or loop.is_closed():
            return "(no loop)"

        def dump() -> None:
            for task in asyncio.all_tasks(loop):
                out.write(f"--- {task.get_name()}\n")
                task.print_stack(file=out)

        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (dump(), done.set()))
        done.wait(5)
        return out.getvalue()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(app: Delayq, settings: WorkerSettings = FAST) -> WorkerThread:
        runner = WorkerThread(app, settings).start()
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.thread.is_alive():
            runner.stop()


class WorkerProcess:
    """``delayq worker`` as a child process, for tests that kill or signal it."""

    def __init__(
        self,
        url: str,
        namespace: str,
        *extra: str,
        app: str = "tests.worker_app:app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = dict(env or {})  # added to the parent's environment
        self.args = [
            sys.executable, "-c", "from delayq.cli import main; main()",
            "worker", "-A", app, "--url", url, "--namespace", namespace,
            "--visibility-timeout", "2", "--shutdown-timeout", "10", *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        # A file, not a pipe: a chatty worker must never block on a full pipe.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self.log.close()


@pytest.fixture
def worker_process() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        url: str, namespace: str, *extra: str, app: str = "tests.worker_app:app"
    ) -> WorkerProcess:
        proc = WorkerProcess(url, namespace, *extra, app=app).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="delayq")
