"""Runners for a primary watched by Redis Sentinel: the single-server runners over redis-py's
Sentinel-managed pool, which asks the sentinels where the primary is each time it connects.

A failover leaves calls unanswered (the primary went away) or refused (it became a replica,
or was cut off from its replicas); ``_sentinel.through_failover`` sends those again, and only
those, once the sentinels name the new primary. A call whose reply was read is never sent again.

For what is node-local, the asyncio runner also keeps a runner per node, at the addresses the
sentinels give: subscriptions go to the primary, and move when it changes (keyspace events are
published where the keys are written); settings are checked on the replicas too, so that a
promoted replica publishes expiry events as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as ReplyTimeout

from delayq._calls import Call, command
from delayq._replicas import unwaited, waited
from delayq._runners import (
    AsyncRunner,
    Subscription,
    SyncRunner,
    _direct_path,
    _Driven,
    _pooled,
    _raised,
)
from delayq._scripts import SCRIPTS
from delayq._sentinel import (
    Attempt,
    Rediscover,
    SentinelTarget,
    Unanswered,
    fenced,
    parse_target,
    through_failover,
)
from delayq._topology import Address
from delayq._wire import packed

_LOST = (ConnectionLost, ReplyTimeout, OSError)
# A subscription checks this often that its node is still the primary.
CHECK_EVERY_S = 2.0
# Calls ask the sentinels where the primary is at most this often: after a plain SENTINEL
# FAILOVER the old primary takes writes (lost when it is demoted) until the sentinels turn it
# into a replica, seconds after they named the new one.
ASK_EVERY_S = 1.0


class _BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """Callers beyond the pool's size wait for a free connection, as with the other runners."""


class _AsyncBlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """``_BlockingSentinelPool`` for asyncio."""

    async def release(self, connection: Any) -> None:
        # A connection in use when the sentinels named a new primary still goes to the old
        # one: closed now, it connects to the new one when next used (the synchronous pool
        # does this; redis-py's asyncio pool does not).
        if self.master_address not in (None, (connection.host, connection.port)):
            await connection.disconnect()
        await super().release(connection)


def _script_loads(names: set[str]) -> list[Call[Any]]:
    return [command("SCRIPT", "LOAD", SCRIPTS.source(name), raw=True) for name in sorted(names)]


def _first_failure(replies: list[Any]) -> None:
    failure = next((r for r in replies if isinstance(r, Exception)), None)
    if failure is not None:
        raise failure


def _unanswered(step: Attempt, exc: Exception) -> list[Any]:
    """The attempt's calls as one failure: a pipeline or transaction is read whole."""
    if isinstance(exc, _LOST):
        return [Unanswered(exc)] * len(step.calls)
    if isinstance(exc, ResponseError) and fenced(exc):
        return [exc] * len(step.calls)
    raise exc


