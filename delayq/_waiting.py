"""Waiting for a job's end: subscribe first, then read, then wait for the word. No polling.

The scripts that end a job tell its origin id on the shard's outcomes channel (sharded
pub/sub, in the shard's slot, so on a cluster it is published and heard on the shard's node
only). A waiter subscribes, reads the outcome (outcome.lua), and if the job has not ended yet
waits for its id on the channel, then reads again. An end that came before the subscription is
in the record; one that comes after is heard. A subscription lost is made again, and every
waiter reads again once it is back: what was published meanwhile is in the records.

asyncio: one subscription per shard and event loop serves every waiter of the app
(``AsyncWaiters``); synchronous: one per call (``wait_sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delayq._errors import ResultUnavailable
from delayq._keys import Keys, origin_id
from delayq._outcomes import Outcome, Progress

if TYPE_CHECKING:
    from delayq._producer import Producer
    from delayq._runners import AsyncRunner, SyncSubscription

log = logging.getLogger("delayq")
_LOST = (RedisConnectionError, RedisTimeoutError)  # not OSError: TimeoutError is one
# How often a subscription checks that its shard's node still holds the shard (a cluster).
CHECK_EVERY_S = 2.0
OnProgress = Callable[[Progress], object]


def unknown(timer_id: str) -> ResultUnavailable:
    return ResultUnavailable(
        f"nothing is known of job {timer_id!r}: no such timer was scheduled, its result was "
        "not kept (result_ttl=0), or its retention ended"
    )


def _timed_out(timer_id: str, timeout: float, outcome: Outcome) -> TimeoutError:
    return TimeoutError(f"job {timer_id!r} did not end within {timeout:g} s ({outcome.state})")


def _ended(outcome: Outcome | None, timer_id: str) -> Outcome | None:
    """The outcome if the job ended, None if it is under way; ResultUnavailable if unknown."""
    if outcome is None:
        raise unknown(timer_id)
    return outcome if outcome.ended else None


class _Progressed:
    """Hands each new progress of a job under way to ``on_progress``, once."""

    def __init__(self, on_progress: OnProgress | None) -> None:
        self.on_progress = on_progress
        self.last: Progress | None = None

    def __call__(self, outcome: Outcome) -> None:
        if self.on_progress is not None and outcome.progress not in (None, self.last):
            self.last = outcome.progress
            self.on_progress(outcome.progress)


# -- asyncio ------------------------------------------------------------------------------------


class _ShardWatch:
    """One shard's outcomes subscription, and the waiters of each origin id."""

    def __init__(self, listen: AsyncRunner, keys: Keys) -> None:
        self.listen = listen
        self.keys = keys
        self.ready = asyncio.Event()  # subscribed: what ends from now on is heard (or failed)
        self.failed: Exception | None = None  # why it cannot subscribe (e.g. ACL): told to waiters
        self.waiting: dict[str, set[asyncio.Event]] = {}
        self.task = asyncio.create_task(self._run(), name=f"outcomes {keys.tag}")

    def register(self, origin: str) -> asyncio.Event:
        event = asyncio.Event()
        self.waiting.setdefault(origin, set()).add(event)
        return event

    def unregister(self, origin: str, event: asyncio.Event) -> None:
        events = self.waiting.get(origin)
        if events is not None:
            events.discard(event)
            if not events:
                del self.waiting[origin]

    def _wake_all(self) -> None:
        for events in self.waiting.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            node = self.listen.node_for(self.keys.index)
            pubsub = node.subscription()
            try:
                await pubsub.ssubscribe(self.keys.outcomes)
                while (await pubsub.message(timeout=5.0, confirmations=True) or {}).get(
                    "type"
                ) != "ssubscribe":
                    pass
                self.ready.set()
                self._wake_all()  # ends published while it was away are in the records
                backoff = 0.05
                await self._receive(pubsub, node)
            except _LOST as exc:
                log.debug("outcomes subscription of %s lost: %r", self.keys.tag, exc)
            except Exception as exc:  # refused, not lost: waiters raise it (the next makes anew)
                log.warning("outcomes subscription of %s failed: %r", self.keys.tag, exc)
                self.failed = exc
                self.ready.set()
                self._wake_all()
                return
            finally:
                if self.failed is None:
                    self.ready.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            await self.listen.follow()

    async def _receive(self, pubsub: Any, node: AsyncRunner) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time() + CHECK_EVERY_S
        while True:
            message = await pubsub.message(timeout=1.0, confirmations=True)
            if message is not None:
                if message["type"] == "sunsubscribe":  # the slot left this node
                    return
                if message["type"] == "smessage":
                    origin = message["data"].decode("utf-8", "surrogatepass")
                    for event in self.waiting.get(origin, ()):
                        event.set()
            if loop.time() >= next_check:
                await self.listen.follow()
                if self.listen.node_for(self.keys.index) is not node:
                    return
                next_check = loop.time() + CHECK_EVERY_S


