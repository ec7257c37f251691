"""What becomes of a job: its outcome record, read and written as values (no I/O).

Every script that moves a job on writes its record, in the same step as the change itself
(``Keys.outcome``, under the job's origin id): fire.lua "queued", started.lua "running",
progress.lua how far it is, retry.lua "retrying" with the error, and ack.lua, bury.lua and
cancel.lua its end. progress.lua and the ends are told on the shard's outcomes channel. A
record under way lives OUTCOME_HOLD_MS; an ended one ``result_ttl``. A producer reads it with
outcome.lua, which also says whether the timer is still pending or paused; waiting for the end
is ``_waiting``'s.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, NamedTuple

from delayq._calls import Call, script
from delayq._codec import decode_result
from delayq._errors import JobFailed, ResultUnavailable, TimerCancelled
from delayq._keys import Keys, origin_id

# One hour, as arq keeps results: long enough to collect one, short enough that a busy
# namespace does not fill its server with them.
DEFAULT_RESULT_TTL = 3600.0
STATES = ("scheduled", "paused", "queued", "throttled", "running", "retrying", "succeeded",
          "failed", "cancelled")  # fmt: skip
ENDED = frozenset({"succeeded", "failed", "cancelled"})


class Progress(NamedTuple):
    """How far a running job says it is (``current_job().progress``)."""

    fraction: float  # 0.0 to 1.0
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Ran:
    """A job's run, as its outcome record keeps it: ``result`` (msgpack) None for none."""

    started_ms: int
    attempts: int
    keep_ms: int = 0
    result: bytes | None = None
    task: str = ""  # whose events tell it ("" for a delivery that ran no job)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job failed, as its outcome record keeps it (``type_name`` "" when no handler
    ran: the reason of the dead letter says why)."""

    type_name: str
    message: str
    attempts: int
    started_ms: int | None = None
    keep_ms: int = 0


def keep_ms(result_ttl: float) -> int:
    """The scripts' retention, ms, of a ``result_ttl`` in seconds (0: keep nothing)."""
    return 0 if result_ttl <= 0 else max(1, round(result_ttl * 1000))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What is known of one job: ``state`` (one of STATES), and what its record holds."""

    timer_id: str
    state: str
    attempts: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    worker: str | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    raw_result: bytes | None = None
    progress: Progress | None = None  # the latest its job told, if any
    # state "throttled": the limit it waits for (docs/flow-control.md)
    reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def started_at(self) -> dt.datetime | None:
        return _at(self.started_ms)

    @property
    def finished_at(self) -> dt.datetime | None:
        return _at(self.finished_ms)

    def value(self) -> Any:
        """The job's return value; its end as an exception (JobFailed, TimerCancelled)."""
        if self.state == "succeeded":
            if self.raw_result is None:
                raise ResultUnavailable(
                    f"job {self.timer_id!r} succeeded, but its result could not be kept (see "
                    "the worker's log) or keeping results is off for its task"
                )
            return decode_result(self.raw_result)
        if self.state == "failed":
            kind = self.error_type or "Error"
            raise JobFailed(
                f"job {self.timer_id!r} failed after {self.attempts} attempt(s): "
                f"{self.error or kind}",
                type_name=kind, error=self.error or "", traceback=self.traceback or "",
                attempts=self.attempts,
            )  # fmt: skip
        if self.state == "cancelled":
            raise TimerCancelled(f"timer {self.timer_id!r} was cancelled before it fired")
        raise ResultUnavailable(f"job {self.timer_id!r} has not ended ({self.state})")


def _at(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _int(value: Any) -> int | None:
    return None if value in (None, b"") else int(value)


def _text(value: Any) -> str | None:
    return None if value is None else bytes(value).decode("utf-8", "replace")


def decode_outcome(timer_id: str, reply: list[Any]) -> Outcome | None:
    """outcome.lua's reply: None when nothing is known of the job."""
    if not reply:
        return None
    fields = {bytes(k).decode(): v for k, v in zip(reply[::2], reply[1::2], strict=True)}
    raw = fields.get("r")
    return Outcome(
        timer_id, _text(fields.get("s")) or "queued", _int(fields.get("a")) or 0,
        _int(fields.get("t0")), _int(fields.get("t1")), _text(fields.get("w")),
        _text(fields.get("e")) or None, _text(fields.get("m")), _text(fields.get("tb")),
        bytes(raw)[1:] if raw else None, _progress(fields),
        _text(fields.get("why")) if fields.get("s") == b"throttled" else None,
    )  # fmt: skip


def _progress(fields: dict[str, Any]) -> Progress | None:
    fraction = fields.get("p")
    if fraction is None:
        return None
    return Progress(float(fraction), _text(fields.get("pm")) or None)


def read_outcome(keys: Keys, timer_id: str) -> Call[Outcome | None]:
    origin = origin_id(timer_id)
    keys_ = [keys.outcome(origin), keys.index_of(origin), keys.paused]
    return script("outcome", keys_, [origin],
                  decode=lambda reply: decode_outcome(origin, reply))  # fmt: skip
