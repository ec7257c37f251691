"""Flow control (docs/flow-control.md): concurrency limits per key and rate limits, held
across real ``delayq worker`` processes; throttled jobs wait as timers and keep their place."""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import random
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest
import redis

from delayq import ConfigurationError, Delayq, ScheduleError
from delayq._cluster_server import LocalCluster
from delayq._server import EmbeddedServer
from tests import limits_app
from tests.conftest import WorkerProcess, WorkerThread, wait_until

APP = "tests.limits_app:app"


def _producer(url: str, namespace: str) -> tuple[Delayq, dict[str, object]]:
    """The app of limits_app, as a producer on this namespace."""
    app = Delayq(url, namespace=namespace)
    tasks = {}
    for task in (limits_app.per_tenant, limits_app.rated, limits_app.both):
        tasks[task.name] = app.task(name=task.name, retries=0, **_limit_options(task))(task.fn)
    return app, tasks


def _limit_options(task: object) -> dict[str, object]:
    limits = task.options.limits  # type: ignore[attr-defined]
    options: dict[str, object] = {}
    if limits.concurrency is not None:
        options.update(concurrency=limits.concurrency, concurrency_key=limits.concurrency_key)
    if limits.rate is not None:
        options["rate_limit"] = f"{limits.rate.count}/s"
    return options


