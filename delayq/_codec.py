"""The msgpack payload of a timer: what it runs, with which arguments. Never pickle.

Besides msgpack's own types, datetime, date, time-zone-aware datetimes, UUID, Decimal and bytes
round-trip through extension types. Tuples come back as lists.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack

from delayq._errors import PayloadError
from delayq._route import DEFAULT_ROUTE, Route, check_priority, check_queue

FORMAT_VERSION = 1
# A payload routed elsewhere than the default queue at the default priority: its queue and
# level follow the task name, where fire.lua reads them (prelude.lua: stream_of).
ROUTED_VERSION = 2
_MAX_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999 UTC, the last instant datetime can hold
_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_UUID = 3
_EXT_DECIMAL = 4
_EXT_ZONED_DATETIME = 5  # a datetime whose tzinfo is an IANA zone, kept by name
_MAX_DEPTH = 64
# The only zone names a datetime extension may carry: IANA-style names. Anything else (paths,
# NUL bytes, names thousands of characters long) would reach the file system through ZoneInfo.
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]{1,64}(?:/[A-Za-z0-9_+\-]{1,64}){0,3}")


@dataclass(frozen=True, slots=True)
class Payload:
    """What a timer carries; decoded from its data key or its ready-stream entry."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    created_ms: int
    # Follow-up tasks scheduled with the outcome, once it is final (``schedule(on_success=)``).
    on_success: str | None = None
    on_failure: str | None = None
    route: Route = DEFAULT_ROUTE

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.created_ms / 1000, tz=dt.UTC)


def _default(obj: object) -> msgpack.ExtType:
    if isinstance(obj, dt.datetime):
        if isinstance(obj.tzinfo, ZoneInfo):
            text = obj.replace(tzinfo=None).isoformat() + "|" + obj.tzinfo.key
            return msgpack.ExtType(_EXT_ZONED_DATETIME, text.encode())
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    raise TypeError(f"cannot serialize an object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> object:
    try:
        if code == _EXT_DATETIME:
            return dt.datetime.fromisoformat(data.decode())
        if code == _EXT_ZONED_DATETIME:
            text, _, zone = data.decode().rpartition("|")
            if not _ZONE_NAME.fullmatch(zone):
                raise ValueError(f"{zone[:80]!r} is not a time zone name")
            return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
        if code == _EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
    except (ValueError, UnicodeDecodeError, ZoneInfoNotFoundError, decimal.InvalidOperation) as exc:
        raise PayloadError(f"bad extension value of type {code}: {exc}") from None
    except OSError:  # a zone name that is a directory, or too long for the file system
        raise PayloadError(f"bad extension value of type {code}: unknown time zone") from None
    raise PayloadError(f"unknown msgpack extension type {code}")


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)
    return packed


def _name_culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    for position, value in enumerate(args):
        try:
            _pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"argument at position {position}: {exc}"
    for name, value in kwargs.items():
        try:
            _pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            return f"argument {name!r}: {exc}"
    return "the arguments"


def encode_payload(
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    attempt: int,
    created_ms: int,
    max_bytes: int,
    on_success: str | None = None,
    on_failure: str | None = None,
    route: Route = DEFAULT_ROUTE,
) -> bytes:
    """Serialize a call; raise PayloadError naming the argument that cannot be serialized.

    Everything a worker would refuse to decode is refused here instead, before it is stored.
    A payload with callbacks has a seventh item, a map of "s" / "f" to their task names; one
    without stays six items long, as before callbacks. A job of another queue or priority
    than the default has format version 2, its queue and level right after the task name.
    """
    _check_encodable(args, kwargs)
    call: list[Any] = [FORMAT_VERSION, task, list(args), kwargs, attempt, created_ms]
    if not route.is_default:
        call[0:2] = [ROUTED_VERSION, task, route.queue, route.priority]
    then = {k: v for k, v in (("s", on_success), ("f", on_failure)) if v is not None}
    if then:
        call.append(then)
    try:
        data = _pack(call)
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(
            f"cannot serialize the call of task {task!r}: {_name_culprit(args, kwargs)}"
        ) from None
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload of task {task!r} is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    return data


