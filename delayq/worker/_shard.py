"""What a worker runs for one shard of its namespace: the shard's firing, consumer, sweeper,
listener and periodic tasks, over the shard's keys. A worker serves every shard; its job
slots and handler threads (``Capacity``) are shared by the shards' consumers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from delayq._app import Delayq
from delayq._layout import Layout
from delayq._runners import AsyncRunner
from delayq._task import Task
from delayq.worker._capacity import Capacity
from delayq.worker._checks import hint_source
from delayq.worker._engine import DeadLetterBound, Engine
from delayq.worker._executor import Executor
from delayq.worker._firing import Firing
from delayq.worker._limiter import Limiter
from delayq.worker._listener import Listener
from delayq.worker._loops import every, guarded
from delayq.worker._periodics import PeriodicRunner
from delayq.worker._settings import WorkerSettings
from delayq.worker._sweeper import Sweeper

Loop = tuple[str, Callable[[], Awaitable[None]]]


@dataclass(frozen=True)
class Context:
    """What every shard of one worker shares."""

    app: Delayq
    settings: WorkerSettings
    io: AsyncRunner
    listen: AsyncRunner
    layout: Layout
    flags: str | None
    capacity: Capacity
    stopping: asyncio.Event
    find_task: Callable[[str], Task[Any, Any] | None]
    limiter: Limiter | None


@dataclass
class Shard:
    index: int
    engine: Engine
    firing: Firing
    periodics: PeriodicRunner
    executor: Executor
    sweeper: Sweeper
    listener: Listener

    def intake(self, suffix: str) -> list[Loop]:
        """The loops that take work in: stopped first at shutdown (the consumer excepted)."""
        return [
            ("deadline loop" + suffix, self.firing.run_deadlines),
            ("notification hints" + suffix, self.firing.run_hints),
            ("notification listener" + suffix, self.listener.run),
            ("consumer" + suffix, self.executor.consume),
        ]

    def timed(self, settings: WorkerSettings, stopping: asyncio.Event,
              suffix: str) -> list[asyncio.Task[None]]:  # fmt: skip
        sweep = every("sweeper" + suffix, settings.sweep_interval, self.sweeper.sweep, stopping,
                      kick=self.sweeper.kick)  # fmt: skip
        reclaim = every("reclaimer" + suffix, max(0.2, settings.visibility_timeout / 4),
                        self.executor.reclaim, stopping)  # fmt: skip
        return [asyncio.create_task(sweep, name="sweeper" + suffix),
                asyncio.create_task(reclaim, name="reclaimer" + suffix)]  # fmt: skip

    def acks(self, stopping: asyncio.Event, suffix: str) -> asyncio.Task[None]:
        return asyncio.create_task(guarded("acknowledgements" + suffix, self.executor.run_acks,
                                           stopping))  # fmt: skip


async def build_shard(
    ctx: Context, index: int, engine: Engine, *,
    scan_watched: Callable[[], Awaitable[None]] | None = None,
) -> Shard:  # fmt: skip
    app, settings, keys, count = ctx.app, ctx.settings, engine.keys, ctx.layout.count
    hints = hint_source(ctx.flags, keys, ctx.io.db)
    await engine.run(engine.ensure_group())
    firing = Firing(engine, batch=settings.fire_batch, stopping=ctx.stopping)
    mine = {n: t for n, t in app.periodics.items()
            if ctx.layout.shard_of(keys.tick_id(n, 0)) == index}  # fmt: skip
    periodics = PeriodicRunner(app, engine, lock_ttl_ms=round(settings.visibility_timeout * 2000),
                               periodics=mine)  # fmt: skip
    await periodics.register_all()
    # The bounds are the namespace's: each shard's dead letters get their share.
    bound = DeadLetterBound(max(1, app.dead_letter_maxlen // count),
                            max(1, app.dead_letter_max_bytes // count))  # fmt: skip
    executor = Executor(
        engine, settings, ctx.find_task, max_payload_bytes=app.max_payload_bytes,
        dead_letters=bound, stopping=ctx.stopping, gates=periodics, capacity=ctx.capacity,
        result_ttl=app.result_ttl, limiter=ctx.limiter,
    )  # fmt: skip
    sweeper = Sweeper(
        engine, firing, orphan_scan_interval=settings.orphan_scan_interval,
        scan_watched=scan_watched,
        each_sweep=periodics.keep_armed if periodics.periodics else None,
    )  # fmt: skip
    listener = Listener(
        ctx.listen, keys, hints, on_expired=firing.hint, on_wake=firing.wake.set,
        on_connect=functools.partial(_after_connect, sweeper, firing), stopping=ctx.stopping,
    )  # fmt: skip
    return Shard(index, engine, firing, periodics, executor, sweeper, listener)


def _after_connect(sweeper: Sweeper, firing: Firing) -> None:
    # Events and nudges published while the listener was away are lost: sweep, and let the
    # deadline loop re-read the earliest deadline.
    sweeper.request(full=True)
    firing.wake.set()
