"""Worker settings: one immutable value object, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from delayq._errors import ConfigurationError


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How one worker process runs. Every field is used; none is silently ignored.

    concurrency:          jobs run at once (coroutines on the loop, functions in a thread pool)
    visibility_timeout:   seconds a delivered job may go without a heartbeat before another
                          worker takes it over (a crashed worker's jobs run again after this)
    heartbeat_interval:   seconds between heartbeats of running jobs (default: a third of
                          the visibility timeout)
    sweep_interval:       seconds between sweeps for overdue timers and stuck jobs
    orphan_scan_interval: seconds between full scans for orphaned data keys
    shutdown_timeout:     seconds to let running jobs finish on SIGTERM before handing them back
    max_deliveries:       a job delivered more often than this (its worker died each time)
                          goes to the dead letters
    fire_batch:           timers claimed per script call
    configure_server:     enable keyspace notifications with CONFIG SET when they are off
    watch_lease:          seconds the watch leader (the one worker applying watched keys'
                          events, on_expire) holds its lease between renewals; a stopped or
                          killed leader is replaced after this
    """

    concurrency: int = 10
    visibility_timeout: float = 60.0
    heartbeat_interval: float | None = None
    sweep_interval: float = 30.0
    orphan_scan_interval: float = 300.0
    shutdown_timeout: float = 30.0
    max_deliveries: int = 5
    fire_batch: int = 500
    configure_server: bool = True
    watch_lease: float = 10.0

    def __post_init__(self) -> None:
        for name in ("concurrency", "fire_batch", "max_deliveries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        _positive("visibility_timeout", self.visibility_timeout)
        _positive("sweep_interval", self.sweep_interval)
        _positive("orphan_scan_interval", self.orphan_scan_interval)
        _positive("watch_lease", self.watch_lease)
        if not isinstance(self.shutdown_timeout, int | float) or not (
            math.isfinite(self.shutdown_timeout) and self.shutdown_timeout >= 0
        ):
            raise ConfigurationError(
                f"shutdown_timeout must be a finite number >= 0, got {self.shutdown_timeout!r}"
            )
        if self.heartbeat_interval is not None:
            _positive("heartbeat_interval", self.heartbeat_interval)
            if self.heartbeat_interval >= self.visibility_timeout:
                raise ConfigurationError("heartbeat_interval must be below visibility_timeout")

    @property
    def heartbeat(self) -> float:
        if self.heartbeat_interval is not None:
            return self.heartbeat_interval
        return self.visibility_timeout / 3
