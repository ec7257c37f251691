"""The app's producer API, each operation written once as a flow and offered twice: as a plain
method, and as its awaitable twin named with an ``a`` prefix (same arguments, same errors).
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from delayq._calls import Call, Flow, server_time
from delayq._debounce import Debounced
from delayq._errors import ConfigurationError
from delayq._event_reader import follow_async, follow_sync
from delayq._events import JobEvent
from delayq._keys import check_timer_id
from delayq._outcomes import Outcome
from delayq._queues import QueueInfo
from delayq._route import check_queue
from delayq._sharded import ShardedStore
from delayq._store import (
    Armed,
    DeadLetter,
    ScheduleRequest,
    Touched,
    TouchRequest,
    try_decode,
)
from delayq._timer import Timer
from delayq._waiting import AsyncWaiters, OnProgress, wait_sync
from delayq._when import Delay, resolve_when

if TYPE_CHECKING:
    from delayq._runners import SyncSubscription
    from delayq._task import Task

T = TypeVar("T")


class Producer:
    """Scheduling, looking up and changing timers; mixed into ``Delayq``."""

    @property
    @abstractmethod
    def store(self) -> ShardedStore: ...

    @abstractmethod
    def _run(self, step: Call[T] | Flow[T]) -> T: ...

    @abstractmethod
    async def _arun(self, step: Call[T] | Flow[T]) -> T: ...

    @abstractmethod
    def _task(self, name: str) -> Task[Any, Any] | None: ...

    @abstractmethod
    def _sync_subscription(self, key: str) -> SyncSubscription:
        """A synchronous pub/sub connection to the server holding ``key``."""

    @abstractmethod
    async def _waiters(self) -> AsyncWaiters:
        """This event loop's waiters for outcomes."""

    # -- outcomes -----------------------------------------------------------------------------

    def result(
        self, timer_id: str, timeout: float = 30.0, *, on_progress: OnProgress | None = None
    ) -> Any:
        """Wait until the job scheduled as ``timer_id`` ends, and return what it returned.

        Raises JobFailed (it failed for good), TimerCancelled, ResultUnavailable (nothing is
        known of it: never scheduled, result not kept, or retention over) at once, and
        TimeoutError when it has not ended within ``timeout`` seconds. ``on_progress`` is
        called with each new ``Progress`` the job tells while it is waited for."""
        return self.wait_for(timer_id, timeout, on_progress).value()

    async def aresult(
        self, timer_id: str, timeout: float = 30.0, *, on_progress: OnProgress | None = None
    ) -> Any:
        return (await self.await_for(timer_id, timeout, on_progress)).value()

    def wait_for(
        self, timer_id: str, timeout: float, on_progress: OnProgress | None = None
    ) -> Outcome:
        """The job's outcome once it ended (``result`` without taking the value out)."""
        check_timer_id(timer_id)
        return wait_sync(self, timer_id, _checked_timeout(timeout), on_progress)

    async def await_for(
        self, timer_id: str, timeout: float, on_progress: OnProgress | None = None
    ) -> Outcome:
        check_timer_id(timer_id)
        waiters = await self._waiters()
        return await waiters.wait(timer_id, _checked_timeout(timeout), on_progress)

    def events(self, since: str | None = None, follow: bool = True,
               tasks: Iterable[Any] | None = None) -> Iterator[JobEvent]:  # fmt: skip
        """The namespace's lifecycle events (``events=True`` on the app or a task turns them
        on), oldest first, as ``JobEvent``; in order per job, merged by time across shards.

        ``since``: None or "0" for every event still kept, "$" for only those told from now
        on, or an event's ``position`` to go on after it (missing nothing still kept, repeating
        nothing). ``follow``: keep waiting for new events (False: stop at the newest).
        ``tasks``: only these tasks' (names or task objects)."""
        return follow_sync(self, since, follow, tasks)

    def aevents(self, since: str | None = None, follow: bool = True,
                tasks: Iterable[Any] | None = None) -> AsyncIterator[JobEvent]:  # fmt: skip
        """``events()`` as an async iterator: ``async for event in app.aevents(): ...``."""
        return follow_async(self, since, follow, tasks)

    def outcome(self, timer_id: str) -> Outcome | None:
        """What is known of the job now (its state, attempts, result or error), or None."""
        return self._run(self.store.outcome(check_timer_id(timer_id)))

    async def aoutcome(self, timer_id: str) -> Outcome | None:
        return await self._arun(self.store.outcome(check_timer_id(timer_id)))

    # -- arming -------------------------------------------------------------------------------

    def arm(self, request: ScheduleRequest) -> Timer:
        """Store one prepared timer (see ``Task.prepare``)."""
        return self._run(self._arm(request))

    async def aarm(self, request: ScheduleRequest) -> Timer:
        return await self._arun(self._arm(request))

    def _arm(self, request: ScheduleRequest) -> Flow[Timer]:
        armed = yield from self.store.schedule(request)
        return (yield from self._armed_timer(armed))

    def _armed_timer(self, armed: Armed) -> Flow[Timer]:
        timer = Timer(
            self, armed.timer_id, due_ms=armed.due_ms, raw_payload=armed.payload,
            created=armed.created,
            duration_ms=max(0, armed.due_ms - armed.now_ms) if armed.created else None,
        )  # fmt: skip
        if armed.due_ms < 0:  # the id is taken by a paused timer
            found = yield from self.store.lookup(armed.timer_id)
            timer.paused_left_ms = found.paused_left_ms
        return timer

    def schedule_many(
        self, requests: Iterable[ScheduleRequest], *, chunk: int = 1000
    ) -> list[Timer]:
        """Arm many timers, one round trip per ``chunk``; every request is validated first."""
        return self._run(self._schedule_many(list(requests), chunk))

    async def aschedule_many(
        self, requests: Iterable[ScheduleRequest], *, chunk: int = 1000
    ) -> list[Timer]:
        return await self._arun(self._schedule_many(list(requests), chunk))

    def _schedule_many(self, reqs: list[ScheduleRequest], chunk: int) -> Flow[list[Timer]]:
        armed = yield from self.store.schedule_many(reqs, chunk=chunk)
        timers = []
        for one in armed:
            timers.append((yield from self._armed_timer(one)))
        return timers

    def touch(self, request: TouchRequest) -> Timer:
        """Store one prepared touch (see ``Debounced.prepare_touch``)."""
        return self._run(self._touch(request))

    async def atouch(self, request: TouchRequest) -> Timer:
        return await self._arun(self._touch(request))

    def _touch(self, request: TouchRequest) -> Flow[Timer]:
        return self._touched(request, (yield from self.store.touch(request)))

    def touch_many(self, requests: Iterable[TouchRequest], *, chunk: int = 1000) -> list[Timer]:
        """Apply many touches, one round trip per ``chunk``, in order."""
        return self._run(self._touch_many(list(requests), chunk))

    async def atouch_many(
        self, requests: Iterable[TouchRequest], *, chunk: int = 1000
    ) -> list[Timer]:
        return await self._arun(self._touch_many(list(requests), chunk))

    def _touch_many(self, reqs: list[TouchRequest], chunk: int) -> Flow[list[Timer]]:
        touched = yield from self.store.touch_many(reqs, chunk=chunk)
        return [self._touched(r, t) for r, t in zip(reqs, touched, strict=True)]

    def _touched(self, request: TouchRequest, touched: Touched) -> Timer:
        return Timer(self, request.timer_id, due_ms=touched.due_ms, raw_payload=request.payload,
                     created=touched.new_cycle == 1, duration_ms=request.window_ms)  # fmt: skip

    # -- one timer ----------------------------------------------------------------------------

    def timer(self, timer_id: str) -> Timer | None:
        """The pending timer with this id, or None (never existed, cancelled or fired)."""
        return self._run(self._lookup(timer_id))

    async def atimer(self, timer_id: str) -> Timer | None:
        return await self._arun(self._lookup(timer_id))

    def _lookup(self, timer_id: str) -> Flow[Timer | None]:
        check_timer_id(timer_id)
        found = yield from self.store.lookup(timer_id)
        if found.raw_payload is None:
            return None
        if found.paused_left_ms is not None:
            return Timer(self, timer_id, due_ms=-1, raw_payload=found.raw_payload,
                         created=False, paused_left_ms=found.paused_left_ms,
                         duration_ms=found.duration_ms)  # fmt: skip
        if found.due_ms is None:
            return None  # a data key without an index entry: the sweeper will repair it
        return Timer(self, timer_id, due_ms=found.due_ms, raw_payload=found.raw_payload,
                     created=False, duration_ms=found.duration_ms)  # fmt: skip

    def cancel(self, timer_id: str) -> bool:
        return self._run(self.store.cancel(check_timer_id(timer_id)))

    async def acancel(self, timer_id: str) -> bool:
        return await self._arun(self.store.cancel(check_timer_id(timer_id)))

    def reschedule(
        self, timer_id: str, *, delay: Delay | None = None, at: dt.datetime | None = None
    ) -> bool:
        return self._run(self._reschedule(timer_id, delay, at))

    async def areschedule(
        self, timer_id: str, *, delay: Delay | None = None, at: dt.datetime | None = None
    ) -> bool:
        return await self._arun(self._reschedule(timer_id, delay, at))

    def _reschedule(self, timer_id: str, delay: Delay | None, at: dt.datetime | None) -> Flow[bool]:
        timer = yield from self._lookup(timer_id)
        return timer is not None and (yield from timer._reschedule(delay, at))

    # -- listing ------------------------------------------------------------------------------

    def timers(
        self, *, limit: int = 100, task: str | None = None, due_before: dt.datetime | None = None
    ) -> list[Timer]:
        """Pending timers, earliest first (then paused ones), optionally of one task only."""
        return self._run(self._timers(limit, task, due_before))

    async def atimers(
        self, *, limit: int = 100, task: str | None = None, due_before: dt.datetime | None = None
    ) -> list[Timer]:
        return await self._arun(self._timers(limit, task, due_before))

    def _timers(
        self, limit: int, task: str | None, due_before: dt.datetime | None
    ) -> Flow[list[Timer]]:
        before = None if due_before is None else resolve_when(None, due_before, 0).ms
        timers = []
        for found in (yield from self.store.pending(limit=limit, due_before_ms=before)):
            timer = Timer(self, found.timer_id, due_ms=found.due_ms if found.due_ms is not None
                          else -1, raw_payload=found.raw_payload, created=False)  # fmt: skip
            if found.due_ms is None:
                timer.paused_left_ms = (yield from self.store.lookup(found.timer_id)).paused_left_ms
            if task is None or try_decode_task(found.raw_payload) == task:
                timers.append(timer)
        return timers

    def debounce_window_ms(self, task_name: str) -> int | None:
        """The window of a debounced task of this app, or None."""
        task = self._task(task_name)
        return task.debounce.window_ms if isinstance(task, Debounced) else None

    def pending_count(self) -> int:
        """Pending timers, watch timers (on_expire) included; paused ones are not counted."""
        return self._run(self.store.pending_count())

    async def apending_count(self) -> int:
        return await self._arun(self.store.pending_count())

    def stats(self) -> dict[str, int]:
        return self._run(self.store.stats())

    async def astats(self) -> dict[str, int]:
        return await self._arun(self.store.stats())

    def queues(self, *names: str) -> list[QueueInfo]:
        """Each queue's jobs waiting and in flight and its oldest waiting job: the default
        queue, ``names``, and every queue a worker or a job has used (docs/flow-control.md)."""
        return self._run(self.store.queues([check_queue(n) for n in names]))

    async def aqueues(self, *names: str) -> list[QueueInfo]:
        return await self._arun(self.store.queues([check_queue(n) for n in names]))

    def server_time_ms(self) -> int:
        """The server's clock (ms since the epoch): the clock timers fall due by."""
        return self._run(server_time())

    async def aserver_time_ms(self) -> int:
        return await self._arun(server_time())

    # -- dead letters -------------------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        return self._run(self.store.dead_letters(count))

    async def adead_letters(self, count: int = 100) -> list[DeadLetter]:
        return await self._arun(self.store.dead_letters(count))

    def retry_dead(self, letter: DeadLetter) -> bool:
        """Arm a dead letter again, due now with its attempts reset. False if it is gone."""
        return self._run(self.store.redrive(letter)) == 1

    async def aretry_dead(self, letter: DeadLetter) -> bool:
        return await self._arun(self.store.redrive(letter)) == 1

    def purge_dead(self, entry_ids: list[str] | None = None) -> int:
        return self._run(self.store.purge_dead(entry_ids))

    async def apurge_dead(self, entry_ids: list[str] | None = None) -> int:
        return await self._arun(self.store.purge_dead(entry_ids))


def try_decode_task(raw: bytes) -> str | None:
    payload = try_decode(raw)
    return None if payload is None else payload.task


def _checked_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ConfigurationError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    return float(timeout)
