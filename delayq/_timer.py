"""The Timer handle: inspect, reschedule, restart, extend, pause, resume or cancel a timer."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from delayq._codec import Payload, decode_payload
from delayq._errors import TimerPaused
from delayq._waiting import OnProgress, unknown
from delayq._when import Delay, delay_seconds, from_ms, resolve_when

if TYPE_CHECKING:
    from delayq._calls import Flow
    from delayq._outcomes import Outcome, Progress
    from delayq._producer import Producer


class Timer:
    """A handle on one timer. Its fields are a snapshot; every method asks the server.

    Methods that change the timer return False when it is no longer pending (it fired, was
    cancelled, or never existed), and raise TimerPaused when it is paused and must be resumed
    first. Each change is one atomic script. Each method has an awaitable twin named with an
    ``a`` prefix (``areschedule``...), and a handle from either side works with both.
    """

    __slots__ = ("_app", "_payload", "_raw", "created", "due_ms", "duration_ms", "id",
                 "outcome", "paused_left_ms")  # fmt: skip

    def __init__(
        self,
        app: Producer,
        timer_id: str,
        *,
        due_ms: int,
        raw_payload: bytes,
        created: bool,
        paused_left_ms: int | None = None,
        duration_ms: int | None = None,
    ) -> None:
        self._app = app
        # The armed duration by the server's clock, when a reply told it (see _duration).
        self.duration_ms = duration_ms
        self.id = timer_id
        self.due_ms = due_ms  # -1 while paused
        self.paused_left_ms = paused_left_ms
        self._raw = raw_payload
        self._payload: Payload | None = None
        self.created = created  # False when the id was already taken (idempotent schedule)
        # What refresh() last read of its job (None before: the handle's own snapshot).
        self.outcome: Outcome | None = None

    def __repr__(self) -> str:
        state = "paused" if self.paused else from_ms(self.due_ms).isoformat()
        return f"<Timer {self.id!r} {self.payload.task} due={state}>"

    @property
    def raw_payload(self) -> bytes:
        return self._raw

    # -- its job's outcome ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The last known state (``refresh()`` reads it anew): scheduled, paused, queued,
        throttled (waiting for a limit: ``outcome.reason`` says which), running, retrying,
        succeeded, failed or cancelled."""
        if self.outcome is not None:
            return self.outcome.state
        return "paused" if self.paused else "scheduled"

    def refresh(self) -> str:
        """Read the job's state now; ResultUnavailable if nothing is known of it any more."""
        return self._refreshed(self._app.outcome(self.id))

    async def arefresh(self) -> str:
        return self._refreshed(await self._app.aoutcome(self.id))

    def _refreshed(self, outcome: Outcome | None) -> str:
        if outcome is None:
            raise unknown(self.id)
        self.outcome = outcome
        return outcome.state

    @property
    def progress(self) -> Progress | None:
        """The latest progress its job told, as last read (``refresh()`` reads it anew)."""
        return None if self.outcome is None else self.outcome.progress

    def result(self, timeout: float = 30.0, *, on_progress: OnProgress | None = None) -> Any:
        """Wait for the job's end and return its result (see ``Delayq.result``)."""
        self.outcome = self._app.wait_for(self.id, timeout, on_progress)
        return self.outcome.value()

    async def aresult(self, timeout: float = 30.0, *, on_progress: OnProgress | None = None) -> Any:
        self.outcome = await self._app.await_for(self.id, timeout, on_progress)
        return self.outcome.value()

    @property
    def paused(self) -> bool:
        return self.paused_left_ms is not None

    @property
    def due_at(self) -> dt.datetime:
        """When the timer fires (UTC)."""
        if self.due_ms < 0:
            raise TimerPaused(f"timer {self.id!r} is paused: it has no deadline until resumed")
        return from_ms(self.due_ms)

    @property
    def payload(self) -> Payload:
        if self._payload is None:
            self._payload = decode_payload(self._raw)
        return self._payload

    def remaining(self) -> dt.timedelta | None:
        """Time left by the server's clock (kept while paused); None once not pending."""
        return self._app._run(self._remaining())

    async def aremaining(self) -> dt.timedelta | None:
        return await self._app._arun(self._remaining())

    def _remaining(self) -> Flow[dt.timedelta | None]:
        found = yield from self._app.store.lookup(self.id)
        if found.duration_ms is not None:
            self.duration_ms = found.duration_ms
        if found.paused_left_ms is not None:
            self.due_ms, self.paused_left_ms = -1, found.paused_left_ms
            return dt.timedelta(milliseconds=found.paused_left_ms)
        if found.due_ms is None:
            return None
        self.due_ms, self.paused_left_ms = found.due_ms, None
        return dt.timedelta(milliseconds=max(0, found.due_ms - found.now_ms))

    def _apply(self, operation: str, ms: int = 0) -> Flow[bool]:
        result = yield from self._app.store.control(self.id, operation, ms,
                                               duration_ms=self._duration())  # fmt: skip
        if result.status == -1:
            raise TimerPaused(f"timer {self.id!r} is paused: resume() it before {operation}")
        if result.status == 1:
            self.due_ms, self.paused_left_ms = result.due_ms, None
            if operation in ("delay", "at"):
                self.duration_ms = max(0, result.due_ms - result.now_ms)
        return bool(result.status == 1)

    def reschedule(self, *, delay: Delay | None = None, at: dt.datetime | None = None) -> bool:
        """Move the deadline, earlier or later. False if the timer is no longer pending."""
        return self._app._run(self._reschedule(delay, at))

    async def areschedule(
        self, *, delay: Delay | None = None, at: dt.datetime | None = None
    ) -> bool:
        return await self._app._arun(self._reschedule(delay, at))

    def _reschedule(self, delay: Delay | None, at: dt.datetime | None) -> Flow[bool]:
        if delay is None and at is None:
            raise ValueError("reschedule needs delay= or at=")
        when = resolve_when(delay, at, 0.0)
        return (yield from self._apply(when.mode, when.ms))

    def restart(self) -> bool:
        """Arm the timer again for the duration it was last armed with, counted from now."""
        return self._app._run(self._apply("restart"))

    async def arestart(self) -> bool:
        return await self._app._arun(self._apply("restart"))

    def _duration(self) -> int:
        """The armed duration as far as this handle can tell. The server keeps the true one (in
        the shadow key) and uses this only if that key is gone (see control.lua), so it comes
        from the server's replies when one told it, never from two machines' clocks mixed."""
        if self.duration_ms is not None:
            return self.duration_ms
        window = self._app.debounce_window_ms(self.payload.task)
        if window is not None:
            return window  # what a touch arms, whatever the cycle's age
        if self.due_ms <= 0:
            return 0
        # Last resort, a handle from a listing: the payload's creation time is the producer's
        # clock, brought to the server's by this process's offset (exact when it is the
        # producer, or its clock agrees).
        offset = self._app.store.clock_offset_ms()
        return max(0, round(self.due_ms - self.payload.created_ms - offset))

    def extend(self, by: Delay) -> bool:
        """Push the deadline later by ``by`` (seconds or timedelta)."""
        return self._app._run(self._extend(by))

    async def aextend(self, by: Delay) -> bool:
        return await self._app._arun(self._extend(by))

    def _extend(self, by: Delay) -> Flow[bool]:
        return (yield from self._apply("extend", round(delay_seconds(by, name="by") * 1000)))

    def pause(self) -> bool:
        """Stop the countdown, keeping the time left. True if it was running, False if not
        pending; pausing a paused timer changes nothing and returns True."""
        return self._app._run(self._pause())

    async def apause(self) -> bool:
        return await self._app._arun(self._pause())

    def _pause(self) -> Flow[bool]:
        result = yield from self._app.store.control(self.id, "pause", duration_ms=self._duration())
        if result.status == 1:
            self.due_ms, self.paused_left_ms = -1, result.due_ms
        return result.status in (1, -1)

    def resume(self) -> bool:
        """Restart the countdown with the time left when paused. False if not paused."""
        return self._app._run(self._resume())

    async def aresume(self) -> bool:
        return await self._app._arun(self._resume())

    def _resume(self) -> Flow[bool]:
        result = yield from self._app.store.control(self.id, "resume")
        if result.status == 1:
            self.due_ms, self.paused_left_ms = result.due_ms, None
        return bool(result.status == 1)

    def cancel(self) -> bool:
        """Disarm the timer: it will never fire. True if it was pending (or paused)."""
        return self._app._run(self._app.store.cancel(self.id))

    async def acancel(self) -> bool:
        return await self._app._arun(self._app.store.cancel(self.id))
