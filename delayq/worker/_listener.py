"""The keyspace-notification listener: expired shadow keys and wake nudges (watched keys have
a subscription of their own, held by the watch leader: see ``_watching``).

It owns a pub/sub connection that does not reconnect by itself, so that every reconnect is
seen here and followed by a sweep: whatever was published while it was away is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delayq._keys import Keys
from delayq._runners import AsyncRunner, Subscription
from delayq.worker._loops import wait_or_stop

log = logging.getLogger("delayq.worker")
YIELD_EVERY = 50


class Listener:
    def __init__(
        self,
        listen: AsyncRunner,
        keys: Keys,
        db: int,
        *,
        on_expired: Callable[[str], None],
        on_wake: Callable[[], None],
        on_connect: Callable[[], None],
        stopping: asyncio.Event,
    ) -> None:
        self.listen = listen
        self.keys = keys
        self.expired_channel = Keys.expired_channel(db).encode()
        self.wake_channel = keys.wake_channel.encode()
        self.on_expired = on_expired
        self.on_wake = on_wake
        self.on_connect = on_connect
        self.stopping = stopping
        self.connects = 0
        self.subscribed = asyncio.Event()  # set once the first subscription is active

    async def run(self) -> None:
        backoff = 0.05
        while not self.stopping.is_set():
            pubsub = self.listen.subscription()
            try:
                await pubsub.subscribe(self.expired_channel, self.wake_channel)
                await self._confirmed(pubsub, 2)
                self.connects += 1
                if self.connects > 1:
                    log.warning("notification listener reconnected; sweeping for lost events")
                self.on_connect()
                self.subscribed.set()
                backoff = 0.05
                await self._receive(pubsub)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("notification listener lost its connection: %s", exc)
            finally:
                await pubsub.aclose()
            if await wait_or_stop(self.stopping, backoff):
                return
            backoff = min(backoff * 2, 2.0)

    async def _confirmed(self, pubsub: Subscription, expected: int) -> None:
        """Wait until the server confirmed every subscription: before that, a nudge or an
        event may still be missed, and the caller must not count on them yet."""
        confirmed = 0
        while confirmed < expected:
            message = await pubsub.message(timeout=5.0, confirmations=True)
            if message is None:
                raise RedisTimeoutError("no subscription confirmation within 5 s")
            if message["type"] == "subscribe":
                confirmed += 1
            elif message["type"] == "message":
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["channel"] == self.wake_channel:
            self.on_wake()
            return
        timer_id = self.keys.id_from_shadow(message["data"].decode("utf-8", "replace"))
        if timer_id is not None:
            self.on_expired(timer_id)

    async def _receive(self, pubsub: Subscription) -> None:
        handled = 0
        while not self.stopping.is_set():
            message = await pubsub.message(timeout=1.0)
            handled += 1
            if handled % YIELD_EVERY == 0:
                # Buffered messages are parsed without yielding; expirations of many unrelated
                # keys would otherwise stall the deadline loop sharing this event loop.
                await asyncio.sleep(0)
            if message is None:
                continue
            if message["type"] == "message":
                self._dispatch(message)
