"""Lifecycle events: which jobs tell them, what one is, and how the stream is read (no I/O).

Each script that moves a job on (schedule, touch, control, cancel, fire, started, progress,
ack, retry, bury) appends an event to its shard's capped stream (``Keys.events``), in the same
step as the change, when the spec it is given wants events for the job's task (prelude.lua:
event_spec). Events are off by default: the scripts then get an empty spec and add nothing.

A reader keeps one stream id per shard; an event's ``position`` is that whole cursor as text
(``"<id>"`` for one shard, ``"<id>,<id>,..."`` in shard order for more), so resuming from it
reads each shard after what was handed out, missing nothing still in the cap and repeating
nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from delayq._calls import Call, command
from delayq._errors import ConfigurationError
from delayq._keys import Keys

if TYPE_CHECKING:
    from delayq._task import Task

# The kinds, in the order of a job's life (docs/outcomes.md, "Events").
EVENT_KINDS = ("scheduled", "rescheduled", "cancelled", "fired", "throttled", "started",
               "progress", "succeeded", "retried", "failed")  # fmt: skip
# Enough to follow a busy namespace for a while (a few tens of MB at most), and XADD with an
# approximate MAXLEN trims in whole stream nodes, cheaply.
DEFAULT_EVENTS_MAXLEN = 100_000
START = "0"  # ``since=START``: every event still kept
NOW = "$"  # ``since=NOW``: only events told from now on


def check_events_maxlen(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"events_maxlen must be an integer >= 1, not {value!r}")
    return value


def check_events(value: object, what: str = "events") -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be True or False, not {value!r}")
    return value


class EventSettings:
    """An app's events: on for every task or none (``events=``), each task's own setting
    first; read anew when tasks are declared, which happens after the app is made."""

    def __init__(self, on: bool, maxlen: int, touches: bool,
                 tasks: Callable[[], Iterable[Task[Any, Any]]]) -> None:  # fmt: skip
        self.on = on
        self.maxlen = maxlen
        self.touches = touches
        self._tasks = tasks
        self._spec: tuple[int, str] | None = None  # (tasks counted, the spec)

    def spec(self) -> str:
        """The scripts' spec (prelude.lua: event_spec): '' when no task tells events. Built
        again only when a task was declared since (a name is declared once, its options never
        change), not on every call: fire and ack calls ask for it."""
        tasks = list(self._tasks())
        if self._spec is None or self._spec[0] != len(tasks):
            own = [(t.name, t.options.events) for t in tasks if t.options.events is not None]
            differs = sorted(name for name, on in own if on != self.on)
            if not self.on and not differs:
                text = ""
            else:
                text = f"{self.maxlen}:{int(self.on)}:{int(self.touches)}" + "".join(
                    f":{len(n.encode())}:{n}" for n in differs
                )
            self._spec = (len(tasks), text)
        return self._spec[1]


OFF = EventSettings(False, DEFAULT_EVENTS_MAXLEN, False, tuple)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One step of a job's life, as its shard's events stream holds it.

    ``timer_id`` is the id the job was scheduled under (every attempt's events carry it);
    ``attempt`` counts from 1; ``at_ms`` is the server's clock. ``position``: pass it as
    ``since=`` to read on after this event. The other fields are set for the kinds they
    belong to (``due_ms`` for scheduled, rescheduled, fired, throttled and retried; ``worker``
    for started; ``fraction`` and ``message`` for progress; ``message`` for throttled: the
    limit it waits for; ``error_type`` and ``error`` for retried and failed)."""

    kind: str  # one of EVENT_KINDS
    timer_id: str
    task: str
    attempt: int
    at_ms: int
    position: str
    shard: int = 0
    due_ms: int | None = None
    worker: str | None = None
    fraction: float | None = None
    message: str | None = None
    error_type: str | None = None
    error: str | None = None

    @property
    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.at_ms / 1000, tz=dt.UTC)

    @property
    def due_at(self) -> dt.datetime | None:
        return None if self.due_ms is None else dt.datetime.fromtimestamp(self.due_ms / 1000,
                                                                           tz=dt.UTC)  # fmt: skip


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def decode_event(shard: int, entry_id: str, fields: dict[bytes, bytes], position: str) -> JobEvent:
    due = fields.get(b"d")
    fraction = fields.get(b"p")
    return JobEvent(
        kind=_text(fields.get(b"k")) or "", timer_id=_text(fields.get(b"i")) or "",
        task=_text(fields.get(b"t")) or "", attempt=int(fields.get(b"a") or 0),
        at_ms=int(entry_id.partition("-")[0]), position=position, shard=shard,
        due_ms=None if due is None else int(float(due)), worker=_text(fields.get(b"w")),
        fraction=None if fraction is None else float(fraction),
        message=_text(fields.get(b"pm")) or None, error_type=_text(fields.get(b"e")) or None,
        error=_text(fields.get(b"m")),
    )  # fmt: skip


class Cursor:
    """Where a reader is in each shard's events stream."""

    def __init__(self, count: int, since: str | None) -> None:
        if since is None or since == START:
            ids = ["0-0"] * count
        elif since == NOW:
            ids = ["$"] * count
        else:
            ids = since.split(",")
            if len(ids) != count or not all(_stream_id(i) for i in ids):
                raise ValueError(
                    f"since={since!r} is not a position of this namespace's events (it has "
                    f"{count} shard(s)): pass an event's .position, {START!r} or {NOW!r}"
                )
        self.ids = ids

    def advance(self, shard: int, entry_id: str) -> str:
        self.ids[shard] = entry_id
        return self.position

    @property
    def position(self) -> str:
        return ",".join(self.ids)


def _stream_id(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    return ms.isdigit() and (not dash or seq.isdigit())


Entries = list[tuple[str, dict[bytes, bytes]]]


def _entries(reply: Any) -> dict[str, Entries]:
    """XREAD's reply (RESP2 or 3) as stream name -> [(entry id, fields)]."""
    if not reply:
        return {}
    items = reply.items() if isinstance(reply, dict) else reply
    out: dict[str, Entries] = {}
    for name, entries in items:
        key = name.decode() if isinstance(name, bytes) else str(name)
        out[key] = [(eid.decode() if isinstance(eid, bytes) else str(eid), _fields(raw))
                    for eid, raw in entries if raw is not None]  # fmt: skip
    return out


def _fields(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def read_events(streams: list[str], ids: list[str], count: int,
                block_ms: int | None) -> Call[dict[str, Entries]]:  # fmt: skip
    """One XREAD of ``streams`` after ``ids``; blocks ``block_ms`` if given and nothing is
    there yet."""
    args: list[Any] = ["XREAD", "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return command(*args, "STREAMS", *streams, *ids, decode=_entries, raw=True)


def last_event_id(keys: Keys) -> Call[str]:
    """The id of a shard's newest event, "0-0" if none: where a reader from NOW starts (a
    position names ids, never "$", so that resuming from it misses nothing)."""
    return command("XREVRANGE", keys.events, "+", "-", "COUNT", 1, raw=True,
                   decode=lambda r: _id_text(r[0][0]) if r else "0-0")  # fmt: skip


def _id_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
