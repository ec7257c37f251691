"""The Delayq application: settings, task registry and the producer API."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delayq._calls import Call, Flow, command
from delayq._cluster import async_runner, sync_runner
from delayq._connection import redact_url, tls_failure
from delayq._debounce import Debounced, DebounceOptions, PayloadMode
from delayq._declare import PERIODIC_RETRIES, TaskKwargs, check_result_ttl, declare
from delayq._errors import ConfigurationError
from delayq._events import (
    DEFAULT_EVENTS_MAXLEN,
    EventSettings,
    check_events,
    check_events_maxlen,
)
from delayq._keys import Keys
from delayq._layout import check_shards
from delayq._limits import KeySpec
from delayq._outcomes import DEFAULT_RESULT_TTL
from delayq._periodic import CatchUp, Overlap, Periodic, PeriodicOptions
from delayq._producer import Producer
from delayq._replicas import WaitForReplicas
from delayq._runners import AsyncRunner, SyncRunner, SyncSubscription
from delayq._sentinel import is_sentinel_url, parse_target, sentinel_url
from delayq._sharded import ShardedStore
from delayq._task import Task
from delayq._waiting import AsyncWaiters
from delayq._watch import Watcher, WatchSpec
from delayq._when import Delay

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
TaskT = TypeVar("TaskT", bound=Task[Any, Any])

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_PAYLOAD = 512 * 1024
# Letters hold whole payloads (up to max_payload_bytes each) and tracebacks: bound the bytes
# too, or 100,000 letters of 512 KiB would take tens of GB of the server's memory.
DEFAULT_DEAD_LETTER_BYTES = 64 * 1024 * 1024


def _chosen_url(url: str | None, sentinels: Any, service_name: Any, tls: bool) -> str:
    if sentinels is None and service_name is None:
        return url or os.environ.get("DELAYQ_URL") or DEFAULT_URL
    if url is not None:
        raise ConfigurationError("give either a URL or sentinels= and service_name=, not both")
    if sentinels is None:
        raise ConfigurationError("service_name= needs sentinels=, the sentinels' (host, port)")
    return sentinel_url(sentinels, service_name, tls=tls)


def _check_url(url: str, options: dict[str, Any]) -> None:
    """A Sentinel URL is read now, so that a mistake in it is raised at construction."""
    if is_sentinel_url(url):
        parse_target(url, options)


class TaskRegistry:
    """Name -> Task. A name may be registered once; the same function again is a no-op."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def add(self, task: Task[Any, Any]) -> None:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigurationError(f"two different functions are registered as {task.name!r}")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(list(self._tasks.values()))


