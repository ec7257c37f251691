"""Worker settings: one immutable value object, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from delayq._errors import ConfigurationError
from delayq._route import check_queue


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")


def _setting(default: Any, meaning: str) -> Any:
    """A setting's default and its one-line meaning (shown by ``delayq worker --help``)."""
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How one worker process runs. Every field is used; none is silently ignored.

    Each field's meaning is declared with it (``WorkerSettings.help(name)``); the CLI's worker
    options take their defaults and help from here.
    """

    concurrency: int = _setting(
        10, "jobs run at once (coroutines on the loop, functions in a thread pool)"
    )
    visibility_timeout: float = _setting(
        60.0, "seconds a delivered job may go without a heartbeat before another worker takes "
        "it over (a crashed worker's jobs run again after this)"
    )  # fmt: skip
    heartbeat_interval: float | None = _setting(
        None, "seconds between heartbeats of running jobs (default: a third of the visibility "
        "timeout)"
    )  # fmt: skip
    sweep_interval: float = _setting(
        30.0, "seconds between sweeps for overdue timers and stuck jobs"
    )
    orphan_scan_interval: float = _setting(
        300.0, "seconds between full scans for orphaned data keys"
    )
    shutdown_timeout: float = _setting(
        30.0, "seconds to let running jobs finish on SIGTERM before handing them back"
    )
    max_deliveries: int = _setting(
        5, "a job delivered more often than this (its worker died each time) goes to the dead "
        "letters"
    )  # fmt: skip
    fire_batch: int = _setting(500, "timers claimed per script call")
    configure_server: bool = _setting(
        True, "enable keyspace notifications with CONFIG SET when they are off"
    )
    queues: tuple[str, ...] | None = _setting(
        None, "queues to run, comma-separated (default: every queue the app's tasks name, and "
        "'default')"
    )  # fmt: skip
    watch_lease: float = _setting(
        10.0, "seconds the watch leader (the one worker applying watched keys' events, "
        "on_expire) holds its lease between renewals; a stopped leader is replaced after this"
    )  # fmt: skip

    @staticmethod
    def help(name: str) -> str:
        meaning: str = WorkerSettings.__dataclass_fields__[name].metadata["help"]
        return meaning

    def __post_init__(self) -> None:
        for name in ("concurrency", "fire_batch", "max_deliveries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
        _positive("visibility_timeout", self.visibility_timeout)
        _positive("sweep_interval", self.sweep_interval)
        _positive("orphan_scan_interval", self.orphan_scan_interval)
        _positive("watch_lease", self.watch_lease)
        if self.queues is not None:
            if isinstance(self.queues, str) or not self.queues:
                raise ConfigurationError(f"queues must be a non-empty tuple of names, got "
                                         f"{self.queues!r:.80}")  # fmt: skip
            for name in self.queues:
                check_queue(name)
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