def encode_result(value: object, *, max_bytes: int) -> bytes:
    """A job's return value as kept in its outcome record: msgpack, with the types arguments
    may have; PayloadError naming the problem if it cannot be kept."""
    try:
        _check_encodable((value,), {})
        data = _pack(value)
    except PayloadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"the result cannot be serialized: {exc}") from None
    if len(data) > max_bytes:
        raise PayloadError(f"the result is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def decode_result(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                               use_list=True, timestamp=0)  # fmt: skip
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise PayloadError(_why_not_msgpack("result", exc)) from None


def decode_payload(data: bytes, *, max_bytes: int | None = None) -> Payload:
    """Parse a payload; raise PayloadError with the reason if it is not one delayq wrote.

    ``max_bytes`` (a worker passes its app's ``max_payload_bytes``): a longer payload is refused
    before it is parsed, as no producer with the same limit could have written it.
    """
    limit = _size_limit(data, max_bytes, "payload")
    try:
        value = msgpack.unpackb(
            data,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=True,
            use_list=True,
            timestamp=0,  # msgpack's own timestamp type (-1): refused by _check_values
            **_container_limits(limit),
        )
    except PayloadError:
        raise
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise PayloadError(_why_not_msgpack("payload", exc)) from None
    return _check_shape(value)


def _size_limit(data: bytes, max_bytes: int | None, what: str) -> int:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"{what} is not bytes but {type(data).__name__}")
    if max_bytes is None:
        return max(len(data), 1)
    if len(data) > max_bytes:
        raise PayloadError(
            f"{what} is {len(data)} bytes, over the limit of {max_bytes} bytes (max_payload_bytes)"
        )
    return max_bytes


def _container_limits(limit: int) -> dict[str, int]:
    """Bounds for msgpack headers: no string, array, map or extension in ``limit`` bytes can be
    longer, so a header claiming more (2**32 - 1 elements in five bytes) is refused before
    anything is allocated for it."""
    return {
        "max_str_len": limit,
        "max_bin_len": limit,
        "max_array_len": limit,  # each element takes at least one byte
        "max_map_len": limit // 2,  # each entry at least two
        "max_ext_len": limit,
    }


def _why_not_msgpack(what: str, exc: Exception) -> str:
    """A readable reason for what msgpack raised (several of its errors have no message)."""
    if isinstance(exc, msgpack.StackError):
        return f"{what} is nested too deeply for the msgpack decoder (over 1,024 levels)"
    if isinstance(exc, msgpack.ExtraData):
        return f"{what} has {len(exc.extra)} byte(s) of trailing data after its msgpack value"
    if isinstance(exc, msgpack.FormatError):
        return f"{what} is not valid msgpack: a byte that starts no msgpack value"
    if isinstance(exc, UnicodeDecodeError):
        return f"{what} has a string that is not valid UTF-8: {exc}"
    text = str(exc)
    if "incomplete input" in text or isinstance(exc, msgpack.OutOfData):
        return f"{what} is truncated: the msgpack data ends in the middle of a value"
    if "is not allowed for map key" in text:
        return f"{what} has a map key that is neither str nor bytes: {text}"
    if " exceeds max_" in text:
        return f"{what} declares a string, array or map longer than the data can hold: {text}"
    return f"{what} is not valid msgpack: {type(exc).__name__}: {text}"