class AsyncWaiters:
    """The app's waiters on one event loop."""

    def __init__(self, app: Producer, connect: Callable[[], Any]) -> None:
        self.app = app
        self._connect = connect
        self._listen: asyncio.Task[AsyncRunner] | None = None
        self.shards: dict[str, _ShardWatch] = {}

    async def _watch(self, keys: Keys) -> _ShardWatch:
        if (
            self._listen is not None
            and self._listen.done()
            and (self._listen.cancelled() or self._listen.exception() is not None)
        ):
            self._listen = None  # a failed connection is tried again, not raised for ever
        if self._listen is None:
            self._listen = asyncio.ensure_future(self._connect())
        listen = await asyncio.shield(self._listen)
        watch = self.shards.get(keys.tag)
        if watch is None or watch.task.done():
            if watch is not None:
                watch.waiting.clear()  # its waiters have been told why it failed
            watch = self.shards[keys.tag] = _ShardWatch(listen, keys)
        return watch

    async def wait(
        self, timer_id: str, timeout: float, on_progress: OnProgress | None = None
    ) -> Outcome:
        progressed = _Progressed(on_progress)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        keys = await self.app._arun(self.app.store.keys_for(timer_id))
        watch = await self._watch(keys)
        origin = origin_id(timer_id)
        event = watch.register(origin)
        try:
            while True:
                left = deadline - loop.time()
                if not watch.ready.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watch.ready.wait(), max(left, 0))
                if watch.failed is not None:
                    raise watch.failed
                event.clear()
                outcome = await self.app._arun(self.app.store.outcome(timer_id))
                if (ended := _ended(outcome, timer_id)) is not None:
                    return ended
                assert outcome is not None
                progressed(outcome)
                left = deadline - loop.time()
                if left <= 0:
                    raise _timed_out(timer_id, timeout, outcome)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
        finally:
            watch.unregister(origin, event)

    async def close(self) -> None:
        for watch in self.shards.values():
            watch.task.cancel()
        await asyncio.gather(*(w.task for w in self.shards.values()), return_exceptions=True)
        self.shards = {}
        if self._listen is not None:
            listen, self._listen = self._listen, None
            if listen.done() and not listen.cancelled() and listen.exception() is None:
                await listen.result().close()
            else:
                listen.cancel()


# -- synchronous --------------------------------------------------------------------------------


def wait_sync(
    app: Producer, timer_id: str, timeout: float, on_progress: OnProgress | None = None
) -> Outcome:
    """``AsyncWaiters.wait`` for one synchronous call, on a subscription of its own."""
    progressed = _Progressed(on_progress)
    deadline = time.monotonic() + timeout
    keys = app._run(app.store.keys_for(timer_id))
    origin = origin_id(timer_id).encode("utf-8", "surrogatepass")
    while True:
        pubsub = app._sync_subscription(keys.index)
        try:
            pubsub.ssubscribe(keys.outcomes)
            while (pubsub.message(timeout=5.0, confirmations=True) or {}).get(
                "type"
            ) != "ssubscribe":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not subscribe to the outcome of {timer_id!r}")
            while True:
                outcome = app._run(app.store.outcome(timer_id))
                if (ended := _ended(outcome, timer_id)) is not None:
                    return ended
                assert outcome is not None
                progressed(outcome)
                if not _heard(pubsub, origin, deadline) and time.monotonic() >= deadline:
                    raise _timed_out(timer_id, timeout, outcome)
        except _LOST as exc:
            log.warning("outcomes subscription for %r lost: %r", timer_id, exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {timer_id!r}: the server was unreachable") from exc
            time.sleep(0.05)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()


def _heard(pubsub: SyncSubscription, origin: bytes, deadline: float) -> bool:
    """Wait until ``origin`` is told (True), the channel left this node, or the deadline."""
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.message(timeout=min(left, 1.0), confirmations=True)
        if message is None:
            continue
        if message["type"] == "sunsubscribe":
            raise RedisConnectionError("the shard left this node")
        if message["type"] == "smessage" and message["data"] == origin:
            return True
    return False
