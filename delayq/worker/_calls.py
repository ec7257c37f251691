"""The worker's side of the protocol: every call a worker sends, built and read here without
I/O (``Engine`` sends them with the worker's asyncio runner)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from delayq._calls import Batch, Call, Flow, command, script, server_time, text
from delayq._events import OFF, EventSettings
from delayq._hooks import Delivery
from delayq._keys import GROUP, WATCH_ID_PREFIX, Keys
from delayq._route import DEFAULT_QUEUE
from delayq._watch import WatchTarget, is_watch_id
from delayq.worker._ending import OutcomeCalls


@dataclass(frozen=True, slots=True)
class FireResult:
    now_ms: int
    fired: int
    next_due_ms: int | None
    orphans: int


@dataclass(frozen=True, slots=True)
class WatchOp:
    """One operation of watch.lua (see its header) on one watch timer."""

    op: str  # write, scan, gone, expired, observe
    target: WatchTarget
    seen_ms: int | None = None  # observe: the probe's server time
    # The node whose keyspace event this is (a cluster; "" when not an event): a replica
    # publishes the writes it replays, so an event heard from a node that no longer holds the
    # key (demoted by a failover, or the slot moved) is not that key's.
    node: str = ""


@dataclass(frozen=True, slots=True)
class Due:
    now_ms: int  # the server's clock when the index was read
    first_ms: int | None  # the earliest deadline in the index
    ids: list[str]  # due by now_ms, oldest first


@dataclass(frozen=True, slots=True)
class PeriodicState:
    sig: str
    armed: str
    armed_at: str

    @property
    def armed_ms(self) -> int | None:
        return int(self.armed) if self.armed else None


def _delivery(
    entry_id: bytes, fields: dict[bytes, bytes], stream: str, levels: dict[str, int]
) -> Delivery:
    return Delivery(
        entry_id=entry_id.decode(),
        timer_id=fields.get(b"i", b"").decode("utf-8", "replace"),
        raw=fields.get(b"p", b""),
        due_ms=_due_ms(fields.get(b"d")),
        items=fields.get(b"a"),
        watched_data=fields.get(b"w"),
        stream=stream,
        priority=levels.get(stream, 0),
    )


def _deliveries(entries: list[Any], stream: str, levels: dict[str, int]) -> list[Delivery]:
    return [_delivery(eid, fields, stream, levels) for eid, fields in entries if fields]


def _read_reply(levels: dict[str, int], reply: Any) -> list[Delivery]:
    """XREADGROUP's reply as the server sent it: nil, or each stream's entries (RESP2: a list
    of [name, entries]; RESP3: a map of name to entries), each [id, [field, value, ...]] (the
    fields nil when the entry was deleted meanwhile); the highest priority first."""
    if not reply:
        return []
    streams = list(reply.items()) if isinstance(reply, dict) else [(s[0], s[1]) for s in reply]
    read = [_delivery(eid, _pairs(fields), name.decode(), levels) for name, entries in streams
            for eid, fields in entries if fields]  # fmt: skip
    if len(streams) > 1:
        read.sort(key=lambda d: -d.priority)
    return read


def _taken(streams: list[str], levels: dict[str, int], reply: list[Any]) -> list[Delivery]:
    """take.lua's reply: [stream index, entry id, fields] for each job."""
    return [_delivery(reply[i + 1], _pairs(reply[i + 2]), streams[int(reply[i]) - 1], levels)
            for i in range(0, len(reply), 3) if reply[i + 2]]  # fmt: skip


def _pairs(fields: list[bytes] | dict[bytes, bytes]) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _due_ms(raw: bytes | None) -> int:
    """An entry's deadline; 0 when it is missing or garbled (an entry written by something
    else), so that one odd entry never stops a worker from reading those around it."""
    try:
        return int(float(raw)) if raw else 0
    except (ValueError, OverflowError):
        return 0


def _fire_result(reply: list[Any]) -> FireResult:
    now, fired, next_due, orphans = (int(v) for v in reply)
    return FireResult(now, fired, None if next_due < 0 else next_due, orphans)


