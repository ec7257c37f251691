"""Watching keys written by other programs (on_expire): learn their deadlines, fire on expiry.

Keyspace events for the watched patterns arrive through the listener; they are batched here.
A scan at start, after each listener reconnect and with every orphan scan finds keys whose
events were missed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from delayq._app import Delayq
from delayq._watch import Watcher, WatchTarget, resolve
from delayq.worker._engine import Engine
from delayq.worker._loops import wait_any

log = logging.getLogger("delayq.worker")
SCAN_COUNT = 1000
# Events that can change a key's TTL (re-read it), and those that end its life.
REARM_EVENTS = {"set", "expire", "persist", "rename_to", "restore", "copy_to"}
GONE_EVENTS = {"del", "rename_from"}


class Watching:
    def __init__(self, app: Delayq, engine: Engine, *, batch: int, stopping: asyncio.Event) -> None:
        self.app = app
        self.engine = engine
        self.batch = batch
        self.stopping = stopping
        self.watchers: dict[str, Watcher[Any, Any]] = dict(app.watchers)
        # key -> [expired seen, last other event]: an expiry and the key's next life (a SET
        # right after) can arrive in one batch, and both must be acted on, in that order.
        self.pending: dict[str, list[Any]] = {}
        self.ready = asyncio.Event()
        self.scan_requested = asyncio.Event()
        self.armed = 0

    @property
    def active(self) -> bool:
        return bool(self.watchers)

    def patterns(self) -> list[str]:
        return sorted({w.spec.pattern for w in self.watchers.values()})

    def resolve(self, timer_id: str) -> WatchTarget:
        return resolve(self.watchers, timer_id, self.app.max_payload_bytes)

    def targets(self, key: str) -> list[WatchTarget]:
        return [
            self.resolve(w.timer_id(key))
            for w in self.watchers.values()
            if w.spec.suffix_of(key) is not None
        ]

    def event(self, key: str, event: str) -> None:
        """A keyspace event for a watched key (called by the listener)."""
        state = self.pending.setdefault(key, [False, None])
        if event == "expired":
            state[0], state[1] = True, None  # what came before the expiry no longer matters
        else:
            state[1] = event
        self.ready.set()

    async def run_events(self) -> None:
        while not self.stopping.is_set():
            await wait_any([self.ready, self.stopping], None)
            self.ready.clear()
            while self.pending:
                chunk = dict(list(self.pending.items())[: self.batch])
                for key in chunk:
                    del self.pending[key]
                try:
                    await self._apply(chunk)
                except Exception:
                    for key, state in chunk.items():
                        self.pending.setdefault(key, state)
                    raise

    async def _apply(self, events: dict[str, list[Any]]) -> None:
        expired, rearm, gone = [], [], []
        for key, (was_expired, event) in events.items():
            found = self.targets(key)
            if was_expired:
                expired += found
            if event in GONE_EVENTS:
                gone += found
            elif event in REARM_EVENTS:
                rearm += found
        if expired:  # the old life's expiry first, then the new life's deadline
            await self.engine.fire_watch(expired, expired=True)
        if rearm:
            await self.engine.watch(rearm)
            self.armed += len(rearm)
        for target in gone:
            # Deleted, not expired: nothing to react to.
            await self.engine.cancel(target.timer_id)

    async def scan(self) -> None:
        """Find watched keys and arm their timers (their events may have been missed)."""
        for pattern in self.patterns():
            cursor = 0
            while True:
                cursor, keys = await self.engine.scan_keys(cursor, pattern, SCAN_COUNT)
                targets = [t for key in keys for t in self.targets(key)]
                if targets:
                    await self.engine.watch(targets)
                    self.armed += len(targets)
                if cursor == 0:
                    break