class SyncSentinelRunner(SyncRunner):
    def __init__(self, target: SentinelTarget) -> None:
        self.target = target
        self.sentinel = redis.sentinel.Sentinel(
            target.sentinels, sentinel_kwargs=target.sentinel, **_pooled(target.connection)
        )
        pool_class = _BlockingSentinelPool
        super().__init__(
            self.sentinel.master_for(target.service_name, connection_pool_class=pool_class)
        )
        self._pool: _BlockingSentinelPool = self.client.connection_pool  # type: ignore[assignment]
        self._asked_at = time.monotonic()
        self._found = False

    def close(self) -> None:
        self.client.close()
        self.sentinel.close()

    def _one(self, call: Call[Any]) -> Any:
        return _raised(self._send([call], False)[0])

    def _load(self, names: set[str]) -> None:
        _first_failure(self._send(_script_loads(names), False))

    def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if not calls:
            return []
        if not self._found:
            # Once, without waiting: no sentinel answering, or none knowing the service, is a
            # mistake to report now, not a failover to wait out (the asyncio runner's first
            # refresh does the same).
            self._pool.get_master_address()  # type: ignore[no-untyped-call]
            self._found = True
        elif time.monotonic() - self._asked_at >= ASK_EVERY_S:
            self._rediscover()
        flow = _Driven(through_failover(calls, transaction))
        while (step := flow.next_step()) is not None:
            if isinstance(step, Rediscover):
                time.sleep(step.pause)
                self._rediscover()
            else:
                flow.reply = self._attempt(step)
        return flow.result

    def _attempt(self, step: Attempt) -> list[Any]:
        # A WAIT per attempt: calls sent again on a new connection are waited for there.
        sent = waited(step.calls, step.transaction, self.wait)
        if _direct_path(sent, step.transaction):
            return unwaited(step.calls, sent, self._answers(sent), self.wait)
        try:
            replies = super()._transmit(sent, step.transaction)  # redis-py's pipeline
        except (*_LOST, ResponseError) as exc:
            return _unanswered(step, exc)
        return unwaited(step.calls, sent, replies, self.wait)

    def _answers(self, calls: Sequence[Call[Any]]) -> list[Any]:
        """The replies read before the connection failed, then ``Unanswered`` for the rest."""
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except _LOST as exc:
            return [Unanswered(exc)] * len(calls)
        replies: list[Any] = []
        try:
            conn.send_packed_command(packed(calls), check_health=False)  # type: ignore[no-untyped-call]
            while len(replies) < len(calls):
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except _LOST as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            replies += [Unanswered(exc)] * (len(calls) - len(replies))
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # unread replies would be taken for the next call's
            raise
        finally:
            pool.release(conn)
        return replies

    def _rediscover(self) -> None:
        # A new address closes the idle connections to the old one (the others as they are
        # given back).
        self._asked_at = time.monotonic()
        with contextlib.suppress(*_LOST):
            self._pool.get_master_address()  # type: ignore[no-untyped-call]


