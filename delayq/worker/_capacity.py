"""A worker's job slots and handler threads, and what its executors count."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from delayq._hooks import Delivery
from delayq.worker._lanes import Lanes

if TYPE_CHECKING:
    from delayq.worker._executor import Executor


@dataclass
class Counters:
    executed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    reclaimed: int = 0
    handed_back: int = 0
    throttled: int = 0  # waited for a concurrency or rate limit, re-armed


@dataclass
class Running:
    delivery: Delivery
    job: asyncio.Task[None]


class Capacity:
    """A worker's job slots and handler threads, shared by the executors of its shards
    (one executor per shard: ``readers``)."""

    def __init__(self, size: int, readers: int = 1) -> None:
        self.size = size
        self.readers = readers
        self.lanes = Lanes(size, "delayq-job")
        self.executors: list[Executor] = []
        self.freed = asyncio.Event()
        self.freed_at = time.monotonic()

    @property
    def free(self) -> int:
        return self.size - sum(len(executor.running) for executor in self.executors)

    def slot_freed(self) -> None:
        self.freed_at = time.monotonic()
        for executor in self.executors:  # jobs read ahead by any shard may start now
            executor._start_buffered()
        self.freed.set()
