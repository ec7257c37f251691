"""The producers' side of the protocol: every call a producer or the CLI sends, built and read
here without I/O (``Delayq`` runs them synchronously or with asyncio, see ``_runners``).

Each operation is one round trip: one script, one pipelined batch, or (``lookup``) one
pipeline of reads.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from delayq._calls import Batch, Call, Flow, command, mapped, script, server_time, text
from delayq._codec import Payload, decode_payload, reencode
from delayq._errors import InvalidTimerId
from delayq._events import OFF, EventSettings
from delayq._keys import WATCH_ID_PREFIX, Keys
from delayq._outcomes import DEFAULT_RESULT_TTL, Outcome, keep_ms, read_outcome
from delayq._when import When


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """One timer to arm, validated and serialized; building it does no I/O."""

    timer_id: str
    payload: bytes
    when: When
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Armed:
    """What the server answered for one ScheduleRequest."""

    timer_id: str
    created: bool
    due_ms: int  # -1: the timer with this id is paused
    now_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TouchRequest:
    """One touch of a debounced timer, validated and serialized; building it does no I/O."""

    timer_id: str
    payload: bytes
    window_ms: int
    mode: str
    max_items: int
    max_wait_ms: int
    item: bytes


@dataclass(frozen=True, slots=True)
class Touched:
    timer_id: str
    new_cycle: int
    due_ms: int
    now_ms: int
    items: int


@dataclass(frozen=True, slots=True)
class Controlled:
    status: int  # 1 done, 0 not pending, -1 paused, -2 not paused
    due_ms: int  # new deadline; for a pause, the time left
    now_ms: int


@dataclass(frozen=True, slots=True)
class Lookup:
    due_ms: int | None  # None: not in the due index (fired, cancelled, or paused)
    raw_payload: bytes | None
    paused_left_ms: int | None
    now_ms: int
    duration_ms: int | None = None  # the armed duration (the shadow key's value), if known


@dataclass(frozen=True, slots=True)
class Listed:
    timer_id: str
    due_ms: int | None  # None: paused
    raw_payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that failed for good, as stored in the dead-letter stream."""

    entry_id: str
    timer_id: str
    task: str
    reason: str
    traceback: str
    raw_payload: bytes
    raw_items: bytes = b""  # debounced payload="all": the touches
    shard: int = 0  # the shard whose dead-letter stream holds it (see _layout)
    shards: int = 1  # the namespace's shard count

    @property
    def ref(self) -> str:
        """What names it to ``purge_dead`` and the CLI: the entry id, with ``@<shard>`` in a
        namespace of several shards (entry ids are unique within one shard only)."""
        return self.entry_id if self.shards == 1 else f"{self.entry_id}@{self.shard}"

    @property
    def failed_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self.entry_id.split("-")[0]) / 1000, tz=dt.UTC)


_STORES: weakref.WeakSet[StoreCalls] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._new_nonces()


os.register_at_fork(after_in_child=_after_fork_in_child)


