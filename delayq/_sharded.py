"""The producer's calls over a namespace's shards: each timer's calls go to its shard's
``StoreCalls``, batches are split by shard and sent together, listings are merged.

The layout is read from the server by the first flow that needs it (see ``_layout.resolve``)
and kept; building calls stays free of I/O.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from delayq._calls import Batch, Call, Flow, server_time
from delayq._events import OFF, EventSettings
from delayq._keys import Keys
from delayq._layout import Layout, resolve, stored_count
from delayq._outcomes import DEFAULT_RESULT_TTL, Outcome
from delayq._queues import QueueInfo, listed, merge, names, stats_call
from delayq._store import (
    SCRIPT_BATCH,
    Armed,
    Controlled,
    DeadLetter,
    Listed,
    Lookup,
    ScheduleRequest,
    StoreCalls,
    Touched,
    TouchRequest,
)
from delayq._topology import cluster_enabled

T = TypeVar("T")
A = TypeVar("A")
# Shards of a namespace created on a cluster without shards=: a few per primary of a
# common 3- to 6-primary cluster, few enough that every worker can serve them all.
CLUSTER_SHARDS = 16


class _Request(Protocol):
    @property
    def timer_id(self) -> str: ...


R = TypeVar("R", bound=_Request)


class ShardedStore:
    def __init__(self, namespace: str, *, shards: int | None, max_payload_bytes: int,
                 result_ttl: float = DEFAULT_RESULT_TTL,
                 events: EventSettings = OFF) -> None:  # fmt: skip
        self.namespace = namespace
        self.events = events
        self.wanted = shards
        self.max_payload_bytes = max_payload_bytes
        self.result_ttl = result_ttl
        self._layout: Layout | None = None
        self._stores: list[StoreCalls] = []
        self._last: StoreCalls | None = None

    @property
    def known(self) -> Layout | None:
        """The layout, if already read."""
        return self._layout

    def layout(self) -> Flow[Layout]:
        if self._layout is None:
            on_cluster = yield cluster_enabled()
            default = self.wanted or (CLUSTER_SHARDS if on_cluster else 1)
            # Payload buckets made a cluster's lateness tail worse (docs/cluster.md, "Memory
            # per timer"): a namespace created on one keeps a key per payload, for now.
            layout = yield from resolve(self.namespace, self.wanted, default,
                                        bucketed=not on_cluster)  # fmt: skip
            self._stores = [StoreCalls(k, max_payload_bytes=self.max_payload_bytes,
                                       result_ttl=self.result_ttl, events=self.events)
                            for k in layout.shards]  # fmt: skip
            self._layout = layout
        return self._layout

    def count(self) -> Flow[int]:
        """The shard count as stored, else the one the first call would store; stores
        nothing (``delayq acl`` asks before the namespace may exist)."""
        if self._layout is not None:
            return self._layout.count
        return (yield from stored_count(self.namespace, (yield from self._default())))

    def _default(self) -> Flow[int]:
        """The count of a new namespace: ``shards=``, else 16 on a cluster, 1 on one server."""
        if self.wanted is not None:
            return self.wanted
        return CLUSTER_SHARDS if (yield cluster_enabled()) else 1

    def _for(self, timer_id: str) -> Flow[StoreCalls]:
        layout = yield from self.layout()
        return self._stores[layout.shard_of(timer_id)]

    def _each(self) -> Flow[list[StoreCalls]]:
        yield from self.layout()
        return self._stores

    def keys_for(self, timer_id: str) -> Flow[Keys]:
        return (yield from self._for(timer_id)).keys

    # -- arming -------------------------------------------------------------------------------

    def schedule(self, req: ScheduleRequest) -> Flow[Armed]:
        armed: Armed = yield (yield from self._for(req.timer_id)).schedule(req)
        return armed

    def schedule_many(self, reqs: list[ScheduleRequest], *, chunk: int = 1000) -> Flow[list[Armed]]:
        return (yield from self._spread(reqs, chunk, StoreCalls.arm_calls))

    def touch(self, req: TouchRequest) -> Flow[Touched]:
        touched: Touched = yield (yield from self._for(req.timer_id)).touch(req)
        return touched

    def touch_many(self, reqs: list[TouchRequest], *, chunk: int = 1000) -> Flow[list[Touched]]:
        return (yield from self._spread(reqs, chunk, StoreCalls.touch_calls))

    def _spread(
        self, reqs: list[R], chunk: int,
        build: Callable[[StoreCalls, Sequence[R]], Call[list[A]]],
    ) -> Flow[list[A]]:  # fmt: skip
        """``reqs`` in script calls of up to SCRIPT_BATCH of one shard each, all sent in one
        batch (about ``chunk`` requests a round trip); replies in the order of ``reqs``. The
        requests of one timer id share a shard, so they keep their order."""
        layout = yield from self.layout()
        size = max(1, min(chunk, SCRIPT_BATCH))
        calls: list[Call[list[A]]] = []
        places: list[list[int]] = []
        for shard, positions in layout.grouped(r.timer_id for r in reqs).items():
            for i in range(0, len(positions), size):
                part = positions[i : i + size]
                calls.append(build(self._stores[shard], [reqs[p] for p in part]))
                places.append(part)
        groups = yield Batch(calls, max(1, chunk // size), refused="a batch of")
        replies: list[Any] = [None] * len(reqs)
        for part, group in zip(places, groups, strict=True):
            for position, reply in zip(part, group, strict=True):
                replies[position] = reply
        return replies

    # -- one timer ----------------------------------------------------------------------------

    def cancel(self, timer_id: str) -> Flow[bool]:
        return bool((yield (yield from self._for(timer_id)).cancel(timer_id)))

    def control(
        self, timer_id: str, operation: str, ms: int = 0, *, duration_ms: int = 0
    ) -> Flow[Controlled]:
        store = yield from self._for(timer_id)
        done: Controlled = yield store.control(timer_id, operation, ms, duration_ms=duration_ms)
        return done

    def outcome(self, timer_id: str) -> Flow[Outcome | None]:
        """What is known of the job scheduled as ``timer_id`` (any of its attempts' ids)."""
        found: Outcome | None = yield (yield from self._for(timer_id)).outcome(timer_id)
        return found

    def lookup(self, timer_id: str) -> Flow[Lookup]:
        store = self._last = yield from self._for(timer_id)
        return (yield from store.lookup(timer_id))

    def clock_offset_ms(self) -> float:
        """The server's clock minus this process's, as of the last lookup (0 before any)."""
        return 0.0 if self._last is None else self._last.clock_offset_ms()

    # -- listing ------------------------------------------------------------------------------

    def pending(self, *, limit: int, due_before_ms: int | None = None) -> Flow[list[Listed]]:
        """Every shard's earliest, merged: earliest first, then paused ones."""
        found: list[list[Listed]] = []
        for store in (yield from self._each()):
            found.append((yield from store.pending(limit=limit, due_before_ms=due_before_ms)))
        if len(found) == 1:
            return found[0]
        due = heapq.merge(*([t for t in part if t.due_ms is not None] for part in found),
                          key=lambda t: t.due_ms or 0)  # fmt: skip
        paused = sorted((t for part in found for t in part if t.due_ms is None),
                        key=lambda t: t.timer_id)  # fmt: skip
        return [*due, *paused][:limit]

    def pending_count(self) -> Flow[int]:
        stores = yield from self._each()
        return sum((yield Batch([c for store in stores for c in store.count_calls()])))

    def paused_count(self) -> Flow[int]:
        stores = yield from self._each()
        return sum((yield Batch([store.paused_count() for store in stores])))

    def periodic_state(self, task: str) -> Flow[dict[str, str]]:
        store = yield from self._for(Keys.tick_id(task, 0))
        state: dict[str, str] = yield store.periodic_state(task)
        return state

    def stats(self) -> Flow[dict[str, int]]:
        stores = yield from self._each()
        total: Counter[str] = Counter()
        for part in (yield Batch([store.stats() for store in stores])):
            total.update(part)
        return dict(total)

    def queues(self, wanted: Sequence[str] = ()) -> Flow[list[QueueInfo]]:
        """Each queue's jobs waiting and in flight, over every shard (see ``_queues``)."""
        stores = yield from self._each()
        found = yield Batch([listed(store.keys) for store in stores])
        queues = names(found, wanted)
        parts = yield Batch([stats_call(store.keys, queues) for store in stores])
        now_ms = yield server_time()
        return merge(queues, parts, now_ms)

    # -- dead letters -------------------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> Flow[list[DeadLetter]]:
        """The oldest ``count`` letters of every shard, oldest first."""
        stores = yield from self._each()
        parts = yield Batch([store.dead_letters(count) for store in stores])
        if len(parts) == 1:
            return list(parts[0])
        marked = [[dataclasses.replace(letter, shard=k, shards=len(parts)) for letter in part]
                  for k, part in enumerate(parts)]  # fmt: skip
        merged = heapq.merge(*marked, key=lambda d: tuple(map(int, d.entry_id.split("-"))))
        return list(merged)[:count]

    def redrive(self, letter: DeadLetter) -> Flow[int]:
        stores = yield from self._each()
        return int((yield stores[letter.shard].redrive(letter)))

    def purge_dead(self, entry_ids: list[str] | None = None) -> Flow[int]:
        """Every letter, or those named: ``<entry id>@<shard>``, or a bare entry id (from any
        shard, as a namespace of one shard names them)."""
        stores = yield from self._each()
        removed = 0
        for k, store in enumerate(stores):
            mine = None if entry_ids is None else _of_shard(entry_ids, k)
            if mine is None or mine:
                removed += yield from store.purge_dead(mine)
        return removed


def _of_shard(entry_ids: list[str], shard: int) -> list[str]:
    mine = []
    for ref in entry_ids:
        entry_id, _, where = ref.partition("@")
        if not where or where == str(shard):
            mine.append(entry_id)
    return mine