class Delayq(Producer):
    """A delayq application. Constructing it does no I/O; the client connects on first use.

    Synchronous calls and their awaitable twins (``aschedule_many``...) may be used on one app:
    each side has a connection pool of its own (the asyncio one per event loop).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        dead_letter_maxlen: int = 100_000,
        dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
        redis_options: dict[str, Any] | None = None,
        shards: int | None = None,
        sentinels: Iterable[tuple[str, int]] | None = None,
        service_name: str | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        result_ttl: float = DEFAULT_RESULT_TTL,
        events: bool = False,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        event_touches: bool = False,
    ) -> None:
        """``shards``: how many hash slots a new namespace is spread over (default: 1 on one
        server, 16 on a cluster); an existing namespace keeps the count it was created with,
        and asking for another is an error.

        ``sentinels`` and ``service_name``: reach the primary through Redis Sentinel, as a
        ``redis+sentinel://`` URL would (``url`` is then the one built from them).

        ``wait_replicas``: each write this app makes (schedule, touch, pause, resume,
        reschedule, cancel, re-drive) returns only once that many replicas have it, or raises
        ``NotReplicated`` after ``wait_timeout`` seconds (the write is stored on the primary
        then). 0, the default, waits for none: replication stays asynchronous.

        ``result_ttl``: seconds a job's outcome (state, result or error) is kept after it
        ends, for ``result()`` and ``outcome()``, unless its task says otherwise; 0 keeps
        none. Also how long a cancellation is kept.

        ``events``: jobs tell their lifecycle events (``events()``), unless their task says
        otherwise; off by default. ``events_maxlen``: about how many each shard's stream
        keeps. ``event_touches``: a touch that moves a pending debounced timer is told too
        (as ``rescheduled``)."""
        tls = bool((redis_options or {}).get("ssl"))
        self.url = _chosen_url(url, sentinels, service_name, tls)
        if namespace is None:
            namespace = os.environ.get("DELAYQ_NAMESPACE") or "default"
        self.keys = Keys(namespace)
        self.shards = None if shards is None else check_shards(shards)
        self.wait = WaitForReplicas.of(wait_replicas, wait_timeout)
        ttl = check_result_ttl(result_ttl)
        self.result_ttl = DEFAULT_RESULT_TTL if ttl is None else ttl
        self._outcome_waiters: tuple[asyncio.AbstractEventLoop, AsyncWaiters] | None = None
        if isinstance(max_payload_bytes, bool) or max_payload_bytes <= 0:
            raise ConfigurationError("max_payload_bytes must be a positive integer")
        self.max_payload_bytes = max_payload_bytes
        if isinstance(dead_letter_maxlen, bool) or dead_letter_maxlen < 1:
            raise ConfigurationError("dead_letter_maxlen must be an integer >= 1")
        self.dead_letter_maxlen = dead_letter_maxlen
        if isinstance(dead_letter_max_bytes, bool) or not isinstance(dead_letter_max_bytes, int) \
                or dead_letter_max_bytes < 1:  # fmt: skip
            raise ConfigurationError("dead_letter_max_bytes must be an integer >= 1")
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.redis_options = dict(redis_options or {})
        if self.redis_options.get("decode_responses"):
            raise ConfigurationError(
                "redis_options may not set decode_responses: payloads are bytes"
            )
        _check_url(self.url, self.redis_options)
        self.tasks = TaskRegistry()
        self.event_settings = EventSettings(
            bool(check_events(events)), check_events_maxlen(events_maxlen),
            bool(check_events(event_touches, "event_touches")), lambda: self.tasks,
        )  # fmt: skip
        self.watchers: dict[str, Watcher[Any, Any]] = {}
        self.periodics: dict[str, Periodic[Any, Any]] = {}
        self._store: ShardedStore | None = None
        self._sync: SyncRunner | None = None
        # The asyncio runner is made by a task (finding out whether the server is a cluster
        # takes a round trip), shared by every caller that arrives while it connects.
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Task[AsyncRunner]] | None = None

    def __repr__(self) -> str:
        return f"<Delayq namespace={self.namespace!r} url={redact_url(self.url)!r}>"

    @property
    def namespace(self) -> str:
        return self.keys.namespace

    def override(self, *, url: str | None = None, namespace: str | None = None) -> None:
        """Change where the app points (e.g. from CLI options) before it first connects."""
        if self._sync is not None or self._async is not None:
            raise ConfigurationError("cannot change url or namespace after the app connected")
        if url:
            _check_url(url, self.redis_options)
            self.url = url
        if namespace is not None:
            self.keys = Keys(namespace)
            self._store = None

    # -- connection ---------------------------------------------------------------------------

    @property
    def store(self) -> ShardedStore:
        """The calls this app sends (built without I/O; the runners send them)."""
        if self._store is None:
            self._store = ShardedStore(self.namespace, shards=self.shards,
                                       max_payload_bytes=self.max_payload_bytes,
                                       result_ttl=self.result_ttl,
                                       events=self.event_settings)  # fmt: skip
        return self._store

    def _runner(self) -> SyncRunner:
        if self._sync is None:
            self._sync = sync_runner(self.url, self.redis_options, self.wait)
        return self._sync

    async def _arunner(self) -> AsyncRunner:
        # An asyncio connection belongs to the loop that opened it: a new loop (another
        # asyncio.run) gets a pool of its own. (``async with app`` closes each loop's pool.)
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            connect = async_runner(self.url, self.redis_options, wait=self.wait)
            self._async = (loop, loop.create_task(connect))
        connecting = self._async[1]
        if connecting.done() and connecting.exception() is None:
            return connecting.result()
        try:
            # Shielded: one caller cancelled must not cancel the connection the others await.
            return await asyncio.shield(connecting)
        except BaseException:
            if connecting.done() and self._async is not None and self._async[1] is connecting:
                self._async = None  # failed: the next call tries again
            raise

    def _run(self, step: Call[T] | Flow[T]) -> T:
        return self._runner().run(step)

    async def _arun(self, step: Call[T] | Flow[T]) -> T:
        return await (await self._arunner()).run(step)

    def _task(self, name: str) -> Task[Any, Any] | None:
        return self.tasks.get(name)

    def connect(self) -> None:
        """Check the server answers (the first command would connect anyway).

        A failed TLS handshake raises redis-py's ``ConnectionError`` (or ``TimeoutError``) with a
        message that says so and names the redacted URL, instead of a bare socket error.
        """
        try:
            self._run(command("PING"))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise self._explained(exc) from exc

    async def aconnect(self) -> None:
        """``connect`` for asyncio code."""
        try:
            await self._arun(command("PING"))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise self._explained(exc) from exc

    def _explained(self, exc: RedisConnectionError | RedisTimeoutError) -> Exception:
        problem = tls_failure(exc, self.url)
        return exc if problem is None else type(exc)(problem)

    def close(self) -> None:
        """Close the synchronous connection pool (the next call opens a new one)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def _sync_subscription(self, key: str) -> SyncSubscription:
        return self._runner().subscription_for(key)

    async def _waiters(self) -> AsyncWaiters:
        loop = asyncio.get_running_loop()
        if self._outcome_waiters is None or self._outcome_waiters[0] is not loop:
            # Its own connections, which do not reconnect silently: a waiter reads again
            # after every reconnect.
            def connect() -> Any:
                return async_runner(self.url, self.redis_options, retry=False)

            self._outcome_waiters = (loop, AsyncWaiters(self, connect))
        return self._outcome_waiters[1]

    async def aclose(self) -> None:
        """Close the asyncio connection pool (the next awaited call opens a new one)."""
        if self._outcome_waiters is not None:
            loop, waiters = self._outcome_waiters
            self._outcome_waiters = None
            if loop is asyncio.get_running_loop():
                await waiters.close()
        if self._async is None:
            return
        loop, connecting = self._async
        self._async = None
        if loop is not asyncio.get_running_loop():  # a pool of a closed loop cannot be closed
            return
        if not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        elif not connecting.cancelled() and connecting.exception() is None:
            await connecting.result().close()

    def __enter__(self) -> Delayq:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Delayq:
        await self.aconnect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- decorators ---------------------------------------------------------------------------
    # Every kind takes the options of TaskKwargs (declared once, in _declare) plus its own.

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, delay: Delay | None = None, **options: Unpack[TaskKwargs]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        delay: Delay | None = None,
        **options: Unpack[TaskKwargs],
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a task. ``delay=`` sets the default delay used by ``Task.delay``."""
        declared = declare(options, delay=delay)

        def decorate(func: Callable[P, R]) -> Task[P, R]:
            return self._add(Task(func, declared.options_for(func), lambda: self))

        return decorate if fn is None else decorate(fn)

    @overload
    def delayed(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def delayed(
        self, fn: None = None, /, *, seconds: Delay = 0.0, **options: Unpack[TaskKwargs]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def delayed(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        seconds: Delay = 0.0,
        **options: Unpack[TaskKwargs],
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """A task whose ``.delay(...)`` fires ``seconds`` (int, float or timedelta) later."""
        decorator: Callable[[Callable[P, R]], Task[P, R]] = self.task(delay=seconds, **options)
        return decorator if fn is None else decorator(fn)

    def debounced(
        self,
        *,
        seconds: Delay,
        key: KeySpec = None,
        payload: PayloadMode = "last",
        max_items: int = 100,
        max_wait: Delay | None = None,
        **options: Unpack[TaskKwargs],
    ) -> Callable[[Callable[P, R]], Debounced[P, R]]:
        """A task fired once per key, ``seconds`` after the last ``touch`` of that key.

        ``key`` is a format string over the touch's arguments (``"device:{device_id}"``) or a
        callable taking them; the result is the timer id. ``payload``: ``"last"`` keeps the
        newest arguments, ``"first"`` the first, ``"all"`` every touch's (newest
        ``max_items``), passed as a list of Touch. ``max_wait`` fires at the latest that long
        after the first touch of a cycle.
        """
        debounce = DebounceOptions.build(
            seconds=seconds, key=key, payload=payload, max_items=max_items, max_wait=max_wait
        )
        declared = declare(options, delay=seconds)

        def decorate(func: Callable[P, R]) -> Debounced[P, R]:
            return self._add(Debounced(func, declared.options_for(func), lambda: self, debounce))

        return decorate

    def on_expire(
        self,
        pattern: str,
        *,
        data: str | None = None,
        delete_data: bool = False,
        **options: Unpack[TaskKwargs],
    ) -> Callable[[Callable[P, R]], Watcher[P, R]]:
        """React when a key matching ``pattern`` (one ``*``), written by any program, expires.

        The handler is called as ``handler(key, suffix, data)``: the expired key, the part
        that matched ``*``, and the value of the companion key ``data`` (a format string over
        ``{suffix}`` and ``{key}``) read after the expiry, or None. With ``delete_data=True``
        the companion key is deleted once the handler succeeded (unless rewritten meanwhile).
        """
        spec = WatchSpec.build(pattern, data, delete_data)
        declared = declare(options, delay=None)

        def decorate(func: Callable[P, R]) -> Watcher[P, R]:
            watcher = self._add(Watcher(func, declared.options_for(func), lambda: self, spec))
            self.watchers[watcher.name] = watcher
            return watcher

        return decorate

    def periodic(
        self,
        cron: str | None = None,
        /,
        *,
        every: dt.timedelta | None = None,
        tz: str = "UTC",
        jitter: dt.timedelta | None = None,
        catch_up: CatchUp = "latest",
        overlap: Overlap = "skip",
        max_catch_up: int = 100,
        **options: Unpack[TaskKwargs],
    ) -> Callable[[Callable[P, R]], Periodic[P, R]]:
        """Run a task on a cron schedule (5 fields, or 6 with seconds first) in zone ``tz``,
        or ``every`` interval; exactly once per tick however many workers run. Not retried
        unless ``retries=`` (or ``retry=``) says so.

        ``catch_up`` after downtime: "latest" (one run for all missed ticks), "all" (each
        missed tick, at most ``max_catch_up``), "none" (skip to the next tick). ``overlap``
        while the previous run still runs: "skip" the tick, "allow" it, or "queue" it.
        """
        schedule = PeriodicOptions.build(
            cron, every=every, tz=tz, jitter=jitter, catch_up=catch_up, overlap=overlap,
            max_catch_up=max_catch_up,
        )  # fmt: skip
        declared = declare(options, delay=None, retries=PERIODIC_RETRIES)

        def decorate(func: Callable[P, R]) -> Periodic[P, R]:
            task = self._add(Periodic(func, declared.options_for(func), lambda: self, schedule))
            self.periodics[task.name] = task
            return task

        return decorate

    def _add(self, task: TaskT) -> TaskT:
        self.tasks.add(task)
        return task

    def register(self, task: Task[Any, Any]) -> None:
        """Make a task declared elsewhere (e.g. with ``delayq.task``) known to this app."""
        self.tasks.add(task)
