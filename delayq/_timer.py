"""The Timer handle: inspect, reschedule or cancel one pending timer."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from delayq._codec import Payload, decode_payload
from delayq._when import Delay, from_ms, resolve_when

if TYPE_CHECKING:
    from delayq._app import Delayq


class Timer:
    """A handle on one timer. Its fields are a snapshot; methods ask the server."""

    __slots__ = ("_app", "_payload", "_raw", "created", "due_ms", "id")

    def __init__(
        self, app: Delayq, timer_id: str, *, due_ms: int, raw_payload: bytes, created: bool
    ) -> None:
        self._app = app
        self.id = timer_id
        self.due_ms = due_ms  # -1: its due-index entry is missing until the sweeper repairs it
        self._raw = raw_payload
        self._payload: Payload | None = None
        self.created = created  # False when the id was already taken (idempotent schedule)

    def __repr__(self) -> str:
        state = "unknown" if self.due_ms < 0 else self.due_at.isoformat()
        return f"<Timer {self.id!r} {self.payload.task} due={state}>"

    @property
    def due_at(self) -> dt.datetime:
        """When the timer fires (UTC)."""
        if self.due_ms < 0:
            raise ValueError(f"timer {self.id!r} has no deadline until the sweeper repairs it")
        return from_ms(self.due_ms)

    @property
    def payload(self) -> Payload:
        if self._payload is None:
            self._payload = decode_payload(self._raw)
        return self._payload

    def remaining(self) -> dt.timedelta | None:
        """Time left until the deadline by the server's clock; None once no longer pending."""
        due, _raw, now = self._app.store.lookup(self.id)
        if due is None:
            return None
        self.due_ms = due
        return dt.timedelta(milliseconds=max(0, due - now))

    def reschedule(self, *, delay: Delay | None = None, at: dt.datetime | None = None) -> bool:
        """Move the deadline (earlier or later). False if the timer is no longer pending."""
        if delay is None and at is None:
            raise ValueError("reschedule needs delay= or at=")
        due = self._app.store.reschedule(self.id, resolve_when(delay, at, 0.0))
        if due is None:
            return False
        self.due_ms = due
        return True

    def cancel(self) -> bool:
        """Disarm the timer: it will never fire. True if it was pending."""
        return self._app.store.cancel(self.id)
