"""Watched keys (on_expire): one worker at a time, the watch leader, applies their events.

Keyspace events are published once, in the order of the commands, to every subscriber; each
worker applying them on its own would fire one expiry as often as there are workers, or judge an
old event against a key's newer life. So the worker holding the watch lease alone subscribes to
the watched patterns, queues what it hears, and applies the queue in order through watch.lua.

Its deadline loop looks at watch timers that fall due (watch_probe.lua), which makes the server
expire an overdue key at once, and publishes a barrier on the leader's own channel: the barrier
takes its place in the queue after every event that happened before the look, so a timer still
due when the barrier is applied was armed for a life that ended unheard (watch.lua "observe").
Scans find keys whose events were missed (at each leadership, after a reconnect, and with the
orphan scans).

On a cluster the watched keys live on every primary, where their events are published: the
leader subscribes on each (following failovers and resharding), reads each key on its own node
before applying its events (watch.lua "given"), and probes each node for its own keys, with a
barrier on a channel of that node (watch_touch.lua).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from typing import Any

import msgpack
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delayq._app import Delayq
from delayq._keys import Keys
from delayq._runners import AsyncRunner, Subscription
from delayq._watch import Watcher, WatchTarget, resolve
from delayq.worker._engine import Engine, WatchOp, monotonic_ms
from delayq.worker._listener import LAYOUT_CHECK_S
from delayq.worker._loops import wait_any, wait_or_stop

log = logging.getLogger("delayq.worker")
SCAN_COUNT = 1000
# What each keyspace event means for the key's watch timer (see watch.lua); others are
# ignored: `evicted` counts as expired when the timer's deadline comes.
EVENT_OPS = {
    "expired": "expired",
    **dict.fromkeys(("del", "rename_from", "move_from"), "gone"),
    **dict.fromkeys(
        ("set", "expire", "persist", "rename_to", "restore", "copy_to", "move_to"), "write"
    ),
}
# A probe's barrier that does not come back within this (the subscription dropped) is given up;
# the next look at the index probes again.
PROBE_TIMEOUT = 5.0
MAX_IDLE_WAIT = 5.0


class LeaseLost(Exception):
    """Another worker leads the watched keys now."""


class _Probe:
    """A look at due watch timers: done when the barrier of every node looked at was
    applied (``parts`` still to come)."""

    def __init__(self) -> None:
        self.applied = asyncio.Event()
        self.parts = 1

    def part_done(self) -> None:
        self.parts -= 1
        if self.parts <= 0:
            self.applied.set()


class Watching:
    def __init__(
        self, app: Delayq, engine: Engine, listen: AsyncRunner, *, db: int, batch: int,
        lease_s: float, stopping: asyncio.Event,
    ) -> None:  # fmt: skip
        self.app = app
        self.engine = engine
        self.listen = listen
        self.batch = batch
        self.lease_ms = round(lease_s * 1000)
        self.stopping = stopping
        self.watchers: dict[str, Watcher[Any, Any]] = dict(app.watchers)
        self.token = secrets.token_hex(8)
        self.epoch = 0  # of the leadership held, 0 when not leading
        self.channel = app.keys.watch_barrier(engine.consumer)
        self.keyspace_prefix = Keys.keyspace_pattern(db, "")
        self.subscriptions = [Keys.keyspace_pattern(db, p) for p in self.patterns()]
        self.queue: deque[tuple[Any, ...]] = deque()
        self.queued = asyncio.Event()
        self.wake = asyncio.Event()  # a watch deadline may have come earlier
        self.scan_requested = asyncio.Event()
        self.probes: dict[int, _Probe] = {}
        # Set when a leadership ends: its loops stop at their next turn even if a cancellation
        # was swallowed on the way (the client may absorb one in the middle of a command).
        self.ending = asyncio.Event()
        self.probe_seq = 0
        self.offset_ms = 0.0  # the server's clock minus the monotonic clock
        self.armed = 0
        self.leaderships = 0

    @property
    def active(self) -> bool:
        return bool(self.watchers)

    @property
    def leading(self) -> bool:
        return self.epoch != 0

    def patterns(self) -> list[str]:
        return sorted({w.spec.pattern for w in self.watchers.values()})

    def resolve(self, timer_id: str) -> WatchTarget:
        return resolve(self.watchers, timer_id, self.app.max_payload_bytes)

    def targets(self, key: str) -> list[WatchTarget]:
        return [
            self.resolve(w.timer_id(key))
            for w in self.watchers.values()
            if w.spec.suffix_of(key) is not None
        ]

    async def request_scan(self) -> None:
        """Scan for the watched keys soon (called with each orphan scan); leader only."""
        self.scan_requested.set()

    # -- leadership ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Try for the lease; while it is held, lead. Runs as the "watched keys" loop."""
        while not self.stopping.is_set():
            self.epoch = await self.engine.run(
                self.engine.watch_lease("acquire", self.token, self.lease_ms)
            )
            if not self.leading:
                if await wait_or_stop(self.stopping, self.lease_ms / 3000):
                    return
                continue
            self.leaderships += 1
            log.info("leading the watched keys (epoch %d)", self.epoch)
            try:
                await self._lead()
            except LeaseLost:
                log.warning("lost the watch lease; another worker leads the watched keys")
            finally:
                if self.stopping.is_set():
                    with contextlib.suppress(Exception):
                        await self.engine.run(
                            self.engine.watch_lease("release", self.token, self.lease_ms)
                        )
                self.epoch = 0
                self.queue.clear()
                self.probes.clear()

    async def _lead(self) -> None:
        self.ending = asyncio.Event()
        bodies = {"watch lease": self._renew, "watch events": self._listen,
                  "watch queue": self._apply_queue, "watch deadlines": self._deadlines,
                  "watch scans": self._scans}  # fmt: skip
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(body(), name=name) for name, body in bodies.items()
        ]
        tasks.append(asyncio.create_task(self.stopping.wait()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.ending.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure

    async def _renew(self) -> None:
        while not await wait_or_stop(self.ending, self.lease_ms / 3000):
            await self._keep_lease()

    async def _keep_lease(self) -> None:
        epoch = await self.engine.run(
            self.engine.watch_lease("renew", self.token, self.lease_ms, self.epoch)
        )
        if epoch != self.epoch:
            raise LeaseLost

    # -- hearing ------------------------------------------------------------------------------

    def barrier(self, node: str) -> str:
        """The channel of the barriers published on ``node`` (see ``AsyncRunner.primaries``)."""
        return f"{self.channel}@{node}" if node else self.channel

    async def _listen(self) -> None:
        """A subscription on every server holding keys, following the cluster's layout."""
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while not self.ending.is_set():
                nodes = self.listen.primaries()
                for name in running.keys() - nodes.keys():
                    running.pop(name).cancel()
                for name, node in nodes.items():
                    task = running.get(name)
                    if task is not None and task.done():
                        failure = None if task.cancelled() else task.exception()
                        log.warning("watched-keys subscription%s failed (%r); subscribing again",
                                    f" on {name}" if name else "", failure)  # fmt: skip
                    if task is None or task.done():
                        running[name] = asyncio.create_task(self._listen_on(name, node))
                if await wait_or_stop(self.ending, LAYOUT_CHECK_S):
                    return
                await self.listen.follow()
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _listen_on(self, name: str, node: AsyncRunner) -> None:
        """One server's subscription; after each (re)connect, a scan covers what was missed."""
        backoff = 0.05
        while not self.ending.is_set():
            pubsub = node.subscription()
            try:
                await pubsub.subscribe(self.barrier(name))
                await pubsub.psubscribe(*self.subscriptions)
                await self._confirmed(pubsub, 1 + len(self.subscriptions), name)
                self.scan_requested.set()
                self.wake.set()
                backoff = 0.05
                while not self.ending.is_set():
                    message = await pubsub.message(timeout=1.0)
                    if message is not None:
                        self._heard(message, name)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("watched-keys subscription %slost its connection: %s",
                            f"on {name} " if name else "", exc)  # fmt: skip
            finally:
                await pubsub.aclose()
            await wait_or_stop(self.ending, backoff)
            backoff = min(backoff * 2, 2.0)

    async def _confirmed(self, pubsub: Subscription, expected: int, node: str) -> None:
        confirmed = 0
        while confirmed < expected:
            message = await pubsub.message(timeout=5.0, confirmations=True)
            if message is None:
                raise RedisTimeoutError("no subscription confirmation within 5 s")
            if message["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            else:
                self._heard(message, node)

    def _heard(self, message: dict[str, Any], node: str) -> None:
        if message["type"] == "pmessage":
            try:
                key = message["channel"].decode()[len(self.keyspace_prefix) :]
            except UnicodeDecodeError:
                return  # not a name delayq could have been asked to watch
            op = EVENT_OPS.get(message["data"].decode(errors="replace"))
            if op is not None:
                self.queue.append((op, key, node))
        elif message["type"] == "message":
            seq, seen_ms, *ids = msgpack.unpackb(message["data"], raw=False)
            self.queue.append(("observe", seen_ms, ids, seq))
        else:
            return
        self.queued.set()

    # -- applying -----------------------------------------------------------------------------

    async def _apply_queue(self) -> None:
        while not self.ending.is_set():
            await wait_any([self.queued, self.ending], None)
            self.queued.clear()
            while self.queue and not self.ending.is_set():
                ops, probes = self._take()
                await self._apply(ops)
                for seq in probes:
                    if seq in self.probes:
                        self.probes[seq].part_done()

    def _take(self) -> tuple[list[WatchOp], list[int]]:
        """The queue's next operations, in order, up to a batch (whole items)."""
        ops: list[WatchOp] = []
        probes: list[int] = []
        while self.queue and len(ops) < self.batch:
            item = self.queue.popleft()
            if item[0] == "observe":
                _, seen_ms, ids, seq = item
                ops += (WatchOp("observe", self.resolve(i), seen_ms) for i in ids)
                probes.append(seq)
                continue
            op, key, node = item
            for target in self.targets(key):
                last = ops[-1] if ops else None
                if last and last.op == op == "write" and last.target.timer_id == target.timer_id:
                    continue  # SET ... EX publishes set and expire: one look is enough
                ops.append(WatchOp(op, target, node=node))
        return ops, probes

    async def _apply(self, ops: list[WatchOp]) -> None:
        if not ops:
            return
        backoff = 0.05
        while not self.ending.is_set():
            try:
                result = await self.engine.run(self._applied(ops))
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # The queue keeps its order only if this batch goes through before the next.
                log.warning("applying watched-key events failed (%s); retrying", exc)
                await wait_or_stop(self.ending, backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if result is not None:
                break
            await self._keep_lease()  # it expired while nobody else took it: carry on
        self.armed += sum(op.op in ("write", "scan") for op in ops)
        self.wake.set()

    def _applied(self, ops: list[WatchOp]) -> Any:
        if self.engine.io.spans_nodes:
            return self.engine.apply_watch_given(self.token, ops, self.engine.io.node_name)
        return self.engine.apply_watch(self.token, ops)

    # -- deadlines and scans ------------------------------------------------------------------

    async def _deadlines(self) -> None:
        while not self.ending.is_set():
            self.wake.clear()
            due = await self.engine.run(self.engine.due(self.engine.keys.watch_index, self.batch))
            self.offset_ms = due.now_ms - monotonic_ms()
            if due.ids:
                await self._probe([self.resolve(i) for i in due.ids], due.now_ms)
                continue
            timeout = MAX_IDLE_WAIT
            if due.first_ms is not None:
                left = (due.first_ms - (monotonic_ms() + self.offset_ms)) / 1000
                timeout = min(timeout, max(left, 0.001))
            await wait_any([self.wake, self.ending], timeout)

    async def _probe(self, targets: list[WatchTarget], seen_ms: int) -> None:
        """Look at due timers, and wait until the queue applied the look in its place."""
        self.probe_seq += 1
        seq = self.probe_seq
        probe = self.probes[seq] = _Probe()
        try:
            if self.engine.io.spans_nodes:
                await self._probe_nodes(probe, seq, seen_ms, targets)
            elif await self.engine.run(self.engine.probe_watch(self.channel, seq, targets)) == 0:
                await asyncio.sleep(0.001)  # keys at their last millisecond: look again
            await wait_any([probe.applied, self.ending], PROBE_TIMEOUT)
        finally:
            self.probes.pop(seq, None)

    async def _probe_nodes(
        self, probe: _Probe, seq: int, seen_ms: int, targets: list[WatchTarget]
    ) -> None:
        """The look on a cluster: each node looks at the keys it holds, in one part each."""
        io = self.engine.io
        scores = await self.engine.run(self.engine.watch_scores(targets))
        parts: dict[str, list[tuple[WatchTarget, int]]] = {}
        for target, score in zip(targets, scores, strict=True):
            if score is not None:  # a timer gone since needs no judging
                parts.setdefault(io.node_name(target.key), []).append((target, score))
        nodes = io.primaries()
        names = [name for name in parts if name in nodes]
        probe.parts = len(names)
        if not names:
            probe.part_done()
        looks = await asyncio.gather(
            *(nodes[n].run(self.engine.touch_watched(self.barrier(n), seq, seen_ms, parts[n]))
              for n in names),
            return_exceptions=True,
        )  # fmt: skip
        failed = len(parts) - len(names)  # on a node the layout read knows no more
        waits: list[int] = []
        for look in looks:
            if isinstance(look, BaseException):
                log.debug("a look at due watched keys failed (%r); looking again", look)
                failed += 1
                probe.part_done()  # its barrier will not come
                continue
            published, wait = look
            if published == 0:
                probe.part_done()
            if wait >= 0:
                waits.append(wait)
        if failed:
            await io.follow()
            waits.append(100)
        if waits:
            # Keys at their last millisecond, or a look that failed: look again after that.
            await wait_or_stop(self.ending, min(max(min(waits), 1), 1000) / 1000)

    async def _scans(self) -> None:
        while not self.ending.is_set():
            await wait_any([self.scan_requested, self.ending], None)
            if self.ending.is_set():
                return
            self.scan_requested.clear()
            await self.engine.run(self.engine.adopt_old_watch_timers(SCAN_COUNT))
            await self.scan()

    async def scan(self) -> None:
        """Queue every key matching a watched pattern (their events may have been missed)."""
        for node in self.engine.io.primaries().values():
            for pattern in self.patterns():
                cursor = 0
                while not self.ending.is_set():
                    cursor, keys = await node.run(
                        self.engine.scan_keys(cursor, pattern, SCAN_COUNT)
                    )
                    self.queue.extend(("scan", key, "") for key in keys)
                    self.queued.set()
                    if cursor == 0:
                        break
