"""Tasks: a function plus how to schedule it, retry it and find it again in a worker."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar

from delayq._codec import encode_payload
from delayq._errors import ConfigurationError
from delayq._keys import check_task_name, check_user_timer_id
from delayq._limits import Limits
from delayq._route import DEFAULT_ROUTE, Route
from delayq._store import ScheduleRequest
from delayq._timer import Timer
from delayq._when import Delay, delay_seconds, resolve_when

if TYPE_CHECKING:
    from delayq._app import Delayq
    from delayq._codec import Payload
    from delayq._hooks import Delivery, RunGate, RunGates

P = ParamSpec("P")
R = TypeVar("R")


def new_timer_id() -> str:
    # 96 random bits, URL-safe; short ids keep per-timer memory low.
    return secrets.token_urlsafe(12)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed job is tried again: exponential backoff with jitter, then dead letter."""

    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 3600.0
    jitter: float = 0.5
    retry_for: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {self.retries!r}")
        delay_seconds(self.backoff, name="retry_backoff")
        delay_seconds(self.backoff_max, name="retry_backoff_max")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"retry jitter must be between 0 and 1, got {self.jitter}")
        for exc_type in self.retry_for:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"retry_for must hold exception types, got {exc_type!r}")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.retries and isinstance(exc, self.retry_for)

    def delay_for(self, attempt: int) -> float:
        """Seconds before retry number ``attempt + 1``: backoff * 2**attempt, capped, jittered."""
        base = min(self.backoff_max, self.backoff * (2**attempt))
        return float(base * (1 - self.jitter * random.random()))


@dataclass(frozen=True, slots=True)
class TaskOptions:
    name: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_delay: float = 0.0
    timeout: float | None = None  # seconds a run may take before it counts as failed
    # Seconds its outcome is kept after it ends (0: none); None: the app's result_ttl.
    result_ttl: float | None = None
    # Whether its jobs tell lifecycle events; None: the app's ``events``.
    events: bool | None = None
    # How many of its runs at once, how many a second (None: no limit).
    limits: Limits | None = None
    # Which queue its jobs wait in, and at which priority level (a call may give another).
    route: Route = DEFAULT_ROUTE

    def __post_init__(self) -> None:
        check_task_name(self.name)


