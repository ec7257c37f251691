"""Runners for a Redis/Valkey Cluster: the same ``run`` as the single-server runners, with each
call sent to the primary serving its key's slot.

Each node gets a runner of its own (its own pool), built from the user's URL pointed at the
node, so TLS and credentials carry over. The routing and the handling of redirects and
failovers are built once in ``_topology.routed``; these classes only do the I/O. Scripts are
loaded on every node, replicas included: a promoted replica would answer NOSCRIPT otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as ReplyTimeout

from delayq._calls import Call
from delayq._replicas import WaitForReplicas, unwaited, waited
from delayq._runners import (
    AsyncRunner,
    SyncRunner,
    SyncSubscription,
    _direct_path,
    _Driven,
    _raised,
)
from delayq._sentinel import is_sentinel_url
from delayq._sentinel_runners import async_sentinel_runner, sync_sentinel_runner
from delayq._topology import (
    FAILOVER_WAIT_S,
    REROUTED,
    RETRY_PAUSE_S,
    Address,
    Refresh,
    Send,
    Topology,
    Unreachable,
    check_cluster_url,
    cluster_enabled,
    cluster_slots,
    node_url,
    routed,
)
from delayq._wire import packed

# Rounds of ``routed`` before an error reaches the caller: enough to wait out a failover.
ATTEMPTS = int(FAILOVER_WAIT_S / RETRY_PAUSE_S)
_LOST = (ConnectionLost, ReplyTimeout, OSError, *REROUTED)


R = TypeVar("R", SyncRunner, AsyncRunner)


class _Nodes(Generic[R]):
    """The cluster as last read, and one runner per node, made on first use by ``make`` (the
    node's URL in, its runner out); the same bookkeeping for both sides."""

    def __init__(self, url: str, topology: Topology, make: Callable[[str], R]) -> None:
        self.url = url
        self.topology = topology
        self.make: Callable[[str], R] = make
        self.runners: dict[Address, R] = {}

    def node(self, address: Address) -> R:
        runner = self.runners.get(address)
        if runner is None:
            runner = self.runners[address] = self.make(node_url(self.url, address))
        return runner

    def every_node(self) -> list[R]:
        """Primaries and replicas: settings and scripts must be on a replica before it is
        promoted."""
        return [self.node(a) for a in self.topology.nodes]

    def seeds(self) -> list[Address]:
        """Nodes to read the topology from: the known ones, primaries first."""
        return [*self.topology.primaries, *self.topology.nodes]


class _OnNodes(Generic[R]):
    """What both cluster runners read from their nodes."""

    _nodes: _Nodes[R]

    @property
    def topology(self) -> Topology:
        return self._nodes.topology

    @property
    def db(self) -> int:
        return 0  # a cluster has no other


class SyncClusterRunner(_OnNodes[SyncRunner], SyncRunner):
    def __init__(self, url: str, options: dict[str, Any], topology: Topology,
                 wait: WaitForReplicas | None = None) -> None:  # fmt: skip
        self._nodes = _Nodes(url, topology,
                             lambda u: _waiting(SyncRunner.from_url(u, options), wait))  # fmt: skip
        super().__init__(self._nodes.node(topology.primaries[0]).client)

    def close(self) -> None:
        runners, self._nodes.runners = self._nodes.runners, {}
        for runner in runners.values():
            runner.close()

    def refresh(self) -> Topology:
        failure: BaseException | None = None
        for address in self._nodes.seeds():
            try:
                self._nodes.topology = self._nodes.node(address).run(cluster_slots())
                return self._nodes.topology
            except _LOST as exc:
                failure = exc
        raise failure or ConnectionLost("no node of the cluster answered")

    def _one(self, call: Call[Any]) -> Any:
        return _raised(self._send([call], False)[0])

    def subscription_for(self, key: str) -> SyncSubscription:
        node = self._nodes.node(self.topology.node_of(key) or self.topology.primaries[0])
        return node.subscription_for(key)

    def _load(self, names: set[str]) -> None:
        for runner in self._nodes.every_node():
            try:
                runner._load(names)
            except _LOST:  # a node down now loads them when asked again (NOSCRIPT)
                continue

    def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if not calls:
            return []
        flow = _Driven(routed(self.topology, calls, transaction, attempts=ATTEMPTS))
        while (step := flow.next_step()) is not None:
            if isinstance(step, Refresh):
                time.sleep(step.pause)
                flow.reply = self._refreshed()
            elif len(step.sends) > 1 and all(_direct_path(s.calls, s.transaction)
                                             for s in step.sends):  # fmt: skip
                flow.reply = self._written_together(step.sends)
            else:
                flow.reply = [self._tried(send) for send in step.sends]
        return flow.result

    def _tried(self, step: Send) -> Any:
        try:
            return self._sent(step)
        except _LOST as exc:
            return Unreachable(exc)

    def _written_together(self, sends: tuple[Send, ...]) -> list[Any]:
        """Every node's calls written before any reply is read: one round trip for a batch
        spread over the cluster, not one a node. A node whose connection fails is sent to
        again on the ordinary path, which reconnects."""
        opened: list[tuple[Any, Any, list[Call[Any]]]] = []
        results: list[Any] = [None] * len(sends)
        try:
            for i, step in enumerate(sends):
                sent = waited(step.calls, step.transaction, self.wait)
                calls = [_ASKING, *sent] if step.asking else list(sent)
                pool = self._nodes.node(step.node).client.connection_pool
                conn = pool.get_connection()
                opened.append((pool, conn, calls))
                try:
                    conn.send_packed_command(packed(calls), check_health=False)  # type: ignore[no-untyped-call]
                except _LOST:
                    conn.disconnect()  # type: ignore[no-untyped-call]
                    results[i] = _RESEND
            for i, (_, conn, calls) in enumerate(opened):
                if results[i] is None:
                    results[i] = _read_replies(conn, calls, asking=sends[i].asking)
                    if not isinstance(results[i], Unreachable):
                        sent = calls[1:] if sends[i].asking else calls
                        results[i] = unwaited(sends[i].calls, sent, results[i], self.wait)
        finally:
            for pool, conn, _ in opened:
                pool.release(conn)
        return [self._tried(step) if got is _RESEND else got
                for step, got in zip(sends, results, strict=True)]  # fmt: skip

    def _refreshed(self) -> Topology:
        try:
            return self.refresh()
        except _LOST:
            return self.topology

    def _sent(self, step: Send) -> list[Any]:
        runner = self._nodes.node(step.node)
        if not step.asking:
            return runner._send(step.calls, step.transaction)
        return runner._send([_ASKING, *step.calls], step.transaction)[1:]


class AsyncClusterRunner(_OnNodes[AsyncRunner], AsyncRunner):
    def __init__(self, url: str, options: dict[str, Any], topology: Topology, *,
                 retry: bool = True, wait: WaitForReplicas | None = None) -> None:  # fmt: skip
        self._nodes = _Nodes(url, topology, lambda u: _waiting(
            AsyncRunner.from_url(u, options, retry=retry), wait))  # fmt: skip
        super().__init__(self._nodes.node(topology.primaries[0]).client)

    async def close(self) -> None:
        runners, self._nodes.runners = self._nodes.runners, {}
        for runner in runners.values():
            await runner.close()

    async def refresh(self) -> Topology:
        failure: BaseException | None = None
        for address in self._nodes.seeds():
            try:
                self._nodes.topology = await self._nodes.node(address).run(cluster_slots())
                return self._nodes.topology
            except _LOST as exc:
                failure = exc
        raise failure or ConnectionLost("no node of the cluster answered")

    async def _one(self, call: Call[Any]) -> Any:
        if call.script is None:  # by the routed path, not the one client of the base class
            return _raised((await self._send([call], False))[0])
        return await super()._one(call)  # script calls: coalesced, then routed by _send

    def node_for(self, key: str) -> AsyncRunner:
        return self._nodes.node(self.topology.node_of(key) or self.topology.primaries[0])

    def every_node(self) -> list[AsyncRunner]:
        return self._nodes.every_node()

    @property
    def spans_nodes(self) -> bool:
        return True

    def primaries(self) -> dict[str, AsyncRunner]:
        return {_name(a): self._nodes.node(a) for a in self.topology.primaries}

    def node_name(self, key: str) -> str:
        return _name(self.topology.node_of(key) or self.topology.primaries[0])

    async def _relocate(self) -> None:
        with contextlib.suppress(*_LOST):
            await self.refresh()

    async def _load(self, names: set[str]) -> None:
        for runner in self._nodes.every_node():
            try:
                await runner._load(names)
            except _LOST:
                continue

    async def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if not calls:
            return []
        flow = _Driven(routed(self.topology, calls, transaction, attempts=ATTEMPTS))
        while (step := flow.next_step()) is not None:
            if isinstance(step, Refresh):
                await asyncio.sleep(step.pause)
                flow.reply = await self._refreshed()
            else:  # every node at once
                flow.reply = list(await asyncio.gather(*map(self._tried, step.sends)))
        return flow.result

    async def _tried(self, step: Send) -> Any:
        try:
            return await self._sent(step)
        except _LOST as exc:
            return Unreachable(exc)

    async def _refreshed(self) -> Topology:
        try:
            return await self.refresh()
        except _LOST:
            return self.topology

    async def _sent(self, step: Send) -> list[Any]:
        runner = self._nodes.node(step.node)
        if not step.asking:
            return await runner._send(step.calls, step.transaction)
        return (await runner._send([_ASKING, *step.calls], step.transaction))[1:]


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


_ASKING: Call[Any] = Call(("ASKING",), raw=True)
_RESEND = object()  # a node whose write failed: sent again on the ordinary path


def _read_replies(conn: Any, calls: list[Call[Any]], *, asking: bool) -> Any:
    """Replies to ``calls`` written on ``conn`` (an error reply as its exception, without the
    ASKING reply), or ``Unreachable`` if the connection failed."""
    replies: list[Any] = []
    try:
        for _ in calls:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except _LOST as exc:
        conn.disconnect()  # replies left unread would be taken for the next call's
        return Unreachable(exc)
    return replies[1:] if asking else replies


def sync_runner(
    url: str, options: dict[str, Any], wait: WaitForReplicas | None = None
) -> SyncRunner:
    """A runner for the server at ``url``: a cluster runner if it runs in cluster mode, one
    that follows the primary the sentinels name for a ``redis+sentinel://`` URL. ``wait``: a
    WAIT after the producer's writes, on every node (see ``_replicas``)."""
    if is_sentinel_url(url):
        return _waiting(sync_sentinel_runner(url, options), wait)
    plain = _waiting(SyncRunner.from_url(url, options), wait)
    if not plain.run(cluster_enabled()):
        return plain
    try:
        check_cluster_url(url)
        topology = plain.run(cluster_slots())
    finally:
        plain.close()
    return _waiting(SyncClusterRunner(url, options, topology, wait), wait)


async def async_runner(
    url: str, options: dict[str, Any], *, retry: bool = True, wait: WaitForReplicas | None = None
) -> AsyncRunner:
    """``sync_runner`` for asyncio."""
    if is_sentinel_url(url):
        return _waiting(await async_sentinel_runner(url, options, retry=retry), wait)
    plain = _waiting(AsyncRunner.from_url(url, options, retry=retry), wait)
    if not await plain.run(cluster_enabled()):
        return plain
    try:
        check_cluster_url(url)
        topology = await plain.run(cluster_slots())
    finally:
        await plain.close()
    return _waiting(AsyncClusterRunner(url, options, topology, retry=retry, wait=wait), wait)


W = TypeVar("W", SyncRunner, AsyncRunner)


def _waiting(runner: W, wait: WaitForReplicas | None) -> W:
    runner.wait = wait
    return runner
