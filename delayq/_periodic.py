"""Periodic tasks: cron or interval ticks, each tick a timer with a deterministic id.

There is no beat process: every worker arms the next tick when it starts and when a tick
fires, and periodic.lua (compare-and-set on the task's state) lets each tick instant be armed
at most once. The tick timer fires exactly once like any timer.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from delayq._codec import encode_payload
from delayq._errors import ConfigurationError
from delayq._keys import Keys
from delayq._schedules import CronSchedule, EverySchedule, Schedule, jitter_ms
from delayq._task import Task, TaskOptions

if TYPE_CHECKING:
    from delayq._app import Delayq
    from delayq._hooks import RunGate, RunGates

P = ParamSpec("P")
R = TypeVar("R")

CatchUp = Literal["latest", "all", "none"]
Overlap = Literal["skip", "allow", "queue"]
# With catch_up="none", a tick this late (downtime) is skipped rather than run.
MISFIRE_GRACE_MS = 60_000


@dataclass(frozen=True, slots=True)
class PeriodicOptions:
    schedule: Schedule
    jitter: dt.timedelta | None = None
    catch_up: CatchUp = "latest"
    overlap: Overlap = "skip"
    max_catch_up: int = 100

    @classmethod
    def build(
        cls,
        cron: str | None,
        *,
        every: dt.timedelta | None,
        tz: str,
        jitter: dt.timedelta | None,
        catch_up: str,
        overlap: str,
        max_catch_up: int,
    ) -> PeriodicOptions:
        if (cron is None) == (every is None):
            raise ConfigurationError("a periodic task needs a cron string or every=, not both")
        schedule: Schedule = CronSchedule(cron, tz) if cron is not None else EverySchedule(every)  # type: ignore[arg-type]
        if every is not None and tz != "UTC":
            raise ConfigurationError("tz= applies to cron schedules only")
        if catch_up not in ("latest", "all", "none"):
            raise ConfigurationError(
                f"catch_up must be 'latest', 'all' or 'none', not {catch_up!r}"
            )
        if overlap not in ("skip", "allow", "queue"):
            raise ConfigurationError(f"overlap must be 'skip', 'allow' or 'queue', not {overlap!r}")
        if jitter is not None and (
            not isinstance(jitter, dt.timedelta) or jitter < dt.timedelta(0)
        ):
            raise ConfigurationError(f"jitter must be a non-negative timedelta, got {jitter!r}")
        if max_catch_up < 1:
            raise ConfigurationError("max_catch_up must be >= 1")
        return cls(schedule, jitter, catch_up, overlap, max_catch_up)  # type: ignore[arg-type]


class Periodic(Task[P, R]):
    """A task run on a schedule. Calling it runs it now, like any task."""

    def __init__(
        self, fn: Callable[P, R], options: TaskOptions, app_ref: Callable[[], Delayq],
        periodic: PeriodicOptions,
    ) -> None:  # fmt: skip
        super().__init__(fn, options, app_ref)
        if "@" in options.name:
            raise ConfigurationError(f"a periodic task name may not contain '@': {options.name}")
        self.periodic = periodic

    def tick_id(self, tick_ms: int) -> str:
        return Keys.tick_id(self.name, tick_ms)

    def run_gate(self, gates: RunGates) -> RunGate | None:
        return gates.periodic(self)

    def due_ms(self, tick_ms: int) -> int:
        return tick_ms + jitter_ms(self.name, tick_ms, self.periodic.jitter)

    def next_tick_ms(self, after_ms: int) -> int:
        after = dt.datetime.fromtimestamp(after_ms / 1000, tz=dt.UTC)
        return round(self.periodic.schedule.next_after(after).timestamp() * 1000)

    def tick_payload(self, *, max_bytes: int) -> bytes:
        return encode_payload(self.name, (), {}, attempt=0, created_ms=int(time.time() * 1000),
                              max_bytes=max_bytes, route=self.options.route)  # fmt: skip

    def chained_tick_ms(self, tick_ms: int, now_ms: int) -> int:
        """The tick to arm after ``tick_ms`` ran at ``now_ms``, by the catch-up policy."""
        if self.periodic.catch_up != "all":
            return self.next_tick_ms(max(tick_ms, now_ms))
        following = self.next_tick_ms(tick_ms)
        probe = following
        for _ in range(self.periodic.max_catch_up):
            if probe > now_ms:
                return following
            probe = self.next_tick_ms(probe)
        return self.next_tick_ms(now_ms)  # more missed ticks than the bound: skip ahead