class AsyncSentinelRunner(AsyncRunner):
    def __init__(self, target: SentinelTarget, *, retry: bool = True) -> None:
        """``retry=False``: as for ``AsyncRunner.from_url``, connections that do not reconnect
        silently (subscriptions)."""
        options = _pooled(target.connection)
        if not retry:
            options["retry"] = Retry(NoBackoff(), 0)
        self.target = target
        self.options = options
        self.sentinel = asentinel.Sentinel(target.sentinels, sentinel_kwargs=target.sentinel,
                                           **options)  # fmt: skip
        pool_class = _AsyncBlockingSentinelPool
        super().__init__(
            self.sentinel.master_for(target.service_name, connection_pool_class=pool_class)
        )
        self._pool: _AsyncBlockingSentinelPool = self.client.connection_pool  # type: ignore[assignment]
        self._asked_at = time.monotonic()
        self.primary: Address = ("", 0)
        self.replicas: tuple[Address, ...] = ()
        self._nodes: dict[Address, AsyncRunner] = {}

    async def close(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for node in nodes.values():
            await node.close()
        await self.client.aclose()
        await self.sentinel.aclose()

    async def refresh(self) -> None:
        """Ask the sentinels where the primary and its live replicas are."""
        name = self.target.service_name
        primary = _address(await self.sentinel.discover_master(name))
        found = await self.sentinel.discover_slaves(name)
        self.primary = primary
        self.replicas = tuple(sorted({_address(r) for r in found} - {primary}))

    # -- where keys live ----------------------------------------------------------------------

    def node(self, address: Address) -> AsyncRunner:
        runner = self._nodes.get(address)
        if runner is None:
            host, port = address
            options = dict(self.options)
            if options.pop("ssl", False):  # the pool's own way to say TLS
                options["connection_class"] = aredis.SSLConnection
            pool = aredis.BlockingConnectionPool(host=host, port=port, **options)
            runner = self._nodes[address] = AsyncRunner(aredis.Redis.from_pool(pool))
        return runner

    def node_for(self, key: str) -> AsyncRunner:
        return self.node(self.primary)

    def every_node(self) -> list[AsyncRunner]:
        return [self.node(a) for a in (self.primary, *self.replicas)]

    async def _relocate(self) -> None:
        with contextlib.suppress(*_LOST):
            await self.refresh()

    def subscription(self) -> Subscription:
        node = self.node_for("")
        return _OnPrimary(node.client.pubsub(), self, node)

    # -- sending ------------------------------------------------------------------------------

    async def _one(self, call: Call[Any]) -> Any:
        if call.script is None:
            return _raised((await self._send([call], False))[0])
        return await super()._one(call)  # script calls: coalesced, then sent by _send

    async def _load(self, names: set[str]) -> None:
        _first_failure(await self._send(_script_loads(names), False))

    async def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if not calls:
            return []
        if time.monotonic() - self._asked_at >= ASK_EVERY_S:
            await self._rediscover()
        flow = _Driven(through_failover(calls, transaction))
        while (step := flow.next_step()) is not None:
            if isinstance(step, Rediscover):
                await asyncio.sleep(step.pause)
                await self._rediscover()
            else:
                flow.reply = await self._attempt(step)
        return flow.result

    async def _attempt(self, step: Attempt) -> list[Any]:
        sent = waited(step.calls, step.transaction, self.wait)  # as in the sync runner
        if _direct_path(sent, step.transaction):
            return unwaited(step.calls, sent, await self._answers(sent), self.wait)
        try:
            replies = await super()._transmit(sent, step.transaction)
        except (*_LOST, ResponseError) as exc:
            return _unanswered(step, exc)
        return unwaited(step.calls, sent, replies, self.wait)

    async def _answers(self, calls: Sequence[Call[Any]]) -> list[Any]:
        pool = self.client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except _LOST as exc:
            return [Unanswered(exc)] * len(calls)
        replies: list[Any] = []
        try:
            await conn.send_packed_command(packed(calls), check_health=False)
            while len(replies) < len(calls):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except _LOST as exc:
            await conn.disconnect()
            replies += [Unanswered(exc)] * (len(calls) - len(replies))
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return replies

    async def _rediscover(self) -> None:
        self._asked_at = time.monotonic()
        with contextlib.suppress(*_LOST):
            await self._pool.get_master_address()  # type: ignore[no-untyped-call]


class _OnPrimary(Subscription):
    """A subscription on the primary that ends, as a lost connection does, once the sentinels
    name another primary: its subscriber then subscribes again there, and catches up."""

    def __init__(self, pubsub: Any, runner: AsyncSentinelRunner, node: AsyncRunner) -> None:
        super().__init__(pubsub)
        self._runner = runner
        self._node = node
        self._checked_at = time.monotonic()

    async def message(self, *, timeout: float, confirmations: bool = False) -> Any:
        if time.monotonic() - self._checked_at >= CHECK_EVERY_S:
            self._checked_at = time.monotonic()
            await self._runner.follow()
            if self._runner.node_for("") is not self._node:
                raise ConnectionLost("the sentinels promoted another primary")
        return await super().message(timeout=timeout, confirmations=confirmations)


def _address(entry: Sequence[Any]) -> Address:
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    return host, int(entry[1])


def sync_sentinel_runner(url: str, options: dict[str, Any]) -> SyncSentinelRunner:
    return SyncSentinelRunner(parse_target(url, options))


async def async_sentinel_runner(url: str, options: dict[str, Any], *,
                                retry: bool = True) -> AsyncSentinelRunner:  # fmt: skip
    """The runner, with the primary and replicas read from the sentinels."""
    runner = AsyncSentinelRunner(parse_target(url, options), retry=retry)
    try:
        await runner.refresh()
    except BaseException:
        await runner.close()
        raise
    return runner


def sentinel_client(target: SentinelTarget) -> redis.Redis:
    """A client of the primary the sentinels name, for users' own commands (testing.py)."""
    return SyncSentinelRunner(target).client


def async_sentinel_client(target: SentinelTarget) -> aredis.Redis:
    """``sentinel_client`` for asyncio."""
    return AsyncSentinelRunner(target).client
