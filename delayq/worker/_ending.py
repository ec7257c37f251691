"""The calls that end or move on a job's attempt: acknowledge, start, progress, retry, bury.

Each writes the job's outcome record, and its lifecycle event when the job's task tells them,
in the same script as the change itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from delayq._calls import Batch, Call, mapped, script, text
from delayq._events import EventSettings
from delayq._hooks import Delivery
from delayq._keys import GROUP, Keys, origin_id
from delayq._outcomes import Failure, Ran
from delayq.worker._callbacks import Then
from delayq.worker._progress import Told


@dataclass(frozen=True, slots=True)
class Done:
    """A delivery to acknowledge, with the run its outcome record keeps (keep_ms 0: none)."""

    delivery: Delivery
    ran: Ran
    then: Then | None = None  # its on_success callback


@dataclass(frozen=True, slots=True)
class DeadLetterBound:
    """How large the dead-letter stream may grow: entries, and bytes (approximately)."""

    maxlen: int
    max_bytes: int


def _rearmed(reply: list[Any]) -> tuple[int, str] | None:
    due = int(reply[0])
    return None if due < 0 else (due, text(reply[1]))


class OutcomeCalls:
    keys: Keys
    consumer: str
    events: EventSettings

    def ack(self, done: list[Done]) -> Batch[int]:
        """Settle deliveries; those that ran a job record its success (``Done.ran``)."""
        return Batch(self.ack_calls(done))

    def ack_calls(self, done: list[Done]) -> list[Call[int]]:
        """``ack``'s calls: one for each ready stream the deliveries came from."""
        by_stream: dict[str, list[Done]] = {}
        for x in done:
            by_stream.setdefault(x.delivery.stream, []).append(x)
        return [self._ack(stream, some) for stream, some in by_stream.items()]

    def _ack(self, stream: str, done: list[Done]) -> Call[int]:
        k = self.keys
        keys: list[Any] = [stream, k.index]
        args: list[Any] = [GROUP, k.outcomes, self.consumer, k.wake_channel]
        for x in done:
            ran, then = x.ran, x.then
            keys.append(k.outcome(x.delivery.timer_id))
            if then is not None:
                keys += (k.shadow(then.timer_id), k.data(then.timer_id))
            args += (x.delivery.entry_id, origin_id(x.delivery.timer_id),
                     b"" if ran.result is None else b"=" + ran.result, ran.keep_ms,
                     ran.attempts, ran.started_ms, ran.task,
                     *((then.timer_id, then.payload) if then else ("", "")))  # fmt: skip
        return script("ack", [*keys, k.events], [*args, self.events.spec()], decode=int)

    def started(self, runs: list[tuple[Delivery, Ran]]) -> Call[int]:
        """started.lua: these jobs started (their records say running, unless ended)."""
        keys = [*(self.keys.outcome(d.timer_id) for d, _ in runs), self.keys.events]
        args: list[Any] = [self.consumer]
        for d, ran in runs:
            args += (ran.started_ms, ran.attempts, ran.task, origin_id(d.timer_id))
        return script("started", keys, [*args, self.events.spec()], decode=int)

    def progress(self, told: list[Told]) -> Call[int]:
        """progress.lua: how far these running jobs are, told to their waiters."""
        keys = [*(self.keys.outcome(t.delivery.timer_id) for t in told), self.keys.events]
        args: list[Any] = [self.keys.outcomes]
        for t in told:
            args += (origin_id(t.delivery.timer_id), t.attempt, repr(t.fraction), t.message or "",
                     t.task)  # fmt: skip
        return script("progress", keys, [*args, self.events.spec()], decode=int)

    def retry(
        self, d: Delivery, payload: bytes, delay_s: float, *, timer_id: str | None = None,
        failure: Failure | None = None, task: str = "",
    ) -> Call[int | None]:  # fmt: skip
        """Re-arm a failed job (under ``timer_id`` if given, else its own id); None if this
        delivery no longer held its entry. ``failure``: why (None: it waits, not failed)."""
        return mapped(self._rearm(d, payload, delay_s, timer_id=timer_id, failure=failure,
                                  task=task),
                      lambda armed: None if armed is None else armed[0])  # fmt: skip

    def throttle(
        self, d: Delivery, delay_ms: int, *, reason: str, task: str, attempt: int
    ) -> Call[tuple[int, str] | None]:
        """Re-arm a job that waits for a limit, as it was (no attempt counted), ``delay_ms``
        from now (at once if it was handed a slot meanwhile); (due ms, the id it was re-armed
        under), or None if this delivery no longer held its entry."""
        return self._rearm(d, d.raw, delay_ms / 1000, task=task, throttled=reason,
                           attempts=attempt)  # fmt: skip

    def _rearm(
        self, d: Delivery, payload: bytes, delay_s: float, *, timer_id: str | None = None,
        failure: Failure | None = None, task: str = "", throttled: str = "", attempts: int = 0,
    ) -> Call[tuple[int, str] | None]:  # fmt: skip
        k = self.keys
        tid = timer_id or d.timer_id
        fallback = k.retry_id(tid, d.entry_id)
        keys = [k.shadow(tid), k.data(tid), k.index, d.stream, k.stats,
                k.shadow(fallback), k.data(fallback), k.items(tid), k.items(fallback),
                k.outcome(d.timer_id), k.events, k.woken(tid)]  # fmt: skip
        args: list[Any] = [GROUP, d.entry_id, tid, payload, max(1, round(delay_s * 1000)),
                           k.wake_channel, fallback, d.items or b"", self.consumer,
                           failure.attempts if failure else attempts,
                           failure.type_name if failure else "",
                           failure.message if failure else "", task,
                           self.events.spec(), throttled]  # fmt: skip
        return script("retry", keys, args, decode=_rearmed)

    def bury(
        self, d: Delivery, *, task: str, reason: str, traceback: str, bound: DeadLetterBound,
        failure: Failure, payload: bytes | None = None, then: Then | None = None,
    ) -> Call[str | None]:  # fmt: skip
        """Move a delivery to the dead letters (with ``payload`` instead of its own, if given);
        its job's outcome record says failed, with ``failure``."""
        k = self.keys
        keys = [d.stream, k.dead, k.stats, k.outcome(d.timer_id), k.events, k.index]
        if then is not None:
            keys += (k.shadow(then.timer_id), k.data(then.timer_id))
        args: list[Any] = [GROUP, d.entry_id, d.timer_id, d.raw if payload is None else payload,
                           task, reason, traceback, bound.maxlen, d.items or b"", self.consumer,
                           bound.max_bytes, k.outcomes, failure.keep_ms, failure.attempts,
                           failure.started_ms or "", failure.type_name,
                           origin_id(d.timer_id), failure.message,
                           self.events.spec(), k.wake_channel,
                           *((then.timer_id, then.payload) if then else ("", ""))]  # fmt: skip
        return script("bury", keys, args, decode=lambda entry: text(entry) if entry else None)
