"""Cron expressions: the day fields, expressions that never match, and an independent check.

delayq's cron ticks are compared, in UTC, with cronsim (an independent implementation) for
expressions on which both readings agree: a day field starting with ``*`` (such as ``*/2``) is
unrestricted for cronsim (as for Vixie cron) but restricted for delayq, so those are left out,
and so is ``W``, which cronsim does not read.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cronsim import CronSim

from delayq import ConfigurationError, Delayq
from delayq._schedules import CronSchedule

UTC = dt.UTC
START = dt.datetime(2026, 1, 1, tzinfo=UTC)


def ticks(expression: str, start: dt.datetime = START, count: int = 4) -> list[str]:
    schedule, out, at = CronSchedule(expression), [], start
    for _ in range(count):
        at = schedule.next_after(at)
        out.append(at.strftime("%Y-%m-%d %H:%M"))
    return out


def test_both_day_fields_restricted_are_ored_even_with_nth_weekday() -> None:
    # 2026-01-01 is a Thursday.
    assert ticks("0 0 8-14 * 1#2")[:2] == ["2026-01-08 00:00", "2026-01-09 00:00"]
    assert ticks("0 0 1 * 1#2") == [
        "2026-01-12 00:00", "2026-02-01 00:00", "2026-02-09 00:00", "2026-03-01 00:00",
    ]  # fmt: skip
    assert ticks("0 0 L * 5#3") == [
        "2026-01-16 00:00", "2026-01-31 00:00", "2026-02-20 00:00", "2026-02-28 00:00",
    ]  # fmt: skip
    # One side that never matches alone (30 February) leaves the other: Mondays of February.
    assert ticks("0 0 30 2 MON")[:2] == ["2026-02-02 00:00", "2026-02-09 00:00"]


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *",
                                        "0 0 0 30 2 *"])  # fmt: skip
def test_expressions_that_never_match_are_refused(expression: str) -> None:
    with pytest.raises(ConfigurationError, match="never matches"):
        CronSchedule(expression)
    app = Delayq("redis://127.0.0.1:1/0", namespace="cron")  # no I/O until used
    with pytest.raises(ConfigurationError, match="never matches"):
        app.periodic(expression)(lambda: None)


def test_leap_day_is_accepted() -> None:
    assert ticks("0 0 29 2 *", count=2) == ["2028-02-29 00:00", "2032-02-29 00:00"]


def test_accepted_syntax() -> None:
    assert ticks("0 9 ? * MON-FRI", count=2) == ["2026-01-01 09:00", "2026-01-02 09:00"]
    assert ticks("0 0 * * FRI-MON", count=4)[:2] == ["2026-01-02 00:00", "2026-01-03 00:00"]
    assert ticks("0 0 15W * *", count=2) == ["2026-01-15 00:00", "2026-02-16 00:00"]
    assert ticks("0 0 L JAN,FEB *", count=2) == ["2026-01-31 00:00", "2026-02-28 00:00"]
    assert ticks("30 0 0 1 * *", count=1) == ["2026-01-01 00:00"]  # seconds first
    with pytest.raises(ConfigurationError):
        CronSchedule("0 0 * * 5L")  # last weekday of the month: not supported


AGREED = [
    "* * * * *", "*/7 * * * *", "5,35 */3 * * *", "0 9-17 * * 1-5", "15 2 1 * *",
    "0 0 1,15 * *", "0 0 L * *",
    "0 0 * * 1#1", "0 6 * * 5#3", "0 0 * * 0#5", "0 0 * * SUN", "0 0 * * MON-FRI",
    "0 0 * JAN,JUL *", "0 0 * */3 *", "30 4 1-7 * *", "0 0 13 * 5", "0 0 1 * 1#2",
    "0 0 L * 5#3", "0 0 8-14 * 1#2", "0 0 10-20 * 6", "0 0 L 2 *", "0 0 29 2 *",
    "0 0 1,L * *", "0 0 31 * *", "0 0 30 1,3,5 *", "0 0 15 * MON,WED", "0 0 20-25 12 0",
    "10 10 10 10 *", "0 0 1 1 *", "0 0 * * 6,0", "45 23 * * 4#4", "0 0 1-3 * 2",
    "59 23 L * *", "0 */4 1 * *", "0 0 2 * 4#1", "1-5 0 1 * *", "0 0 9-15 * 3#2",
]  # fmt: skip


@pytest.mark.parametrize("expression", AGREED)
def test_ticks_agree_with_an_independent_implementation(expression: str) -> None:
    for start in (START, dt.datetime(2027, 2, 27, 23, 59, tzinfo=UTC),
                  dt.datetime(2028, 2, 28, 12, 0, tzinfo=UTC)):  # fmt: skip
        ours = CronSchedule(expression)
        theirs = CronSim(expression, start)
        at = start
        for _ in range(50):
            at = ours.next_after(at)
            assert at == next(theirs), (expression, start)
