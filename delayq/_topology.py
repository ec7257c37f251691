"""A Redis/Valkey Cluster as values, without I/O: which node serves which hash slot, which node
each call goes to, and how a batch is sent again after a redirect or a failover.

The cluster runners (``_cluster``) send what is built here: ``CLUSTER SLOTS`` is read into a
``Topology``; ``routed`` splits calls by node and says what to do when a node answers MOVED,
ASK, TRYAGAIN or CLUSTERDOWN, or cannot be reached. It is written once, as a generator, and
driven by a synchronous and an asyncio runner alike.
"""

from __future__ import annotations

import bisect
import urllib.parse
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from delayq._calls import Call, command
from delayq._errors import ConfigurationError

SLOTS = 16384
Address = tuple[str, int]


@dataclass(frozen=True)
class Topology:
    """Slot ranges and the primary serving each, and each primary's replicas."""

    starts: tuple[int, ...]  # first slot of each range, ascending
    ends: tuple[int, ...]  # last slot of each range
    owners: tuple[Address, ...]  # the primary serving each range
    replicas: dict[Address, tuple[Address, ...]] = field(default_factory=dict)

    def node_of_slot(self, slot: int) -> Address | None:
        i = bisect.bisect_right(self.starts, slot) - 1
        if i >= 0 and slot <= self.ends[i]:
            return self.owners[i]
        return None

    def node_of(self, key: str | bytes) -> Address | None:
        return self.node_of_slot(slot_of(key))

    @property
    def primaries(self) -> list[Address]:
        return sorted(set(self.owners))

    @property
    def nodes(self) -> list[Address]:
        """Every node: primaries and their replicas."""
        found = set(self.owners)
        for replicas in self.replicas.values():
            found.update(replicas)
        return sorted(found)


def slot_of(key: str | bytes) -> int:
    return key_slot(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key)


def _address(entry: Sequence[Any]) -> Address:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    return host, int(entry[1])


def _topology(reply: Sequence[Sequence[Any]]) -> Topology:
    rows = sorted((int(r[0]), int(r[1]), _address(r[2]), tuple(_address(n) for n in r[3:]))
                  for r in reply)  # fmt: skip
    replicas: dict[Address, tuple[Address, ...]] = {}
    for _, _, owner, followers in rows:
        replicas[owner] = tuple(sorted(set(replicas.get(owner, ())) | set(followers)))
    return Topology(tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                    tuple(r[2] for r in rows), replicas)  # fmt: skip


def cluster_slots() -> Call[Topology]:
    # raw: the reply as the server sent it (redis-py's callback would reshape it).
    return command("CLUSTER", "SLOTS", decode=_topology, raw=True)


def cluster_enabled() -> Call[bool]:
    """Whether the server runs in cluster mode: HELLO's ``mode`` (HELLO is allowed to every
    user, INFO and CLUSTER INFO may not be)."""
    # No protocol version: the reply comes in the protocol the connection already speaks.
    return command("HELLO", decode=_is_cluster, raw=True)


def _is_cluster(reply: Any) -> bool:
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    mode = fields.get(b"mode", fields.get("mode", b""))
    return (mode.decode() if isinstance(mode, bytes) else str(mode)) == "cluster"


def node_url(url: str, node: Address) -> str:
    """``url`` pointed at one node: scheme, credentials and options kept; database 0 (a
    cluster has no other)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    host = f"[{node[0]}]" if ":" in node[0] else node[0]
    netloc = f"{userinfo}@{host}:{node[1]}" if userinfo else f"{host}:{node[1]}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, "/0", parts.query, parts.fragment))


def check_cluster_url(url: str) -> None:
    path = urllib.parse.urlsplit(url).path.strip("/")
    if path not in ("", "0"):
        raise ConfigurationError(
            f"the server is a cluster, which has only database 0, but the URL names database "
            f"{path!r}: use /0 or no database"
        )


# Commands whose first key is their third word (after a subcommand), and commands with no key:
# a cluster runner sends the latter to the node of the batch's other calls.
_KEY_AFTER_SUBCOMMAND = frozenset({"XINFO", "XGROUP", "MEMORY", "OBJECT"})
_KEYLESS = frozenset({"TIME", "PING", "INFO", "CONFIG", "SCRIPT", "PUBLISH", "CLIENT", "HELLO",
                      "SELECT", "DBSIZE", "ACL", "ASKING", "CLUSTER", "ROLE", "SCAN", "FLUSHDB",
                      "FLUSHALL", "SPUBLISH", "WAIT", "READONLY"})  # fmt: skip


def route_key(call: Call[Any]) -> Any:
    """The key whose slot decides the node ``call`` goes to, or None for a keyless call.

    A SCAN whose MATCH pattern holds a hash tag goes to the node of that tag: delayq scans its
    own keys, which all carry one.
    """
    if call.script is not None:
        return call.args[0] if call.numkeys else None
    name = _word(call.args[0]).upper()
    if name == "SCAN":
        return _scan_tag(call.args)
    if name in _KEYLESS or len(call.args) < 2:
        return None
    if name in _KEY_AFTER_SUBCOMMAND:
        return call.args[2] if len(call.args) > 2 else None
    if name in ("XREADGROUP", "XREAD"):
        words = [_word(a).upper() for a in call.args]
        return call.args[words.index("STREAMS") + 1] if "STREAMS" in words else None
    return call.args[1]


def _word(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scan_tag(args: tuple[Any, ...]) -> Any:
    words = [_word(a) for a in args]
    if "MATCH" not in (w.upper() for w in words):
        return None
    pattern = words[[w.upper() for w in words].index("MATCH") + 1]
    start = pattern.find("{")
    end = pattern.find("}", start + 1)
    if start < 0 or end <= start + 1 or any(c in pattern[start:end] for c in "*?["):
        return None
    return pattern


# -- sending a batch over the cluster -------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``calls`` to ``node`` in one write (``asking``: after an ASKING, for a slot being
    migrated there); the reply is their replies, an error reply as its exception."""

    node: Address
    calls: Sequence[Call[Any]]
    transaction: bool
    asking: bool = False


