"""Watched keys: react when a key written by another program expires (``on_expire``).

Producers do nothing but plain Redis commands (``SET key value EX 1800``). One worker at a
time, the watch leader, hears the matching keys' events and applies them in order (watch.lua),
keeping each key's deadline in the watch index as a *watch timer* (see worker/_watching.py).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from delayq._codec import Payload, encode_payload
from delayq._errors import ConfigurationError
from delayq._keys import KEY_ROOT, WATCH_ID_PREFIX, Keys, matches_own_keys
from delayq._task import Task, TaskOptions

if TYPE_CHECKING:
    from delayq._app import Delayq
    from delayq._hooks import Delivery

P = ParamSpec("P")
R = TypeVar("R")

_GLOB_SPECIALS = re.compile(r"[?\[\]\\]")


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A key pattern with one ``*`` and where to find each key's companion data."""

    pattern: str
    data: str | None = None
    delete_data: bool = False

    def __post_init__(self) -> None:
        if self.pattern.count("*") != 1 or _GLOB_SPECIALS.search(self.pattern):
            raise ConfigurationError(
                f"watch pattern {self.pattern!r} must contain exactly one '*' and none of ? [ ] \\"
            )
        if self.delete_data and not self.data:
            raise ConfigurationError("delete_data=True needs data= (the companion key)")
        if self.data is not None:
            try:
                self.data.format(suffix="x", key="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigurationError(
                    f"data={self.data!r} may only use {{suffix}} and {{key}}: {exc}"
                ) from None

    @classmethod
    def build(cls, pattern: str, data: str | None, delete_data: bool) -> WatchSpec:
        """The spec of an ``on_expire`` declaration, or ConfigurationError naming the fault."""
        if not isinstance(pattern, str) or not (data is None or isinstance(data, str)):
            raise ConfigurationError("the watched-key pattern and data= must be str")
        for text in (pattern, data or ""):
            try:  # key names are sent as UTF-8: a lone surrogate would fail in the worker
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigurationError(f"{text[:80]!r} is not valid unicode: {exc}") from None
        spec = cls(pattern, data, delete_data)
        if matches_own_keys(pattern):
            # Its expiring shadow keys and fired markers would feed the watcher forever.
            raise ConfigurationError(
                f"watch pattern {pattern[:80]!r} can match delayq's own keys "
                f"({KEY_ROOT}...): start it with a prefix of your own keys"
            )
        return spec

    @property
    def head(self) -> str:
        return self.pattern.split("*", 1)[0]

    @property
    def tail(self) -> str:
        return self.pattern.split("*", 1)[1]

    def suffix_of(self, key: str) -> str | None:
        """The part of ``key`` that matched ``*``, or None if it does not match."""
        head, tail = self.head, self.tail
        if len(key) >= len(head) + len(tail) and key.startswith(head) and key.endswith(tail):
            return key[len(head) : len(key) - len(tail)]
        return None

    def companion(self, key: str, suffix: str) -> str | None:
        return None if self.data is None else self.data.format(suffix=suffix, key=key)


class Watcher(Task[P, R]):
    """An on_expire handler, called as ``handler(key, suffix, data)``."""

    def __init__(
        self, fn: Callable[P, R], options: TaskOptions, app_ref: Callable[[], Delayq],
        spec: WatchSpec,
    ) -> None:  # fmt: skip
        super().__init__(fn, options, app_ref)
        if "|" in options.name:
            raise ConfigurationError(f"an on_expire task name may not contain '|': {options.name}")
        self.spec = spec

    def timer_id(self, key: str) -> str:
        return Keys.watch_timer_id(self.name, key)

    def payload_for(self, key: str, suffix: str, *, max_bytes: int) -> bytes:
        return encode_payload(
            self.name, (key, suffix), {}, attempt=0, created_ms=int(time.time() * 1000),
            max_bytes=max_bytes, route=self.options.route,
        )  # fmt: skip

    def job_args(self, payload: Payload, fired: Delivery, max_bytes: int) -> tuple[Any, ...]:
        # A retry carries the companion data in its payload (it fires as a plain timer).
        data = payload.args[2] if len(payload.args) > 2 else fired.watched_data
        return (*payload.args[:2], data)

    def retry_as(
        self, payload: Payload, args: tuple[Any, ...], fired: Delivery
    ) -> tuple[Payload, str | None]:
        # A plain timer holding the companion data: a watch timer would be merged into the
        # watched key's next life.
        plain = Keys.plain_watch_job_id(fired.timer_id, "retry", fired.entry_id)
        return _with_args(payload, args), plain

    def dead_payload(self, payload: Payload, args: tuple[Any, ...]) -> Payload | None:
        # With the companion data it was given, so that a re-drive runs the same call.
        return _with_args(payload, args) if args else None

    def after_success(self, args: tuple[Any, ...]) -> tuple[str, bytes] | None:
        if not self.spec.delete_data or args[2] is None:
            return None
        companion = self.spec.companion(args[0], args[1])
        return (companion, args[2]) if companion else None


def _with_args(payload: Payload, args: tuple[Any, ...]) -> Payload:
    return dataclasses.replace(payload, args=args)


def is_watch_id(timer_id: str) -> bool:
    return timer_id.startswith(WATCH_ID_PREFIX)


def split_watch_id(timer_id: str) -> tuple[str, str]:
    """(task name, watched key) of a watch timer id."""
    name, _, key = timer_id[len(WATCH_ID_PREFIX) :].partition("|")
    return name, key


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """Everything watch.lua needs about one watch timer."""

    timer_id: str
    key: str
    companion: str | None
    payload: bytes


def resolve(watchers: dict[str, Watcher[Any, Any]], timer_id: str, max_bytes: int) -> WatchTarget:
    name, key = split_watch_id(timer_id)
    watcher = watchers.get(name)
    if watcher is None:
        # A watcher removed from the code: fire it anyway, and the job is dead-lettered as
        # an unknown task with a clear reason, rather than lingering in the index forever.
        payload = encode_payload(name, (key, ""), {}, attempt=0, created_ms=0, max_bytes=max_bytes)
        return WatchTarget(timer_id, key, None, payload)
    suffix = watcher.spec.suffix_of(key) or ""
    return WatchTarget(
        timer_id, key, watcher.spec.companion(key, suffix),
        watcher.payload_for(key, suffix, max_bytes=max_bytes),
    )  # fmt: skip
