"""Synchronous operations on stored timers, used by producers and the CLI.

Each method is one round trip (one script, or one pipeline of scripts for a batch).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import secrets
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import OutOfMemoryError

from delayq._codec import Payload, decode_payload, reencode
from delayq._errors import InvalidTimerId, ServerOutOfMemory
from delayq._keys import WATCH_ID_PREFIX, Keys
from delayq._scripts import Scripts
from delayq._when import When

Client = redis.Redis


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

    @property
    def failed_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self.entry_id.split("-")[0]) / 1000, tz=dt.UTC)


def out_of_memory(what: str, *, completed: int = 0) -> ServerOutOfMemory:
    return ServerOutOfMemory(
        f"the server's memory is full (used memory above maxmemory, policy noeviction): {what} "
        "refused, and nothing stored before was changed; pending timers still fire and "
        "workers free memory as jobs finish",
        completed=completed,
    )


@contextmanager
def refused_when_full(what: str) -> Iterator[None]:
    """Turn the server's OOM refusal of a script that adds work into a ServerOutOfMemory.

    Such scripts are flagged so that the server refuses them before their first write."""
    try:
        yield
    except OutOfMemoryError as exc:
        raise out_of_memory(what) from exc


_STORES: weakref.WeakSet[TimerStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._new_nonces()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TimerStore:
    def __init__(self, client: Client, keys: Keys, *, max_payload_bytes: int) -> None:
        self.client = client
        self.keys = keys
        self.max_payload_bytes = max_payload_bytes
        self.scripts = Scripts(client)
        # Unique names for the debounced cycles a touch may retire (see touch.lua): random per
        # store, then counted, which is cheaper than random bytes for every touch. A forked
        # child gets a prefix of its own, or parent and child would count out the same names.
        self._new_nonces()
        _STORES.add(self)
        self._offset_ms = 0.0

    def _new_nonces(self) -> None:
        self._nonce_prefix = secrets.token_hex(6)
        self._nonces = itertools.count()

    def _schedule_args(self, req: ScheduleRequest) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.shadow(req.timer_id), k.data(req.timer_id), k.index, k.paused]
        args: list[Any] = [
            req.timer_id,
            req.payload,
            *req.when.as_args(),
            "1" if req.replace else "0",
            k.wake_channel,
        ]
        return keys, args

    @staticmethod
    def _armed(req: ScheduleRequest, reply: list[Any]) -> Armed:
        created, due, now, stored = reply
        return Armed(req.timer_id, created == 1, int(due), int(now), stored or req.payload)

    def schedule(self, req: ScheduleRequest) -> Armed:
        keys, args = self._schedule_args(req)
        with refused_when_full(f"timer {req.timer_id!r} was"):
            reply = self.scripts["schedule"](keys=keys, args=args)
        return self._armed(req, reply)

    def schedule_many(self, reqs: list[ScheduleRequest], *, chunk: int = 1000) -> list[Armed]:
        replies = self._batched("schedule", [self._schedule_args(r) for r in reqs], chunk)
        return [self._armed(r, reply) for r, reply in zip(reqs, replies, strict=True)]

    def _batched(
        self, script_name: str, calls: list[tuple[list[str], list[Any]]], chunk: int
    ) -> list[Any]:
        """Run one script for many (keys, args), one round trip per ``chunk`` calls."""
        script = self.scripts[script_name]
        replies: list[Any] = []
        for start in range(0, len(calls), chunk):
            with self.client.pipeline(transaction=False) as pipe:
                for keys, args in calls[start : start + chunk]:
                    script(keys=keys, args=args, client=pipe)
                replies += pipe.execute(raise_on_error=False)
            errors = [reply for reply in replies if isinstance(reply, Exception)]
            if errors:
                raise self._batch_error(errors[0], len(calls), len(replies) - len(errors))
        return replies

    @staticmethod
    def _batch_error(first: Exception, total: int, completed: int) -> Exception:
        if isinstance(first, OutOfMemoryError):
            return out_of_memory(
                f"{total - completed} of a batch of {total} were", completed=completed
            )
        return first

    def cancel(self, timer_id: str) -> bool:
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.items(timer_id), k.index_of(timer_id),
                k.paused, k.first_touch]  # fmt: skip
        return bool(self.scripts["cancel"](keys=keys, args=[timer_id]))

    def control(
        self, timer_id: str, operation: str, ms: int = 0, *, duration_ms: int = 0
    ) -> Controlled:
        """Run one control.lua operation (see its header for what each does); ``duration_ms``
        is the armed duration to assume if the server no longer knows it."""
        if timer_id.startswith(WATCH_ID_PREFIX):
            # Its deadline is the watched key's, read from the key's TTL at every event: a
            # pause or a new deadline would be undone by the key's next write.
            raise InvalidTimerId(
                f"timer {timer_id[:80]!r} follows a watched key's time-to-live: {operation} does "
                "not apply to it; change the key's TTL (EXPIRE, PERSIST) or cancel the timer"
            )
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.index, k.paused]
        verb = "reschedule" if operation in ("delay", "at") else operation
        with refused_when_full(f"{verb} of timer {timer_id!r} was"):
            status, due, now = self.scripts["control"](
                keys=keys, args=[timer_id, operation, ms, k.wake_channel, duration_ms]
            )
        return Controlled(int(status), int(due), int(now))

    def touch(self, req: TouchRequest) -> Touched:
        keys, args = self._touch_args(req)
        with refused_when_full(f"touch of timer {req.timer_id!r} was"):
            reply = self.scripts["touch"](keys=keys, args=args)
        return Touched(req.timer_id, *reply)

    def touch_many(self, reqs: list[TouchRequest], *, chunk: int = 1000) -> list[Touched]:
        replies = self._batched("touch", [self._touch_args(r) for r in reqs], chunk)
        return [Touched(r.timer_id, *reply) for r, reply in zip(reqs, replies, strict=True)]

    def _touch_args(self, req: TouchRequest) -> tuple[list[str], list[Any]]:
        k, t = self.keys, req.timer_id
        retired = k.retired_cycle_id(t, f"{self._nonce_prefix}{next(self._nonces):x}")
        keys = [k.shadow(t), k.data(t), k.items(t), k.index, k.first_touch, k.paused,
                k.data(retired), k.items(retired)]  # fmt: skip
        args: list[Any] = [t, req.payload, req.window_ms, req.mode, req.max_items,
                           req.max_wait_ms, k.wake_channel, req.item, retired]  # fmt: skip
        return keys, args

    def lookup(self, timer_id: str) -> Lookup:
        """Where one timer stands, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zscore(self.keys.index_of(timer_id), timer_id)
        pipe.get(self.keys.data(timer_id))
        pipe.hget(self.keys.paused, timer_id)
        pipe.get(self.keys.shadow(timer_id))
        pipe.time()
        local_ms = time.time() * 1000
        score, raw, paused, shadow, (sec, usec) = pipe.execute()
        now_ms = sec * 1000 + usec // 1000
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

    def pending(self, *, limit: int, due_before_ms: int | None = None) -> list[Listed]:
        """Pending timers, earliest first, then paused ones; payloads fetched in one trip."""
        top: Any = "+inf" if due_before_ms is None else f"({due_before_ms}"
        rows: list[Any] = []
        for index in (self.keys.index, self.keys.watch_index):
            rows += self.client.zrangebyscore(index, "-inf", top, start=0, num=limit,
                                              withscores=True)  # fmt: skip
        rows.sort(key=lambda row: row[1])
        found: list[tuple[str, int | None]] = [(m.decode(), int(s)) for m, s in rows[:limit]]
        if due_before_ms is None and len(found) < limit:
            paused: dict[bytes, bytes] = self.client.hgetall(self.keys.paused)  # type: ignore[assignment]
            found += [(member.decode(), None) for member in sorted(paused)][: limit - len(found)]
        pipe = self.client.pipeline(transaction=False)
        for timer_id, _due in found:
            pipe.get(self.keys.data(timer_id))
        raws = pipe.execute() if found else []
        return [
            Listed(timer_id, due, raw)
            for (timer_id, due), raw in zip(found, raws, strict=True)
            if raw is not None
        ]

    def pending_count(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.index)
        pipe.zcard(self.keys.watch_index)
        return sum(int(n) for n in pipe.execute())

    def periodic_state(self, task: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.periodic_state(task))  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def server_time_ms(self) -> int:
        sec, usec = self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def stats(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.stats)  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    # -- dead letters -------------------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        entries: Any = self.client.xrange(self.keys.dead, count=count)
        return [_dead_letter(entry_id, fields) for entry_id, fields in entries]

    def redrive(self, letter: DeadLetter) -> int:
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
        keys = [k.dead, k.shadow(t), k.data(t), k.index, k.items(t)]
        args: list[Any] = [letter.entry_id, t, payload, k.wake_channel, letter.raw_items]
        with refused_when_full(f"re-arming dead letter {letter.entry_id} was"):
            return int(self.scripts["redrive"](keys=keys, args=args))

    def purge_dead(self, entry_ids: list[str] | None = None) -> int:
        if entry_ids is None:
            removed = self.client.xlen(self.keys.dead)
            self.client.delete(self.keys.dead)
            return int(removed)
        return int(self.client.xdel(self.keys.dead, *entry_ids)) if entry_ids else 0


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
