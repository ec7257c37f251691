"""A local Redis Cluster made of bundled Valkey servers, for development and tests.

Each node is an ``EmbeddedServer`` with cluster mode on. The cluster is formed with plain
commands (MEET, ADDSLOTSRANGE, REPLICATE), with no external tool. Every wait is a loop with a
deadline that raises ``ConfigurationError`` naming what did not happen and the node's log.
Constructing a LocalCluster does nothing; ``start()`` does the work.

Node ``i`` keeps its data, log and cluster config file in ``<data_dir>/node-<i>``. When every
node already has a config file from an earlier run of the same shape, ``start()`` resumes that
cluster on the same ports instead of forming a new one.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from redis.exceptions import RedisError

from delayq._calls import command
from delayq._errors import ConfigurationError
from delayq._runners import SyncRunner
from delayq._server import EmbeddedServer, TlsFiles, free_port
from delayq._topology import SLOTS

_POLL_S = 0.05
_SOCKET_TIMEOUT_S = 1.0

# One slot range as every node should report it: first and last slot, the primary's
# (port, node id), and its replicas' (port, node id), sorted.
Range = tuple[int, int, tuple[int, str], tuple[tuple[int, str], ...]]
SlotMap = tuple[Range, ...]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server binds: a port held only by closed connections (TIME_WAIT) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _saved_ports(node_dir: Path) -> tuple[int, int] | None:
    """Client and bus port of the node whose cluster config file is in ``node_dir``."""
    for conf in sorted(node_dir.glob("nodes-*.conf")):
        for line in conf.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and "myself" in fields[2].split(","):
                # The address field reads "ip:port@busport[,hostname,...]".
                address, _, rest = fields[1].partition("@")
                return int(address.rpartition(":")[2]), int(rest.split(",")[0])
    return None


def _slot_map(reply: list[Any]) -> SlotMap:
    """CLUSTER SLOTS without the host names, which a node learns late, and in a stable order."""
    ranges = [
        (int(row[0]), int(row[1]), (int(row[2][1]), str(row[2][2])),
         tuple(sorted((int(r[1]), str(r[2])) for r in row[3:])))
        for row in reply
    ]  # fmt: skip
    return tuple(sorted(ranges))


def _info(text: str) -> dict[str, str]:
    """CLUSTER INFO's "field:value" lines as a dict."""
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}


def _primaries(slots: SlotMap) -> list[tuple[int, str]]:
    """The primaries in the order of their first slot."""
    return list(dict.fromkeys(r[2] for r in slots))


