"""What a running job can learn about itself: ``delayq.current_job()``."""

from __future__ import annotations

import contextvars
import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobContext:
    """The job a handler is running for.

    ``delivery_id`` names this firing: a job run again after its worker died keeps it, while a
    retry is a new firing with a new one. Use ``timer_id`` (stable across retries) as an
    idempotency key for side effects.
    """

    timer_id: str
    task: str
    attempt: int  # 0 on the first run, then 1, 2, ... for retries
    delivery_id: str
    due_ms: int  # the deadline it fired for, in ms since the epoch (server clock)
    fired_ms: int  # when it was fired (server clock)

    @property
    def due_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.due_ms / 1000, tz=dt.UTC)


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "delayq_current_job", default=None
)


def current_job() -> JobContext | None:
    """The job being run, inside a handler on a worker; None elsewhere (e.g. a plain call)."""
    return _current.get()


def bind_job(job: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(job)


def unbind_job(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)
