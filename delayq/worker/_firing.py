"""Firing timers at their deadlines from the due index, and from expiry notifications.

The index is the clock: the fire loop sleeps until the earliest deadline (or a wake nudge when
an earlier timer is armed) and then claims what is due. Notifications are only hints; each one
goes through the same claim, in batches.
"""

from __future__ import annotations

import asyncio
import logging

from delayq._watch import is_watch_id
from delayq.worker._engine import Engine, FireResult, monotonic_ms
from delayq.worker._loops import wait_any

log = logging.getLogger("delayq.worker")

# Even with no nudge, re-read the index this often: a nudge published while the listener was
# reconnecting is lost, and the sweep after the reconnect may still be a moment away.
MAX_IDLE_WAIT = 5.0


class Firing:
    def __init__(
        self,
        engine: Engine,
        *,
        batch: int,
        stopping: asyncio.Event,
    ) -> None:
        self.engine = engine
        self.batch = batch
        self.stopping = stopping
        self.wake = asyncio.Event()
        self.hinted: set[str] = set()
        self.hint_ready = asyncio.Event()
        # The server's clock minus this process's monotonic clock, refreshed by every read of
        # the index. Only sleeps are timed with it: what is due is decided by the server's own
        # clock (due.lua), and a monotonic clock does not jump when the wall clock is stepped.
        self.offset_ms = 0.0
        self.fired = 0
        self.orphans = 0

    def server_now_ms(self) -> float:
        return monotonic_ms() + self.offset_ms

    def _clock(self, server_ms: int) -> None:
        # Read inside a script, before the reply travelled back: a slightly late estimate only
        # ever makes the loop wake a fraction of a ms later.
        self.offset_ms = server_ms - monotonic_ms()

    def _account(self, result: FireResult) -> None:
        self._clock(result.now_ms)
        self.fired += result.fired
        self.orphans += result.orphans
        if result.orphans:
            log.warning("removed %d due-index entries that had no data", result.orphans)

    async def fire_due(self) -> tuple[int, int | None]:
        """Claim everything due now; returns (fired, earliest remaining deadline)."""
        fired = 0
        while True:
            due = await self.engine.run(self.engine.due(self.engine.keys.index, self.batch))
            self._clock(due.now_ms)
            if not due.ids:
                return fired, due.first_ms
            watched = [i for i in due.ids if is_watch_id(i)]
            if watched:
                # Armed by an older version: watch timers are the watch leader's to judge.
                await self.engine.run(self.engine.adopt_watch_timers(watched))
                continue
            result = await self.fire(due.ids)
            fired += result.fired
            if len(due.ids) < self.batch or result.fired == 0:
                return fired, result.next_due_ms

    async def fire(self, ids: list[str]) -> FireResult:
        result = await self.engine.run(self.engine.fire(ids))
        self._account(result)
        return result

    async def run_deadlines(self) -> None:
        """The deadline loop: fire, then sleep exactly until the next deadline or a nudge."""
        while not self.stopping.is_set():
            self.wake.clear()
            fired, next_due = await self.fire_due()
            if next_due is None:
                timeout = MAX_IDLE_WAIT
            else:
                timeout = min(MAX_IDLE_WAIT, (next_due - self.server_now_ms()) / 1000)
                if fired == 0 and timeout <= 0:
                    timeout = 0.001  # the server's clock has not reached it yet: no busy loop
            if timeout > 0:
                await wait_any([self.wake, self.stopping], timeout)

    def hint(self, timer_id: str) -> None:
        """An expiry notification named this timer: claim it soon, batched with others."""
        self.hinted.add(timer_id)
        self.hint_ready.set()

    async def run_hints(self) -> None:
        while not self.stopping.is_set():
            await wait_any([self.hint_ready, self.stopping], None)
            self.hint_ready.clear()
            while self.hinted:
                ids = [self.hinted.pop() for _ in range(min(self.batch, len(self.hinted)))]
                try:
                    await self.fire(ids)
                except Exception:
                    self.hinted.update(ids)  # keep them for the next try
                    raise
