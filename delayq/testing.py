"""Helpers for scripts and tests that drive a real ``delayq worker`` process.

Used by the examples and the benchmarks: a worker child process (:class:`WorkerProcess`), the
bundled server in a scratch directory (:func:`scratch_server`), lazily made clients for task
modules (:class:`LazyRedis`, :class:`BatchPusher`), and a few reporting helpers. Nothing here is
needed to use delayq itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster

from delayq import Delayq, EmbeddedServer
from delayq._calls import command
from delayq._runners import SyncRunner
from delayq._sentinel import is_sentinel_url, parse_target
from delayq._sentinel_runners import async_sentinel_client, sentinel_client
from delayq._topology import cluster_enabled

__all__ = [
    "BatchPusher",
    "LazyRedis",
    "WorkerProcess",
    "describe_host",
    "exit_on_sigterm",
    "format_table",
    "percentile",
    "scratch_server",
    "verdict",
]

_log = logging.getLogger("delayq.testing")


class WorkerProcess:
    """``delayq worker -A spec --url url --namespace namespace *extra`` as a child process.

    It runs in ``cwd`` (also put on its PYTHONPATH, so that ``spec`` imports from there) and
    logs to ``log_path``. Constructing it does nothing; :meth:`start` (or ``with``) starts it,
    :meth:`stop` (or leaving the ``with`` block) stops it with SIGTERM, then SIGKILL.
    """

    def __init__(
        self,
        spec: str,
        url: str,
        namespace: str,
        *extra: str,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "delayq", "worker", "-A", spec, "--url", url,
                     "--namespace", namespace, *extra]  # fmt: skip
        self.cwd = cwd
        self.log_path = log_path
        self.env = dict(env or {})  # added to (or replacing) the parent's environment
        self._proc: subprocess.Popen[bytes] | None = None
        self._signalled = False

    def start(self) -> WorkerProcess:
        if self._proc is not None:
            raise RuntimeError("the worker process was already started")
        path = [str(self.cwd), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(path)}
        # A file, not a pipe: nobody reads the log while the worker runs, and a full pipe
        # would block it.
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.args, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def __enter__(self) -> WorkerProcess:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise RuntimeError, with the end of the log, if the worker is not running."""
        if not self.running():
            raise RuntimeError(f"the worker process exited; its log ends with:\n{self.tail()}")

    def wait_ready(
        self, ping: Callable[[], object], client: redis.Redis, key: str, timeout: float = 60.0
    ) -> None:
        """Call ``ping`` (which schedules a job that pushes to the list ``key``) and wait for
        the push: then the worker is connected, subscribed and running jobs end to end."""
        ping()
        deadline = time.monotonic() + timeout
        io = SyncRunner(client)
        while io.run(command("BLPOP", key, 0.5)) is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready within {timeout:g} s:\n{self.tail()}")

    def terminate(self) -> None:
        """Send SIGTERM (once), as a process manager would; the worker then drains and exits."""
        if self._proc is not None and self.running() and not self._signalled:
            self._signalled = True
            self._proc.terminate()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout`` s. Returns the exit
        status (-9 when killed), None if it was never started; again, the same status."""
        if self._proc is None:
            return None
        self.terminate()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def tail(self, chars: int = 3000) -> str:
        """The end of the worker's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@contextmanager
def scratch_server(
    prefix: str, *, appendonly: bool = False
) -> Iterator[tuple[EmbeddedServer, Path]]:
    """The bundled server and a temporary directory for logs, both gone on exit.

    SIGTERM is turned into ``SystemExit(128 + 15)`` first, so that it too unwinds through the
    ``with`` blocks and stops the workers and the server. With ``appendonly`` the server keeps
    its data (AOF on, as in production) in ``<directory>/valkey``.
    """
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        if appendonly:
            embedded = EmbeddedServer(data_dir=workdir / "valkey")
        else:
            embedded = EmbeddedServer(appendonly=False)
        with embedded as server:
            yield server, workdir


def exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """A signal handler: exit (unwinding through ``finally`` blocks) with 128 + the signal."""
    sys.exit(128 + signum)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank: the value below which ``p`` (0 to 1) of the sorted sample lies; of 300
    values, p99 is the 297th smallest."""
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered)) - 1))]


def verdict(ok: bool | None) -> str:
    """A table's check column: nothing to check, ``ok`` or ``MISS``."""
    return "" if ok is None else ("ok" if ok else "MISS")


def format_table(rows: Sequence[Sequence[str]], align: str, *, rule: bool = False) -> list[str]:
    """The lines of a table whose first row is the header; ``align`` holds one ``<`` or ``>``
    a column. Columns are two spaces apart, lines have no trailing blanks; ``rule`` puts a
    line of dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]

    def line(row: Sequence[str]) -> str:
        cells = (f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True))
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    if rule:
        lines.insert(1, "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return lines


def describe_host(client: redis.Redis) -> str:
    """``valkey 9.1.2 (bundled, appendonly off), python 3.11.7, 2 CPU(s), x86_64``"""
    server: dict[str, Any] = SyncRunner(client).run(command("INFO", "server"))
    version = server.get("valkey_version") or server.get("redis_version")
    return (
        f"valkey {version} (bundled, appendonly off), python {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s), {platform.machine()}"
    )


def _client(app: Delayq) -> redis.Redis:
    if is_sentinel_url(app.url):
        return sentinel_client(parse_target(app.url, app.redis_options))
    return redis.Redis.from_url(app.url)


def _async_client(app: Delayq) -> aredis.Redis:
    if is_sentinel_url(app.url):
        return async_sentinel_client(parse_target(app.url, app.redis_options))
    return aredis.Redis.from_url(app.url)


class LazyRedis:
    """A client for ``app.url``, made on the first call: in a worker, once the CLI has applied
    ``--url``. A ``RedisCluster`` if the server runs in cluster mode, so that each key's
    commands reach the node serving it. Thread-safe, for task functions run in the worker's
    thread pool."""

    def __init__(self, app: Delayq) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._client: redis.Redis | RedisCluster | None = None

    def __call__(self) -> redis.Redis | RedisCluster:
        with self._lock:
            if self._client is None:
                client = _client(self.app)
                if not is_sentinel_url(self.app.url) and SyncRunner(client).run(cluster_enabled()):
                    client.close()
                    self._client = RedisCluster.from_url(self.app.url)
                else:
                    self._client = client
            return self._client


class BatchPusher:
    """Pushes values to the list ``key(app.namespace)`` in batches, one RPUSH per ``interval``
    s over one async client: a round trip per value would disturb a worker being measured.

    Call :meth:`add` from async tasks; the client (:meth:`redis`) and the background pusher
    are made on first use, inside the worker's event loop, which then owns them.
    """

    def __init__(self, app: Delayq, key: Callable[[str], str], interval: float = 0.05) -> None:
        self.app = app
        self.key = key
        self.interval = interval
        self._client: aredis.Redis | None = None
        self._pending: list[str] = []
        self._pusher: asyncio.Task[None] | None = None

    def redis(self) -> aredis.Redis:
        if self._client is None:
            self._client = _async_client(self.app)
        return self._client

    async def rpush(self, key: str, *values: str) -> None:
        """RPUSH through the app's own connection: routed by slot on a cluster too."""
        await self.app._arun(command("RPUSH", key, *values))

    def add(self, value: str) -> None:
        self._pending.append(value)
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            try:
                await self.rpush(self.key(self.app.namespace), *batch)
            except Exception:
                _log.exception("cannot push %d value(s); retrying", len(batch))
                self._pending[:0] = batch