@dataclass(frozen=True)
class Refresh:
    """Read the topology again (``pause``: first wait that long, in seconds); the reply is
    ignored."""

    pause: float = 0.0


@dataclass(frozen=True, slots=True)
class Fanout:
    """Send each of ``sends`` (to distinct nodes), all at once if the runner can; the reply is
    one entry per send: its replies, or the ``Unreachable`` it met."""

    sends: tuple[Send, ...]


ClusterStep = Fanout | Refresh
# A failover takes the cluster's node timeout plus an election: calls to a node that went away
# wait this long for its replica to take over before the error reaches the caller.
FAILOVER_WAIT_S = 15.0
RETRY_PAUSE_S = 0.1
REROUTED = (MovedError, AskError, TryAgainError, ClusterDownError)


class Unreachable(Exception):
    """A node could not be reached; ``routed`` is told so by the runner."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def routed(
    topology: Topology, calls: Sequence[Call[Any]], transaction: bool, *, attempts: int
) -> Generator[ClusterStep, Any, list[Any]]:
    """The calls' replies in order, sent node by node; a call redirected, refused while the
    cluster changes, or sent to a node that went away is sent again after a fresh topology,
    up to ``attempts`` rounds. The runner sends ``Refresh`` with the topology it reads back."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    asks: dict[int, Address] = {}
    failure: BaseException | None = None
    for _ in range(attempts):
        failed: set[int] = set()
        plan = _plan(topology, calls, todo, transaction, asks)
        results = yield Fanout(tuple(step for step, _ in plan))
        for (_, indexes), got in zip(plan, results, strict=True):
            if isinstance(got, Unreachable):
                failure = got.cause
                failed.update(indexes)
                continue
            for i, reply in zip(indexes, got, strict=True):
                replies[i] = reply
        todo = [i for i in todo if i in failed or isinstance(replies[i], REROUTED)]
        if not todo:
            return replies
        asks = {
            i: replies[i].node_addr
            for i in todo
            if i not in failed
            and isinstance(replies[i], AskError)
            and not isinstance(replies[i], MovedError)
        }
        if len(asks) < len(todo):
            moved = any(isinstance(replies[i], MovedError) for i in todo if i not in failed)
            topology = yield Refresh(0.0 if moved else RETRY_PAUSE_S)
    if failure is not None and any(replies[i] is None for i in todo):
        raise failure
    return replies


def _plan(
    topology: Topology,
    calls: Sequence[Call[Any]],
    todo: list[int],
    transaction: bool,
    asks: dict[int, Address],
) -> list[tuple[Send, list[int]]]:
    """One Send per node (per node asked, for ASK redirects), calls kept in order within it."""
    default = next((topology.node_of(k) for i in todo
                    if (k := route_key(calls[i])) is not None), None)  # fmt: skip
    if default is None:
        default = topology.primaries[0] if topology.owners else None
    groups: dict[tuple[Address, bool], list[int]] = {}
    for i in todo:
        if i in asks:
            groups.setdefault((asks[i], True), []).append(i)
            continue
        key = route_key(calls[i])
        node = default if key is None or transaction else topology.node_of(key)
        if node is None:
            raise ClusterDownError(f"CLUSTERDOWN no node serves the slot of {key!r}")
        groups.setdefault((node, False), []).append(i)
    return [(Send(node, [calls[i] for i in idx], transaction, asking), idx)
            for (node, asking), idx in groups.items()]  # fmt: skip
