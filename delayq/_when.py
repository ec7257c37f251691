"""Turning ``delay=`` / ``at=`` arguments into what the scripts take, with clear errors."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

from delayq._errors import ScheduleError

Delay = float | int | dt.timedelta
# An upper bound keeps a typo (ms given as seconds, twice) from arming a timer for millennia.
MAX_DELAY_MS = 100 * 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class When:
    """A deadline as the scripts take it: ``("delay", ms from now)`` or ``("at", unix ms)``."""

    mode: Literal["delay", "at"]
    ms: int


def delay_seconds(delay: Delay, *, name: str = "delay") -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float | dt.timedelta):
        raise ScheduleError(f"{name} must be seconds (int or float) or a timedelta, not {delay!r}")
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ScheduleError(f"{name} must be a finite number of seconds, not {seconds}")
    if seconds < 0:
        raise ScheduleError(f"{name} must not be negative, got {seconds} s")
    if seconds * 1000 > MAX_DELAY_MS:
        raise ScheduleError(f"{name} of {seconds} s is more than 100 years")
    return seconds


def resolve_when(delay: Delay | None, at: dt.datetime | None, default_delay: float) -> When:
    if delay is not None and at is not None:
        raise ScheduleError("give either delay= or at=, not both")
    if at is not None:
        if not isinstance(at, dt.datetime):
            raise ScheduleError(f"at= must be a datetime, not {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ScheduleError(
                "at= must be time-zone aware (e.g. datetime(..., tzinfo=UTC)); "
                "a naive datetime is ambiguous"
            )
        ms = round(at.timestamp() * 1000)
        if ms - dt.datetime.now(dt.UTC).timestamp() * 1000 > MAX_DELAY_MS:
            raise ScheduleError(f"at={at.isoformat()} is more than 100 years away")
        return When("at", max(0, ms))
    seconds = default_delay if delay is None else delay_seconds(delay)
    return When("delay", round(seconds * 1000))


def from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
