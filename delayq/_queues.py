"""How each queue stands: jobs waiting, jobs in flight, the oldest waiting one
(``Delayq.queues()``, ``delayq queues``). Read from every shard's ready streams by
``queue_stats.lua``, one call per shard; no I/O here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from delayq._calls import Call, command, script
from delayq._keys import GROUP, Keys
from delayq._route import DEFAULT_QUEUE, LEVELS


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue over every shard and priority level."""

    name: str
    waiting: int  # fired, not yet taken by a worker
    in_flight: int  # taken by a worker, not settled yet
    oldest_ms: int | None  # when the oldest waiting job fired (server clock), None if none
    now_ms: int  # the server's clock when this was read
    by_priority: dict[int, int]  # waiting jobs per level that has some

    @property
    def oldest_wait_s(self) -> float | None:
        """How long the oldest waiting job has waited, seconds."""
        return None if self.oldest_ms is None else max(0.0, (self.now_ms - self.oldest_ms) / 1000)

    @property
    def oldest_at(self) -> dt.datetime | None:
        if self.oldest_ms is None:
            return None
        return dt.datetime.fromtimestamp(self.oldest_ms / 1000, tz=dt.UTC)


def listed(keys: Keys) -> Call[set[str]]:
    """The queues with streams in one shard (written by ensure_group.lua and stream_of)."""
    return command("SMEMBERS", keys.queues, decode=lambda names: {n.decode() for n in names})


def names(found: Iterable[set[str]], wanted: Sequence[str] = ()) -> list[str]:
    """Every queue to report: the default, those asked for, those listed in any shard."""
    return sorted({DEFAULT_QUEUE, *wanted, *(n for some in found for n in some)})


def stats_call(keys: Keys, queues: Sequence[str]) -> Call[list[list[int]]]:
    streams = [keys.stream(q, level) for q in queues for level in range(LEVELS)]
    return script("queue_stats", streams, [GROUP],
                  decode=lambda rows: [[int(v) for v in row] for row in rows])  # fmt: skip


def merge(queues: Sequence[str], parts: Sequence[list[list[int]]], now_ms: int) -> list[QueueInfo]:
    """queue_stats.lua's rows of every shard (a row per queue and level, in ``stats_call``'s
    order) as one QueueInfo per queue."""
    infos = []
    for n, name in enumerate(queues):
        waiting = in_flight = 0
        oldest: int | None = None
        by_priority: dict[int, int] = {}
        for rows in parts:
            for level in range(LEVELS):
                entries, pending, first = rows[n * LEVELS + level]
                waits = max(0, entries - pending)
                waiting += waits
                in_flight += pending
                if waits:
                    by_priority[level] = by_priority.get(level, 0) + waits
                if first >= 0 and waits:
                    oldest = first if oldest is None else min(oldest, first)
        infos.append(QueueInfo(name, waiting, in_flight, oldest, now_ms, by_priority))
    return infos


def describe(info: QueueInfo) -> dict[str, Any]:
    """One queue as a row of ``delayq queues``."""
    wait = info.oldest_wait_s
    levels = " ".join(f"p{p}:{n}" for p, n in sorted(info.by_priority.items(), reverse=True))
    return {"queue": info.name, "waiting": info.waiting, "in flight": info.in_flight,
            "oldest waiting": "-" if wait is None else f"{wait:.1f}s",
            "by priority": levels or "-"}  # fmt: skip