def _watch_op_args(op: WatchOp) -> tuple[Any, ...]:
    w = op.target
    return (op.op, w.timer_id, w.payload, op.seen_ms if op.seen_ms is not None else "")


def _watch_result(reply: list[Any]) -> FireResult | None:
    return None if int(reply[0]) < 0 else _fire_result([*reply, 0])


def _due(reply: list[Any]) -> Due:
    first = int(reply[1])
    return Due(int(reply[0]), None if first < 0 else first, [i.decode() for i in reply[2:]])


def _lost_group(exc: ResponseError) -> bool:
    """The stream or its group vanished (FLUSHDB, an old snapshot): the group is made again."""
    return "NOGROUP" in str(exc) or "no such key" in str(exc)


class WorkerCalls(OutcomeCalls):
    """The calls of one worker (``consumer``) on one namespace; no I/O."""

    def __init__(
        self,
        keys: Keys,
        consumer: str,
        events: EventSettings = OFF,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> None:
        self.keys = keys
        self.consumer = consumer
        self.events = events  # which jobs' steps are told on the events stream
        self.queues = tuple(queues)
        # The ready streams this worker takes jobs from, in the order it takes them, with
        # their priority levels.
        self.levels = keys.streams(self.queues)
        self.streams = list(self.levels)

    def server_time_ms(self) -> Call[int]:
        return server_time()

    def ensure_group(self) -> Call[Any]:
        # From the stream's start, so jobs fired before any worker existed are delivered.
        others = [q for q in self.queues if q != DEFAULT_QUEUE]
        return script("ensure_group", [self.keys.queues, *self.streams], [GROUP, *others])

    # -- firing -------------------------------------------------------------------------------

    def due(self, index: str, limit: int) -> Call[Due]:
        """The ids of ``index`` due by the server's clock (oldest first), with that clock."""
        return script("due", [index], [limit], decode=_due)

    def fire(self, ids: list[str]) -> Call[FireResult]:
        k = self.keys
        keys = [k.index, k.ready, k.stats, k.first_touch, k.queues]
        for timer_id in ids:
            keys += (k.shadow(timer_id), k.data(timer_id), k.items(timer_id),
                     k.outcome(timer_id))  # fmt: skip
        return script("fire", [*keys, k.events], [*ids, self.events.spec()],
                      decode=_fire_result)  # fmt: skip

    def is_pending(self, timer_id: str) -> Call[bool]:
        return command("ZSCORE", self.keys.index, timer_id, decode=lambda s: s is not None)

    # -- watched keys (the watch leader) ------------------------------------------------------

    def watch_lease(self, op: str, token: str, ttl_ms: int, epoch: int = 0) -> Call[int]:
        """watch_lease.lua: the epoch of the leadership held after ``op``, 0 for none."""
        k = self.keys
        return script("watch_lease", [k.watch_lease, k.watch_epoch],
                      [op, token, ttl_ms, epoch or ""], decode=int)  # fmt: skip

    def apply_watch(self, token: str, ops: list[WatchOp]) -> Call[FireResult | None]:
        """watch.lua: apply these operations in order; None if ``token`` lost the lease."""
        k = self.keys
        keys = [*self._watch_keys()]
        args: list[Any] = [token, "read"]
        for op in ops:
            w = op.target
            keys += (w.key, k.data(w.timer_id), w.companion or "")
            args += _watch_op_args(op)
        return script("watch", keys, args, decode=_watch_result)

    def apply_watch_given(
        self, token: str, ops: list[WatchOp], owner: Callable[[str], str]
    ) -> Flow[FireResult | None]:
        """As ``apply_watch``, for watched keys on other nodes than the watch index (a
        cluster): read them first, each on its own node, then pass what was read. ``owner``
        names the node holding a key, as the runner knows it once the reads went through:
        events heard from another node are dropped."""
        reads: list[Call[Any]] = [command("PEXPIRETIME", op.target.key) for op in ops]
        wanted = [i for i, op in enumerate(ops)
                  if op.op in ("expired", "observe") and op.target.companion]  # fmt: skip
        reads += (script("companion", [ops[i].target.companion]) for i in wanted)
        replies = yield Batch(reads)
        companions = dict(zip(wanted, replies[len(ops) :], strict=True))
        keys = [*self._watch_keys()]
        args: list[Any] = [token, "given"]
        for i, op in enumerate(ops):
            if op.node and op.node != owner(op.target.key):
                continue
            value = companions.get(i)
            keys.append(self.keys.data(op.target.timer_id))
            args += (*_watch_op_args(op), int(replies[i]), "" if value is None else b"=" + value)
        result: FireResult | None = yield script("watch", keys, args, decode=_watch_result)
        return result

    def _watch_keys(self) -> list[str]:
        k = self.keys
        return [k.watch_lease, k.watch_index, k.ready, k.stats, k.paused, k.queues]

    def probe_watch(self, channel: str, seq: int, targets: list[WatchTarget]) -> Call[int]:
        """watch_probe.lua: expire what is overdue, then publish a barrier with the ids to
        judge; returns how many it holds."""
        keys = [self.keys.watch_index, *(t.key for t in targets)]
        args: list[Any] = [channel, seq, *(t.timer_id for t in targets)]
        return script("watch_probe", keys, args, decode=lambda reply: int(reply[1]))

    def watch_scores(self, targets: list[WatchTarget]) -> Call[list[int | None]]:
        """The watch timers' deadlines (None for one not armed)."""
        return command("ZMSCORE", self.keys.watch_index, *(t.timer_id for t in targets),
                       decode=lambda scores: [None if s is None else int(float(s))
                                              for s in scores])  # fmt: skip

    @staticmethod
    def touch_watched(
        channel: str, seq: int, seen_ms: int, targets: list[tuple[WatchTarget, int]]
    ) -> Call[tuple[int, int]]:
        """watch_touch.lua, on the node holding these targets' keys (a cluster), each with
        its timer's deadline: expire what is overdue there, then publish a barrier judging,
        as seen at ``seen_ms`` (the watch index's clock), each timer not at its key's last
        millisecond. Returns (ids published, ms until the first key left out, or -1)."""
        args = [channel, seq, seen_ms]
        for target, score in targets:
            args += (target.timer_id, target.key, score)
        return script("watch_touch", [], args, decode=lambda r: (int(r[0]), int(r[1])))

    def adopt_old_watch_timers(self, count: int) -> Flow[None]:
        """Adopt every watch timer found in the plain due index (see adopt_watch_timers)."""
        cursor = 0
        while True:
            cursor, found = yield command("ZSCAN", self.keys.index, cursor, "MATCH",
                                          WATCH_ID_PREFIX + "*", "COUNT", count,
                                          score_cast_func=float)  # fmt: skip
            if found:
                yield from self.adopt_watch_timers([member.decode() for member, _ in found])
            if int(cursor) == 0:
                return

    def adopt_watch_timers(self, ids: list[str]) -> Flow[None]:
        """Move watch timers found in the plain due index (armed by an older version) into
        the watch index, where the watch leader judges them."""
        k = self.keys
        scores = yield command("ZMSCORE", k.index, *ids)
        found = [part for i, s in zip(ids, scores, strict=True) if s is not None
                 for part in (s, i)]  # fmt: skip
        moves: list[Call[Any]] = [command("ZADD", k.watch_index, "NX", *found)] if found else []
        yield Batch([*moves, command("ZREM", k.index, *ids)], transaction=True)

    def scan_keys(self, cursor: int, pattern: str, count: int) -> Call[tuple[int, list[str]]]:
        def decode(reply: Any) -> tuple[int, list[str]]:
            decoded = []
            for name in reply[1]:
                try:
                    decoded.append(name.decode())
                except UnicodeDecodeError:
                    continue  # not a name delayq could have been asked to watch
            return int(reply[0]), decoded

        return command("SCAN", cursor, "MATCH", pattern, "COUNT", count, decode=decode)

    def forget(self, companion: str, value: bytes) -> Call[Any]:
        return script("forget", [companion], [value])

    # -- periodic tasks -----------------------------------------------------------------------

    def periodic_state(self, task: str) -> Call[PeriodicState]:
        def decode(raw: list[Any]) -> PeriodicState:
            return PeriodicState(*(text(v) if v is not None else "" for v in raw))

        return command("HMGET", self.keys.periodic_state(task), "sig", "armed", "armed_at",
                       decode=decode)  # fmt: skip

    def periodic_names(self) -> Call[list[str]]:
        return command("SMEMBERS", self.keys.periodics,
                       decode=lambda names: sorted(text(n) for n in names))  # fmt: skip

    def add_periodic(self, name: str) -> Call[Any]:
        return command("SADD", self.keys.periodics, name)

    def drop_periodic(self, name: str) -> Call[Any]:
        return command("SREM", self.keys.periodics, name)

    def arm_tick(
        self, task: str, sig: str, armed: str, new_sig: str, tick_ms: int, due_ms: int,
        timer_id: str, payload: bytes, cancel_id: str | None,
    ) -> Call[int]:  # fmt: skip
        """periodic.lua: arm a periodic task's next tick, compare-and-set on its state."""
        k = self.keys
        keys = [k.periodic_state(task), k.shadow(timer_id or "-"), k.data(timer_id or "-"),
                k.index, k.shadow(cancel_id or "-"), k.data(cancel_id or "-"),
                k.paused]  # fmt: skip
        args: list[Any] = [sig, armed, new_sig, tick_ms, due_ms, timer_id, payload,
                           k.wake_channel, cancel_id or ""]  # fmt: skip
        return script("periodic", keys, args, decode=int)

    def tick_in_flight(
        self, stream: str, timer_id: str, since_ms: int, limit: int
    ) -> Call[bool | None]:
        """Whether this tick's job is in ``stream`` (fired, not settled), looking at
        entries from ``since_ms`` on; None when more than ``limit`` follow (undecided)."""
        return script("tick_in_flight", [stream], [max(0, since_ms), timer_id, limit],
                      decode=lambda found: None if int(found) < 0 else bool(found))  # fmt: skip

    def record_run(self, task: str, tick_ms: int, fired_ms: int) -> Call[Any]:
        return script("record_run", [self.keys.periodic_state(task)], [tick_ms, fired_ms])

    def take_lock(self, lock: str, token: str, ttl_ms: int) -> Call[bool]:
        return command("SET", lock, token, "NX", "PX", ttl_ms, decode=bool)

    def lock_holder(self, lock: str) -> Call[bytes | None]:
        return command("GET", lock)

    def renew(self, lock: str, token: str, ttl_ms: int) -> Call[bool]:
        return script("renew", [lock], [token, ttl_ms], decode=bool)

    # -- consuming ----------------------------------------------------------------------------

    def read(self, count: int, block_ms: int) -> Flow[list[Delivery]]:
        """Up to ``count`` new jobs, highest priority first (take.lua); when there are none,
        the first to arrive in any of the streams, waiting up to ``block_ms``."""
        streams = self.streams
        taken: list[Delivery] = yield script(
            "take", streams, [GROUP, self.consumer, count],
            decode=functools.partial(_taken, streams, self.levels),
        )  # fmt: skip
        if taken:
            return taken
        try:
            read: list[Delivery] = yield command(
                "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count, "BLOCK", block_ms,
                "STREAMS", *streams, *[">"] * len(streams),
                decode=functools.partial(_read_reply, self.levels), raw=True,
            )  # fmt: skip
        except ResponseError as exc:
            if not _lost_group(exc):
                raise
            yield self.ensure_group()
            return []
        return read

    def reclaim(self, min_idle_ms: int, count: int) -> Flow[list[Delivery]]:
        """Take over jobs whose worker stopped heart-beating (XAUTOCLAIM), highest level
        first."""
        found: list[Delivery] = []
        for stream in self.streams:
            cursor = "0-0"
            while len(found) < count:
                try:
                    reply = yield command("XAUTOCLAIM", stream, GROUP, self.consumer, min_idle_ms,
                                          cursor, "COUNT", count - len(found))  # fmt: skip
                except ResponseError as exc:
                    if not _lost_group(exc):
                        raise
                    yield self.ensure_group()
                    return found
                cursor = text(reply[0])
                found += _deliveries(reply[1], stream, self.levels)
                if cursor == "0-0":
                    break
        return found

    def heartbeat(self, running: list[Delivery]) -> Flow[list[str]]:
        """Reset the idle time of running jobs so nobody takes them over; returns the entry
        ids of those lost."""
        by_stream: dict[str, list[str]] = {}
        for d in running:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        lost: list[list[str]] = yield Batch([
            script("heartbeat", [stream], [GROUP, self.consumer, *entries],
                   decode=lambda reply: [text(entry) for entry in reply])
            for stream, entries in by_stream.items()
        ])  # fmt: skip
        return [entry for some in lost for entry in some]

    def deliveries_of(self, entries: list[tuple[str, str]]) -> Batch[int]:
        """How many times each (stream, entry id) has been delivered (XPENDING), 0 if no
        longer pending."""
        return Batch([
            command("XPENDING", stream, GROUP, entry, entry, 1, parse_detail=True,
                    decode=lambda r: int(r[0]["times_delivered"]) if r else 0)
            for stream, entry in entries
        ])  # fmt: skip

    def handback(self, d: Delivery) -> Call[bool]:
        args: list[Any] = [GROUP, d.entry_id, d.timer_id, d.raw, d.due_ms, d.items or b"",
                           self.consumer]  # fmt: skip
        return script("handback", [d.stream], args, decode=bool)

    # -- sweeping -----------------------------------------------------------------------------

    def scan_data_ids(self, cursor: int, count: int) -> Flow[tuple[int, list[str]]]:
        """One SCAN step over the keys holding payloads: the next cursor, and the ids of the
        payloads found (a bucket's are its fields)."""
        k = self.keys
        reply = yield command("SCAN", cursor, "MATCH", k.data_pattern(), "COUNT", count)
        names = [n.decode("utf-8", "replace") for n in reply[1]]
        if k.buckets:
            fields = yield Batch([command("HKEYS", name) for name in names])
            ids = [f.decode("utf-8", "replace") for found in fields for f in found]
        else:
            ids = [i for i in map(k.id_from_data, names) if i]
        return int(reply[0]), ids

    def unindexed(self, ids: list[str]) -> Flow[list[str]]:
        """Of these data-key ids, those without a due-index entry (candidates for repair)."""
        ids = [i for i in ids if not is_watch_id(i)]  # watch.lua writes both or neither
        if not ids:
            return []
        scores = yield command("ZMSCORE", self.keys.index, *ids)
        return [i for i, score in zip(ids, scores, strict=True) if score is None]

    def repair(self, ids: list[str]) -> Flow[int]:
        """Run repair.lua for each id; returns how many needed it."""
        k = self.keys
        repaired = yield Batch([
            script("repair", [k.shadow(i), k.data(i), k.index, k.stats, k.paused], [i],
                   decode=int)
            for i in ids
        ])  # fmt: skip
        return sum(repaired)

    def stale_consumers(self, idle_ms: int) -> Flow[list[tuple[str, str]]]:
        """(stream, consumer) of other consumers with nothing pending there, idle that long."""
        try:  # every stream's consumers in one round trip
            found = yield Batch([command("XINFO CONSUMERS", s, GROUP) for s in self.streams])
        except ResponseError as exc:
            if not _lost_group(exc):
                raise
            yield self.ensure_group()
            return []
        return [
            (stream, text(c["name"]))
            for stream, infos in zip(self.streams, found, strict=True)
            for c in infos
            if c["pending"] == 0 and c["idle"] > idle_ms and text(c["name"]) != self.consumer
        ]

    def drop_consumer(self, stream: str, name: str) -> Call[Any]:
        return command("XGROUP DELCONSUMER", stream, GROUP, name)
