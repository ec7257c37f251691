"""The reconciliation sweeper: fires overdue timers and repairs keys that disagree.

It runs when the worker starts, after every reconnect of the notification listener, and every
``sweep_interval`` seconds; the full orphan scan runs at start and every
``orphan_scan_interval`` seconds. What it repaired is logged and counted in the stats hash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from delayq.worker._engine import Engine
from delayq.worker._firing import Firing

log = logging.getLogger("delayq.worker")
SCAN_COUNT = 1000
# Consumers of the ready stream with nothing pending and idle this long are forgotten.
CONSUMER_IDLE_MS = 3600 * 1000


@dataclass
class SweepCounters:
    sweeps: int = 0
    fired_overdue: int = 0
    repaired_data: int = 0


class Sweeper:
    def __init__(
        self,
        engine: Engine,
        firing: Firing,
        *,
        orphan_scan_interval: float,
        scan_watched: Callable[[], Awaitable[None]] | None = None,
        each_sweep: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.each_sweep = each_sweep
        self.scan_watched = scan_watched
        self.firing = firing
        self.orphan_scan_interval = orphan_scan_interval
        self.kick = asyncio.Event()
        self.counters = SweepCounters()
        self._last_scan = float("-inf")
        self._scan_requested = True

    def request(self, *, full: bool = False) -> None:
        """Sweep as soon as possible (the listener reconnected, or the worker started)."""
        self._scan_requested = self._scan_requested or full
        self.kick.set()

    async def sweep(self) -> None:
        self.counters.sweeps += 1
        fired, _next = await self.firing.fire_due()
        if self.each_sweep is not None:
            await self.each_sweep()
        if fired:
            self.counters.fired_overdue += fired
            log.info("sweep fired %d overdue timer(s)", fired)
        due_scan = time.monotonic() - self._last_scan >= self.orphan_scan_interval
        if self._scan_requested or due_scan:
            if self.scan_watched is not None:
                await self.scan_watched()
            await self.scan_orphans()
            # Only once it completed: a scan cut short by an error is tried again next sweep.
            self._scan_requested = False
            self._last_scan = time.monotonic()

    async def scan_orphans(self) -> None:
        repaired = 0
        cursor = 0
        while True:
            cursor, ids = await self.engine.run(self.engine.scan_data_ids(cursor, SCAN_COUNT))
            # A step finds a bucket's every id: thousands, when few other keys share the shard.
            for start in range(0, len(ids), SCAN_COUNT):
                suspects = await self.engine.run(
                    self.engine.unindexed(ids[start : start + SCAN_COUNT])
                )
                if suspects:
                    repaired += await self.engine.run(self.engine.repair(suspects))
            if cursor == 0:
                break
        if repaired:
            self.counters.repaired_data += repaired
            log.warning("sweep re-indexed %d timer(s) missing from the due index", repaired)
            self.firing.wake.set()
        for stream, name in await self.engine.run(self.engine.stale_consumers(CONSUMER_IDLE_MS)):
            await self.engine.run(self.engine.drop_consumer(stream, name))