class StoreCalls:
    """The calls on one namespace's stored timers; pure building and decoding, no I/O."""

    def __init__(self, keys: Keys, *, max_payload_bytes: int,
                 result_ttl: float = DEFAULT_RESULT_TTL,
                 events: EventSettings = OFF) -> None:  # fmt: skip
        self.keys = keys
        self.events = events  # which jobs' changes are told on the events stream
        self.max_payload_bytes = max_payload_bytes
        self.result_ttl = result_ttl  # how long a cancellation is kept as the timer's outcome
        # Unique names for the debounced cycles a touch may retire (see touch.lua): random per
        # store, then counted, which is cheaper than random bytes for every touch. A forked
        # child gets a prefix of its own, or parent and child would count out the same names.
        self._new_nonces()
        _STORES.add(self)
        self._offset_ms = 0.0

    def _new_nonces(self) -> None:
        self._nonce_prefix = secrets.token_hex(6)
        self._nonces = itertools.count()

    # -- arming -------------------------------------------------------------------------------

    def schedule(self, req: ScheduleRequest) -> Call[Armed]:
        return mapped(self.arm_calls([req], refused=f"timer {req.timer_id!r} was"), _only)

    def schedule_many(self, reqs: list[ScheduleRequest], *, chunk: int = 1000) -> Flow[list[Armed]]:
        return _batched(reqs, chunk, self.arm_calls)

    def arm_calls(
        self, reqs: Sequence[ScheduleRequest], refused: str | None = None
    ) -> Call[list[Armed]]:
        k = self.keys
        keys: list[Any] = [k.index, k.paused]
        args: list[Any] = [k.wake_channel]
        for req in reqs:
            t = req.timer_id
            keys += (k.shadow(t), k.data(t))
            args += (t, req.payload, req.when.mode, req.when.ms, "1" if req.replace else "0")
        return script("schedule", [*keys, k.events], [*args, self.events.spec()],
                      refused=refused, weight=len(reqs), replicate=True,
                      decode=lambda reply: _armed(reqs, reply))  # fmt: skip

    def touch(self, req: TouchRequest) -> Call[Touched]:
        refused = f"touch of timer {req.timer_id!r} was"
        return mapped(self.touch_calls([req], refused=refused), _only)

    def touch_many(self, reqs: list[TouchRequest], *, chunk: int = 1000) -> Flow[list[Touched]]:
        return _batched(reqs, chunk, self.touch_calls)

    def touch_calls(
        self, reqs: Sequence[TouchRequest], refused: str | None = None
    ) -> Call[list[Touched]]:
        k = self.keys
        keys: list[Any] = [k.index, k.first_touch, k.paused]
        args: list[Any] = [k.wake_channel]
        for req in reqs:
            t = req.timer_id
            retired = k.retired_cycle_id(t, f"{self._nonce_prefix}{next(self._nonces):x}")
            keys += (k.shadow(t), k.data(t), k.items(t), k.data(retired), k.items(retired))
            args += (t, req.payload, req.window_ms, req.mode, req.max_items, req.max_wait_ms,
                     req.item, retired)  # fmt: skip
        return script("touch", [*keys, k.events], [*args, self.events.spec()],
                      refused=refused, weight=len(reqs), replicate=True,
                      decode=lambda reply: _touched(reqs, reply))  # fmt: skip

    # -- one timer ----------------------------------------------------------------------------

    def cancel(self, timer_id: str) -> Call[bool]:
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.items(timer_id), k.index_of(timer_id),
                k.paused, k.first_touch, k.outcome(timer_id), k.events]  # fmt: skip
        args = [timer_id, keep_ms(self.result_ttl), k.outcomes, self.events.spec()]
        return script("cancel", keys, args, decode=bool, replicate=True)

    def outcome(self, timer_id: str) -> Call[Outcome | None]:
        return read_outcome(self.keys, timer_id)

    def control(
        self, timer_id: str, operation: str, ms: int = 0, *, duration_ms: int = 0
    ) -> Call[Controlled]:
        """One control.lua operation (see its header for what each does); ``duration_ms`` is
        the armed duration to assume if the server no longer knows it."""
        if timer_id.startswith(WATCH_ID_PREFIX):
            # Its deadline is the watched key's, read from the key's TTL at every event: a
            # pause or a new deadline would be undone by the key's next write.
            raise InvalidTimerId(
                f"timer {timer_id[:80]!r} follows a watched key's time-to-live: {operation} does "
                "not apply to it; change the key's TTL (EXPIRE, PERSIST) or cancel the timer"
            )
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.index, k.paused, k.events]
        verb = "reschedule" if operation in ("delay", "at") else operation
        args: list[Any] = [timer_id, operation, ms, k.wake_channel, duration_ms,
                           self.events.spec()]  # fmt: skip
        return script("control", keys, args, refused=f"{verb} of timer {timer_id!r} was",
                      replicate=True,
                      decode=lambda r: Controlled(int(r[0]), int(r[1]), int(r[2])))  # fmt: skip

    def lookup(self, timer_id: str) -> Flow[Lookup]:
        """Where one timer stands, in one round trip."""
        k = self.keys
        reads = Batch([
            command("ZSCORE", k.index_of(timer_id), timer_id),
            command(*k.read_data(timer_id)),
            command("HGET", k.paused, timer_id),
            command("GET", k.shadow(timer_id)),
            server_time(),
        ])  # fmt: skip
        local_ms = time.time() * 1000
        score, raw, paused, shadow, now_ms = yield reads
        # The server read its clock about half-way through the round trip.
        self._offset_ms = now_ms - (local_ms + time.time() * 1000) / 2
        if paused is None:
            left = duration = None
        else:
            left_raw, _, duration_raw = paused.partition(b":")
            left, duration = int(left_raw), int(duration_raw or 0)
        if shadow is not None:
            duration = int(shadow)
        due = None if score is None else int(score)
        return Lookup(due, raw, left, now_ms, duration)

    def clock_offset_ms(self) -> float:
        """The server's clock minus this process's, as of the last lookup (0 before any)."""
        return self._offset_ms

    # -- listing ------------------------------------------------------------------------------

    def pending(self, *, limit: int, due_before_ms: int | None = None) -> Flow[list[Listed]]:
        """Pending timers, earliest first, then paused ones; payloads fetched in one trip."""
        top: Any = "+inf" if due_before_ms is None else f"({due_before_ms}"
        k = self.keys
        ranges = yield Batch([
            command("ZRANGEBYSCORE", index, "-inf", top, "LIMIT", 0, limit, "WITHSCORES",
                    withscores=True, score_cast_func=float)
            for index in (k.index, k.watch_index)
        ])  # fmt: skip
        rows = sorted((row for found in ranges for row in found), key=lambda row: row[1])
        found: list[tuple[str, int | None]] = [(m.decode(), int(s)) for m, s in rows[:limit]]
        if due_before_ms is None and len(found) < limit:
            paused: dict[bytes, bytes] = yield command("HGETALL", k.paused)
            found += [(member.decode(), None) for member in sorted(paused)][: limit - len(found)]
        raws = yield Batch([command(*k.read_data(timer_id)) for timer_id, _due in found])
        return [
            Listed(timer_id, due, raw)
            for (timer_id, due), raw in zip(found, raws, strict=True)
            if raw is not None
        ]

    def pending_count(self) -> Flow[int]:
        return sum(int(n) for n in (yield Batch(self.count_calls())))

    def count_calls(self) -> list[Call[int]]:
        """The sizes of the due indexes (plain timers, watch timers)."""
        return [command("ZCARD", self.keys.index, decode=int),
                command("ZCARD", self.keys.watch_index, decode=int)]  # fmt: skip

    def paused_count(self) -> Call[int]:
        return command("HLEN", self.keys.paused, decode=int)

    def periodic_state(self, task: str) -> Call[dict[str, str]]:
        return command("HGETALL", self.keys.periodic_state(task),
                       decode=lambda raw: {text(k): text(v) for k, v in raw.items()})  # fmt: skip

    def stats(self) -> Call[dict[str, int]]:
        return command("HGETALL", self.keys.stats,
                       decode=lambda raw: {text(k): int(v) for k, v in raw.items()})  # fmt: skip

    # -- dead letters -------------------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> Call[list[DeadLetter]]:
        return command("XRANGE", self.keys.dead, "-", "+", "COUNT", count,
                       decode=lambda entries: [_dead_letter(i, f) for i, f in entries])  # fmt: skip

    def redrive(self, letter: DeadLetter) -> Call[int]:
        """Arm a dead letter again as a timer due now, attempt reset; see redrive.lua."""
        k = self.keys
        try:
            payload = reencode(
                decode_payload(letter.raw_payload), attempt=0, max_bytes=self.max_payload_bytes
            )
        except ValueError:
            payload = letter.raw_payload  # undecodable: redrive as it was, it will be buried again
        t = letter.timer_id
        if t.startswith(WATCH_ID_PREFIX):
            # The job of one expiry, with the data it was given: under a plain id, so that the
            # watched key's current state has no say in it.
            t = Keys.plain_watch_job_id(t, "redrive", letter.entry_id)
        keys = [k.dead, k.shadow(t), k.data(t), k.index, k.items(t), k.events]
        args: list[Any] = [letter.entry_id, t, payload, k.wake_channel, letter.raw_items,
                           self.events.spec()]  # fmt: skip
        return script("redrive", keys, args, decode=int, replicate=True,
                      refused=f"re-arming dead letter {letter.entry_id} was")  # fmt: skip

    def purge_dead(self, entry_ids: list[str] | None = None) -> Flow[int]:
        if entry_ids is None:
            dead = self.keys.dead
            removed, _ = yield Batch([command("XLEN", dead), command("DEL", dead)],
                                     transaction=True)  # fmt: skip
            return int(removed)
        if not entry_ids:
            return 0
        return int((yield command("XDEL", self.keys.dead, *entry_ids)))


