"""Progress told by running jobs (``current_job().progress``), kept until the next flush.

Only the latest of each job is kept: a handler reporting in a tight loop costs one write per
flush, not one per call. Handlers in threads report too, so the box is locked and wakes the
flush on the worker's event loop from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from delayq._hooks import Delivery


@dataclass(frozen=True, slots=True)
class Told:
    """One job's latest progress: ``attempt`` counts from 1, as its outcome record does."""

    delivery: Delivery
    attempt: int
    fraction: float
    message: str | None
    task: str


class ProgressBox:
    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake  # set when there is something to send
        self._lock = threading.Lock()
        self._latest: dict[str, Told] = {}

    def reporter(self, d: Delivery, attempt: int, task: str) -> Callable[[float, str | None], None]:
        """What a job's context calls (on the worker's event loop, where it is made)."""
        return functools.partial(self._put, asyncio.get_running_loop(), d, attempt, task)

    def _put(
        self, loop: asyncio.AbstractEventLoop, d: Delivery, attempt: int, task: str,
        fraction: float, message: str | None,
    ) -> None:  # fmt: skip
        with self._lock:
            self._latest[d.entry_id] = Told(d, attempt, fraction, message, task)
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._wake.set()
        else:
            # A handler thread outliving its worker's loop: its progress has nowhere to go.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    def take(self, settled: set[str]) -> list[Told]:
        """What to send now, leaving out jobs already ended (their end tells the rest)."""
        with self._lock:
            latest, self._latest = self._latest, {}
        return [t for entry, t in latest.items() if entry not in settled]

    def put_back(self, told: list[Told]) -> None:
        """Progress a failed flush did not send, unless newer came meanwhile."""
        with self._lock:
            for t in told:
                self._latest.setdefault(t.delivery.entry_id, t)