def _runs(rclient: redis.Redis, namespace: str) -> list[tuple[str, int, float, float, int]]:
    rows = [r.decode().split("|") for r in rclient.lrange(f"test:{namespace}:ran", 0, -1)]
    return [(t, int(j), float(b), float(e), int(p)) for t, j, b, e, p in rows]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans (start, end) open at one instant."""
    edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    most = running = 0
    for _, step in edges:  # an end at the same instant as a start comes first
        running += step
        most = max(most, running)
    return most


def _ideal_makespan(jobs: list[tuple[str, float]], slots: int, per_key: int) -> float:
    """How long jobs (key, seconds) take with no overhead at all, on ``slots`` worker slots,
    at most ``per_key`` of a key at once: as each slot frees, the first job in order whose
    key is under its limit starts."""
    lines: dict[str, collections.deque[tuple[int, float]]] = defaultdict(collections.deque)
    for n, (key, seconds) in enumerate(jobs):
        lines[key].append((n, seconds))
    running: list[tuple[float, str]] = []
    counts: collections.Counter[str] = collections.Counter()
    now = 0.0
    while lines or running:
        while len(running) < slots:
            ready = [k for k in lines if counts[k] < per_key]
            if not ready:
                break
            key = min(ready, key=lambda k: lines[k][0][0])
            _, seconds = lines[key].popleft()
            if not lines[key]:
                del lines[key]
            counts[key] += 1
            heapq.heappush(running, (now + seconds, key))
        now, key = heapq.heappop(running)
        counts[key] -= 1
    return now


def test_concurrency_per_tenant_holds_across_four_workers(
    server: EmbeddedServer, rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    namespace = "l" + uuid.uuid4().hex[:8]
    app, tasks = _producer(server.url, namespace)
    rng = random.Random(13)
    jobs = [(f"t{n % 50}", n, rng.uniform(0.02, 0.2)) for n in range(2000)]
    workers = [worker_process(server.url, namespace, app=APP) for _ in range(4)]
    for w in workers:
        wait_until(lambda w=w: "ready" in w.output(), timeout=30)
    started = time.time()
    task = tasks["lim.tenant"]
    app.schedule_many([task.prepare(*job) for job in jobs])  # type: ignore[attr-defined]
    wait_until(lambda: rclient.llen(f"test:{namespace}:ran") == len(jobs), timeout=120)
    wall = time.time() - started
    runs = _runs(rclient, namespace)
    assert sorted(j for _, j, *_ in runs) == list(range(len(jobs)))  # each ran once
    by_tenant: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for tenant, _, began, ended, _ in runs:
        by_tenant[tenant].append((began, ended))
    assert max(_most_at_once(spans) for spans in by_tenant.values()) == 2
    assert len({pid for *_, pid in runs}) == 4  # every worker took part
    # The ideal: no overhead, 4 workers of the default 10 slots, 2 per tenant, first come
    # first served.
    ideal = _ideal_makespan([(t, s) for t, _, s in jobs], 4 * 10, 2)
    busy = max(e for *_, e, _ in runs) - min(b for _, _, b, *_ in runs)
    assert busy <= ideal * 1.25, f"ran for {busy:.2f} s, ideal {ideal:.2f} s (wall {wall:.2f})"
    assert not rclient.keys(f"dq:{{{namespace}}}:cl:*")  # no line left behind
    assert rclient.zcard(f"dq:{{{namespace}}}:cc:lim.tenant|t0") == 0  # every slot returned
    app.close()


def test_a_rate_limit_holds_across_four_workers(
    server: EmbeddedServer, rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    namespace = "l" + uuid.uuid4().hex[:8]
    app, tasks = _producer(server.url, namespace)
    workers = [worker_process(server.url, namespace, app=APP) for _ in range(4)]
    for w in workers:
        wait_until(lambda w=w: "ready" in w.output(), timeout=30)
    task = tasks["lim.rated"]
    app.schedule_many([task.prepare(n) for n in range(1100)])  # type: ignore[attr-defined]
    key = f"test:{namespace}:rated"
    wait_until(lambda: rclient.llen(key) >= 1050, timeout=60)
    times = sorted(float(r.decode().split("|")[1]) for r in rclient.lrange(key, 0, -1))
    first = times[0]
    for window in range(1, 4):  # after the first 5 s: 5-10, 10-15, 15-20 s
        lo, hi = first + 5 * window, first + 5 * window + 5
        rate = sum(lo <= t < hi for t in times) / 5
        assert 47.5 <= rate <= 52.5, f"{rate} jobs/s in window {window}"
    app.close()


def test_a_killed_workers_slots_come_back_and_no_tenant_goes_over(
    server: EmbeddedServer, rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:  # fmt: skip
    namespace = "l" + uuid.uuid4().hex[:8]
    app, tasks = _producer(server.url, namespace)
    first = worker_process(server.url, namespace, app=APP)
    wait_until(lambda: "ready" in first.output(), timeout=30)
    task = tasks["lim.tenant"]
    app.schedule_many([task.prepare("a", n, 1.0) for n in range(6)])  # type: ignore[attr-defined]
    began = f"test:{namespace}:began"
    wait_until(lambda: rclient.llen(began) == 2, timeout=30)  # both slots of tenant a held
    second = worker_process(server.url, namespace, app=APP)
    wait_until(lambda: "ready" in second.output(), timeout=30)
    killed_at = time.time()
    first.signal(signal.SIGKILL)
    first.wait()
    # The killed worker's 2 jobs run again and the 4 waiting ones run: 6 runs end.
    wait_until(lambda: rclient.llen(f"test:{namespace}:ran") == 6, timeout=60)
    starts = [r.decode().split("|") for r in rclient.lrange(began, 0, -1)]
    spans = []
    for _, job, at, _pid in starts:  # a killed run ended when its worker was killed
        ended = [e for _, j, b, e, _ in _runs(rclient, namespace) if j == int(job)
                 and b == float(at)]  # fmt: skip
        spans.append((float(at), ended[0] if ended else killed_at))
    assert _most_at_once(spans) <= 2
    resumed = min(float(at) for _, _, at, pid in starts if int(pid) != first.proc.pid)
    # Back within the visibility timeout (2 s) of the last heartbeat, plus a firing's delay.
    assert resumed - killed_at <= 2 + 1.5, resumed - killed_at
    app.close()


def test_throttled_state_and_both_limits(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="l" + uuid.uuid4().hex[:8], result_ttl=60)
    gate = app.task(name="lim.gate", concurrency=1)
    ran: list[tuple[int, float]] = []

    @gate
    def hold(n: int, seconds: float) -> int:
        ran.append((n, time.time()))
        time.sleep(seconds)
        return n

    start_worker(app)
    first = hold.delay(0, 1.0)
    assert wait_until(lambda: first.refresh() == "running", timeout=10)
    waiting = hold.delay(1, 0.0)
    assert wait_until(lambda: waiting.refresh() == "throttled", timeout=10)
    outcome = app.outcome(waiting.id)
    assert outcome is not None and outcome.state == "throttled" and outcome.attempts == 0
    assert outcome.reason == "concurrency 1 for the task of 'lim.gate'"
    assert first.result(timeout=10) == 0 and waiting.result(timeout=10) == 1
    # It ran as soon as the slot was freed, not when it would have looked again.
    assert ran[1][1] - ran[0][1] < 1.0 + 0.5

    @app.task(name="lim.both", concurrency=2, rate_limit="10/s", rate_key="{key}")
    async def both(key: str, n: int) -> float:
        return time.time()

    timers = [both.delay("k", n) for n in range(10)]
    at = sorted(t.result(timeout=20) for t in timers)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert min(gaps) >= 0.1 - 0.03, gaps  # spaced by the rate, whatever the slots allow
    app.close()


def test_waiting_jobs_keep_their_place_in_line(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(server.url, namespace="l" + uuid.uuid4().hex[:8])
    order: list[str] = []

    @app.task(name="lim.line", concurrency=1, concurrency_key="{key}")
    async def step(key: str, n: int, seconds: float) -> None:
        order.append(f"{key}{n}")
        await asyncio.sleep(seconds)

    start_worker(app)
    blockers = [step.delay(k, 0, 0.5) for k in "ab"]
    assert wait_until(lambda: len(order) == 2, timeout=10)
    # Due one after another while the slots are held: each joins its key's line in turn.
    timers = [step.schedule(k, n, 0.01, delay=0.02 * n) for n in range(1, 11) for k in "ab"]
    for t in [*blockers, *timers]:
        t.result(timeout=20)
    for key in "ab":
        assert [o for o in order if o[0] == key] == [f"{key}{n}" for n in range(11)]
    app.close()


def test_bad_limits_are_refused_and_store_nothing(server: EmbeddedServer) -> None:
    app = Delayq(server.url, namespace="l" + uuid.uuid4().hex[:8])
    for options, message in [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"concurrency": True}, "concurrency must be an integer >= 1"),
        ({"concurrency_key": "{x}"}, "concurrency_key= needs concurrency="),
        ({"rate_limit": "fast"}, "rate_limit must look like"),
        ({"rate_limit": "0/s"}, "count and period must be >= 1"),
        ({"rate_limit": "5/s", "rate_burst": 0}, "rate_burst must be an integer >= 1"),
        ({"rate_key": "{x}"}, "rate_key= and rate_burst= need rate_limit="),
        ({"concurrency": 2, "concurrency_key": 5}, "concurrency_key must be a format string"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            app.task(**options)(lambda x: x)  # type: ignore[arg-type]

    @app.task(name="lim.keyed", concurrency=1, concurrency_key="{tenant}")
    def keyed(tenant: str) -> None: ...

    with pytest.raises(ScheduleError, match=r"missing a required argument: 'tenant'"):
        keyed.delay()  # type: ignore[call-arg]
    assert app.pending_count() == 0
    app.close()


def test_limits_hold_across_the_shards_of_a_cluster(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    app = Delayq(cluster.url, namespace="l" + uuid.uuid4().hex[:8])
    spans: list[tuple[float, float]] = []

    @app.task(name="lim.cluster", concurrency=3)
    async def slow(n: int) -> None:
        began = time.time()
        await asyncio.sleep(0.05)
        spans.append((began, time.time()))

    timers = [slow.delay(n) for n in range(60)]  # random ids: spread over the 16 shards
    start_worker(app)
    start_worker(app)
    for t in timers:
        t.result(timeout=30)
    assert _most_at_once(spans) == 3
    app.close()
