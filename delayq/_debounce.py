"""Debounced tasks: one timer per key, re-armed by every touch, fired after the last one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from delayq._codec import decode_touches, encode_payload, encode_touch
from delayq._errors import ConfigurationError, InvalidTimerId, PayloadError
from delayq._keys import check_user_timer_id as check_timer_id
from delayq._limits import KeySpec, format_key
from delayq._store import TouchRequest
from delayq._task import Task, TaskOptions
from delayq._timer import Timer
from delayq._when import Delay, delay_seconds

if TYPE_CHECKING:
    from delayq._app import Delayq
    from delayq._codec import Payload
    from delayq._hooks import Delivery

P = ParamSpec("P")
R = TypeVar("R")

PayloadMode = Literal["last", "first", "all"]


@dataclass(frozen=True, slots=True)
class DebounceOptions:
    """How a debounced task's timers behave (validated when the task is declared)."""

    window_ms: int
    key: KeySpec = None
    payload: PayloadMode = "last"
    max_items: int = 100
    max_wait_ms: int = 0

    @classmethod
    def build(
        cls,
        *,
        seconds: Delay,
        key: KeySpec,
        payload: str,
        max_items: int,
        max_wait: Delay | None,
    ) -> DebounceOptions:
        window = round(delay_seconds(seconds, name="seconds") * 1000)
        if window <= 0:
            raise ConfigurationError("a debounced task needs seconds > 0")
        if payload not in ("last", "first", "all"):
            raise ConfigurationError(f"payload must be 'last', 'first' or 'all', not {payload!r}")
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigurationError(f"max_items must be an integer >= 1, got {max_items!r}")
        if key is not None and not (isinstance(key, str) or callable(key)):
            raise ConfigurationError("key must be a format string or a callable")
        wait = 0 if max_wait is None else round(delay_seconds(max_wait, name="max_wait") * 1000)
        if max_wait is not None and wait < window:
            raise ConfigurationError("max_wait must be at least the debounce window (seconds)")
        return cls(window, key, payload, max_items, wait)  # type: ignore[arg-type]


class Debounced(Task[P, R]):
    """A task fired once, ``seconds`` after the last ``touch`` of its key.

    With ``payload="all"`` the handler is called with one argument: the list of
    :class:`~delayq.Touch` (args, kwargs, time) of every touch of the cycle, oldest first.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        options: TaskOptions,
        app_ref: Callable[[], Delayq],
        debounce: DebounceOptions,
    ) -> None:
        super().__init__(fn, options, app_ref)
        if debounce.key is None:
            try:  # without key=, the task name is the timer id of every touch
                check_timer_id(options.name)
            except InvalidTimerId as exc:
                raise ConfigurationError(
                    f"debounced task {options.name!r} has no key=, so its name is its timer "
                    f"id: {exc}"
                ) from None
        self.debounce = debounce

    def key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The timer id that a touch with these arguments re-arms."""
        spec = self.debounce.key
        if spec is None:
            return check_timer_id(self.name)
        signature = self._signature if self.debounce.payload != "all" else None
        return check_timer_id(format_key(spec, signature, args, kwargs,
                                         what=f"touch of {self.name!r}"))  # fmt: skip

    def prepare_touch(self, *args: Any, **kwargs: Any) -> TouchRequest:
        """Validate and serialize a touch without storing it (for ``Delayq.touch_many``)."""
        timer_id = self.key_for(args, kwargs)
        limit = self.app.max_payload_bytes
        now_ms = int(time.time() * 1000)
        opts = self.debounce
        if opts.payload == "all":
            payload = encode_payload(self.name, (), {}, attempt=0, created_ms=now_ms,
                                     max_bytes=limit, route=self.options.route)  # fmt: skip
            item = encode_touch(args, kwargs, touched_ms=now_ms, max_bytes=limit)
        else:
            payload = encode_payload(self.name, args, kwargs, attempt=0, created_ms=now_ms,
                                     max_bytes=limit, route=self.options.route)  # fmt: skip
            item = b""
        return TouchRequest(
            timer_id, payload, opts.window_ms, opts.payload, opts.max_items, opts.max_wait_ms,
            item,
        )  # fmt: skip

    def touch(self, *args: Any, **kwargs: Any) -> Timer:
        """Arm this key's timer, or re-arm it: it fires ``seconds`` after the last touch."""
        return self.app.touch(self.prepare_touch(*args, **kwargs))

    async def atouch(self, *args: Any, **kwargs: Any) -> Timer:
        """``touch`` for asyncio code."""
        return await self.app.atouch(self.prepare_touch(*args, **kwargs))

    def job_args(self, payload: Payload, fired: Delivery, max_bytes: int) -> tuple[Any, ...]:
        if self.debounce.payload != "all":
            return payload.args
        try:  # the one argument: every touch of the cycle
            return (decode_touches(fired.items or b"", max_bytes=max_bytes),)
        except PayloadError as exc:
            raise PayloadError(f"undecodable touches: {exc}") from None
