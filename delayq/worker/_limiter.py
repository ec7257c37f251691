"""Flow control in the worker: a limited task's run takes a concurrency slot and a rate token
first (``limits.lua``, in the shard of each limit's scope), or waits as a timer for the
moment it may run (docs/flow-control.md).

Requests of all running jobs are gathered and sent together, one script call per shard per
round trip, as acknowledgements are: a limited job then costs a share of a round trip, not one
of its own. A job holding a slot keeps it under the worker's heartbeats; one whose worker died
loses it when its lease (the visibility timeout) ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from delayq._calls import Batch, Call, script
from delayq._errors import ScheduleError
from delayq._hooks import Delivery
from delayq._keys import Keys
from delayq._layout import Layout
from delayq._limits import Limits, describe
from delayq._runners import AsyncRunner
from delayq._task import Task

log = logging.getLogger("delayq.worker")
# A run whose rate token comes this soon waits in its worker rather than as a timer: a timer
# fired now would join the end of the ready stream, behind a burst still being screened.
KEEP_MS = 250


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of limits.lua: its two keys and five arguments (see its header)."""

    keys: tuple[str, str]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    ms: int  # for a refusal: how long until it may look again
    woken: tuple[str, ...] = ()  # waiting jobs handed a slot: their timers fire now


def _replies(reply: list[Any]) -> list[Reply]:
    return [Reply(int(r[0]) == 1, int(r[1]), tuple(bytes(w).decode() for w in r[2:]))
            for r in reply]  # fmt: skip


def limit_call(ops: list[Op]) -> Call[list[Reply]]:
    return script("limits", [k for op in ops for k in op.keys],
                  [a for op in ops for a in op.args], decode=_replies)  # fmt: skip


def wake_call(keys: Keys, timer_id: str, mark_ms: int) -> Call[int]:
    return script("wake", [keys.shadow(timer_id), keys.index, keys.woken(timer_id)],
                  [timer_id, keys.wake_channel, mark_ms], decode=int)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Wait:
    """A job that may not run yet: re-arm it ``delay_ms`` from now."""

    delay_ms: int
    reason: str
    # Where it waits (shard, keys of its line or reservations, is a concurrency line): if
    # its timer is re-armed under another id, the place follows it.
    place: tuple[int, tuple[str, str], bool]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A job that may run; ``holder`` names its concurrency slot, if it took one.
    ``after_ms``: its rate token is this soon, and the worker keeps it until then."""

    holder: str | None = None
    after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Ask:
    """One run asking for what its task's limits require."""

    delivery: Delivery
    task: Task[Any, Any]
    limits: Limits
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class _Pending:
    ops: list[Op] = field(default_factory=list)
    futures: list[asyncio.Future[Reply]] = field(default_factory=list)


