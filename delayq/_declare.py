"""The options every kind of task takes, declared once.

``task``, ``delayed``, ``debounced``, ``on_expire``, ``periodic`` and the module-level
``delayq.task`` / ``delayq.delayed`` take these as ``**options``; each adds only the options of
its own kind. Type checkers see the keywords (PEP 692); at run time an unknown keyword is refused
here, so a misspelt option never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from delayq._errors import ConfigurationError, ScheduleError
from delayq._events import check_events
from delayq._limits import KeySpec, Limits
from delayq._route import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_ROUTE, Route
from delayq._task import RetryPolicy, TaskOptions, default_task_name
from delayq._when import Delay, delay_seconds


class TaskKwargs(TypedDict, total=False):
    name: str | None
    retries: int
    retry_backoff: Delay
    retry_backoff_max: Delay
    retry_for: tuple[type[BaseException], ...]
    retry: RetryPolicy | None
    timeout: Delay | None
    result_ttl: Delay | None
    events: bool | None
    concurrency: int | None
    concurrency_key: KeySpec
    rate_limit: str | None
    rate_key: KeySpec
    rate_burst: int | None
    queue: str
    priority: int


_RETRY_FIELDS = ("retries", "retry_backoff", "retry_backoff_max", "retry_for")
KNOWN = frozenset(TaskKwargs.__annotations__)
_DEFAULT = RetryPolicy()
# Periodic tasks are not retried unless asked: a failed tick is followed by the next tick.
PERIODIC_RETRIES = 0


@dataclass(frozen=True, slots=True)
class Declaration:
    """A decorator's validated options, waiting for the function they apply to."""

    name: str | None
    retry: RetryPolicy
    default_delay: float
    timeout: float | None
    result_ttl: float | None = None
    events: bool | None = None
    limits: Limits | None = None
    route: Route = DEFAULT_ROUTE

    def options_for(self, func: Callable[..., Any]) -> TaskOptions:
        # An explicit name is checked as given (TaskOptions refuses "", non-str, over-long).
        name = default_task_name(func) if self.name is None else self.name
        return TaskOptions(name, self.retry, self.default_delay, self.timeout, self.result_ttl,
                           self.events, self.limits, self.route)  # fmt: skip


def declare(
    options: TaskKwargs, *, delay: Delay | None, retries: int = _DEFAULT.retries
) -> Declaration:
    """Check a decorator's options when it is called; ``retries`` is this kind's default.

    A bad duration raises ScheduleError, as it does when scheduling; the rest
    ConfigurationError."""
    unknown = sorted(set(options) - KNOWN)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"a task takes {', '.join(sorted(KNOWN))} and its kind's own options"
        )
    default_delay = 0.0 if delay is None else delay_seconds(delay)
    timeout = options.get("timeout")
    limit = None if timeout is None else delay_seconds(timeout, name="timeout")
    if limit is not None and limit <= 0:
        raise ConfigurationError("timeout must be positive")
    return Declaration(options.get("name"), _retry_policy(options, retries), default_delay, limit,
                       check_result_ttl(options.get("result_ttl")),
                       check_events(options.get("events")), _limits(options),
                       Route(options.get("queue", DEFAULT_QUEUE),
                             options.get("priority", DEFAULT_PRIORITY)))  # fmt: skip


def _limits(options: TaskKwargs) -> Limits | None:
    return Limits.build(
        concurrency=options.get("concurrency"), concurrency_key=options.get("concurrency_key"),
        rate_limit=options.get("rate_limit"), rate_key=options.get("rate_key"),
        rate_burst=options.get("rate_burst"),
    )  # fmt: skip


def check_result_ttl(value: Delay | None) -> float | None:
    """Seconds to keep a job's outcome after it ends (0: keep none); None: the app's."""
    if value is None:
        return None
    try:
        return delay_seconds(value, name="result_ttl")
    except ScheduleError as exc:  # a setting, not a scheduling call: say so
        raise ConfigurationError(str(exc)) from None


def _retry_policy(options: TaskKwargs, retries: int) -> RetryPolicy:
    """Validate retry settings when a task is declared, not when it first fails."""
    policy = options.get("retry")
    given = [f for f in _RETRY_FIELDS if f in options]
    if policy is not None:
        if not isinstance(policy, RetryPolicy):
            raise ConfigurationError(f"retry= must be a RetryPolicy, not {type(policy).__name__}")
        if given:
            raise ConfigurationError(f"give retry=RetryPolicy(...) or {', '.join(given)}, not both")
        return policy
    return RetryPolicy(
        retries=options.get("retries", retries),
        backoff=delay_seconds(options.get("retry_backoff", _DEFAULT.backoff),
                              name="retry_backoff"),
        backoff_max=delay_seconds(options.get("retry_backoff_max", _DEFAULT.backoff_max),
                                  name="retry_backoff_max"),
        retry_for=tuple(options.get("retry_for", _DEFAULT.retry_for)),
    )  # fmt: skip