class Task(Generic[P, R]):
    """A registered function. Calling it runs it now; ``schedule``/``delay`` run it later."""

    def __init__(
        self, fn: Callable[P, R], options: TaskOptions, app_ref: Callable[[], Delayq]
    ) -> None:
        self.fn = fn
        self.options = options
        self._app_ref = app_ref
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def app(self) -> Delayq:
        return self._app_ref()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # -- hooks the worker calls on each kind of task (no switch on kinds in the worker) -------

    def job_args(self, payload: Payload, fired: Delivery, max_bytes: int) -> tuple[Any, ...]:
        """The handler's positional arguments for one run; PayloadError: it cannot run."""
        return payload.args

    def retry_as(
        self, payload: Payload, args: tuple[Any, ...], fired: Delivery
    ) -> tuple[Payload, str | None]:
        """What a retry arms: its payload and its timer id (None: the fired timer's own)."""
        return payload, None

    def dead_payload(self, payload: Payload, args: tuple[Any, ...]) -> Payload | None:
        """The payload a dead letter keeps (None: the one that was delivered)."""
        return None

    def after_success(self, args: tuple[Any, ...]) -> tuple[str, bytes] | None:
        """A key to delete once the handler succeeded, if it still holds this value."""
        return None

    def limit_scopes(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        """The (concurrency, rate) scopes of a run with these handler arguments (None: no
        such limit); ScheduleError when a key cannot be made from them."""
        if self.options.limits is None:
            return None, None
        return self.options.limits.scopes(self.name, self._signature, args, kwargs)

    @functools.cached_property
    def _signature(self) -> inspect.Signature | None:
        try:
            return inspect.signature(self.fn)
        except (TypeError, ValueError):  # a builtin without one: keys use the names given
            return None

    def run_gate(self, gates: RunGates) -> RunGate | None:
        """What decides, before each run, whether it runs (None: it always does)."""
        return None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def prepare(
        self,
        *args: Any,
        delay: Delay | None = None,
        at: dt.datetime | None = None,
        id: str | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> ScheduleRequest:
        """Validate and serialize a call without storing it (for ``Delayq.schedule_many``)."""
        return self.request(args, kwargs, delay=delay, at=at, timer_id=id,
                            on_success=on_success, on_failure=on_failure,
                            priority=priority)  # fmt: skip

    def request(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        delay: Delay | None = None,
        at: dt.datetime | None = None,
        timer_id: str | None = None,
        replace: bool = False,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        priority: int | None = None,
    ) -> ScheduleRequest:
        """Like ``prepare``, with the call's arguments passed as a tuple and a dict."""
        when = resolve_when(delay, at, self.options.default_delay)
        route = self.options.route.at(priority)
        self.limit_scopes(args, kwargs)  # a key its worker could not make is refused now
        timer_id = new_timer_id() if timer_id is None else check_user_timer_id(timer_id)
        payload = encode_payload(
            self.name,
            args,
            kwargs,
            attempt=0,
            created_ms=int(time.time() * 1000),
            max_bytes=self.app.max_payload_bytes,
            on_success=callback_name(on_success, "on_success"),
            on_failure=callback_name(on_failure, "on_failure"),
            route=route,
        )
        return ScheduleRequest(timer_id, payload, when, replace)

    def schedule(
        self,
        *args: Any,
        delay: Delay | None = None,
        at: dt.datetime | None = None,
        id: str | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> Timer:
        """Run later: after ``delay`` (seconds or timedelta) or at ``at`` (an aware datetime).

        With ``id=``, scheduling is idempotent: while a timer with that id is pending, the
        existing timer is returned (``created`` is False) and nothing changes. Once it has
        fired, the id is free again.

        ``on_success`` / ``on_failure``: a task (or its name) scheduled, once, when this job
        succeeds / fails for good, with one argument: a dict of its outcome (see
        docs/outcomes.md, "Callbacks").

        ``priority``: this job's level, 0 to 9, instead of the task's; among jobs of its queue
        due together, a higher level starts first (docs/flow-control.md).
        """
        req = self.request(args, kwargs, delay=delay, at=at, timer_id=id,
                           on_success=on_success, on_failure=on_failure,
                           priority=priority)  # fmt: skip
        return self.app.arm(req)

    async def aschedule(
        self,
        *args: Any,
        delay: Delay | None = None,
        at: dt.datetime | None = None,
        id: str | None = None,
        on_success: Callback | None = None,
        on_failure: Callback | None = None,
        priority: int | None = None,
        **kwargs: Any,
    ) -> Timer:
        """``schedule`` for asyncio code: the same arguments, the same errors."""
        req = self.request(args, kwargs, delay=delay, at=at, timer_id=id,
                           on_success=on_success, on_failure=on_failure,
                           priority=priority)  # fmt: skip
        return await self.app.aarm(req)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Timer:
        """Run after the task's default delay (0 for ``@task``: as soon as a worker can)."""
        return self.app.arm(self.request(args, kwargs))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Timer:
        """``delay`` for asyncio code."""
        return await self.app.aarm(self.request(args, kwargs))

    def call_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)

    def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        result: Awaitable[Any] = self.fn(*args, **kwargs)  # type: ignore[assignment]
        return result


Callback: TypeAlias = "Task[Any, Any] | str"


def callback_name(callback: Callback | None, what: str) -> str | None:
    """The task name a callback option names; ConfigurationError if it names none."""
    if callback is None:
        return None
    name = getattr(callback, "name", callback)  # a Task, or already its name
    if not isinstance(name, str):
        raise ConfigurationError(f"{what} takes a task or a task name, not {callback!r:.80}")
    return check_task_name(name)


def default_task_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "__main__"
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', 'task'))}"
