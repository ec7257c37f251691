"""What delayq asks of the server, as values: no I/O happens here.

A ``Call`` is one command or one script run, with the function that reads its reply. A
``Batch`` is many calls sent in one round trip. A ``Flow`` is an operation that needs more than
one round trip, written once as a generator: it yields calls or batches, is sent their decoded
replies, and returns its result. The runners (``_runners``) do the I/O, synchronously or with
asyncio, so that each operation is written once for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


def _as_is(reply: Any) -> Any:
    return reply


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One command (``script`` None: ``args`` starts with the command's name) or one run of the
    script named ``script`` (``args`` is its keys, then its arguments)."""

    args: tuple[Any, ...]
    decode: Callable[[Any], T] = _as_is
    script: str | None = None
    numkeys: int = 0
    # Set on calls that add work: what to name in the ServerOutOfMemory raised when the server
    # refuses the call for lack of memory ("timer 'a' was").
    refused: str | None = None
    # Passed to redis-py's reply parser for this command (e.g. ``withscores``).
    options: dict[str, Any] = field(default_factory=dict)
    # How many of a batch's items (timers, touches) the call carries: a batch refused for lack
    # of memory counts in them what completed.
    weight: int = 1
    # ``decode`` reads the reply as the server sent it (as for scripts), not as redis-py's reply
    # callback for the command would turn it: the runners may then send it on their direct path.
    raw: bool = False
    # A write a producer asked for (scheduling, touching, control, cancelling, re-driving): with
    # ``wait_replicas``, a WAIT follows it on its connection (see ``_replicas``).
    replicate: bool = False


def command(
    *args: Any, decode: Callable[[Any], T] = _as_is, raw: bool = False, **options: Any
) -> Call[T]:
    return Call(args, decode, options=options, raw=raw)


def script(
    name: str,
    keys: Sequence[Any],
    args: Sequence[Any] = (),
    *,
    decode: Callable[[Any], T] = _as_is,
    refused: str | None = None,
    weight: int = 1,
    replicate: bool = False,
) -> Call[T]:
    return Call((*keys, *args), decode, name, len(keys), refused, weight=weight,
                replicate=replicate)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """Calls sent together, ``chunk`` per round trip; their replies come back in order.

    With ``transaction``, the calls run as one MULTI/EXEC (and ``chunk`` is ignored). A batch
    whose calls fail raises the first failure once every call of its chunk has been sent; for a
    refusal for lack of memory, a ServerOutOfMemory that counts the items that completed (each
    call's ``weight``).
    """

    calls: Sequence[Call[T]]
    chunk: int = 1000
    transaction: bool = False
    refused: str = "calls of a batch"  # the ServerOutOfMemory's wording: "3 of a batch of 10 were"


Step = Call[Any] | Batch[Any]
Flow = Generator[Step, Any, T]


def mapped(call: Call[T], then: Callable[[T], U]) -> Call[U]:
    """The same call, its decoded reply passed through ``then``."""
    decode = call.decode
    # Every other field kept as it is (a field added later is not dropped here).
    same: Call[Any] = call
    return dataclasses.replace(same, decode=lambda reply: then(decode(reply)))


def server_ms(reply: Any) -> int:
    """TIME's reply (seconds, microseconds) as milliseconds."""
    sec, usec = reply
    return int(sec) * 1000 + int(usec) // 1000


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def server_time() -> Call[int]:
    return command("TIME", decode=server_ms)
