"""Synchronous operations on stored timers, used by producers and the CLI.

Each method is one round trip (one script, or one pipeline of scripts for a batch).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import redis

from delayq._codec import Payload, decode_payload, reencode
from delayq._keys import Keys
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
    due_ms: int  # -1: the timer with this id is running now
    now_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job that failed for good, as stored in the dead-letter stream."""

    entry_id: str
    timer_id: str
    task: str
    reason: str
    traceback: str
    raw_payload: bytes

    @property
    def failed_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self.entry_id.split("-")[0]) / 1000, tz=dt.UTC)


class TimerStore:
    def __init__(self, client: Client, keys: Keys, *, max_payload_bytes: int) -> None:
        self.client = client
        self.keys = keys
        self.max_payload_bytes = max_payload_bytes
        self.scripts = Scripts(client)

    def _schedule_args(self, req: ScheduleRequest) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.shadow(req.timer_id), k.data(req.timer_id), k.index]
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
        return self._armed(req, self.scripts["schedule"](keys=keys, args=args))

    def schedule_many(self, reqs: list[ScheduleRequest], *, chunk: int = 1000) -> list[Armed]:
        armed: list[Armed] = []
        script = self.scripts["schedule"]
        for start in range(0, len(reqs), chunk):
            part = reqs[start : start + chunk]
            pipe = self.client.pipeline(transaction=False)
            for req in part:
                keys, args = self._schedule_args(req)
                script(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
            armed.extend(self._armed(r, reply) for r, reply in zip(part, replies, strict=True))
        return armed

    def cancel(self, timer_id: str) -> bool:
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.index]
        return bool(self.scripts["cancel"](keys=keys, args=[timer_id]))

    def reschedule(self, timer_id: str, when: When) -> int | None:
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.index]
        due, _now = self.scripts["reschedule"](
            keys=keys, args=[timer_id, *when.as_args(), k.wake_channel]
        )
        return None if int(due) < 0 else int(due)

    def lookup(self, timer_id: str) -> tuple[int | None, bytes | None, int]:
        """(due ms or None, payload or None, server now ms) of one timer, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zscore(self.keys.index, timer_id)
        pipe.get(self.keys.data(timer_id))
        pipe.time()
        score, raw, (sec, usec) = pipe.execute()
        due = None if score is None else int(score)
        return due, raw, sec * 1000 + usec // 1000

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
        keys = [k.dead, k.shadow(letter.timer_id), k.data(letter.timer_id), k.index]
        args: list[Any] = [letter.entry_id, letter.timer_id, payload, k.wake_channel]
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
    )


def try_decode(raw: bytes) -> Payload | None:
    try:
        return decode_payload(raw)
    except ValueError:
        return None
