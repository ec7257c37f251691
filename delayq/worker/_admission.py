"""Admission of the jobs of limited tasks: a run takes its concurrency slot and rate token
(``_limiter``) before it starts, or is re-armed as a timer for when it may run.

Deliveries are screened as they are read, before they wait for one of the worker's job
slots: sorting a burst of throttled jobs back into their lines then goes as fast as the
server answers, not one job per freed slot, and slots of keys whose jobs are deeper in the
stream do not sit idle meanwhile. A screened job that may run keeps its slot while it waits in
the read-ahead buffer; a job that reaches a run unscreened (taken over from a dead worker) is
admitted just before it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from delayq._calls import Batch, Call
from delayq._codec import Payload, decode_payload, peek_task
from delayq._errors import PayloadError, ScheduleError
from delayq._hooks import Delivery
from delayq._task import Task
from delayq.worker._capacity import Counters
from delayq.worker._engine import Engine
from delayq.worker._limiter import Limiter, Wait

# How long after a throttle the worker keeps reading ahead of its free slots to screen more.
SCREEN_FOR_S = 1.0


@dataclass(frozen=True, slots=True)
class _Throttle:
    task: Task[Any, Any]
    payload: Payload
    wait: Wait


Bury = Callable[[Delivery, Task[Any, Any], Payload, str], Awaitable[None]]


class Admission:
    """One executor's admissions: which deliveries hold a slot already, and the throttles."""

    def __init__(
        self, engine: Engine, limiter: Limiter | None,
        find_task: Callable[[str], Task[Any, Any] | None], *, max_payload_bytes: int,
        settled: set[str], counters: Counters, bury: Bury,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.limiter = limiter
        self.find_task = find_task
        self.max_payload_bytes = max_payload_bytes
        self.settled = settled
        self.counters = counters
        self.bury = bury
        self.holders: dict[str, str | None] = {}  # screened and admitted: entry id -> slot
        self.throttled_at = -SCREEN_FOR_S

    @property
    def screening(self) -> bool:
        """Whether throttles came lately: the executor then reads ahead to screen more."""
        return time.monotonic() - self.throttled_at < SCREEN_FOR_S

    async def screen(self, deliveries: list[Delivery]) -> list[Delivery]:
        """The deliveries that may wait for a job slot: the others were throttled (re-armed,
        all in one round trip) or, if undecodable, are left for the run to bury."""
        if self.limiter is None:
            return deliveries
        checks = [(d, task) for d in deliveries
                  if (task := self._limited(d)) is not None]  # fmt: skip
        if not checks:
            return deliveries
        verdicts = await asyncio.gather(*(self._check(d, task) for d, task in checks))
        waits = [(d, v) for (d, _), v in zip(checks, verdicts, strict=True) if v is not None]
        if waits:
            await self._throttle_all(waits)
        dropped = {d.entry_id for d, _ in waits}
        return [d for d in deliveries if d.entry_id not in dropped]

    def _limited(self, d: Delivery) -> Task[Any, Any] | None:
        name = peek_task(d.raw)
        task = None if name is None else self.find_task(name)
        return task if task is not None and task.options.limits is not None else None

    async def _check(self, d: Delivery, task: Task[Any, Any]) -> _Throttle | None:
        """None: it may wait for a job slot (holding its limit's slot, if it took one)."""
        limits = task.options.limits
        try:
            payload = decode_payload(d.raw, max_bytes=self.max_payload_bytes)
            args = task.job_args(payload, d, self.max_payload_bytes)
            assert limits is not None and self.limiter is not None
            admitted = await self.limiter.admit(d, task, limits, args, payload.kwargs)
        except (PayloadError, ScheduleError):
            return None  # its run buries it, with the reason
        if isinstance(admitted, Wait):
            return _Throttle(task, payload, admitted)
        self.holders[d.entry_id] = admitted.holder
        return None

    async def _throttle_all(self, waits: list[tuple[Delivery, _Throttle]]) -> None:
        self.counters.throttled += len(waits)
        self.throttled_at = time.monotonic()
        armed = await self.engine.run(Batch([self._throttle_call(d, t) for d, t in waits]))
        for (d, t), rearmed in zip(waits, armed, strict=True):
            await self._follow(d, t.wait, rearmed)

    async def admit(
        self, d: Delivery, task: Task[Any, Any], payload: Payload, args: tuple[Any, ...]
    ) -> tuple[bool, str | None]:
        """Whether the job may run now, past its task's limits, and the slot it took; one
        that may not is re-armed for when it may (or buried, if its key cannot be made).
        For a delivery that holds one of the executor's job slots (screened ones are
        admitted by ``screen``)."""
        if d.entry_id in self.holders:
            return True, self.holders.pop(d.entry_id)
        limits = task.options.limits
        if limits is None or self.limiter is None:
            return True, None
        try:
            admitted = await self.limiter.admit(d, task, limits, args, payload.kwargs)
        except ScheduleError as exc:
            await self.bury(d, task, payload, str(exc))
            return False, None
        if isinstance(admitted, Wait):
            self.settled.add(d.entry_id)  # its entry leaves the stream: not a takeover
            await self._throttle(d, task, payload, admitted)
            return False, None
        return True, admitted.holder

    async def _throttle(self, d: Delivery, task: Task[Any, Any], payload: Payload,
                        wait: Wait) -> None:  # fmt: skip
        self.counters.throttled += 1
        self.throttled_at = time.monotonic()
        rearmed = await self.engine.run(self._throttle_call(d, _Throttle(task, payload, wait)))
        await self._follow(d, wait, rearmed)

    def _throttle_call(self, d: Delivery, t: _Throttle) -> Call[tuple[int, str] | None]:
        return self.engine.throttle(d, t.wait.delay_ms, reason=t.wait.reason, task=t.task.name,
                                    attempt=t.payload.attempt + 1)  # fmt: skip

    async def _follow(self, d: Delivery, wait: Wait, rearmed: tuple[int, str] | None) -> None:
        """A job re-armed under another id than its own: its place in line follows it."""
        if rearmed is not None and rearmed[1] != d.timer_id and self.limiter is not None:
            await self.limiter.moved(wait, d.timer_id, rearmed[1])

    def release(self, holder: str | None) -> None:
        if holder is not None and self.limiter is not None:
            self.limiter.release(holder)

    def drop(self, d: Delivery) -> None:
        """A screened delivery handed back unrun: its slot goes to the next in line."""
        self.release(self.holders.pop(d.entry_id, None))