def _check_shape(value: object) -> Payload:
    route = DEFAULT_ROUTE
    if isinstance(value, list) and value and value[0] == ROUTED_VERSION:
        route = _route(value[2:4])
        value = [FORMAT_VERSION, *value[1:2], *value[4:]]
    if not isinstance(value, list) or len(value) not in (6, 7):
        got = f"a list of {len(value)} items" if isinstance(value, list) else _kind(value)
        raise PayloadError(
            f"payload is not a delayq payload (expected a list of 6 or 7 items, got {got})"
        )
    version, task, args, kwargs, attempt, created_ms = value[:6]
    then = _callbacks(value[6] if len(value) == 7 else {})
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise PayloadError(f"unsupported payload format version {version!r:.40}")
    if not isinstance(task, str):
        raise PayloadError(f"payload task name is not a string but {_kind(task)}")
    if not task:
        raise PayloadError("payload has an empty task name")
    if not isinstance(args, list):
        raise PayloadError(f"payload arguments are not a list but {_kind(args)}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise PayloadError("payload keyword arguments are not a map of names")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise PayloadError("payload attempt is not a non-negative integer")
    if not isinstance(created_ms, int) or isinstance(created_ms, bool):
        raise PayloadError("payload creation time is not an integer")
    if not 0 <= created_ms <= _MAX_MS:
        raise PayloadError(f"payload creation time {created_ms} is not a time in ms since 1970")
    _check_values("payload", args, kwargs)
    return Payload(task, tuple(args), kwargs, attempt, created_ms, then.get("s"), then.get("f"),
                   route)  # fmt: skip


def _route(value: list[Any]) -> Route:
    if len(value) != 2:
        raise PayloadError("payload of format 2 has no queue and priority")
    try:
        return Route(check_queue(value[0]), check_priority(value[1]))
    except ValueError as exc:  # ConfigurationError from the checks: the payload's fault here
        raise PayloadError(f"payload route: {exc}") from None


def _callbacks(value: object) -> dict[str, str]:
    if (
        not isinstance(value, dict)
        or not set(value) <= {"s", "f"}
        or not all(isinstance(name, str) and name for name in value.values())
    ):
        raise PayloadError("payload callbacks are not a map of 's' / 'f' to task names")
    return value


_KINDS: dict[type, str] = {dict: "a map", list: "a list", str: "a string", bytes: "bytes"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


# Values that hold nothing to check (no nesting, no map keys): most calls' arguments are all of
# these, and the checks run on every schedule() and every job.
_PLAIN_TYPES = frozenset({str, int, float, bool, bytes, type(None)})


def _check_encodable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for name in kwargs:
        if not isinstance(name, str):
            raise PayloadError(f"keyword argument names must be strings, got {name!r}")
    if _all_plain(args, kwargs):
        return
    named = [(f"argument at position {i}", v) for i, v in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        stack: list[tuple[object, int]] = [(value, 2)]  # inside the args list: depth 2
        while stack:
            item, level = stack.pop()
            if level > _MAX_DEPTH:
                raise PayloadError(f"{label} is nested deeper than {_MAX_DEPTH} levels")
            if isinstance(item, list | tuple):
                stack.extend((child, level + 1) for child in item)
            elif isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str | bytes):
                        raise PayloadError(
                            f"{label} has a map key of type {type(key).__name__}: "
                            "only str and bytes keys round-trip"
                        )
                    stack.append((child, level + 1))


def _all_plain(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    return all(type(v) in _PLAIN_TYPES for v in args) and all(
        type(v) in _PLAIN_TYPES for v in kwargs.values()
    )


def _check_values(what: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse nesting deeper than a producer may write, and msgpack's own timestamp type,
    which delayq never writes (the only extension types it decodes are its own)."""
    if _all_plain(args, kwargs):
        return  # a job's decoding is on every run's path: skip the walk when nothing nests
    stack: list[tuple[object, int]] = [(args, 1), (kwargs, 1)]
    while stack:
        item, level = stack.pop()
        if level > _MAX_DEPTH:
            raise PayloadError(f"{what} is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
        elif isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, msgpack.Timestamp):
            raise PayloadError(f"{what} holds a msgpack timestamp (extension type -1)")


def reencode(payload: Payload, *, attempt: int, max_bytes: int) -> bytes:
    """The same call with another attempt number (used by retries and re-drives)."""
    return encode_payload(
        payload.task,
        payload.args,
        payload.kwargs,
        attempt=attempt,
        created_ms=payload.created_ms,
        max_bytes=max_bytes,
        on_success=payload.on_success,
        on_failure=payload.on_failure,
        route=payload.route,
    )


@dataclass(frozen=True, slots=True)
class Touch:
    """One touch of a debounced timer with ``payload="all"``, as passed to its handler."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    touched_ms: int

    @property
    def touched_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.touched_ms / 1000, tz=dt.UTC)


def encode_touch(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, touched_ms: int, max_bytes: int
) -> bytes:
    _check_encodable(args, kwargs)
    try:
        data = _pack([list(args), kwargs, touched_ms])
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(f"cannot serialize the touch: {_name_culprit(args, kwargs)}") from None
    if len(data) > max_bytes:
        raise PayloadError(f"touch is {len(data)} bytes, over the limit of {max_bytes} bytes")
    return data


def decode_touches(data: bytes, *, max_bytes: int | None = None) -> list[Touch]:
    """The touches stored for a debounced timer: concatenated msgpack items, oldest first.

    ``max_bytes``: the limit of each touch (``max_payload_bytes``); the data may hold many.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"stored touches are not bytes but {type(data).__name__}")
    limit = max(len(data), 1) if max_bytes is None else min(max(len(data), 1), max_bytes)
    unpacker = msgpack.Unpacker(
        raw=False, ext_hook=_ext_hook, strict_map_key=True, timestamp=0,
        max_buffer_size=max(len(data), 1), **_container_limits(limit),
    )  # fmt: skip
    unpacker.feed(data)
    touches: list[Touch] = []
    consumed = 0  # the end of the last complete item
    try:
        for item in unpacker:
            consumed = unpacker.tell()
            if not (isinstance(item, list) and len(item) == 3):
                raise PayloadError("a stored touch is not a [args, kwargs, time] list")
            args, kwargs, touched_ms = item
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise PayloadError("a stored touch has malformed arguments")
            if not all(isinstance(k, str) for k in kwargs):
                raise PayloadError("a stored touch has keyword arguments that are not names")
            if not isinstance(touched_ms, int) or isinstance(touched_ms, bool):
                raise PayloadError("a stored touch has a time that is not an integer")
            _check_values("a stored touch", args, kwargs)
            touches.append(Touch(tuple(args), kwargs, touched_ms))
    except PayloadError:
        raise
    except Exception as exc:
        raise PayloadError(_why_not_msgpack("stored touches", exc)) from None
    if consumed != len(data):  # iteration stops quietly at an incomplete last item
        raise PayloadError(
            "stored touches are truncated: the msgpack data ends in the middle of a value"
        )
    return touches


def peek_task(data: bytes) -> str | None:
    """A payload's task name read off its first bytes (a fixarray header, the version, then
    the name), without decoding the rest; None if they are not what ``encode_payload`` writes.
    The worker uses it to pick out the jobs of limited tasks cheaply (prelude.lua reads it the
    same way)."""
    if (
        len(data) < 3
        or not 0x90 <= data[0] <= 0x9F
        or data[1] not in (FORMAT_VERSION, ROUTED_VERSION)
    ):
        return None
    head = data[2]
    if 0xA0 <= head <= 0xBF:
        start, size = 3, head - 0xA0
    elif head == 0xD9 and len(data) > 3:
        start, size = 4, data[3]
    elif head == 0xDA and len(data) > 4:
        start, size = 5, int.from_bytes(data[3:5], "big")
    else:
        return None
    try:
        return bytes(data[start : start + size]).decode("utf-8")
    except UnicodeDecodeError:
        return None
