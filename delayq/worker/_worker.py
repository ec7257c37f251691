"""The worker process: fires timers on time and runs their jobs.

Background work runs as named loops (see ``_loops``): deadlines, hints (notifications),
listener, consumer, reclaimer, heartbeat, acknowledgements and sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from delayq._app import Delayq
from delayq._cluster import AsyncClusterRunner, async_runner
from delayq._connection import redact_url
from delayq._defaults import find_task
from delayq._errors import ConfigurationError
from delayq._runners import AsyncRunner
from delayq._task import Task
from delayq.worker._checks import ensure_notifications, hint_source, warn_on_eviction
from delayq.worker._engine import DeadLetterBound, Engine
from delayq.worker._executor import Counters, Executor
from delayq.worker._firing import Firing
from delayq.worker._listener import Listener
from delayq.worker._loops import every, guarded, wait_any
from delayq.worker._periodics import PeriodicRunner
from delayq.worker._settings import WorkerSettings
from delayq.worker._sweeper import SweepCounters, Sweeper
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
        self._firing: Firing | None = None
        self._executor: Executor | None = None
        self._sweeper: Sweeper | None = None
        self._watching: Watching | None = None
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
        return self._executor.counters if self._executor else Counters()

    @property
    def sweep_counters(self) -> SweepCounters:
        return self._sweeper.counters if self._sweeper else SweepCounters()

    @property
    def fired(self) -> int:
        return self._firing.fired if self._firing else 0

    @property
    def leads_watched_keys(self) -> bool:
        """Whether this worker is the watch leader now (applies watched keys' events)."""
        return self._watching is not None and self._watching.leading

    def find_task(self, name: str) -> Task[Any, Any] | None:
        return find_task(self.app, name)

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
        if app.watchers and isinstance(io, AsyncClusterRunner):
            raise ConfigurationError(
                "on_expire watchers do not run on a Redis Cluster yet: watched keys live on "
                f"every node ({', '.join(sorted(app.watchers))}); use one server for them"
            )
        engine = Engine(io, app.keys, self.name)
        flags = await ensure_notifications(
            io, app.keys, configure=settings.configure_server, keyspace=bool(app.watchers)
        )
        hints = hint_source(flags, app.keys, io.db)
        if hints.pattern is None:
            log.info("expiry hints from %s (%s); timers fire from the due index as always",
                     hints.channel or "nowhere", hints.why)  # fmt: skip
        await warn_on_eviction(io)
        await engine.run(engine.ensure_group())
        watching = self._watching = Watching(
            app, engine, listen, db=io.db, batch=settings.fire_batch,
            lease_s=settings.watch_lease, stopping=stopping,
        )  # fmt: skip
        firing = self._firing = Firing(engine, batch=settings.fire_batch, stopping=stopping)
        periodics = PeriodicRunner(
            app, engine, lock_ttl_ms=round(settings.visibility_timeout * 2000)
        )
        await periodics.register_all()
        executor = self._executor = Executor(
            engine, settings, self.find_task,
            max_payload_bytes=app.max_payload_bytes,
            dead_letters=DeadLetterBound(app.dead_letter_maxlen, app.dead_letter_max_bytes),
            stopping=stopping,
            gates=periodics,
        )  # fmt: skip
        sweeper = self._sweeper = Sweeper(
            engine, firing, orphan_scan_interval=settings.orphan_scan_interval,
            scan_watched=watching.request_scan if watching.active else None,
            each_sweep=periodics.keep_armed if periodics.periodics else None,
        )  # fmt: skip
        listener = Listener(
            listen, app.keys, hints,
            on_expired=firing.hint,
            on_wake=firing.wake.set,
            on_connect=functools.partial(self._after_connect, sweeper, firing),
            stopping=stopping,
        )  # fmt: skip
        intake: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("deadline loop", firing.run_deadlines),
            ("notification hints", firing.run_hints),
            ("notification listener", listener.run),
            ("consumer", executor.consume),
        ]
        if watching.active:
            intake.append(("watched keys", watching.run))
        tasks = [asyncio.create_task(guarded(n, body, stopping), name=n) for n, body in intake]
        tasks += [
            asyncio.create_task(
                every("sweeper", settings.sweep_interval, sweeper.sweep, stopping,
                      kick=sweeper.kick), name="sweeper"),
            asyncio.create_task(
                every("reclaimer", max(0.2, settings.visibility_timeout / 4),
                      executor.reclaim, stopping), name="reclaimer"),
        ]  # fmt: skip
        upkeep = [
            asyncio.create_task(guarded("acknowledgements", executor.run_acks, stopping)),
            asyncio.create_task(self._heartbeats(executor, periodics)),
        ]
        # Nudges published before the subscription is active would be lost: wait for it.
        await wait_any([listener.subscribed, stopping], 10)
        log.info(
            "worker %s ready: %s namespace=%s concurrency=%d tasks=%s",
            self.name, redact_url(app.url), app.namespace, settings.concurrency,
            ", ".join(app.tasks.names()) or "(shared only)",
        )  # fmt: skip
        # Objects alive now (imports, the app) live as long as the worker: keep them out of the
        # collector, whose full passes would otherwise stall the loop for tens of ms.
        gc.freeze()
        self.ready.set()
        await stopping.wait()
        await self._shutdown(tasks, upkeep, executor)

    @staticmethod
    def _after_connect(sweeper: Sweeper, firing: Firing) -> None:
        # Events and nudges published while the listener was away are lost: sweep, and let
        # the deadline loop re-read the earliest deadline.
        sweeper.request(full=True)
        firing.wake.set()

    async def _heartbeats(self, executor: Executor, periodics: PeriodicRunner) -> None:
        # Runs until the very end of shutdown, so jobs finishing during drain stay ours.
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            try:
                await executor.heartbeat()
                await periodics.refresh_locks()
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)

    async def _shutdown(
        self, tasks: list[asyncio.Task[None]], upkeep: list[asyncio.Task[None]], executor: Executor
    ) -> None:
        # The consumer returns within its read block; the others hold no work and may go now.
        for task in tasks:
            if task.get_name() != "consumer":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await executor.drain(self.settings.shutdown_timeout)
        for task in upkeep:
            task.cancel()
        await asyncio.gather(*upkeep, return_exceptions=True)
        with contextlib.suppress(Exception):
            await executor.flush_acks()
        self.abandoned_threads = executor.shutdown_pool()
        c = executor.counters
        log.info("worker %s stopped: executed=%d retried=%d dead=%d handed_back=%d",
                 self.name, c.executed, c.retried, c.dead, c.handed_back)  # fmt: skip
