"""The keyspace-notification listener: expired shadow keys and wake nudges (watched keys have
a subscription of their own, held by the watch leader: see ``_watching``).

Expiry hints come from where ``_checks.hint_source`` found them cheapest: the keyspace channels
of this namespace's shadow keys, the database-wide ``expired`` channel, or nowhere.

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
from delayq.worker._checks import HintSource
from delayq.worker._loops import wait_or_stop

log = logging.getLogger("delayq.worker")
YIELD_EVERY = 50
# How often a listener checks that its node still holds its shard (a cluster's layout is
# read at most once a second per worker, whatever the number of listeners).
LAYOUT_CHECK_S = 2.0


class Listener:
    def __init__(
        self,
        listen: AsyncRunner,
        keys: Keys,
        hints: HintSource,
        *,
        on_expired: Callable[[str], None],
        on_wake: Callable[[], None],
        on_connect: Callable[[], None],
        stopping: asyncio.Event,
    ) -> None:
        self.listen = listen
        self.keys = keys
        self.hints = hints
        self.expired_channel = (hints.channel or "").encode()
        # A shadow key's keyspace channel: this prefix, then the key's name.
        self.keyspace_prefix = (hints.pattern or "").removesuffix(keys.shadow_prefix + "*")
        self.wake_channel = keys.wake_channel.encode()
        self.on_expired = on_expired
        self.on_wake = on_wake
        self.on_connect = on_connect
        self.stopping = stopping
        self.connects = 0
        self.subscribed = asyncio.Event()  # set once the first subscription is active

    async def run(self) -> None:
        backoff = 0.05
        failures = 0  # attempts failed since the last subscription: one warning an outage
        while not self.stopping.is_set():
            if self.connects:
                await self.listen.follow()  # a lost node may have been replaced meanwhile
            # Keyspace events are published by the node holding the keys (on a cluster).
            node = self.listen.node_for(self.keys.index)
            pubsub = node.subscription()
            try:
                channels = [self.wake_channel, *filter(None, [self.expired_channel])]
                await pubsub.subscribe(*channels)
                if self.hints.pattern:
                    await pubsub.psubscribe(self.hints.pattern)
                await self._confirmed(pubsub, len(channels) + bool(self.hints.pattern))
                self.connects += 1
                if self.connects > 1:
                    log.warning("notification listener reconnected after %d failed attempt(s); "
                                "sweeping for lost events", failures)  # fmt: skip
                failures = 0
                self.on_connect()
                self.subscribed.set()
                backoff = 0.05
                await self._receive(pubsub, node)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failures += 1
                report = log.warning if failures == 1 else log.debug
                report("notification listener lost its connection: %s", exc)
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
            if message["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            else:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if kind == "pmessage":  # a shadow key's keyspace channel: the event is the data
            key = channel.decode("utf-8", "replace")[len(self.keyspace_prefix) :]
            if data != b"expired":
                return
        elif kind != "message":
            return
        elif channel == self.wake_channel:
            self.on_wake()
            return
        else:
            key = data.decode("utf-8", "replace")
        timer_id = self.keys.id_from_shadow(key)
        if timer_id is not None:
            self.on_expired(timer_id)

    async def _receive(self, pubsub: Subscription, node: AsyncRunner) -> None:
        """Until stopped, or the shard moved to another node (failover, migration)."""
        handled = 0
        loop = asyncio.get_running_loop()
        next_check = loop.time() + LAYOUT_CHECK_S
        while not self.stopping.is_set():
            if loop.time() >= next_check:
                await self.listen.follow()
                if self.listen.node_for(self.keys.index) is not node:
                    log.info("the shard %s moved to another node: subscribing there",
                             self.keys.tag)  # fmt: skip
                    return
                next_check = loop.time() + LAYOUT_CHECK_S
            message = await pubsub.message(timeout=1.0)
            handled += 1
            if handled % YIELD_EVERY == 0:
                # Buffered messages are parsed without yielding; expirations of many unrelated
                # keys would otherwise stall the deadline loop sharing this event loop.
                await asyncio.sleep(0)
            if message is not None:
                self._dispatch(message)
