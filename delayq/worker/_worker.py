"""The worker process: fires timers on time and runs their jobs.

Background work runs as named loops (see ``_loops``): deadlines, hints (notifications),
listener, consumer, reclaimer, heartbeat, acknowledgements and sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import threading
from typing import Any, TypeVar

from delayq._app import Delayq
from delayq._cluster import async_runner
from delayq._connection import redact_url
from delayq._defaults import SHARED_TASKS, find_task
from delayq._route import DEFAULT_QUEUE
from delayq._runners import AsyncRunner
from delayq._task import Task
from delayq.worker._capacity import Capacity, Counters
from delayq.worker._checks import ensure_notifications, hint_source, warn_on_eviction
from delayq.worker._engine import Engine
from delayq.worker._limiter import Limiter
from delayq.worker._loops import guarded, wait_any
from delayq.worker._settings import WorkerSettings
from delayq.worker._shard import Context, Shard, build_shard
from delayq.worker._sweeper import SweepCounters
from delayq.worker._watching import Watching

log = logging.getLogger("delayq.worker")


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs one app's timers and jobs. Constructing it does no I/O; ``run()`` does."""

    def __init__(self, app: Delayq, settings: WorkerSettings | None = None) -> None:
        self.app = app
        self.settings = settings or WorkerSettings()
        self.name = consumer_name()
        self.ready = threading.Event()  # set once the worker takes work
        self.stopped = threading.Event()
        self.abandoned_threads = False  # a sync handler still ran when the worker stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._shards: list[Shard] = []
        self._watching: Watching | None = None
        self._limiter: Limiter | None = None
        self._stop_requested = False

    # -- control ------------------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until stopped (SIGTERM/SIGINT, or ``stop()`` from another thread)."""
        asyncio.run(self.arun(install_signal_handlers=install_signal_handlers))

    def stop(self) -> None:
        """Ask the worker to stop: safe from any thread, and before ``run`` has started."""
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)

    @property
    def counters(self) -> Counters:
        return _summed(Counters, [s.executor.counters for s in self._shards])

    @property
    def sweep_counters(self) -> SweepCounters:
        return _summed(SweepCounters, [s.sweeper.counters for s in self._shards])

    @property
    def fired(self) -> int:
        return sum(s.firing.fired for s in self._shards)

    @property
    def leads_watched_keys(self) -> bool:
        """Whether this worker is the watch leader now (applies watched keys' events)."""
        return self._watching is not None and self._watching.leading

    def find_task(self, name: str) -> Task[Any, Any] | None:
        return find_task(self.app, name)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this worker takes jobs from: its settings', or else every queue its
        app's tasks name, and the default queue."""
        if self.settings.queues is not None:
            return self.settings.queues
        named = (t.options.route.queue for t in (*self.app.tasks, *SHARED_TASKS))
        return tuple(dict.fromkeys((DEFAULT_QUEUE, *named)))

    # -- main ---------------------------------------------------------------------------------

    async def arun(self, *, install_signal_handlers: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = stopping = asyncio.Event()
        if self._stop_requested:
            stopping.set()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            io = await async_runner(self.app.url, self.app.redis_options)
            try:
                # The listener's connection must not reconnect silently: a reconnect means a
                # sweep.
                listen = await async_runner(self.app.url, self.app.redis_options, retry=False)
                try:
                    await self._serve(io, listen, stopping)
                finally:
                    await listen.close()
            finally:
                await io.close()
        finally:
            self.stopped.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: finishing running jobs, taking no new work", sig.name)
        self.stop()

    async def _serve(self, io: AsyncRunner, listen: AsyncRunner, stopping: asyncio.Event) -> None:
        settings, app = self.settings, self.app
        layout = await io.run(app.store.layout())
        first = layout.shards[0]
        flags = await ensure_notifications(
            io, first, configure=settings.configure_server, keyspace=bool(app.watchers)
        )
        hints = hint_source(flags, first, io.db)
        if hints.pattern is None:
            log.info("expiry hints from %s (%s); timers fire from the due index as always",
                     hints.channel or "nowhere", hints.why)  # fmt: skip
        await warn_on_eviction(io)
        # Without a limited task, deliveries are not even looked at for limits.
        limited = any(t.options.limits is not None for t in (*app.tasks, *SHARED_TASKS))
        lease_ms = round(settings.visibility_timeout * 1000)
        limiter = self._limiter = Limiter(io, layout, lease_ms=lease_ms) if limited else None
        ctx = Context(app, settings, io, listen, layout, flags,
                      Capacity(settings.concurrency, readers=layout.count), stopping,
                      self.find_task, limiter)  # fmt: skip
        queues = self.queues
        engines = [Engine(io, keys, self.name, app.event_settings, queues)
                   for keys in layout.shards]  # fmt: skip
        watching = self._watching = Watching(
            app, engines[0], listen, db=io.db, batch=settings.fire_batch,
            lease_s=settings.watch_lease, stopping=stopping,
        )  # fmt: skip
        scan = watching.request_scan if watching.active else None
        shards = self._shards = [
            await build_shard(ctx, k, engine, scan_watched=scan if k == 0 else None)
            for k, engine in enumerate(engines)
        ]
        tasks, upkeep = self._start(shards, watching, stopping)
        # Nudges published before the subscriptions are active would be lost: wait for them.
        for shard in shards:
            await wait_any([shard.listener.subscribed, stopping], 10)
        log.info(
            "worker %s ready: %s namespace=%s shards=%d concurrency=%d queues=%s tasks=%s",
            self.name, redact_url(app.url), app.namespace, layout.count, settings.concurrency,
            ",".join(queues),
            ", ".join(app.tasks.names()) or "(shared only)",
        )  # fmt: skip
        # Objects alive now (imports, the app) live as long as the worker: keep them out of the
        # collector, whose full passes would otherwise stall the loop for tens of ms.
        gc.freeze()
        self.ready.set()
        await stopping.wait()
        await self._shutdown(tasks, upkeep, shards, ctx.capacity)

    def _start(
        self, shards: list[Shard], watching: Watching, stopping: asyncio.Event
    ) -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
        """The worker's loops: each shard's, named with its number when there are several."""
        tasks: list[asyncio.Task[None]] = []
        upkeep = [asyncio.create_task(self._heartbeats(shards))]
        if self._limiter is not None:  # sends what limited jobs ask until the very end
            sending = guarded("limits", self._limiter.run, asyncio.Event())
            upkeep.append(asyncio.create_task(sending))
        for shard in shards:
            suffix = f" {shard.index}" if len(shards) > 1 else ""
            intake = shard.intake(suffix)
            if shard.index == 0 and watching.active:
                intake.append(("watched keys", watching.run))
            tasks += [asyncio.create_task(guarded(n, body, stopping), name=n)
                      for n, body in intake]  # fmt: skip
            tasks += shard.timed(self.settings, stopping, suffix)
            upkeep.append(shard.acks(stopping, suffix))
        return tasks, upkeep

    async def _heartbeats(self, shards: list[Shard]) -> None:
        # Runs until the very end of shutdown, so jobs finishing during drain stay ours.
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            for shard in shards:
                try:
                    await shard.executor.heartbeat()
                    await shard.periodics.refresh_locks()
                except Exception as exc:
                    log.warning("heartbeat failed: %r", exc)
            if self._limiter is not None:
                try:
                    await self._limiter.renew()
                except Exception as exc:
                    log.warning("renewing concurrency slots failed: %r", exc)

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], upkeep: list[asyncio.Task[None]],
        shards: list[Shard], capacity: Capacity,
    ) -> None:  # fmt: skip
        # The consumers return within their read block; the others hold no work and may go.
        for task in tasks:
            if not task.get_name().startswith("consumer"):
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.executor.drain(self.settings.shutdown_timeout) for s in shards))
        for task in upkeep:
            task.cancel()
        await asyncio.gather(*upkeep, return_exceptions=True)
        for shard in shards:
            with contextlib.suppress(Exception):
                await shard.executor.flush_acks()
        if self._limiter is not None:  # slots of the jobs that ended while draining
            with contextlib.suppress(Exception):
                await self._limiter.flush()
        self.abandoned_threads = capacity.lanes.shutdown()
        c = self.counters
        log.info("worker %s stopped: executed=%d retried=%d dead=%d handed_back=%d",
                 self.name, c.executed, c.retried, c.dead, c.handed_back)  # fmt: skip


C = TypeVar("C", Counters, SweepCounters)


def _summed(kind: type[C], parts: list[C]) -> C:
    """The shards' counters added up."""
    total = kind()
    for part in parts:
        for field in dataclasses.fields(part):
            setattr(total, field.name, getattr(total, field.name) + getattr(part, field.name))
    return total