class Limiter:
    """The limits of one worker's limited tasks, over every shard of its namespace."""

    def __init__(self, io: AsyncRunner, layout: Layout, *, lease_ms: int) -> None:
        self.io = io
        self.layout = layout
        self.lease_ms = lease_ms
        self._pending: dict[int, _Pending] = collections.defaultdict(_Pending)
        self._ready = asyncio.Event()
        self.held: dict[str, tuple[int, str, int]] = {}  # holder -> shard, scope, limit
        self.lost = 0  # slots found gone at a renewal, and taken again

    # -- what the executor asks -------------------------------------------------------------

    async def admit(
        self, d: Delivery, task: Task[Any, Any], limits: Limits, args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Admitted | Wait:  # fmt: skip
        """Take what this run needs, or say how long it waits; ScheduleError when a key
        cannot be made from its arguments."""
        (verdict,) = await self.admit_many([Ask(d, task, limits, args, kwargs)])
        if isinstance(verdict, ScheduleError):
            raise verdict
        return verdict

    async def admit_many(self, asks: list[Ask]) -> list[Admitted | Wait | ScheduleError]:
        """``admit`` for many runs at once: their slots in one round trip (one call per
        shard), then the tokens of those that got one in another."""
        verdicts: list[Admitted | Wait | ScheduleError | None] = [None] * len(asks)
        scopes: list[tuple[str | None, str | None]] = []
        for i, ask in enumerate(asks):
            try:
                scopes.append(ask.task.limit_scopes(ask.args, ask.kwargs))
            except ScheduleError as exc:
                verdicts[i] = exc
                scopes.append((None, None))
        holders: dict[int, str] = {}
        slots = {i: self._slot_op(asks[i], conc) for i, (conc, _) in enumerate(scopes)
                 if conc is not None and verdicts[i] is None}  # fmt: skip
        for i, reply in (await self._send(slots)).items():
            shard, op = slots[i]
            conc = scopes[i][0] or ""
            if reply.ok:
                holders[i] = op.args[1]
                self.held[op.args[1]] = (shard, conc, int(op.args[3]))
            else:
                why = f"concurrency {op.args[3]} for {describe(conc)} of {asks[i].task.name!r}"
                verdicts[i] = Wait(reply.ms, why, (shard, op.keys, True))
        after: dict[int, int] = {}
        tokens = {i: self._token_op(asks[i], rate) for i, (_, rate) in enumerate(scopes)
                  if rate is not None and verdicts[i] is None}  # fmt: skip
        for i, reply in (await self._send(tokens)).items():
            if reply.ok:
                after[i] = reply.ms
                continue
            shard, op = tokens[i]
            if i in holders:
                self.release(holders.pop(i))  # the slot goes to the next in line meanwhile
            why = (
                f"rate {asks[i].limits.rate} for {describe(scopes[i][1] or '')} of "
                f"{asks[i].task.name!r}"
            )
            verdicts[i] = Wait(reply.ms, why, (shard, op.keys, False))
        return [v if v is not None else Admitted(holders.get(i), after.get(i, 0))
                for i, v in enumerate(verdicts)]  # fmt: skip

    def _slot_op(self, ask: Ask, scope: str) -> tuple[int, Op]:
        shard, keys = self._scope_keys(scope)
        holder = f"{ask.delivery.entry_id}:{ask.delivery.timer_id}"
        args = ("a", holder, ask.delivery.timer_id, ask.limits.concurrency, self.lease_ms)
        return shard, Op((keys.slots(scope), keys.line(scope)), args)

    def _token_op(self, ask: Ask, scope: str) -> tuple[int, Op]:
        shard, keys = self._scope_keys(scope)
        rate = ask.limits.rate
        assert rate is not None
        interval = rate.interval_ms
        args = ("t", ask.delivery.timer_id, repr(interval), repr(interval * rate.burst), KEEP_MS)
        return shard, Op((keys.rate_tat(scope), keys.rate_reserved(scope)), args)

    async def _send(self, ops: dict[int, tuple[int, Op]]) -> dict[int, Reply]:
        """Ops now, one call per shard; their replies by the caller's numbers."""
        if not ops:
            return {}
        per_shard: dict[int, list[int]] = collections.defaultdict(list)
        for i, (shard, _) in ops.items():
            per_shard[shard].append(i)
        shards = list(per_shard)
        replies = await asyncio.gather(
            *(self.io.run(limit_call([ops[i][1] for i in per_shard[s]])) for s in shards)
        )
        found = {i: r for s, got in zip(shards, replies, strict=True)
                 for i, r in zip(per_shard[s], got, strict=True)}  # fmt: skip
        woken = [w for r in found.values() for w in r.woken]
        if woken:
            await self._wake(woken)
        return found

    def release(self, holder: str) -> None:
        """The run holding this slot is over: the slot goes to the next in line, if any."""
        found = self.held.pop(holder, None)
        if found is None:
            return
        shard, scope, limit = found
        keys = self.layout.shards[shard]
        op = Op((keys.slots(scope), keys.line(scope)), ("r", holder, limit, self.lease_ms, ""))
        self._ask(shard, op).add_done_callback(_log_failure("release a concurrency slot"))

    async def moved(self, wait: Wait, old_id: str, new_id: str) -> None:
        """A waiting job was re-armed under ``new_id``: its place in line follows it."""
        shard, where, is_line = wait.place
        await self._ask(shard, Op(where, ("m", old_id, new_id, "1" if is_line else "0", "")))

    async def renew(self) -> None:
        """Extend the leases of the slots held by this worker's running jobs."""
        held = list(self.held.items())
        asked = []
        for holder, (shard, scope, _) in held:
            keys = self.layout.shards[shard]
            op = Op((keys.slots(scope), keys.line(scope)), ("n", holder, self.lease_ms, "", ""))
            asked.append(self._ask(shard, op))
        for (holder, _), reply in zip(held, await asyncio.gather(*asked), strict=True):
            if not reply.ok and holder in self.held:
                self.lost += 1
                log.warning("concurrency slot %s was gone at its renewal (its lease ended, or the "
                            "server lost writes); it counts again", holder)  # fmt: skip

    # -- sending ------------------------------------------------------------------------------

    def _scope_keys(self, scope: str) -> tuple[int, Keys]:
        shard = self.layout.shard_of_scope(scope)
        return shard, self.layout.shards[shard]

    def _ask(self, shard: int, op: Op) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        pending = self._pending[shard]
        pending.ops.append(op)
        pending.futures.append(future)
        self._ready.set()
        return future

    async def run(self) -> None:
        """Send what was asked, as it comes, until cancelled (the last thing a worker
        stops): everything asked while a round trip was under way goes in the next one."""
        while True:
            if not self._pending:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, collections.defaultdict(_Pending)
        shards = list(pending)
        outcomes = await asyncio.gather(
            *(self.io.run(limit_call(pending[s].ops)) for s in shards), return_exceptions=True
        )
        woken: list[str] = []
        for shard, outcome in zip(shards, outcomes, strict=True):
            futures = pending[shard].futures
            if isinstance(outcome, BaseException):
                for future in futures:
                    if not future.done():
                        future.set_exception(outcome)
                continue
            for future, reply in zip(futures, outcome, strict=True):
                woken += reply.woken
                if not future.done():
                    future.set_result(reply)
        if woken:
            await self._wake(woken)

    async def _wake(self, timer_ids: list[str]) -> None:
        calls = [wake_call(self.layout.keys_for(i), i, self.lease_ms) for i in timer_ids]
        try:
            await self.io.run(Batch(calls))
        except Exception as exc:  # each waiter looks again by itself when its lease may end
            log.warning("could not wake %d job(s) handed a slot: %r", len(calls), exc)


def _log_failure(what: str) -> Callable[[asyncio.Future[Reply]], None]:
    def done(future: asyncio.Future[Reply]) -> None:
        if not future.cancelled() and future.exception() is not None:
            # The slot's lease ends by itself; until then it counts as held.
            log.warning("could not %s: %r", what, future.exception())

    return done
