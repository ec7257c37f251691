"""When periodic tasks tick: cron expressions in a time zone, or fixed intervals.

The arithmetic is pure (no clock, no I/O) so that it can be tested for any instant. Cron
fields are matched against local wall-clock time, then mapped to instants:
- a wall time skipped by a daylight-saving jump runs at the first valid instant after it
  (the moment of the jump);
- a wall time that occurs twice (clocks set back) runs once, at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from delayq._errors import ConfigurationError

UTC = dt.UTC


class Schedule(Protocol):
    def next_after(self, instant: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``instant`` (both aware, UTC)."""
        ...

    @property
    def signature(self) -> str:
        """A text that changes whenever the schedule changes."""
        ...

    def describe(self) -> tuple[str, str]:
        """(schedule, zone) for listings."""
        ...


def load_zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"unknown time zone {tz!r}: use an IANA name such as "
                                 "'Europe/Paris' or 'UTC'") from None  # fmt: skip


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """5 fields (minute hour day month weekday), or 6 with seconds first."""

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise ConfigurationError(
                f"cron expression {self.expression!r} has {len(fields)} fields: use 5 "
                "(minute hour day month weekday) or 6 (seconds first)"
            )
        try:
            for variant in day_variants(self.expression):
                croniter(variant, dt.datetime(2000, 1, 1), second_at_beginning=True)
        except (CroniterError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"invalid cron expression {self.expression!r}: {exc}"
            ) from None
        if next_wall(self.expression, dt.datetime(2000, 1, 1)) is None:
            raise ConfigurationError(
                f"cron expression {self.expression!r} never matches: no date has the day of "
                "the month and month it names (such as 30 February)"
            )
        load_zone(self.tz)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def signature(self) -> str:
        return f"cron:{' '.join(self.expression.split())}@{self.tz}"

    def describe(self) -> tuple[str, str]:
        return self.expression, self.tz

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        zone = self.zone
        local = instant.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if local.fold:
            # In the second pass of a repeated hour: wall times of that hour already had their
            # (first) run, so search from the first pass; earlier candidates are skipped below.
            first_pass = local.replace(fold=0).utcoffset()
            second_pass = local.utcoffset()
            assert first_pass is not None and second_pass is not None
            wall -= first_pass - second_pass
        # Strictly after its start: step back so that a tick at ``wall`` is a candidate.
        after = wall - dt.timedelta(seconds=1)
        while True:
            found = next_wall(self.expression, after)
            if found is None:  # refused at construction; kept for a clear error regardless
                raise ConfigurationError(f"cron expression {self.expression!r} never matches")
            candidate = to_instant(found, zone)
            if candidate > instant:
                return candidate
            after = found


def day_variants(expression: str) -> list[str]:
    """The expression, or, when both day fields are restricted, one expression per day field.

    delayq reads two restricted day fields (anything but a bare ``*`` or ``?``) as OR: a day
    matching either is a tick day. croniter keeps a ``#`` weekday constraint on both sides of
    that OR, so each side is evaluated on its own and the earlier tick wins.
    """
    fields = expression.split()
    dom, dow = (2, 4) if len(fields) == 5 else (3, 5)
    if fields[dom] in ("*", "?") or fields[dow] in ("*", "?"):
        return [expression]
    by_month_day = [*fields[:dow], "*", *fields[dow + 1 :]]
    by_weekday = [*fields[:dom], "*", *fields[dom + 1 :]]
    return [" ".join(by_month_day), " ".join(by_weekday)]


def next_wall(expression: str, after: dt.datetime) -> dt.datetime | None:
    """The first wall time strictly after ``after`` that the expression matches, None if no
    date ever matches."""
    found = []
    for variant in day_variants(expression):
        try:
            times = croniter(variant, after, second_at_beginning=True)
            found.append(times.get_next(dt.datetime))
        except CroniterBadDateError:
            continue  # this side never matches; the other may
    return min(found) if found else None


def to_instant(wall: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The instant of a local wall time; see the module docstring for gaps and repeats."""
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)  # exists (fold=0 is the first of a repeated time)
    # In a gap: find the jump, the first instant whose wall time is past ``wall``.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # before the jump
    high = first.astimezone(UTC)  # after the jump
    while high - low > dt.timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= wall:
            high = mid
        else:
            low = mid
    return high.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class EverySchedule:
    """Ticks every ``every``, aligned on the Unix epoch so that all workers agree."""

    every: dt.timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.every, dt.timedelta) or self.every < dt.timedelta(seconds=1):
            raise ConfigurationError(
                f"every= must be a timedelta of at least 1 s, got {self.every!r}"
            )

    @property
    def signature(self) -> str:
        return f"every:{self.every.total_seconds()}"

    def describe(self) -> tuple[str, str]:
        return f"every {self.every}", "-"

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        period = round(self.every.total_seconds() * 1000)
        ms = round(instant.timestamp() * 1000)
        return dt.datetime.fromtimestamp((ms // period + 1) * period / 1000, tz=UTC)


def jitter_ms(task: str, tick_ms: int, jitter: dt.timedelta | None) -> int:
    """A delay in [0, jitter) that every worker computes alike for this task and tick."""
    if not jitter:
        return 0
    digest = hashlib.blake2b(f"{task}@{tick_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(1, round(jitter.total_seconds() * 1000))
