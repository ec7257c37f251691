"""Payload encoding: msgpack only, extension types round-trip, bad input named."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from zoneinfo import ZoneInfo

import msgpack
import pytest

from delayq import PayloadError
from delayq._codec import decode_payload, encode_payload


def roundtrip(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    raw = encode_payload("t", args, kwargs, attempt=0, created_ms=1, max_bytes=1 << 20)
    payload = decode_payload(raw)
    return payload.args, payload.kwargs


def test_rich_types_round_trip() -> None:
    values = [
        dt.datetime(2027, 1, 1, 9, 30, tzinfo=dt.UTC),
        dt.datetime(2027, 3, 28, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),
        dt.datetime(2027, 1, 1, 9, 30),
        dt.date(2027, 1, 1),
        uuid.uuid4(),
        decimal.Decimal("12.3400"),
        b"\x00\xffbytes",
        {"nested": [1, 2.5, None, True, "é"]},
    ]
    args, kwargs = roundtrip(*values, when=values[0])
    assert list(args) == values
    assert kwargs == {"when": values[0]}
    assert args[1].tzinfo == ZoneInfo("Europe/Paris")  # type: ignore[union-attr]


def test_unserializable_argument_is_named() -> None:
    with pytest.raises(PayloadError, match="argument 'callback'"):
        roundtrip(1, callback=lambda: None)
    with pytest.raises(PayloadError, match="position 1"):
        roundtrip(1, {1, 2})


def test_oversized_payload_refused() -> None:
    with pytest.raises(PayloadError, match="over the limit of 100 bytes"):
        encode_payload("t", ("x" * 200,), {}, attempt=0, created_ms=1, max_bytes=100)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # never-used msgpack byte
        b"",
        msgpack.packb({"a": 1}),
        msgpack.packb([1, "t", [], {}, 0]),
        msgpack.packb([2, "t", [], {}, 0, 1]),
        msgpack.packb([1, "", [], {}, 0, 1]),
        msgpack.packb([1, "t", "notalist", {}, 0, 1]),
        msgpack.packb([1, "t", [], {1: 2}, 0, 1]),
        msgpack.packb([1, "t", [], {}, -1, 1]),
        msgpack.packb([1, "t", [msgpack.ExtType(99, b"x")], {}, 0, 1]),
        msgpack.packb([1, "t", [msgpack.ExtType(1, b"not a date")], {}, 0, 1]),
    ],
)
def test_bad_payloads_rejected_with_reason(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_payload(raw)


def test_deep_nesting_rejected() -> None:
    deep: list[object] = []
    for _ in range(80):
        deep = [deep]
    raw = msgpack.packb([1, "t", deep, {}, 0, 1])
    with pytest.raises(PayloadError, match=r"nested|msgpack"):
        decode_payload(raw)