# Timers or touches per script call of a batch: enough to spread a call's fixed cost (the
# round trip's share, the server's clock, the due index's head), few enough that one call
# holds the server for about a millisecond.
SCRIPT_BATCH = 100

R = TypeVar("R")
A = TypeVar("A")


def _batched(
    reqs: list[R], chunk: int, build: Callable[[Sequence[R]], Call[list[A]]]
) -> Flow[list[A]]:
    """``reqs`` in order, in script calls of up to SCRIPT_BATCH built by ``build``, sent so
    that one round trip carries about ``chunk`` of them; their replies, one per request."""
    size = max(1, min(chunk, SCRIPT_BATCH))
    calls = [build(reqs[i : i + size]) for i in range(0, len(reqs), size)]
    groups = yield Batch(calls, max(1, chunk // size), refused="a batch of")
    return [reply for group in groups for reply in group]


def _only(replies: list[A]) -> A:
    (reply,) = replies
    return reply


def _armed(reqs: Sequence[ScheduleRequest], reply: list[Any]) -> list[Armed]:
    now = int(reply[0])
    return [
        Armed(req.timer_id, reply[i] == 1, int(reply[i + 1]), now, reply[i + 2] or req.payload)
        for req, i in zip(reqs, range(1, len(reply), 3), strict=True)
    ]


def _touched(reqs: Sequence[TouchRequest], reply: list[Any]) -> list[Touched]:
    now = int(reply[0])
    return [
        Touched(req.timer_id, int(reply[i]), int(reply[i + 1]), now, int(reply[i + 2]))
        for req, i in zip(reqs, range(1, len(reply), 3), strict=True)
    ]


def _dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id.decode(),
        timer_id=fields.get(b"i", b"").decode("utf-8", "replace"),
        task=fields.get(b"t", b"").decode("utf-8", "replace"),
        reason=fields.get(b"r", b"").decode("utf-8", "replace"),
        traceback=fields.get(b"tb", b"").decode("utf-8", "replace"),
        raw_payload=fields.get(b"p", b""),
        raw_items=fields.get(b"a", b""),
    )


def try_decode(raw: bytes) -> Payload | None:
    try:
        return decode_payload(raw)
    except ValueError:
        return None