class ClusterNode:
    """One valkey-server of a LocalCluster, on fixed client and bus ports."""

    def __init__(
        self, index: int, port: int, bus_port: int, data_dir: Path, role: str, node_timeout_ms: int,
        *, binary: Path | str | None = None, tls: TlsFiles | None = None,
    ) -> None:  # fmt: skip
        self.index = index
        self.port = port
        self.bus_port = bus_port
        self.data_dir = data_dir
        #: 'primary' or 'replica' as the node was started; failovers change the live role only.
        self.role = role
        self.conf_path = data_dir / f"nodes-{port}.conf"
        self.server = EmbeddedServer(
            port=port,
            data_dir=data_dir,
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.conf_path),
                "--cluster-node-timeout", str(node_timeout_ms),
                # Explicit: the default (port + 10000) is past 65535 for high ports.
                "--cluster-port", str(bus_port),
                # A replica's first sync otherwise waits 5 s for more replicas to join it.
                "--repl-diskless-sync-delay", "0",
                # DEBUG from loopback clients only (the nodes listen on nothing else): tests
                # turn active expiry off with it, leaving keys to expire when read.
                "--enable-debug-command", "local",
                *(("--tls-cluster", "yes") if tls else ()),
            ),
            binary=binary,
            tls=tls,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"node {self.index} (127.0.0.1:{self.port}, started as {self.role})"

    @property
    def url(self) -> str:
        """``rediss://`` with the client certificates in its query string for a TLS cluster."""
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout: float = 15.0) -> None:
        """Start the node again on its ports, data and config file: it rejoins the cluster."""
        self.server.start(timeout=timeout)

    def stop(self, *, kill: bool = False) -> None:
        self.server.stop(kill=kill)

    def query(self, *args: Any) -> Any:
        """One command's reply as the server sent it (no redis-py parsing), as text."""
        options = {"socket_timeout": _SOCKET_TIMEOUT_S, "decode_responses": True,
                   "socket_connect_timeout": _SOCKET_TIMEOUT_S}  # fmt: skip
        io = SyncRunner.from_url(self.url, options)
        try:
            return io.run(command(*args, raw=True))
        finally:
            io.close()

    def node_id(self) -> str:
        return str(self.query("CLUSTER", "MYID"))

    def live_role(self) -> str:
        """'primary' or 'replica' as the node reports it now."""
        return "primary" if self.query("ROLE")[0] == "master" else "replica"


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, on 127.0.0.1."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        data_dir: Path | str | None = None,
        base_port: int | None = None,
        node_timeout_ms: int = 2000,
        binary: Path | str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """``binary`` and ``tls``: as for EmbeddedServer; with ``tls`` the nodes listen with TLS
        only, and their cluster bus and replication links use it too."""
        if primaries < 1 or replicas < 0:
            raise ConfigurationError("a cluster needs at least 1 primary and 0 or more replicas")
        self.primaries = primaries
        self.replicas = replicas
        self.size = primaries * (1 + replicas)
        if base_port is not None and not 0 < base_port <= 65536 - self.size:
            raise ConfigurationError(f"ports {base_port}..{base_port + self.size - 1} are invalid")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.base_port = base_port
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary
        self.tls = tls
        self._nodes: list[ClusterNode] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- what callers read ------------------------------------------------------------------

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, primaries first, in the order they were started; empty before start."""
        return list(self._nodes)

    @property
    def url(self) -> str:
        """The first node's URL; a cluster client finds the others from any node."""
        return self._started()[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self._started()]

    def primary_urls(self) -> list[str]:
        """URLs of the current primaries (failovers included), in the order of their slots."""
        by_port = {node.port: node for node in self._started()}
        return [by_port[port].url for port, _ in _primaries(self._any_slot_map())]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and form the cluster (or resume it); return when it is ready."""
        if any(node.pid is not None for node in self._nodes):
            raise RuntimeError("the cluster is already running")
        deadline = time.monotonic() + timeout
        try:
            if not self._nodes:
                self._nodes = self._make_nodes()
            for node in self._nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1.0))
            if self._formed_before():
                self._wait(self._unsettled, deadline, "the resumed cluster is not ready")
                for node in self._nodes:
                    node.role = node.live_role()
            else:
                self._form(deadline)
        except BaseException:
            self.stop(kill=True)
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every node is up, agrees on the slot map, and each replica is linked."""
        self._wait(self._unsettled, time.monotonic() + timeout, "the cluster is not ready")

    def stop(self, *, kill: bool = False) -> None:
        for node in reversed(self._nodes):
            node.stop(kill=kill)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            # The nodes lived in the removed directory: a later start begins afresh.
            self._tmp, self.data_dir, self._nodes = None, None, []

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def failover(self, primary_index: int, timeout: float = 30.0) -> ClusterNode:
        """Promote a replica of the primary serving the ``primary_index``-th slot range.

        Runs CLUSTER FAILOVER on the replica and waits until it reports itself primary and
        every node agrees on the new slot map. Returns the promoted node.
        """
        deadline = time.monotonic() + timeout
        slots = self._any_slot_map()
        primaries = _primaries(slots)
        if not 0 <= primary_index < len(primaries):
            raise IndexError(f"primary index {primary_index} of {len(primaries)} primaries")
        owner = primaries[primary_index]
        followers = next(r[3] for r in slots if r[2] == owner)
        if not followers:
            raise ConfigurationError(f"the primary on port {owner[0]} has no replica")
        replica = next(node for node in self._nodes if node.port == followers[0][0])
        replica.query("CLUSTER", "FAILOVER")

        def pending() -> str | None:
            try:
                if replica.live_role() != "primary":
                    return f"{replica} is not primary yet; see {replica.log_path}"
            except RedisError as exc:
                return f"{replica} does not answer ({exc}); see {replica.log_path}"
            return self._unsettled()

        self._wait(pending, deadline, f"the failover of primary {primary_index} did not finish")
        return replica

    def migrate(
        self,
        slot: int,
        to_primary: int,
        *,
        batch: int = 100,
        between: Callable[[], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Move ``slot`` to the ``to_primary``-th primary (in the order of first slots) as a
        resharding tool does: IMPORTING/MIGRATING, MIGRATE of ``batch`` keys at a time (calling
        ``between`` after each batch, while the slot is half moved), then SETSLOT NODE on every
        primary. Returns once every node agrees on the new slot map."""
        deadline = time.monotonic() + timeout
        slots = self._any_slot_map()
        primaries = _primaries(slots)
        owner = next(r[2] for r in slots if r[0] <= slot <= r[1])
        source, target = self._node_on(owner[0]), self._node_on(primaries[to_primary][0])
        if source is target:
            return
        target.query("CLUSTER", "SETSLOT", slot, "IMPORTING", owner[1])
        source.query("CLUSTER", "SETSLOT", slot, "MIGRATING", primaries[to_primary][1])
        while keys := source.query("CLUSTER", "GETKEYSINSLOT", slot, batch):
            source.query("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            if between is not None:
                between()
        for port, _ in primaries:
            self._node_on(port).query("CLUSTER", "SETSLOT", slot, "NODE", primaries[to_primary][1])
        self._wait(self._unsettled, deadline, f"the migration of slot {slot} did not settle")

    def _node_on(self, port: int) -> ClusterNode:
        return next(node for node in self._started() if node.port == port)

    # -- forming ----------------------------------------------------------------------------

    def _started(self) -> list[ClusterNode]:
        if not self._nodes:
            raise RuntimeError("the cluster has not been started")
        return self._nodes

    def _make_nodes(self) -> list[ClusterNode]:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="delayq-cluster-")
            self.data_dir = Path(self._tmp.name)
        dirs = [self.data_dir / f"node-{i}" for i in range(self.size)]
        for node_dir in dirs:
            node_dir.mkdir(parents=True, exist_ok=True)
        ports = self._choose_ports(dirs)
        return [
            ClusterNode(i, port, bus, dirs[i], "primary" if i < self.primaries else "replica",
                        self.node_timeout_ms, binary=self.binary, tls=self.tls)
            for i, (port, bus) in enumerate(ports)
        ]  # fmt: skip

    def _choose_ports(self, dirs: list[Path]) -> list[tuple[int, int]]:
        """(client, bus) ports per node: saved ones for a resumed node, else free ones."""
        saved = [_saved_ports(node_dir) for node_dir in dirs]
        taken = {port for pair in saved if pair for port in pair}
        if self.base_port is not None:
            wanted = list(range(self.base_port, self.base_port + self.size))
            for i, pair in enumerate(saved):
                if pair and pair[0] != wanted[i]:
                    raise ConfigurationError(
                        f"{dirs[i]} holds a node of port {pair[0]}, not {wanted[i]}: "
                        "start on the same ports or remove that directory"
                    )
            taken.update(wanted)
        chosen: list[tuple[int, int]] = []
        for i, pair in enumerate(saved):
            port = pair[0] if pair else self._port_for(i, taken)
            bus = pair[1] if pair else self._fresh_port(taken)
            chosen.append((port, bus))
        for port in (p for pair in chosen for p in pair):
            if not _port_is_free(port):
                raise ConfigurationError(f"port {port} on 127.0.0.1 is in use")
        return chosen

    def _port_for(self, index: int, taken: set[int]) -> int:
        return self.base_port + index if self.base_port is not None else self._fresh_port(taken)

    @staticmethod
    def _fresh_port(taken: set[int]) -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    def _formed_before(self) -> bool:
        """True when the nodes loaded a whole cluster from their config files; False when they
        are blank. A mix of both cannot be resumed nor formed."""
        infos = [_info(node.query("CLUSTER", "INFO")) for node in self._nodes]
        known = {int(info["cluster_known_nodes"]) for info in infos}
        assigned = {int(info["cluster_slots_assigned"]) for info in infos}
        if known == {1} and assigned == {0}:
            return False
        if known == {self.size} and assigned == {SLOTS}:
            return True
        raise ConfigurationError(
            f"{self.data_dir} holds cluster state of another shape or from an unfinished start "
            f"(known nodes {sorted(known)}, slots assigned {sorted(assigned)}); remove it"
        )

    def _form(self, deadline: float) -> None:
        first, others = self._nodes[0], self._nodes[1:]
        for node in others:
            first.query("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        for i, node in enumerate(self._nodes[: self.primaries]):
            low, high = i * SLOTS // self.primaries, (i + 1) * SLOTS // self.primaries - 1
            node.query("CLUSTER", "ADDSLOTSRANGE", low, high)
        ids = [node.node_id() for node in self._nodes]
        for node in self._nodes[self.primaries :]:
            primary = self._nodes[(node.index - self.primaries) % self.primaries]
            self._wait(
                functools.partial(self._unknown_primary, node, ids[primary.index]),
                deadline,
                f"{node} did not learn of its primary {primary}",
            )
            node.query("CLUSTER", "REPLICATE", ids[primary.index])
        self._wait(self._unsettled, deadline, "the cluster did not become ready")

    @staticmethod
    def _unknown_primary(node: ClusterNode, primary_id: str) -> str | None:
        try:
            table: str = node.query("CLUSTER", "NODES")
        except RedisError as exc:
            return f"{node} does not answer ({exc}); see {node.log_path}"
        # Each line starts "<id> <address> <flags> ...".
        for fields in (line.split() for line in table.splitlines()):
            flags = fields[2].split(",") if len(fields) > 2 else []
            if fields[0] == primary_id and "master" in flags and "handshake" not in flags:
                return None
        return f"{node} does not list {primary_id} as a primary; see {node.log_path}"

    # -- waiting ----------------------------------------------------------------------------

    @staticmethod
    def _wait(pending: Callable[[], str | None], deadline: float, what: str) -> None:
        """Poll ``pending`` (None when done, else why not) until done or past the deadline."""
        while (reason := pending()) is not None:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{what}: {reason}")
            time.sleep(_POLL_S)

    def _unsettled(self) -> str | None:
        """Why the cluster is not ready yet, or None when it is."""
        maps: list[SlotMap] = []
        for node in self._nodes:
            try:
                reason, slots = self._node_view(node)
            except RedisError as exc:
                return f"{node} does not answer ({exc}); see {node.log_path}"
            if reason is not None:
                return f"{reason}; see {node.log_path}"
            maps.append(slots)
        for node, slots in zip(self._nodes[1:], maps[1:], strict=True):
            if slots != maps[0]:
                return f"{node} and {self._nodes[0]} report different slot maps (CLUSTER SLOTS)"
        return self._shape_problem(maps[0])

    def _node_view(self, node: ClusterNode) -> tuple[str | None, SlotMap]:
        info = _info(node.query("CLUSTER", "INFO"))
        if info["cluster_state"] != "ok":
            return f"{node} reports cluster_state:{info['cluster_state']}", ()
        if int(info["cluster_known_nodes"]) != self.size:
            return f"{node} knows {info['cluster_known_nodes']} of {self.size} nodes", ()
        role = node.query("ROLE")
        if role[0] != "master" and role[3] != "connected":
            return f"{node} is a replica whose link to its primary is {role[3]}", ()
        return None, _slot_map(node.query("CLUSTER", "SLOTS"))

    def _shape_problem(self, slots: SlotMap) -> str | None:
        primaries = _primaries(slots)
        if len(primaries) != self.primaries:
            return f"the slot map has {len(primaries)} primaries, not {self.primaries}"
        for first, last, owner, followers in slots:
            if len(followers) != self.replicas:
                return (f"slots {first}-{last} on port {owner[0]} have {len(followers)} "
                        f"replicas, not {self.replicas}")  # fmt: skip
        return None

    def _any_slot_map(self) -> SlotMap:
        """CLUSTER SLOTS from the first node that answers."""
        for node in self._started():
            with contextlib.suppress(RedisError):
                return _slot_map(node.query("CLUSTER", "SLOTS"))
        raise ConfigurationError("no node of the cluster answers")
