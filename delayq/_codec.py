"""The msgpack payload of a timer: what it runs, with which arguments. Never pickle.

Besides msgpack's own types, datetime, date, time-zone-aware datetimes, UUID, Decimal and bytes
round-trip through extension types. Tuples come back as lists.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack

from delayq._errors import PayloadError

FORMAT_VERSION = 1
_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_UUID = 3
_EXT_DECIMAL = 4
_EXT_ZONED_DATETIME = 5  # a datetime whose tzinfo is an IANA zone, kept by name
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Payload:
    """What a timer carries; decoded from its data key or its ready-stream entry."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    created_ms: int

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
            return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
        if code == _EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
    except (ValueError, UnicodeDecodeError, ZoneInfoNotFoundError, decimal.InvalidOperation) as exc:
        raise PayloadError(f"bad extension value of type {code}: {exc}") from None
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
) -> bytes:
    """Serialize a call; raise PayloadError naming the argument that cannot be serialized.

    Everything a worker would refuse to decode is refused here instead, before it is stored.
    """
    _check_encodable(args, kwargs)
    try:
        data = _pack([FORMAT_VERSION, task, list(args), kwargs, attempt, created_ms])
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(
            f"cannot serialize the call of task {task!r}: {_name_culprit(args, kwargs)}"
        ) from None
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload of task {task!r} is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    return data


def decode_payload(data: bytes) -> Payload:
    """Parse a payload; raise PayloadError with the reason if it is not one delayq wrote."""
    try:
        value = msgpack.unpackb(
            data,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except PayloadError:
        raise
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise PayloadError(f"payload is not valid msgpack: {type(exc).__name__}: {exc}") from None
    return _check_shape(value)


def _check_shape(value: object) -> Payload:
    if not isinstance(value, list) or len(value) != 6:
        raise PayloadError("payload is not a delayq payload (expected a list of 6 items)")
    version, task, args, kwargs, attempt, created_ms = value
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload format version {version!r}")
    if not isinstance(task, str) or not task:
        raise PayloadError("payload has no task name")
    if not isinstance(args, list):
        raise PayloadError("payload arguments are not a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise PayloadError("payload keyword arguments are not a map of names")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise PayloadError("payload attempt is not a non-negative integer")
    if not isinstance(created_ms, int) or isinstance(created_ms, bool):
        raise PayloadError("payload creation time is not an integer")
    if _depth(args) > _MAX_DEPTH or _depth(kwargs) > _MAX_DEPTH:
        raise PayloadError(f"payload is nested deeper than {_MAX_DEPTH} levels")
    return Payload(task, tuple(args), kwargs, attempt, created_ms)


def _check_encodable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for name in kwargs:
        if not isinstance(name, str):
            raise PayloadError(f"keyword argument names must be strings, got {name!r}")
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


def _depth(value: object) -> int:
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > _MAX_DEPTH:
            break
        if isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
        elif isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
    return deepest


def reencode(payload: Payload, *, attempt: int, max_bytes: int) -> bytes:
    """The same call with another attempt number (used by retries and re-drives)."""
    return encode_payload(
        payload.task,
        payload.args,
        payload.kwargs,
        attempt=attempt,
        created_ms=payload.created_ms,
        max_bytes=max_bytes,
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


def decode_touches(data: bytes) -> list[Touch]:
    """The touches stored for a debounced timer: concatenated msgpack items, oldest first."""
    unpacker = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=True)
    unpacker.feed(data)
    touches: list[Touch] = []
    try:
        for item in unpacker:
            if not (isinstance(item, list) and len(item) == 3):
                raise PayloadError("a stored touch is not a [args, kwargs, time] list")
            args, kwargs, touched_ms = item
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise PayloadError("a stored touch has malformed arguments")
            touches.append(Touch(tuple(args), kwargs, int(touched_ms)))
    except PayloadError:
        raise
    except Exception as exc:
        raise PayloadError(f"stored touches are not valid msgpack: {exc}") from None
    return touches
