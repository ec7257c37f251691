"""What a running job can learn about itself: ``delayq.current_job()``."""

from __future__ import annotations

import contextvars
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field

# A progress message is for people reading it: long enough for a sentence, short enough that a
# handler calling it in a loop cannot fill the server.
MAX_PROGRESS_MESSAGE = 500


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
    # The worker's: takes (fraction, message) to the job's outcome record; None on a context
    # made by hand, whose progress goes nowhere.
    report: Callable[[float, str | None], None] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def due_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.due_ms / 1000, tz=dt.UTC)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Tell how far the job is, from 0.0 to 1.0, with an optional message: waiters
        (``on_progress=``), event readers and ``Timer.progress`` see it. It returns at once
        (the worker sends the latest of each job with its next round trip, so calls in a
        tight loop cost one write per round, not one each); any thread may call it."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"progress takes a fraction from 0.0 to 1.0, not {fraction!r}")
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"progress must be from 0.0 to 1.0, not {fraction!r}")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"a progress message is a str, not {type(message).__name__}")
            if len(message) > MAX_PROGRESS_MESSAGE:
                raise ValueError(f"a progress message is at most {MAX_PROGRESS_MESSAGE} "
                                 f"characters; this one has {len(message)}")  # fmt: skip
        if self.report is not None:
            self.report(float(fraction), message)


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
