"""Flow control of a task, as values: how many of its runs at once, how many a second, and
per which key of its arguments (docs/flow-control.md). No I/O: the worker's ``_limiter``
enforces them with ``limits.lua``.

A limit holds for one *scope*: the task name, and the key formatted from the job's
arguments (none: one scope for the whole task). A scope's state lives in the shard its name
hashes to, whatever shard each job is in, so that it holds across every worker and shard.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from delayq._errors import ConfigurationError, ScheduleError
from delayq._keys import MAX_ID_BYTES

KeySpec = str | Callable[..., str] | None
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")


def format_key(
    spec: str | Callable[..., str],
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    what: str,
) -> str:
    """A key from a call's arguments: ``spec`` called with them, or formatted over them (by
    position and by name, defaults included when ``signature`` is given). ScheduleError
    names what is missing."""
    if callable(spec):
        return str(spec(*args, **kwargs))
    named = dict(kwargs)
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ScheduleError(f"{what}: {exc}") from None
        bound.apply_defaults()
        named = dict(bound.arguments)
    try:
        return spec.format(*args, **named)
    except (KeyError, IndexError) as exc:
        raise ScheduleError(f"{what}: key {spec!r} needs the argument {exc}") from None


def check_key_spec(spec: object, name: str) -> KeySpec:
    if spec is not None and not (isinstance(spec, str) or callable(spec)):
        raise ConfigurationError(f"{name} must be a format string or a callable, not {spec!r:.80}")
    return spec


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` runs per ``per_s`` seconds, evenly spaced; ``burst`` of them may start at
    once after a quiet spell."""

    count: int
    per_s: float
    burst: int = 1

    @classmethod
    def parse(cls, text: object, burst: object = 1) -> Rate:
        """``"100/s"``, ``"5/m"``, ``"1000/h"``, ``"10/d"``, or with a number of units:
        ``"3/10s"``."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigurationError(
                f"rate_limit must look like '100/s', '5/m', '1000/h' or '3/10s', not {text!r:.80}"
            )
        count, units, unit = int(match[1]), int(match[2] or 1), match[3]
        if count < 1 or units < 1:
            raise ConfigurationError(f"rate_limit {text!r}: count and period must be >= 1")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(f"rate_burst must be an integer >= 1, not {burst!r}")
        return cls(count, units * _UNITS[unit], burst)

    @property
    def interval_ms(self) -> float:
        """The spacing of runs at the full rate."""
        return self.per_s * 1000 / self.count

    def __str__(self) -> str:
        unit = next((u for u, s in _UNITS.items() if s == self.per_s), None)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.per_s:g}s"


@dataclass(frozen=True, slots=True)
class Limits:
    """A task's limits (None: none of that kind). Each key is a format string over the
    job's arguments, or a callable taking them; None: one limit for every run of the task."""

    concurrency: int | None = None
    concurrency_key: KeySpec = None
    rate: Rate | None = None
    rate_key: KeySpec = None

    @classmethod
    def build(
        cls, *, concurrency: object, concurrency_key: object, rate_limit: object,
        rate_key: object, rate_burst: object,
    ) -> Limits | None:  # fmt: skip
        """Checked options; None when the task has no limit. A key without its limit is a
        mistake, refused here rather than ignored."""
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigurationError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if concurrency is None and concurrency_key is not None:
            raise ConfigurationError("concurrency_key= needs concurrency=")
        if rate_limit is None and (rate_key is not None or rate_burst is not None):
            raise ConfigurationError("rate_key= and rate_burst= need rate_limit=")
        burst = 1 if rate_burst is None else rate_burst
        rate = None if rate_limit is None else Rate.parse(rate_limit, burst)
        if concurrency is None and rate is None:
            return None
        return cls(concurrency, check_key_spec(concurrency_key, "concurrency_key"), rate,
                   check_key_spec(rate_key, "rate_key"))  # fmt: skip

    def scopes(
        self, task: str, signature: inspect.Signature | None, args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[str | None, str | None]:  # fmt: skip
        """The (concurrency, rate) scopes of one call; None where that limit is not set."""
        return (
            _scope(task, self.concurrency_key, signature, args, kwargs, "concurrency_key")
            if self.concurrency is not None else None,
            _scope(task, self.rate_key, signature, args, kwargs, "rate_key")
            if self.rate is not None else None,
        )  # fmt: skip


def _scope(
    task: str, spec: KeySpec, signature: inspect.Signature | None, args: tuple[Any, ...],
    kwargs: dict[str, Any], what: str,
) -> str:  # fmt: skip
    if spec is None:
        return task + "|"
    key = format_key(spec, signature, args, kwargs, what=f"{what} of task {task!r}")
    scope = f"{task}|{key}"
    if len(scope.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ScheduleError(f"{what} of task {task!r}: {key[:40]!r}... is too long")
    return scope


def describe(scope: str) -> str:
    """A scope as a user reads it: its key, or "the task" for a task-wide one."""
    key = scope.partition("|")[2]
    return f"key {key!r}" if key else "the task"
