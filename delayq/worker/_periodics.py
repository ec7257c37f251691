"""Keeping periodic tasks ticking: register schedules at start, chain ticks, guard overlap."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from delayq._app import Delayq
from delayq._hooks import Decision, Delivery, RunGate
from delayq._keys import Keys
from delayq._periodic import MISFIRE_GRACE_MS, Periodic
from delayq.worker._engine import Engine, PeriodicState

log = logging.getLogger("delayq.worker")
CAS_ATTEMPTS = 5
# A tick out of the index is looked for among this many ready-stream entries fired after it
# was armed; behind a longer backlog, it counts as in flight until the backlog shrinks.
IN_FLIGHT_SCAN = 2000
# Entry ids come from the server's clock, which may step back a little after the arming.
CLOCK_STEP_MARGIN_MS = 60_000


@dataclass(frozen=True, slots=True)
class TickGate:
    """A periodic task's catch-up and overlap rules, applied around each of its runs."""

    runner: PeriodicRunner
    task: Periodic[Any, Any]

    async def before_run(self, d: Delivery, attempt: int) -> Decision:
        return await self.runner.on_tick(self.task, d, attempt)

    async def after_run(self, d: Delivery) -> None:
        await self.runner.after_run(self.task, d)


class PeriodicRunner:
    def __init__(
        self, app: Delayq, engine: Engine, *, lock_ttl_ms: int,
        periodics: dict[str, Periodic[Any, Any]] | None = None,
    ) -> None:  # fmt: skip
        """``periodics``: the tasks whose state is in ``engine``'s shard (default: all)."""
        self.app = app
        self.engine = engine
        self.lock_ttl_ms = lock_ttl_ms
        self.periodics: dict[str, Periodic[Any, Any]] = dict(
            app.periodics if periodics is None else periodics
        )
        self.held_locks: dict[str, str] = {}  # lock key -> token (the delivery's entry id)
        self.deferred: dict[str, int] = {}  # entry id -> tick whose successor is armed after it
        self.skipped = 0

    def periodic(self, task: Periodic[Any, Any]) -> RunGate:
        return TickGate(self, task)

    async def state(self, name: str) -> PeriodicState:
        return await self.engine.run(self.engine.periodic_state(name))

    async def _arm(self, task: Periodic[Any, Any], seen: PeriodicState, tick_ms: int) -> int:
        cancel = None
        if seen.sig and seen.sig != task.periodic.schedule.signature and seen.armed:
            cancel = task.tick_id(int(seen.armed))  # the old schedule's pending tick
        payload = task.tick_payload(max_bytes=self.app.max_payload_bytes)
        return await self.engine.run(self.engine.arm_tick(
            task.name, seen.sig, seen.armed, task.periodic.schedule.signature, tick_ms,
            task.due_ms(tick_ms), task.tick_id(tick_ms), payload, cancel,
        ))  # fmt: skip

    async def register_all(self) -> None:
        """At start: arm each schedule's next tick; replace changed ones; stop removed ones."""
        for task in self.periodics.values():
            try:
                await self.register(task)
            except Exception as exc:
                # One task's schedule must never keep a worker from starting; the sweeps try
                # again (ConnectionError and the like are the caller's to report).
                if isinstance(exc, RedisError):
                    raise
                log.error("could not arm periodic task %s: %r", task.name, exc)
        for name in await self.engine.run(self.engine.periodic_names()):
            if name not in self.periodics:
                await self.remove(name)

    async def register(self, task: Periodic[Any, Any], *, replace: bool = True) -> None:
        """Make sure the schedule has a pending tick. With ``replace`` (at start), a stored
        schedule that differs is replaced by this worker's; without it (every sweep), only
        this worker's own schedule is kept armed, so that workers of two code versions
        during a rolling deploy do not undo each other's schedule."""
        sig = task.periodic.schedule.signature
        for _ in range(CAS_ATTEMPTS):
            seen = await self.state(task.name)
            if not replace and seen.sig != sig:
                return
            if replace:
                await self.engine.run(self.engine.add_periodic(task.name))
            now = await self.engine.run(self.engine.server_time_ms())
            if seen.sig == sig and seen.armed_ms is not None:
                if await self._alive(task, seen):
                    return  # its tick is armed or on its way, and will chain the next one
                tick = task.chained_tick_ms(seen.armed_ms, now)
            else:
                if seen.sig:
                    log.info("schedule of %s changed to %s; replacing its pending tick",
                             task.name, sig)  # fmt: skip
                tick = task.next_tick_ms(now)
            if await self._arm(task, seen, tick) >= 0:
                return
        log.warning("could not register periodic task %s: its state kept changing", task.name)

    def _stream(self, task: Periodic[Any, Any]) -> str:
        """The ready stream its ticks' jobs wait in."""
        return self.engine.keys.stream(task.options.route.queue, task.options.route.priority)

    async def _alive(self, task: Periodic[Any, Any], seen: PeriodicState) -> bool:
        """Whether the armed tick is pending, or fired with its run not settled yet."""
        assert seen.armed_ms is not None
        tick_id = task.tick_id(seen.armed_ms)
        if await self.engine.run(self.engine.is_pending(tick_id)):
            return True
        # It cannot have fired before it was armed nor before it was due.
        since = max(int(seen.armed_at or 0), task.due_ms(seen.armed_ms)) - CLOCK_STEP_MARGIN_MS
        return (
            await self.engine.run(
                self.engine.tick_in_flight(self._stream(task), tick_id, since, IN_FLIGHT_SCAN)
            )
            is not False
        )

    async def remove(self, name: str) -> None:
        seen = await self.state(name)
        cancel = Keys.tick_id(name, seen.armed) if seen.armed else None
        await self.engine.run(
            self.engine.arm_tick(name, seen.sig, seen.armed, "", 0, 0, "", b"", cancel)
        )
        await self.engine.run(self.engine.drop_periodic(name))
        log.info("periodic task %s is no longer in the code: its schedule was removed", name)

    async def on_tick(self, task: Periodic[Any, Any], d: Delivery, attempt: int) -> Decision:
        """Before a tick runs: chain the next tick, then apply catch-up and overlap rules."""
        parsed = Keys.tick_of(d.timer_id)
        if parsed is None:
            return "run"  # a retry of a tick, under another id: just run it
        _name, tick_ms = parsed
        now = await self.engine.run(self.engine.server_time_ms())
        following = task.chained_tick_ms(tick_ms, now)
        if following > now:
            await self.advance(task, tick_ms, now)
        else:
            # Catching up missed ticks one by one (catch_up="all"): the next is armed when
            # this run is over, so that the overlap rule does not drop it.
            self.deferred[d.entry_id] = tick_ms
        if (task.periodic.catch_up == "none" and attempt == 0
                and now - d.due_ms > MISFIRE_GRACE_MS):  # fmt: skip
            log.info("skipping missed tick of %s (catch_up='none')", task.name)
            self.skipped += 1
            await self._advance_deferred(task, d)
            return "skip"
        if task.periodic.overlap == "allow":
            return "run"
        lock = self.engine.keys.periodic_lock(task.name)
        if await self._lock(lock, d.entry_id, d.stream):
            self.held_locks[lock] = d.entry_id
            return "run"
        if task.periodic.overlap == "skip":
            log.info("skipping a tick of %s: the previous run is still running", task.name)
            self.skipped += 1
            await self._advance_deferred(task, d)
            return "skip"
        await self._advance_deferred(task, d)
        return "requeued"

    async def _lock(self, lock: str, token: str, stream: str) -> bool:
        """Take the task's overlap lock for the delivery ``token``, or keep it if it is already
        its own (its worker died mid-run), or take it from a run that is over: a lock whose
        holder's delivery is no longer pending was left behind by a release that failed (the
        server was unreachable, or restored from a snapshot) and must not skip ticks."""
        take = self.engine.take_lock(lock, token, self.lock_ttl_ms)
        if await self.engine.run(take):
            return True
        if await self.engine.run(self.engine.renew(lock, token, self.lock_ttl_ms)):
            return True
        holder = await self.engine.run(self.engine.lock_holder(lock))
        if holder is not None and await self.engine.run(
            self.engine.deliveries_of([(stream, holder.decode())])
        ) != [0]:
            return False  # the previous run is still going
        if holder is not None:
            log.info("taking over the overlap lock %s of a run that is over", lock)
            await self.engine.run(self.engine.forget(lock, holder))
        return await self.engine.run(take)

    async def advance(self, task: Periodic[Any, Any], tick_ms: int, now: int) -> None:
        """Arm the tick after ``tick_ms``, unless another worker or a new schedule did."""
        seen = await self.state(task.name)
        if seen.sig == task.periodic.schedule.signature and seen.armed == str(tick_ms):
            await self._arm(task, seen, task.chained_tick_ms(tick_ms, now))

    async def after_run(self, task: Periodic[Any, Any], d: Delivery) -> None:
        lock = self.engine.keys.periodic_lock(task.name)
        token = self.held_locks.pop(lock, None)
        if token is not None:
            await self.engine.run(self.engine.forget(lock, token.encode()))
        # Released first: the deferred next tick may be due at once and must find it free.
        await self._advance_deferred(task, d)
        parsed = Keys.tick_of(d.timer_id)
        if parsed is not None:
            await self.engine.run(self.engine.record_run(task.name, parsed[1], d.fired_ms))

    async def _advance_deferred(self, task: Periodic[Any, Any], d: Delivery) -> None:
        deferred = self.deferred.pop(d.entry_id, None)
        if deferred is not None:
            await self.advance(task, deferred, await self.engine.run(self.engine.server_time_ms()))

    async def refresh_locks(self) -> None:
        for lock, token in list(self.held_locks.items()):
            await self.engine.run(self.engine.renew(lock, token, self.lock_ttl_ms))

    async def keep_armed(self) -> None:
        """Every sweep: re-arm a schedule whose pending tick was cancelled or lost."""
        for task in self.periodics.values():
            await self.register(task, replace=False)
