"""The worker's side of the store: every Redis command a worker sends, asynchronously."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from delayq._keys import GROUP, WATCH_ID_PREFIX, Keys
from delayq._scripts import AsyncScripts
from delayq._watch import WatchTarget, is_watch_id

AsyncClient = aredis.Redis


@dataclass(frozen=True, slots=True)
class Delivery:
    """One fired job as read from the ready stream."""

    entry_id: str
    timer_id: str
    raw: bytes
    due_ms: int
    items: bytes | None = None  # debounced payload="all": the touches, concatenated msgpack
    watched_data: bytes | None = None  # on_expire: the companion key's value

    @property
    def fired_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class FireResult:
    now_ms: int
    fired: int
    next_due_ms: int | None
    orphans: int


@dataclass(frozen=True, slots=True)
class DeadLetterBound:
    """How large the dead-letter stream may grow: entries, and bytes (approximately)."""

    maxlen: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class WatchOp:
    """One operation of watch.lua (see its header) on one watch timer."""

    op: str  # write, scan, gone, expired, observe
    target: WatchTarget
    seen_ms: int | None = None  # observe: the probe's server time


@dataclass(frozen=True, slots=True)
class Due:
    now_ms: int  # the server's clock when the index was read
    first_ms: int | None  # the earliest deadline in the index
    ids: list[str]  # due by now_ms, oldest first


def _delivery(entry_id: bytes, fields: dict[bytes, bytes]) -> Delivery:
    return Delivery(
        entry_id=entry_id.decode(),
        timer_id=fields.get(b"i", b"").decode("utf-8", "replace"),
        raw=fields.get(b"p", b""),
        due_ms=_due_ms(fields.get(b"d")),
        items=fields.get(b"a"),
        watched_data=fields.get(b"w"),
    )


def _due_ms(raw: bytes | None) -> int:
    """An entry's deadline; 0 when it is missing or garbled (an entry written by something
    else), so that one odd entry never stops a worker from reading those around it."""
    try:
        return int(float(raw)) if raw else 0
    except (ValueError, OverflowError):
        return 0


class Engine:
    def __init__(self, client: AsyncClient, keys: Keys, consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.scripts = AsyncScripts(client)

    async def server_time_ms(self) -> int:
        sec, usec = await self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def ensure_group(self) -> None:
        # From the stream's start, so jobs fired before any worker existed are delivered.
        await self.scripts["ensure_group"](keys=[self.keys.ready], args=[GROUP])

    # -- firing -------------------------------------------------------------------------------

    async def due(self, index: str, limit: int) -> Due:
        """The ids of ``index`` due by the server's clock (oldest first), with that clock."""
        reply: list[Any] = await self.scripts["due"](keys=[index], args=[limit])
        first = int(reply[1])
        return Due(int(reply[0]), None if first < 0 else first, [i.decode() for i in reply[2:]])

    async def fire(self, ids: list[str]) -> FireResult:
        k = self.keys
        keys = [k.index, k.ready, k.stats, k.first_touch]
        for timer_id in ids:
            keys += (k.shadow(timer_id), k.data(timer_id), k.items(timer_id))
        now, fired, next_due, orphans = await self.scripts["fire"](keys=keys, args=ids)
        return FireResult(int(now), int(fired), None if next_due < 0 else int(next_due), orphans)

    # -- watched keys (the watch leader) ----------------------------------------------------

    async def watch_lease(self, op: str, token: str, ttl_ms: int, epoch: int = 0) -> int:
        """watch_lease.lua: the epoch of the leadership held after ``op``, 0 for none."""
        k = self.keys
        args: list[Any] = [op, token, ttl_ms, epoch or ""]
        return int(await self.scripts["watch_lease"](keys=[k.watch_lease, k.watch_epoch],
                                                      args=args))  # fmt: skip

    async def apply_watch(self, token: str, ops: list[WatchOp]) -> FireResult | None:
        """watch.lua: apply these operations in order; None if ``token`` lost the lease."""
        k = self.keys
        keys = [k.watch_lease, k.watch_index, k.ready, k.stats, k.paused]
        args: list[Any] = [token]
        for op in ops:
            w = op.target
            keys += (w.key, k.data(w.timer_id), w.companion or "")
            args += (op.op, w.timer_id, w.payload, op.seen_ms if op.seen_ms is not None else "")
        reply: list[Any] = await self.scripts["watch"](keys=keys, args=args)
        if int(reply[0]) < 0:
            return None
        now, fired, next_due = (int(v) for v in reply)
        return FireResult(now, fired, None if next_due < 0 else next_due, 0)

    async def probe_watch(self, channel: str, seq: int, targets: list[WatchTarget]) -> int:
        """watch_probe.lua: expire what is overdue, then publish a barrier with the ids to
        judge; returns how many it holds."""
        keys = [self.keys.watch_index, *(t.key for t in targets)]
        args: list[Any] = [channel, seq, *(t.timer_id for t in targets)]
        reply: list[Any] = await self.scripts["watch_probe"](keys=keys, args=args)
        return int(reply[1])

    async def adopt_old_watch_timers(self, count: int) -> None:
        """Adopt every watch timer found in the plain due index (see adopt_watch_timers)."""
        cursor = 0
        while True:
            match = WATCH_ID_PREFIX + "*"
            reply: Any = await self.client.zscan(self.keys.index, cursor, match=match, count=count)
            cursor, found = reply
            if found:
                await self.adopt_watch_timers([member.decode() for member, _ in found])
            if cursor == 0:
                return

    async def adopt_watch_timers(self, ids: list[str]) -> None:
        """Move watch timers found in the plain due index (armed by an older version) into
        the watch index, where the watch leader judges them."""
        scores = await self.client.zmscore(self.keys.index, ids)
        found = {i: s for i, s in zip(ids, scores, strict=True) if s is not None}
        async with self.client.pipeline(transaction=True) as pipe:
            if found:
                pipe.zadd(self.keys.watch_index, found, nx=True)
            pipe.zrem(self.keys.index, *ids)
            await pipe.execute()

    async def cancel(self, timer_id: str) -> bool:
        k = self.keys
        keys = [k.shadow(timer_id), k.data(timer_id), k.items(timer_id), k.index, k.paused,
                k.first_touch]  # fmt: skip
        return bool(await self.scripts["cancel"](keys=keys, args=[timer_id]))

    async def is_pending(self, timer_id: str) -> bool:
        return await self.client.zscore(self.keys.index, timer_id) is not None

    async def arm_tick(
        self, task: str, sig: str, armed: str, new_sig: str, tick_ms: int, due_ms: int,
        timer_id: str, payload: bytes, cancel_id: str | None,
    ) -> int:  # fmt: skip
        """periodic.lua: arm a periodic task's next tick, compare-and-set on its state."""
        k = self.keys
        keys = [k.periodic_state(task), k.shadow(timer_id or "-"), k.data(timer_id or "-"),
                k.index, k.shadow(cancel_id or "-"), k.data(cancel_id or "-"),
                k.paused]  # fmt: skip
        args: list[Any] = [sig, armed, new_sig, tick_ms, due_ms, timer_id, payload,
                           k.wake_channel, cancel_id or ""]  # fmt: skip
        return int(await self.scripts["periodic"](keys=keys, args=args))

    async def tick_in_flight(self, timer_id: str, since_ms: int, limit: int) -> bool | None:
        """Whether this tick's job is in the ready stream (fired, not settled), looking at
        entries from ``since_ms`` on; None when more than ``limit`` follow (undecided)."""
        found = await self.scripts["tick_in_flight"](
            keys=[self.keys.ready], args=[max(0, since_ms), timer_id, limit]
        )
        return None if int(found) < 0 else bool(found)

    async def record_run(self, task: str, tick_ms: int, fired_ms: int) -> None:
        await self.scripts["record_run"](
            keys=[self.keys.periodic_state(task)], args=[tick_ms, fired_ms]
        )

    async def renew(self, lock: str, token: str, ttl_ms: int) -> bool:
        return bool(await self.scripts["renew"](keys=[lock], args=[token, ttl_ms]))

    async def forget(self, companion: str, value: bytes) -> None:
        await self.scripts["forget"](keys=[companion], args=[value])

    async def scan_keys(self, cursor: int, pattern: str, count: int) -> tuple[int, list[str]]:
        reply: Any = await self.client.scan(cursor, match=pattern, count=count)
        cursor, names = reply
        decoded = []
        for name in names:
            try:
                decoded.append(name.decode())
            except UnicodeDecodeError:
                continue  # not a name delayq could have been asked to watch
        return int(cursor), decoded

    # -- consuming ----------------------------------------------------------------------------

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        try:
            reply: Any = await self.client.xreadgroup(
                GROUP, self.consumer, {self.keys.ready: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            # The stream or its group vanished (FLUSHDB, an old snapshot): make it again.
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        if not reply:
            return []
        return [_delivery(eid, fields) for eid, fields in reply[0][1] if fields]

    async def reclaim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over jobs whose worker stopped heart-beating (XAUTOCLAIM)."""
        found: list[Delivery] = []
        cursor = "0-0"
        while len(found) < count:
            try:
                reply = await self.client.xautoclaim(
                    self.keys.ready, GROUP, self.consumer, min_idle_ms, cursor,
                    count=count - len(found),
                )  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()
                break
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            found += [_delivery(eid, fields) for eid, fields in reply[1] if fields]
            if cursor == "0-0":
                break
        return found

    async def heartbeat(self, entry_ids: list[str]) -> list[str]:
        """Reset the idle time of running jobs so nobody takes them over; returns those lost."""
        if not entry_ids:
            return []
        args: list[Any] = [GROUP, self.consumer, *entry_ids]
        lost = await self.scripts["heartbeat"](keys=[self.keys.ready], args=args)
        return [entry.decode() for entry in lost]

    async def deliveries_of(self, entry_ids: list[str]) -> list[int]:
        """How many times each entry has been delivered (XPENDING), 0 if no longer pending."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entry_ids:
                pipe.xpending_range(self.keys.ready, GROUP, min=entry, max=entry, count=1)
            replies = await pipe.execute()
            return [int(r[0]["times_delivered"]) if r else 0 for r in replies]

    async def ack(self, deliveries: list[Delivery]) -> None:
        entries = [d.entry_id for d in deliveries]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.ready, GROUP, *entries)
            pipe.xdel(self.keys.ready, *entries)
            await pipe.execute()

    async def retry(
        self, d: Delivery, payload: bytes, delay_s: float, *, timer_id: str | None = None
    ) -> int | None:
        """Re-arm a failed job (under ``timer_id`` if given, else its own id); None if this
        delivery no longer held its entry."""
        k = self.keys
        tid = timer_id or d.timer_id
        fallback = k.retry_id(tid, d.entry_id)
        keys = [k.shadow(tid), k.data(tid), k.index, k.ready, k.stats,
                k.shadow(fallback), k.data(fallback), k.items(tid), k.items(fallback)]  # fmt: skip
        args: list[Any] = [GROUP, d.entry_id, tid, payload, max(1, round(delay_s * 1000)),
                           k.wake_channel, fallback, d.items or b"", self.consumer]  # fmt: skip
        due, _armed_id = await self.scripts["retry"](keys=keys, args=args)
        return None if int(due) < 0 else int(due)

    async def bury(
        self, d: Delivery, *, task: str, reason: str, traceback: str, bound: DeadLetterBound,
        payload: bytes | None = None,
    ) -> str | None:  # fmt: skip
        """Move a delivery to the dead letters (with ``payload`` instead of its own, if given)."""
        k = self.keys
        keys = [k.ready, k.dead, k.stats]
        args: list[Any] = [GROUP, d.entry_id, d.timer_id, d.raw if payload is None else payload,
                           task, reason, traceback, bound.maxlen, d.items or b"", self.consumer,
                           bound.max_bytes]  # fmt: skip
        entry = await self.scripts["bury"](keys=keys, args=args)
        return entry.decode() if entry else None

    async def handback(self, d: Delivery) -> bool:
        args: list[Any] = [GROUP, d.entry_id, d.timer_id, d.raw, d.due_ms, d.items or b"",
                           self.consumer]  # fmt: skip
        return bool(await self.scripts["handback"](keys=[self.keys.ready], args=args))

    # -- sweeping -----------------------------------------------------------------------------

    async def scan_data_ids(self, cursor: int, count: int) -> tuple[int, list[str]]:
        reply: Any = await self.client.scan(cursor, match=self.keys.data_pattern(), count=count)
        cursor, names = reply
        ids = [self.keys.id_from_data(n.decode("utf-8", "replace")) for n in names]
        return int(cursor), [i for i in ids if i]

    async def unindexed(self, ids: list[str]) -> list[str]:
        """Of these data-key ids, those without a due-index entry (candidates for repair)."""
        ids = [i for i in ids if not is_watch_id(i)]  # watch.lua writes both or neither
        if not ids:
            return []
        scores = await self.client.zmscore(self.keys.index, ids)
        return [i for i, score in zip(ids, scores, strict=True) if score is None]

    async def repair(self, ids: list[str]) -> int:
        """Run repair.lua for each id; returns how many needed it."""
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            for timer_id in ids:
                keys = [k.shadow(timer_id), k.data(timer_id), k.index, k.stats, k.paused]
                await self.scripts["repair"](keys=keys, args=[timer_id], client=pipe)
            return sum(int(r) for r in await pipe.execute())

    async def stale_consumers(self, idle_ms: int) -> list[str]:
        try:
            infos = await self.client.xinfo_consumers(self.keys.ready, GROUP)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [
            c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            for c in infos
            if c["pending"] == 0 and c["idle"] > idle_ms and c["name"] != self.consumer.encode()
        ]

    async def drop_consumer(self, name: str) -> None:
        await self.client.xgroup_delconsumer(self.keys.ready, GROUP, name)


def monotonic_ms() -> float:
    return time.monotonic() * 1000
