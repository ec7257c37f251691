"""The worker's calls (``_calls``) and the asyncio runner that sends them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from delayq._events import OFF, EventSettings
from delayq._hooks import Delivery
from delayq._keys import Keys
from delayq._route import DEFAULT_QUEUE
from delayq._runners import AsyncRunner
from delayq.worker._calls import (
    Due,
    FireResult,
    PeriodicState,
    WatchOp,
    WorkerCalls,
)
from delayq.worker._ending import DeadLetterBound, Done

__all__ = ["DeadLetterBound", "Delivery", "Done", "Due", "Engine", "FireResult",
           "PeriodicState", "WatchOp", "monotonic_ms"]  # fmt: skip


class Engine(WorkerCalls):
    """A worker's calls, and ``run`` to send one: ``await engine.run(engine.fire(ids))``."""

    def __init__(
        self,
        io: AsyncRunner,
        keys: Keys,
        consumer: str,
        events: EventSettings = OFF,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> None:
        super().__init__(keys, consumer, events, queues)
        self.io = io
        self.run = io.run


def monotonic_ms() -> float:
    return time.monotonic() * 1000
