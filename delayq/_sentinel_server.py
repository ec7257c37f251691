"""A local Sentinel deployment from the bundled Valkey binary, for development and tests: one
primary, its replicas, and the sentinels that watch them, all on 127.0.0.1.

Servers are ``EmbeddedServer``s; a sentinel is the same binary started with ``--sentinel`` and
a configuration file of its own, which it rewrites as it learns the deployment. Every wait is a
loop with a deadline that raises ``ConfigurationError`` naming what did not happen and the log
to read. Constructing a LocalSentinel does nothing; ``start()`` does the work.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from redis.exceptions import RedisError, ResponseError

from delayq._calls import command
from delayq._errors import ConfigurationError
from delayq._runners import SyncRunner
from delayq._sentinel import SCHEME, TLS_SCHEME
from delayq._server import EmbeddedServer, TlsFiles, free_port, server_binary

_POLL_S = 0.05
_QUERY_OPTIONS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "decode_responses": True}


def query(process: EmbeddedServer, *args: Any) -> Any:
    """One command's reply from ``process`` (a server or sentinel), as it sent it, as text."""
    io = SyncRunner.from_url(process.url, _QUERY_OPTIONS)
    try:
        return io.run(command(*args, raw=True))
    finally:
        io.close()


def fields(reply: Any) -> dict[str, Any]:
    """A reply of field names and values (a flat list in RESP2, a map in RESP3) as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:  # the system may offer a port it offered a moment ago
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def _tls_config(tls: TlsFiles, port: int) -> list[str]:
    """A sentinel on a TLS port only, speaking TLS to the servers it watches too."""
    args = tls.server_args()
    pairs = [f"{args[i].removeprefix('--')} {args[i + 1]}" for i in range(0, len(args), 2)]
    return ["port 0", f"tls-port {port}", *pairs]


class SentinelProcess(EmbeddedServer):
    """valkey-server in sentinel mode; its configuration file lives in ``data_dir``."""

    def __init__(
        self, port: int, data_dir: Path, config: list[str], *,
        binary: Path | str | None = None, tls: TlsFiles | None = None,
    ) -> None:  # fmt: skip
        super().__init__(port=port, data_dir=data_dir, binary=binary, tls=tls)
        self.config_path = data_dir / "sentinel.conf"
        self.config = config
        self._written = False

    def __repr__(self) -> str:
        return f"sentinel 127.0.0.1:{self.port}"

    def command_line(self) -> list[str]:
        return [str(self.binary or server_binary()), str(self.config_path), "--sentinel"]

    def start(self, timeout: float = 15.0) -> None:
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._written:  # started again, it keeps what it had learned
            self.config_path.write_text("\n".join(self.config) + "\n")
            self._written = True
        super().start(timeout)

    def _ready(self, io: SyncRunner) -> bool:
        return bool(io.run(command("PING")))


class LocalSentinel:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` sentinels (a majority of
    them is the quorum), monitoring the service ``service_name``."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        service_name: str = "mymaster",
        data_dir: Path | str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        binary: Path | str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """``binary`` and ``tls``: as for EmbeddedServer, for the servers and the sentinels
        alike; with ``tls`` every one listens with TLS only, replication and the sentinels'
        links to the servers included, and ``url`` is ``rediss+sentinel://``."""
        if replicas < 0 or sentinels < 1:
            raise ConfigurationError("a Sentinel deployment needs 0 or more replicas and 1 or "
                                     "more sentinels")  # fmt: skip
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.service_name = service_name
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = binary
        self.tls = tls
        self._servers: list[EmbeddedServer] = []
        self._sentinels: list[SentinelProcess] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- what callers read ------------------------------------------------------------------

    @property
    def servers(self) -> list[EmbeddedServer]:
        """The primary and replicas, in the order they were started (the first as primary)."""
        return list(self._servers)

    @property
    def sentinels(self) -> list[SentinelProcess]:
        return list(self._sentinels)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self._started())
        if self.tls is not None:
            return f"{TLS_SCHEME}://{hosts}/{self.service_name}?{self.tls.query()}"
        return f"{SCHEME}://{hosts}/{self.service_name}"

    def primary(self) -> EmbeddedServer:
        """The server the first answering sentinel names as primary."""
        for sentinel in self._live_sentinels():
            with contextlib.suppress(RedisError):
                return self._server_on(self._named_by(sentinel))
        raise ConfigurationError("no sentinel answers")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the servers, then the sentinels; return once every sentinel knows the others
        and sees each replica linked to the primary. Started again after ``stop()``, each
        process comes back on its port, and each sentinel with what it had learned."""
        if any(p.pid is not None for p in (*self._servers, *self._sentinels)):
            raise RuntimeError("the deployment is already running")
        deadline = time.monotonic() + timeout
        try:
            if not self._servers:
                self._servers, self._sentinels = self._make()
            for process in (*self._servers, *self._sentinels):
                process.start(timeout=max(deadline - time.monotonic(), 1.0))
            self._wait(self._unsettled, deadline, "the Sentinel deployment did not become ready")
        except BaseException:
            self.stop(kill=True)
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the sentinels agree on a running primary that every running replica
        follows, and each sentinel sees the others and those replicas."""
        self._wait(self._unsettled, time.monotonic() + timeout, "the deployment is not ready")

    def stop(self, *, kill: bool = False) -> None:
        for process in (*reversed(self._sentinels), *reversed(self._servers)):
            process.stop(kill=kill)

    def cleanup(self) -> None:
        self.stop()
        for process in (*self._sentinels, *self._servers):
            process.cleanup()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp, self.data_dir = None, None
        self._servers, self._sentinels = [], []

    def __enter__(self) -> LocalSentinel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- failovers --------------------------------------------------------------------------

    def failover(self, *, coordinated: bool = True, timeout: float = 30.0) -> EmbeddedServer:
        """Ask a sentinel for a failover (``SENTINEL FAILOVER``; ``coordinated``: the primary
        first lets its replica catch up, then hands over) and return the promoted server once
        every sentinel names it. Without ``coordinated``, the old primary takes writes until the
        sentinels turn it into a replica, seconds later (see ``wait_ready``)."""
        deadline = time.monotonic() + timeout
        self._wait(self._unsettled, deadline, "the deployment is not ready for a failover")
        old = self.primary()
        words = ("SENTINEL", "FAILOVER", self.service_name, *(("COORDINATED",) * coordinated))

        def refused() -> str | None:
            try:
                query(self._sentinels[0], *words)
            except ResponseError as exc:
                # A sentinel that has not yet checked a replica finds no good one to promote.
                if not str(exc).startswith("NOGOODSLAVE"):
                    raise
                return f"{self._sentinels[0]} answers {exc}"
            return None

        self._wait(refused, deadline, "no sentinel would start the failover")
        return self.wait_promoted(old, timeout=max(deadline - time.monotonic(), 1.0))

    def kill_primary(self) -> EmbeddedServer:
        """SIGKILL the primary (a crash); the sentinels promote a replica once they agree it is
        down (``down_after_ms``, then an election). Returns the killed server."""
        victim = self.primary()
        victim.stop(kill=True)
        return victim

    def wait_promoted(self, old: EmbeddedServer, timeout: float = 30.0) -> EmbeddedServer:
        """Wait until every running sentinel names another primary than ``old``, and it says
        it is one; return it."""

        def pending() -> str | None:
            try:
                named = {self._named_by(s) for s in self._live_sentinels()}
                if len(named) != 1 or named == {old.port}:
                    return f"the sentinels name the primaries on ports {sorted(named)}"
                port = named.pop()
                if query(self._server_on(port), "ROLE")[0] != "master":
                    return f"the server on port {port} is not primary yet"
            except RedisError as exc:
                return f"a server or sentinel does not answer ({exc})"
            return None

        self._wait(pending, time.monotonic() + timeout, f"no server replaced port {old.port}")
        return self.primary()

    # -- forming and waiting ----------------------------------------------------------------

    def _make(self) -> tuple[list[EmbeddedServer], list[SentinelProcess]]:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="delayq-sentinel-")
            self.data_dir = Path(self._tmp.name)
        ports = _free_ports(1 + self.replica_count + self.sentinel_count)
        # A replica's first sync would otherwise wait 5 s for more replicas to join it.
        common = ("--repl-diskless-sync-delay", "0")
        servers = [
            EmbeddedServer(port=port, data_dir=self.data_dir / f"server-{i}",
                           extra_args=(*common, *(("--replicaof", "127.0.0.1", str(ports[0]))
                                                  if i else ())),
                           binary=self.binary, tls=self.tls)
            for i, port in enumerate(ports[: 1 + self.replica_count])
        ]  # fmt: skip
        name, quorum = self.service_name, self.sentinel_count // 2 + 1
        sentinels = []
        for i, port in enumerate(ports[1 + self.replica_count :]):
            where = self.data_dir / f"sentinel-{i}"
            config = [
                *(_tls_config(self.tls, port) if self.tls else [f"port {port}"]),
                "bind 127.0.0.1", f"dir {where}",
                f"sentinel monitor {name} 127.0.0.1 {ports[0]} {quorum}",
                f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]  # fmt: skip
            sentinels.append(SentinelProcess(port, where, config, binary=self.binary,
                                             tls=self.tls))  # fmt: skip
        return servers, sentinels

    def _started(self) -> list[SentinelProcess]:
        if not self._sentinels:
            raise RuntimeError("the deployment has not been started")
        return self._sentinels

    def _live_sentinels(self) -> list[SentinelProcess]:
        return [s for s in self._started() if s.pid is not None]

    def _named_by(self, sentinel: SentinelProcess) -> int:
        """The port of the primary ``sentinel`` names to clients (``SENTINEL MASTER``, as
        redis-py reads it; GET-MASTER-ADDR-BY-NAME names the promoted replica earlier, while
        the failover still reconfigures the other replicas)."""
        return int(self._master_state(sentinel)["port"])

    def _master_state(self, sentinel: SentinelProcess) -> dict[str, Any]:
        return fields(query(sentinel, "SENTINEL", "MASTER", self.service_name))

    def _server_on(self, port: int) -> EmbeddedServer:
        return next(s for s in self._servers if s.port == port)

    @staticmethod
    def _wait(pending: Callable[[], str | None], deadline: float, what: str) -> None:
        """Poll ``pending`` (None when done, else why not) until done or past the deadline."""
        while (reason := pending()) is not None:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{what}: {reason}")
            time.sleep(_POLL_S)

    def _unsettled(self) -> str | None:
        """Why the deployment is not ready yet, or None when it is."""
        try:
            return self._roles_problem() or next(
                filter(None, map(self._sentinel_problem, self._live_sentinels())), None
            )
        except RedisError as exc:
            return f"a server or sentinel does not answer ({exc}); see the logs in {self.data_dir}"

    def _roles_problem(self) -> str | None:
        named = {self._named_by(s) for s in self._live_sentinels()}
        if len(named) != 1:
            return f"the sentinels name different primaries (ports {sorted(named)})"
        primary = self._server_on(named.pop())
        if primary.pid is None:
            return f"the sentinels still name the stopped primary on port {primary.port}"
        if query(primary, "ROLE")[0] != "master":
            return f"the server on port {primary.port} is named primary but is not one yet"
        for replica in self._live_replicas(primary):
            role = query(replica, "ROLE")
            if role[0] != "slave" or int(role[2]) != primary.port or role[3] != "connected":
                return f"the replica on port {replica.port} is not linked to {primary.port}"
        return None

    def _sentinel_problem(self, sentinel: SentinelProcess) -> str | None:
        master = self._master_state(sentinel)
        if master["flags"] != "master":
            return f"{sentinel} flags the primary {master['flags']}"
        others = len(self._live_sentinels()) - 1
        if int(master["num-other-sentinels"]) != others:
            return f"{sentinel} knows {master['num-other-sentinels']} other sentinels, not {others}"
        listed = {int(r["port"]): r for r in map(fields, query(
            sentinel, "SENTINEL", "REPLICAS", self.service_name))}  # fmt: skip
        for replica in self._live_replicas(self._server_on(int(master["port"]))):
            entry = listed.get(replica.port or 0)
            if entry is None or entry["flags"] != "slave" or entry["master-link-status"] != "ok":
                return f"{sentinel} does not see the replica on port {replica.port} as linked"
        return None

    def _live_replicas(self, primary: EmbeddedServer) -> list[EmbeddedServer]:
        return [s for s in self._servers if s is not primary and s.pid is not None]
