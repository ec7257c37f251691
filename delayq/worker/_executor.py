"""Running fired jobs: read from the stream, run, then acknowledge, retry or bury.

Coroutine functions run on the worker's event loop; plain functions run on ``concurrency``
threads (``_lanes``), so a blocking handler never stalls the loop that fires timers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from delayq._calls import Batch, Call
from delayq._codec import Payload, decode_payload, encode_result, reencode
from delayq._context import JobContext
from delayq._errors import PayloadError
from delayq._hooks import Delivery, RunGates
from delayq._outcomes import DEFAULT_RESULT_TTL, Failure, Ran, keep_ms
from delayq._task import Task
from delayq.worker._admission import Admission
from delayq.worker._callbacks import Then, on_failure, on_success, routes
from delayq.worker._calling import call_handler, job_context
from delayq.worker._capacity import Capacity, Counters, Running
from delayq.worker._engine import DeadLetterBound, Done, Engine
from delayq.worker._limiter import Ask, Limiter
from delayq.worker._loops import wait_any
from delayq.worker._progress import ProgressBox
from delayq.worker._settings import WorkerSettings

log = logging.getLogger("delayq.worker")
ACK_CHUNK = 500
QUEUE_RETRY_S = 1.0
# How long a job runs before its "running" state is sent on its own (see _run).
RUNNING_AFTER_S = 0.05
# Deliveries are read ahead of free slots (up to ``concurrency`` more) only while recent jobs
# took less than this: a freed slot then starts the next job without waiting for a read,
# and what waits in the buffer waits no longer than about one such job. Slow jobs get no
# read-ahead, so that other workers can take what this one could not start.
READ_AHEAD_MAX_JOB_S = 0.05
JOB_TIME_WEIGHT = 0.2  # of the newest job in the moving average of job durations
# Read-ahead deliveries go back to the stream, for other workers, when no slot came free for
# this long: short jobs on average, but slow ones in every slot now.
READ_AHEAD_HOLD_S = 1.0


class Executor:
    def __init__(
        self,
        engine: Engine,
        settings: WorkerSettings,
        find_task: Callable[[str], Task[Any, Any] | None],
        *,
        max_payload_bytes: int,
        dead_letters: DeadLetterBound,
        stopping: asyncio.Event,
        gates: RunGates | None = None,
        capacity: Capacity | None = None,
        result_ttl: float = DEFAULT_RESULT_TTL,
        limiter: Limiter | None = None,
    ) -> None:
        self.capacity = capacity or Capacity(settings.concurrency)
        self.capacity.executors.append(self)
        self.gates = gates
        self.engine = engine
        self.settings = settings
        self.find_task = find_task
        self._route_of = routes(find_task)  # a callback task's queue and level
        self.max_payload_bytes = max_payload_bytes
        self.dead_letters = dead_letters
        self.stopping = stopping
        self.lanes = self.capacity.lanes
        self.running: dict[str, Running] = {}
        # Read ahead, not started yet: this worker's (heart-beaten, handed back on stopping).
        self.buffered: collections.deque[Delivery] = collections.deque()
        self.job_seconds = math.inf  # moving average of job durations; none measured yet
        self.result_ttl = result_ttl  # the app's: a task's own result_ttl comes first
        self.to_ack: list[Done] = []
        # Jobs started, their "running" not yet recorded: sent with the next acknowledgements.
        self.to_start: list[tuple[Delivery, Ran]] = []
        # Running jobs whose outcome is recorded or being recorded: the server may drop their
        # entries any moment, which the heartbeat must not mistake for a takeover.
        self.settled: set[str] = set()
        self.ack_ready = asyncio.Event()
        self.start_ready = asyncio.Event()  # starts or progress to send (after RUNNING_AFTER_S)
        self.told = ProgressBox(self.start_ready)
        self.counters = Counters()
        self.abandoned_threads = 0
        self.screening = 0  # deliveries read and being screened (_admission)
        self.screenings: set[asyncio.Task[None]] = set()
        # Screened jobs waiting in this worker for a rate token due within KEEP_MS.
        self.kept: dict[str, tuple[Delivery, asyncio.TimerHandle]] = {}
        self.admission = Admission(
            engine, limiter, find_task, max_payload_bytes=max_payload_bytes,
            settled=self.settled, counters=self.counters, bury=self._bury_unkeyed,
        )  # fmt: skip

    @property
    def free_slots(self) -> int:
        return self.capacity.free

    def _wanted(self) -> int:
        """How many deliveries to read now: this shard's share of the free slots, and of
        the read-ahead's room."""
        readers = self.capacity.readers
        share = -(-max(0, self.free_slots) // readers)
        # Throttled jobs lately: read ahead to screen the ones behind them (_admission).
        ahead = self.job_seconds <= READ_AHEAD_MAX_JOB_S or self.admission.screening
        room = self.capacity.size // readers if ahead else 0
        return share + room - len(self.buffered) - self.screening

    # -- intake -------------------------------------------------------------------------------

    async def consume(self) -> None:
        while not self.stopping.is_set():
            wanted = self._wanted()
            if wanted <= 0:
                self.capacity.freed.clear()
                await wait_any([self.capacity.freed, self.stopping], READ_AHEAD_HOLD_S / 2)
                stalled = time.monotonic() - self.capacity.freed_at > READ_AHEAD_HOLD_S
                if self.buffered and stalled:
                    self._hand_back_buffered()
                continue
            deliveries = await self.engine.run(self.engine.read(wanted, block_ms=500))
            asks = self.admission.asks(deliveries)
            if asks:  # screened meanwhile: the next read need not wait for it
                self.screening += len(deliveries)
                job = asyncio.create_task(self._screen(deliveries, asks))
                self.screenings.add(job)
                job.add_done_callback(self.screenings.discard)
                continue
            self._buffer(deliveries)
            self._start_buffered()

    def _buffer(self, deliveries: list[Delivery]) -> None:
        """Read-ahead waits highest priority first (stable: FIFO within a level)."""
        self.buffered.extend(deliveries)
        if deliveries and any(d.priority != self.buffered[0].priority for d in self.buffered):
            self.buffered = collections.deque(sorted(self.buffered, key=lambda d: -d.priority))

    def _keep(self, d: Delivery, delay_ms: int) -> None:
        """A screened job whose rate token comes in ``delay_ms``: it starts then (first)."""
        handle = asyncio.get_running_loop().call_later(delay_ms / 1000, self._kept_due, d)
        self.kept[d.entry_id] = (d, handle)

    def _kept_due(self, d: Delivery) -> None:
        if self.kept.pop(d.entry_id, None) is not None:
            self.buffered.appendleft(d)
            self._start_buffered()

    async def _screen(self, deliveries: list[Delivery], asks: list[Ask]) -> None:
        try:
            passed = await self.admission.screen(deliveries, asks, self._keep)
        except Exception as exc:  # each is admitted again before it runs
            log.warning("screening %d job(s) of limited tasks failed: %r", len(asks), exc)
            passed = deliveries
        finally:
            self.screening -= len(deliveries)
        self._buffer(passed)
        self._start_buffered()
        self.capacity.freed.set()  # the consumer may read again

    def _start_buffered(self) -> None:
        while self.buffered and (self.free_slots > 0 or self.stopping.is_set()):
            self.admit([self.buffered.popleft()])

    def _hand_back_buffered(self) -> None:
        log.info("handing back %d read-ahead job(s): every slot is busy with a slow job",
                 len(self.buffered))  # fmt: skip
        self.job_seconds = max(self.job_seconds, READ_AHEAD_HOLD_S)  # no read-ahead for now
        while self.buffered:
            d = self.buffered.popleft()
            self.admit_outcome(d, self._hand_back(d))

    async def reclaim(self) -> None:
        """Take over jobs of workers that stopped heart-beating."""
        if self.free_slots <= 0 or self.stopping.is_set():
            return
        min_idle = int(self.settings.visibility_timeout * 1000)
        deliveries = await self.engine.run(self.engine.reclaim(min_idle, self.free_slots))
        if not deliveries:
            return
        self.counters.reclaimed += len(deliveries)
        log.warning("took over %d job(s) from workers that stopped", len(deliveries))
        counts = await self.engine.run(
            self.engine.deliveries_of([(d.stream, d.entry_id) for d in deliveries])
        )
        limit = self.settings.max_deliveries
        for d, count in zip(deliveries, counts, strict=True):
            if count > limit:
                # A job that takes its worker down every time must not do so forever.
                reason = f"delivered {count} times and never finished: its worker died each time"
                if d.entry_id not in self.running:
                    self.admit_outcome(d, self._bury(d, "", reason, ""))
        self.admit([d for d, count in zip(deliveries, counts, strict=True) if count <= limit])

    def admit(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.entry_id in self.running:
                continue
            # Read just as the worker began stopping: give it straight back.
            outcome = self._hand_back(d) if self.stopping.is_set() else self._run_one(d)
            self.admit_outcome(d, outcome)

    def admit_outcome(self, d: Delivery, outcome: Coroutine[Any, Any, None]) -> None:
        """Run what becomes of a delivery as a tracked job that holds a slot until done."""
        job = asyncio.create_task(outcome)
        self.running[d.entry_id] = Running(d, job)
        job.add_done_callback(functools.partial(self._finished, d.entry_id))

    def _finished(self, entry_id: str, _job: asyncio.Task[None]) -> None:
        self.running.pop(entry_id, None)
        self.settled.discard(entry_id)
        self.capacity.slot_freed()

    # -- one job ------------------------------------------------------------------------------

    def _took(self, seconds: float) -> None:
        if math.isinf(self.job_seconds):
            self.job_seconds = seconds
        else:
            self.job_seconds += JOB_TIME_WEIGHT * (seconds - self.job_seconds)

    async def _run_one(self, d: Delivery) -> None:
        started = time.monotonic()
        try:
            await self.process(d)
            self._took(time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The outcome could not be recorded (e.g. the server went away); the job stays
            # pending and is delivered again after the visibility timeout.
            log.error("job %s: could not record its outcome: %r", d.timer_id, exc)

    async def process(self, d: Delivery) -> None:
        screened = self.admission.take(d)
        if screened is not None:  # decoded and admitted as it was read
            task, payload, args, holder = (screened.task, screened.payload, screened.args,
                                           screened.holder)  # fmt: skip
        else:
            prepared = await self._prepare(d)
            if prepared is None:
                return
            task, payload, args = prepared
            admitted, holder = await self.admission.admit(d, task, payload, args)
            if not admitted:
                return
        try:
            await self._gated(d, task, payload, args)
        finally:
            self.admission.release(holder)

    async def _prepare(self, d: Delivery) -> tuple[Task[Any, Any], Payload, tuple[Any, ...]] | None:
        """The delivery's task, payload and handler arguments; None once it is buried."""
        try:
            payload = decode_payload(d.raw, max_bytes=self.max_payload_bytes)
        except PayloadError as exc:
            await self._bury(d, "", f"undecodable payload: {exc}", "")
            return None
        task = self.find_task(payload.task)
        if task is None:
            await self._bury(d, payload.task, f"unknown task {payload.task!r}", "",
                             decoded=payload)  # fmt: skip
            return None
        try:
            args = task.job_args(payload, d, self.max_payload_bytes)
        except PayloadError as exc:
            await self._bury(d, task.name, str(exc), "", decoded=payload)
            return None
        return task, payload, args

    async def _gated(
        self, d: Delivery, task: Task[Any, Any], payload: Payload, args: tuple[Any, ...]
    ) -> None:
        gate = task.run_gate(self.gates) if self.gates is not None else None
        if gate is None:
            await self._run(d, task, payload, args)
            return
        decision = await gate.before_run(d, payload.attempt)
        if decision == "skip":
            self._queue_ack(d, Ran(0, payload.attempt))  # no run: no outcome kept
            return
        if decision == "requeued":
            # overlap="queue": try this tick again shortly, once the previous run is done.
            self.settled.add(d.entry_id)
            await self.engine.run(self.engine.retry(d, d.raw, QUEUE_RETRY_S))
            return
        try:
            await self._run(d, task, payload, args)
        finally:
            await gate.after_run(d)

    async def _run(
        self, d: Delivery, task: Task[Any, Any], payload: Payload, args: tuple[Any, ...]
    ) -> None:
        started = Ran(int(time.time() * 1000), payload.attempt + 1, task=task.name)
        self.to_start.append((d, started))
        self.start_ready.set()
        try:
            job = job_context(d, task, payload,
                               self.told.reporter(d, started.attempts, task.name))  # fmt: skip
            value = await self._call(task, args, payload.kwargs, job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # SystemExit from a handler is its failure, not ours
            await self._failed(d, task, payload, exc, args, started.started_ms)
            return
        forget = task.after_success(args)
        if forget is not None:
            await self.engine.run(self.engine.forget(*forget))
        self.counters.executed += 1
        then = on_success(d, payload, value, started.attempts, self.max_payload_bytes,
                          self._route_of)  # fmt: skip
        self._queue_ack(d, self._succeeded(d, task, started, value), then)

    def _keep_ms(self, task: Task[Any, Any] | None) -> int:
        own = task.options.result_ttl if task is not None else None
        return keep_ms(self.result_ttl if own is None else own)

    def _succeeded(self, d: Delivery, task: Task[Any, Any], started: Ran, value: Any) -> Ran:
        keep = self._keep_ms(task)
        result = None
        if keep:
            try:
                result = encode_result(value, max_bytes=self.max_payload_bytes)
            except PayloadError as exc:
                log.warning("job %s (%s): its result is not kept: %s", d.timer_id, task.name,
                            exc)  # fmt: skip
        return Ran(started.started_ms, started.attempts, keep, result, task.name)

    def _queue_ack(self, d: Delivery, ran: Ran, then: Then | None = None) -> None:
        self.settled.add(d.entry_id)
        self.to_ack.append(Done(d, ran, then))
        self.ack_ready.set()

    async def _call(
        self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], job: JobContext
    ) -> Any:
        return await call_handler(task, args, kwargs, job, self.lanes, self._abandoned)

    def _abandoned(self) -> None:
        self.abandoned_threads += 1

    async def _failed(
        self,
        d: Delivery,
        task: Task[Any, Any],
        payload: Payload,
        exc: BaseException,
        args: tuple[Any, ...] = (),
        started_ms: int | None = None,
    ) -> None:
        self.counters.failed += 1
        policy = task.options.retry
        failure = Failure(type(exc).__name__, str(exc), payload.attempt + 1, started_ms,
                          self._keep_ms(task))  # fmt: skip
        if policy.should_retry(exc, payload.attempt):
            delay = policy.delay_for(payload.attempt)
            payload, retry_id = task.retry_as(payload, args, d)
            try:
                again = reencode(payload, attempt=payload.attempt + 1,
                                 max_bytes=self.max_payload_bytes)  # fmt: skip
            except PayloadError as perr:
                await self._bury(d, task.name, f"cannot re-encode for retry: {perr}", "")
                return
            log.info("job %s (%s) failed: %r; retry %d/%d in %.2fs", d.timer_id, task.name,
                     exc, payload.attempt + 1, policy.retries, delay)  # fmt: skip
            self.counters.retried += 1
            self.settled.add(d.entry_id)
            await self.engine.run(self.engine.retry(d, again, delay, timer_id=retry_id,
                                                    failure=failure, task=task.name))  # fmt: skip
            return
        tb = "".join(traceback.format_exception(exc))
        why = "not retried" if payload.attempt < policy.retries else "retries exhausted"
        reason = f"{type(exc).__name__}: {exc} ({why} after {payload.attempt + 1} attempt(s))"
        kept = task.dead_payload(payload, args)
        buried = None
        if kept is not None:
            with contextlib.suppress(PayloadError):
                buried = reencode(kept, attempt=kept.attempt, max_bytes=self.max_payload_bytes)
        await self._bury(d, task.name, reason, tb, payload=buried, failure=failure,
                         decoded=payload)  # fmt: skip

    async def _bury_unkeyed(self, d: Delivery, task: Task[Any, Any], payload: Payload,
                            reason: str) -> None:  # fmt: skip
        await self._bury(d, task.name, reason, "", decoded=payload)

    async def _bury(
        self, d: Delivery, task: str, reason: str, tb: str, *, payload: bytes | None = None,
        failure: Failure | None = None, decoded: Payload | None = None,
    ) -> None:  # fmt: skip
        log.error("job %s moved to dead letters: %s", d.timer_id, reason)
        self.settled.add(d.entry_id)
        self.counters.dead += 1
        if failure is None:  # no handler ran: the reason is the error
            failure = Failure("", reason, 0, keep_ms=self._keep_ms(self.find_task(task)))
        if decoded is None:  # a job that never ran (killed its workers): its callback still runs
            with contextlib.suppress(PayloadError):
                decoded = decode_payload(d.raw, max_bytes=self.max_payload_bytes)
        then = on_failure(d, decoded, attempts=failure.attempts,
                          error_type=failure.type_name, error=failure.message, traceback=tb,
                          max_bytes=self.max_payload_bytes, route_of=self._route_of)  # fmt: skip
        bury = self.engine.bury(d, task=task, reason=reason, traceback=tb,
                                bound=self.dead_letters, failure=failure, payload=payload,
                                then=then)  # fmt: skip
        await self.engine.run(bury)

    async def _hand_back(self, d: Delivery) -> None:
        self.settled.add(d.entry_id)
        self.admission.drop(d)
        if await self.engine.run(self.engine.handback(d)):
            self.counters.handed_back += 1

    # -- upkeep -------------------------------------------------------------------------------

    async def flush_acks(self) -> None:
        # A job that ended before its start went out needs no start: its end tells it. The
        # others' starts, then their progress, go before any end, in the same round trip as
        # the first acks.
        starts = [(d, ran) for d, ran in self.to_start if d.entry_id not in self.settled]
        self.to_start = []
        told = self.told.take(self.settled)
        while starts or told:
            part, starts = starts[:ACK_CHUNK], starts[ACK_CHUNK:]
            some, told = told[:ACK_CHUNK], told[ACK_CHUNK:]
            batch, self.to_ack = self.to_ack[:ACK_CHUNK], self.to_ack[ACK_CHUNK:]
            calls: list[Call[Any]] = [self.engine.started(part)] if part else []
            calls += [self.engine.progress(some)] if some else []
            calls += self.engine.ack_calls(batch)
            try:
                await self.engine.run(Batch(calls))
            except Exception:
                self.to_start[:0] = part + starts  # kept; started.lua never undoes an end
                self.told.put_back(some + told)
                self.to_ack[:0] = batch
                raise
        while self.to_ack:
            batch, self.to_ack = self.to_ack[:ACK_CHUNK], self.to_ack[ACK_CHUNK:]
            try:
                await self.engine.run(self.engine.ack(batch))
            except Exception:
                self.to_ack[:0] = batch  # keep them; acknowledging twice is harmless
                raise

    async def run_acks(self) -> None:
        while not self.stopping.is_set() or self.to_ack:
            if not self.to_ack:  # acknowledgements kept after a failed flush go out first
                await wait_any([self.ack_ready, self.start_ready, self.stopping], None)
                if not self.to_ack and not self.stopping.is_set():
                    # Woken by starts alone: they go with the next acknowledgements, or after
                    # RUNNING_AFTER_S; a job ending before needs no start (its end tells it).
                    await wait_any([self.ack_ready, self.stopping], RUNNING_AFTER_S)
            self.ack_ready.clear()
            self.start_ready.clear()
            await self.flush_acks()
            if self.stopping.is_set() and not self.running:
                return

    async def heartbeat(self) -> None:
        # Jobs done but not yet acknowledged (the server was away) stay ours too.
        entries = [r.delivery for e, r in self.running.items() if e not in self.settled]
        entries += [*self._to_ack(), *self.buffered, *(d for d, _ in self.kept.values())]
        if not entries:  # nothing to keep: no round trip (a worker has one executor a shard)
            return
        lost = await self.engine.run(self.engine.heartbeat(entries))
        # Still ours to settle once the reply came: the others were settled meanwhile.
        waiting = {d.entry_id for d in (*self._to_ack(), *self.buffered)}
        lost = [e for e in lost if e in waiting or (e in self.running and e not in self.settled)]
        if lost:
            # Another worker took them over after this one missed its heartbeats; both may
            # run the job (at-least-once), and only one acknowledgement removes its data.
            log.warning("%d running job(s) were taken over by another worker", len(lost))

    def _to_ack(self) -> list[Delivery]:
        return [done.delivery for done in self.to_ack]

    async def drain(self, timeout: float) -> None:
        """On shutdown: let running jobs finish for ``timeout`` s, then hand the rest back."""
        await asyncio.gather(*self.screenings, return_exceptions=True)
        for d, handle in list(self.kept.values()):  # handed back with the read-ahead
            handle.cancel()
            self._kept_due(d)
        self._start_buffered()  # stopping: each is handed back at once
        deadline = asyncio.get_running_loop().time() + timeout
        while self.running:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            self.capacity.freed.clear()
            await wait_any([self.capacity.freed], min(left, 0.5))
        unfinished = list(self.running.values())
        for item in unfinished:
            log.warning("handing back unfinished job %s", item.delivery.timer_id)
            item.job.cancel()
            await self._hand_back(item.delivery)
        self.running.clear()
        await self.flush_acks()

    def shutdown_pool(self) -> bool:
        """Stop the handler threads; True if a handler is still running."""
        return self.lanes.shutdown()
