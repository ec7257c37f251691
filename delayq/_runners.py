"""The only code that talks to the server: runners that send ``_calls`` values and return their
decoded replies, one synchronous and one for asyncio.

Each runner owns its client (and so its connection pool). Scripts are sent by their SHA1
(EVALSHA) and loaded when the server does not know them yet (after a restart or SCRIPT
FLUSH). Everything else, the keys, arguments and reading of replies, is built once in
``_calls`` values by the I/O-free layer, whichever runner sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Generator, Sequence
from typing import Any, Generic, TypeVar, overload

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as ReplyTimeout

from delayq._calls import Batch, Call, Flow, Step
from delayq._errors import ServerOutOfMemory
from delayq._replicas import WaitForReplicas, unwaited, waited
from delayq._scripts import SCRIPTS
from delayq._wire import packed, wire

T = TypeVar("T")


def out_of_memory(what: str, *, completed: int = 0) -> ServerOutOfMemory:
    return ServerOutOfMemory(
        f"the server's memory is full (used memory above maxmemory, policy noeviction): {what} "
        "refused, and nothing stored before was changed; pending timers still fire and "
        "workers free memory as jobs finish",
        completed=completed,
    )


# A connection lost on the direct path: the calls go again through redis-py's pipeline, which
# reconnects and retries as the client is configured to (as any redis-py call would).
DROPPED = (ConnectionLost, ReplyTimeout)


def _direct_path(calls: Sequence[Call[Any]], transaction: bool) -> bool:
    """Script calls and raw commands (no reply callbacks, no MULTI) go straight to a pooled
    connection, past redis-py's per-command machinery, which costs more than the server
    takes to run them."""
    return not transaction and all(call.script is not None or call.raw for call in calls)


def _raised(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _unknown_scripts(calls: Sequence[Call[Any]], replies: list[Any]) -> set[str]:
    return {c.script for c, r in zip(calls, replies, strict=True)
            if c.script is not None and isinstance(r, NoScriptError)}  # fmt: skip


def _decoded(batch: Batch[T], calls: Sequence[Call[T]], replies: list[Any], done: int) -> list[T]:
    """The chunk's replies decoded, or its first failure raised (after it was all sent);
    ``done``: the items (call weights) of the chunks before it, all completed."""
    errors = [r for r in replies if isinstance(r, Exception)]
    if errors:
        first = errors[0]
        if isinstance(first, OutOfMemoryError):
            total = sum(call.weight for call in batch.calls)
            completed = done + sum(call.weight for call, reply in zip(calls, replies, strict=True)
                                   if not isinstance(reply, Exception))  # fmt: skip
            raise out_of_memory(f"{total - completed} of {batch.refused} {total} were",
                                completed=completed) from first  # fmt: skip
        raise first
    return [call.decode(reply) for call, reply in zip(calls, replies, strict=True)]


def _chunks(batch: Batch[T]) -> list[Sequence[Call[T]]]:
    calls = batch.calls
    if batch.transaction or not calls:
        return [calls]
    return [calls[i : i + batch.chunk] for i in range(0, len(calls), batch.chunk)]


class _Driven(Generic[T]):
    """A flow (or any generator of steps) being driven: the next step it asks for, fed the
    last reply or failure."""

    def __init__(self, flow: Generator[Any, Any, T]) -> None:
        self.flow = flow
        self.reply: Any = None
        self.failure: Exception | None = None
        self.result: T

    def next_step(self) -> Any:
        """The next step to send, or None once the flow returned (its value in ``result``)."""
        failure, self.failure = self.failure, None
        try:
            return self.flow.throw(failure) if failure is not None else self.flow.send(self.reply)
        except StopIteration as done:
            self.result = done.value
            return None


# Callers beyond the pool's size wait for a free connection (up to its timeout) instead of
# failing at once with "Too many connections": a thousand tasks may schedule at once.
POOL_SIZE = 100


async def _cancellable(awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or CancelledError if the task was cancelled meanwhile.

    On Python 3.11, ``asyncio.wait_for`` (used inside redis-py) drops a cancellation that
    arrives as the reply does; the task would then carry on, and a loop meant to stop
    would not. Python 3.12 fixed this; the check costs nothing there.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


def _pooled(options: dict[str, Any]) -> dict[str, Any]:
    return {"max_connections": POOL_SIZE, **options}


# Where nodes are is read again at most this often, however many listeners ask.
FOLLOW_EVERY_S = 1.0


class SyncRunner:
    # Set by ``sync_runner``: a WAIT after the producer's writes (see ``_replicas``).
    wait: WaitForReplicas | None = None

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any]) -> SyncRunner:
        pool = redis.BlockingConnectionPool.from_url(url, **_pooled(options))
        return cls(redis.Redis.from_pool(pool))

    @property
    def db(self) -> int:
        return int(self.client.connection_pool.connection_kwargs.get("db") or 0)

    def close(self) -> None:
        self.client.close()

    def subscription_for(self, key: str) -> SyncSubscription:
        """A pub/sub connection to the server holding ``key`` (a node's, on a cluster)."""
        return SyncSubscription(self.client.pubsub())

    @overload
    def run(self, step: Call[T] | Flow[T]) -> T: ...

    @overload
    def run(self, step: Batch[T]) -> list[T]: ...

    def run(self, step: Call[T] | Batch[T] | Flow[T]) -> T | list[T]:
        """Send one call or batch and return the decoded reply, or drive a flow to its result."""
        if isinstance(step, Call | Batch):
            return self._step(step)  # type: ignore[no-any-return]
        flow = _Driven(step)
        while (nxt := flow.next_step()) is not None:
            try:
                flow.reply = self._step(nxt)
            except Exception as exc:  # handed to the flow, which may handle it
                flow.failure = exc
        return flow.result

    def _step(self, step: Step) -> Any:
        return self._call(step) if isinstance(step, Call) else self._batch(step)

    def _call(self, call: Call[T]) -> T:
        try:
            try:
                reply = self._one(call)
            except NoScriptError:
                self._load({call.script or ""})
                reply = self._one(call)
        except OutOfMemoryError as exc:
            if call.refused is None:
                raise
            raise out_of_memory(call.refused) from exc
        return call.decode(reply)

    def _one(self, call: Call[Any]) -> Any:
        if call.script is None and not call.raw:
            return self.client.execute_command(*wire(call), **call.options)  # type: ignore[no-untyped-call]
        return _raised(self._send([call], False)[0])

    def _load(self, names: set[str]) -> None:
        for name in names:
            self.client.execute_command(  # type: ignore[no-untyped-call]
                "SCRIPT", "LOAD", SCRIPTS.source(name)
            )

    def _batch(self, batch: Batch[T]) -> list[T]:
        decoded: list[T] = []
        done = 0
        for calls in _chunks(batch):
            replies = self._send(calls, batch.transaction)
            unknown = _unknown_scripts(calls, replies)
            if unknown:  # none of these ran: load, send them again
                self._load(unknown)
                again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                resent = self._send([calls[i] for i in again], batch.transaction)
                for i, reply in zip(again, resent, strict=True):
                    replies[i] = reply
            decoded += _decoded(batch, calls, replies, done)
            done += sum(call.weight for call in calls)
        return decoded

    def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        """The calls' replies in order, an error reply as its exception."""
        if not calls:
            return []
        sent = waited(calls, transaction, self.wait)
        return unwaited(calls, sent, self._transmit(sent, transaction), self.wait)

    def _transmit(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if _direct_path(calls, transaction):
            with contextlib.suppress(*DROPPED):
                return self._direct(calls)
        with self.client.pipeline(transaction=transaction) as pipe:
            for call in calls:
                pipe.execute_command(*wire(call), **call.options)  # type: ignore[no-untyped-call]
            return pipe.execute(raise_on_error=False)

    def _direct(self, calls: Sequence[Call[Any]]) -> list[Any]:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(  # type: ignore[no-untyped-call]
                packed(calls), check_health=False
            )
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # replies left unread would be taken for the next call's
            raise
        finally:
            pool.release(conn)


class AsyncRunner:
    """Script calls made by many tasks at once are written together on one connection (see
    ``_one``): a thousand concurrent ``aschedule()`` cost a few round trips, not a thousand."""

    _followed_at = float("-inf")  # when follow() last read where nodes are (monotonic)
    wait: WaitForReplicas | None = None  # as for SyncRunner

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._waiting: list[tuple[Call[Any], asyncio.Future[Any]]] = []
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, options: dict[str, Any], *, retry: bool = True) -> AsyncRunner:
        """``retry=False``: a connection that must not reconnect silently (a subscription: a
        reconnect means events were missed, and its owner must know)."""
        if not retry:
            options = {**options, "retry": Retry(NoBackoff(), 0)}
        pool = aredis.BlockingConnectionPool.from_url(url, **_pooled(options))
        return cls(aredis.Redis.from_pool(pool))

    @property
    def db(self) -> int:
        return int(self.client.connection_pool.connection_kwargs.get("db") or 0)

    async def close(self) -> None:
        await self.client.aclose()

    @overload
    async def run(self, step: Call[T] | Flow[T]) -> T: ...

    @overload
    async def run(self, step: Batch[T]) -> list[T]: ...

    async def run(self, step: Call[T] | Batch[T] | Flow[T]) -> T | list[T]:
        """Send one call or batch and return the decoded reply, or drive a flow to its result."""
        if isinstance(step, Call | Batch):
            return await self._step(step)  # type: ignore[no-any-return]
        flow = _Driven(step)
        while (nxt := flow.next_step()) is not None:
            try:
                flow.reply = await self._step(nxt)
            except Exception as exc:  # handed to the flow, which may handle it
                flow.failure = exc
        return flow.result

    async def _step(self, step: Step) -> Any:
        return await _cancellable(self._call(step) if isinstance(step, Call) else self._batch(step))

    async def _call(self, call: Call[T]) -> T:
        try:
            try:
                reply = await self._one(call)
            except NoScriptError:
                await self._load({call.script or ""})
                reply = await self._one(call)
        except OutOfMemoryError as exc:
            if call.refused is None:
                raise
            raise out_of_memory(call.refused) from exc
        return call.decode(reply)

    async def _one(self, call: Call[Any]) -> Any:
        if call.script is None:
            if call.raw:  # never coalesced: it may be a blocking read
                return _raised((await self._send([call], False))[0])
            return await self.client.execute_command(*wire(call), **call.options)  # type: ignore[no-untyped-call]
        # Script calls queued by other tasks before this turn of the loop ends go in the same
        # write; each caller still gets its own reply or error.
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._write_waiting)
        return await future

    def _write_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        write = asyncio.create_task(self._deliver(waiting))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _deliver(self, waiting: list[tuple[Call[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send([call for call, _ in waiting], False)
        except BaseException as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), reply in zip(waiting, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _load(self, names: set[str]) -> None:
        for name in names:
            await self.client.execute_command(  # type: ignore[no-untyped-call]
                "SCRIPT", "LOAD", SCRIPTS.source(name)
            )

    async def _batch(self, batch: Batch[T]) -> list[T]:
        decoded: list[T] = []
        done = 0
        for calls in _chunks(batch):
            replies = await self._send(calls, batch.transaction)
            unknown = _unknown_scripts(calls, replies)
            if unknown:  # none of these ran: load, send them again
                await self._load(unknown)
                again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                resent = await self._send([calls[i] for i in again], batch.transaction)
                for i, reply in zip(again, resent, strict=True):
                    replies[i] = reply
            decoded += _decoded(batch, calls, replies, done)
            done += sum(call.weight for call in calls)
        return decoded

    async def _send(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        """The calls' replies in order, an error reply as its exception."""
        if not calls:
            return []
        sent = waited(calls, transaction, self.wait)
        return unwaited(calls, sent, await self._transmit(sent, transaction), self.wait)

    async def _transmit(self, calls: Sequence[Call[Any]], transaction: bool) -> list[Any]:
        if _direct_path(calls, transaction):
            with contextlib.suppress(*DROPPED):
                return await self._direct(calls)
        async with self.client.pipeline(transaction=transaction) as pipe:
            for call in calls:
                pipe.execute_command(*wire(call), **call.options)
            return await pipe.execute(raise_on_error=False)

    async def _direct(self, calls: Sequence[Call[Any]]) -> list[Any]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed(calls), check_health=False)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await conn.disconnect()  # replies left unread would be taken for the next call's
            raise
        finally:
            await pool.release(conn)

    def subscription(self) -> Subscription:
        return Subscription(self.client.pubsub())

    # Where keys live: on one server, here. A cluster runner answers with a node's runner, for
    # what is node-local there: subscriptions (keyspace events) and settings.

    def node_for(self, key: str) -> AsyncRunner:
        """The runner of the server holding ``key``."""
        return self

    def every_node(self) -> list[AsyncRunner]:
        return [self]

    @property
    def spans_nodes(self) -> bool:
        """Whether keys live on several servers (a cluster), so that a script cannot reach
        every key it might be given."""
        return False

    def primaries(self) -> dict[str, AsyncRunner]:
        """The runner of each server holding keys, by a name of the server ("" on one)."""
        return {"": self}

    def node_name(self, key: str) -> str:
        """The name (as in ``primaries``) of the server holding ``key``."""
        return ""

    async def follow(self) -> None:
        """Read again where keys live, at most once per FOLLOW_EVERY_S: many listeners ask,
        and one read a second serves them all (nothing to read on one server)."""
        now = time.monotonic()
        if now - self._followed_at >= FOLLOW_EVERY_S:
            self._followed_at = now
            await self._relocate()

    async def _relocate(self) -> None:
        """Read where the nodes are now; an unreachable node leaves the old picture."""


class Subscription:
    """One pub/sub connection (see ``unretried`` for one that must not reconnect silently)."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def subscribe(self, *channels: str | bytes) -> None:
        await _cancellable(self._pubsub.subscribe(*channels))

    async def psubscribe(self, *patterns: str | bytes) -> None:
        await _cancellable(self._pubsub.psubscribe(*patterns))

    async def ssubscribe(self, *channels: str | bytes) -> None:
        """Sharded channels (the node of their slot, on a cluster)."""
        await _cancellable(self._pubsub.ssubscribe(*channels))

    async def message(self, *, timeout: float, confirmations: bool = False) -> Any:
        """The next message, None after ``timeout`` s; with ``confirmations``, the server's
        subscribe replies too."""
        return await _cancellable(
            self._pubsub.get_message(ignore_subscribe_messages=not confirmations, timeout=timeout)
        )

    async def aclose(self) -> None:
        await self._pubsub.aclose()


class SyncSubscription:
    """One synchronous pub/sub connection (a waiter's, for sharded channels)."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def ssubscribe(self, *channels: str | bytes) -> None:
        self._pubsub.ssubscribe(*channels)

    def message(self, *, timeout: float, confirmations: bool = False) -> Any:
        return self._pubsub.get_message(ignore_subscribe_messages=not confirmations,
                                        timeout=timeout)  # fmt: skip

    def close(self) -> None:
        self._pubsub.close()
