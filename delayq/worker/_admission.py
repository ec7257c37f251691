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
from delayq.worker._limiter import Admitted, Ask, Limiter, Wait

# How long after a throttle the worker keeps reading ahead of its free slots to screen more.
SCREEN_FOR_S = 1.0


@dataclass(frozen=True, slots=True)
class _Throttle:
    task: Task[Any, Any]
    payload: Payload
    wait: Wait


@dataclass(frozen=True, slots=True)
class Screened:
    """A delivery screened and admitted: what its run needs, decoded once."""

    task: Task[Any, Any]
    payload: Payload
    args: tuple[Any, ...]
    holder: str | None


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
        self.screened: dict[str, Screened] = {}  # screened and admitted, by entry id
        self._payloads: dict[str, Payload] = {}  # decoded while screening
        self.throttled_at = -SCREEN_FOR_S

    @property
    def screening(self) -> bool:
        """Whether throttles came lately: the executor then reads ahead to screen more."""
        return time.monotonic() - self.throttled_at < SCREEN_FOR_S

    def asks(self, deliveries: list[Delivery]) -> list[Ask]:
        """What the runs of the limited tasks' deliveries among these ask for."""
        if self.limiter is None:
            return []
        return [ask for d in deliveries if (ask := self._ask(d)) is not None]

    async def screen(
        self, deliveries: list[Delivery], asks: list[Ask], keep: Callable[[Delivery, int], None]
    ) -> list[Delivery]:
        """The deliveries that may wait for a job slot now: the others were throttled
        (re-armed, all in one round trip), or given to ``keep`` with the ms until their rate
        token, or, if undecodable, are left for the run to bury."""
        assert self.limiter is not None
        try:
            verdicts = await self.limiter.admit_many(asks)
        except BaseException:  # each is admitted again before it runs: nothing kept for them
            for ask in asks:
                self._payloads.pop(ask.delivery.entry_id, None)
            raise
        waits = []
        kept: set[str] = set()
        for ask, verdict in zip(asks, verdicts, strict=True):
            d = ask.delivery
            if isinstance(verdict, Wait):
                waits.append((d, _Throttle(ask.task, self._payloads.pop(d.entry_id), verdict)))
            elif isinstance(verdict, Admitted):
                self.screened[d.entry_id] = Screened(
                    ask.task, self._payloads.pop(d.entry_id), ask.args, verdict.holder
                )
                if verdict.after_ms > 0:
                    keep(d, verdict.after_ms)
                    kept.add(d.entry_id)
            else:  # its run buries it, with the reason
                self._payloads.pop(d.entry_id, None)
        if waits:
            await self._throttle_all(waits)
        dropped = kept | {d.entry_id for d, _ in waits}
        return [d for d in deliveries if d.entry_id not in dropped]

    def _ask(self, d: Delivery) -> Ask | None:
        """What the run of a limited task's delivery asks for; None for the others."""
        name = peek_task(d.raw)
        task = None if name is None else self.find_task(name)
        if task is None or task.options.limits is None:
            return None
        try:
            payload = decode_payload(d.raw, max_bytes=self.max_payload_bytes)
            args = task.job_args(payload, d, self.max_payload_bytes)
        except PayloadError:
            return None  # its run buries it, with the reason
        self._payloads[d.entry_id] = payload
        return Ask(d, task, task.options.limits, args, payload.kwargs)

    def take(self, d: Delivery) -> Screened | None:
        """What screening found for this delivery, if it was screened and admitted."""
        return self.screened.pop(d.entry_id, None)

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
        if admitted.after_ms > 0:  # its rate token comes this soon
            await asyncio.sleep(admitted.after_ms / 1000)
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
        found = self.screened.pop(d.entry_id, None)
        if found is not None:
            self.release(found.holder)
