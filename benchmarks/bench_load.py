"""Load benchmarks of delayq against the bundled Valkey server: what users run; one table.

1. the asyncio producer: ``aschedule()`` from 100 concurrent callers, and 64 ``atouch()``
   lanes paced at 6,667 touches/s, with each touch's lag behind its planned send time
2. bursts: timers all due at one instant (plain, debounced and watched), each job doing one
   Redis write, with a plain-function and an ``async def`` handler; how late the jobs started
   and how many started per second
3. sustained load: timers due evenly over a window, scheduled one ``schedule()`` call each
   shortly before their deadline by this process while the worker runs them (a sync handler
   doing one Redis write); start lateness and the worker's CPU per job

Workers run as separate processes (``delayq worker``), at default settings; a tuned run (more
concurrency) is shown beside the default one. Run from the repository root:

    .venv/bin/python benchmarks/bench_load.py            # full sizes, a few minutes
    .venv/bin/python benchmarks/bench_load.py --quick    # small sizes, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from bench_load_tasks import HANDLERS, WATCHED, app, far, ping, ping_key, started_key
from bench_table import Row, cpu_seconds, report

from delayq import Task
from delayq.testing import (
    WorkerProcess,
    describe_host,
    percentile,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER_APP = "benchmarks.bench_load_tasks:app"
NAMESPACE = "bench-load"
KINDS = ("plain", "debounced", "watched")
MODES = ("sync", "async")
WARM_UP = 20  # jobs run before a sustained run: pools, threads, the watch lease
LEAD_S = 1.0  # from arming a burst to its instant


@dataclass(frozen=True, slots=True)
class Config:
    calls: int
    callers: int
    lanes: int
    touch_rate: float
    lane_seconds: float
    bursts: tuple[int, ...]
    sustained: int
    window: float
    ahead_s: float
    tuned_concurrency: int


FULL = Config(calls=40_000, callers=100, lanes=64, touch_rate=6_667.0, lane_seconds=10.0,
              bursts=(400, 4_000), sustained=20_000, window=10.0, ahead_s=0.1,
              tuned_concurrency=100)  # fmt: skip
QUICK = replace(FULL, calls=10_000, lane_seconds=3.0, bursts=(400,), sustained=4_000,
                window=2.0)  # fmt: skip


def from_ms(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def task(kind: str, mode: str) -> Task[..., Any]:
    return HANDLERS[kind, mode]


def worker_process(url: str, extra: tuple[str, ...], log_path: Path) -> WorkerProcess:
    return WorkerProcess(WORKER_APP, url, NAMESPACE, "--shutdown-timeout", "5", *extra,
                         cwd=ROOT, log_path=log_path)  # fmt: skip


# -- 1. the asyncio producer --------------------------------------------------------------------


async def concurrent_aschedule(cfg: Config) -> float:
    """Timers/s armed by ``cfg.callers`` tasks calling ``aschedule()`` one after another."""
    plain = task("plain", "async")
    per_caller = cfg.calls // cfg.callers

    async def caller(c: int) -> None:
        for i in range(per_caller):
            await plain.aschedule(c * per_caller + i, delay=86_400)

    await plain.aschedule(-1, delay=86_400)  # connect and load the script outside the clock
    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(cfg.callers)))
    return per_caller * cfg.callers / (time.perf_counter() - started)


async def paced_atouch(cfg: Config) -> tuple[list[float], float]:
    """Lags (ms) of each touch's completion behind its planned send, and the rate reached."""
    count = int(cfg.touch_rate * cfg.lane_seconds)
    lags: list[float] = []
    await far.atouch(-1)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2

    async def lane(first: int) -> None:
        for k in range(first, count, cfg.lanes):
            planned = t0 + k / cfg.touch_rate
            wait = planned - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await far.atouch(k % 10_000)
            lags.append((loop.time() - planned) * 1000)

    await asyncio.gather(*(lane(j) for j in range(cfg.lanes)))
    return sorted(lags), count / (loop.time() - t0)


def producer_rows(cfg: Config) -> Iterator[Row]:
    async def both() -> tuple[float, tuple[list[float], float]]:
        try:
            return await concurrent_aschedule(cfg), await paced_atouch(cfg)
        finally:
            await app.aclose()

    per_s, (lags, reached) = asyncio.run(both())
    yield Row(f"aschedule(), {cfg.callers} concurrent callers ({cfg.calls:,})",
              f"{per_s:,.0f} /s", ">= 20,000 /s", per_s >= 20_000)  # fmt: skip
    head = f"atouch(), {cfg.lanes} lanes at {cfg.touch_rate:,.0f} /s"
    yield Row(f"{head}: rate reached", f"{reached:,.0f} /s", f">= {cfg.touch_rate * 0.98:,.0f} /s",
              reached >= cfg.touch_rate * 0.98)  # fmt: skip
    yield Row(f"{head}: send lag p50", f"{percentile(lags, 0.5):.2f} ms")
    p99 = percentile(lags, 0.99)
    yield Row(f"{head}: send lag p99", f"{p99:.2f} ms", "<= 20 ms", p99 <= 20)


# -- 2. bursts ----------------------------------------------------------------------------------


def arm_burst(client: redis.Redis, kind: str, mode: str, count: int, base: int) -> None:
    """Arm ``count`` timers of one kind, all due LEAD_S from now."""
    at_ms = round(time.time() * 1000 + LEAD_S * 1000)
    numbers = range(base, base + count)
    if kind == "plain":
        app.schedule_many([task(kind, mode).prepare(n, at=from_ms(at_ms)) for n in numbers])
    elif kind == "debounced":
        # A touch falls due one window after it lands: send them one window before the instant.
        time.sleep(max(0.0, (at_ms - time.time() * 1000) / 1000 - 1.0))
        app.touch_many([task(kind, mode).prepare_touch(n) for n in numbers])
    else:
        pipe = client.pipeline(transaction=False)
        for n in numbers:
            pipe.set(f"{WATCHED[mode]}{n}:{at_ms}", 1, pxat=at_ms)
        pipe.execute()


def collect(client: redis.Redis, worker: WorkerProcess, count: int, timeout: float) -> list[float]:
    """Wait for ``count`` start notes and return them, sorted (ms late)."""
    key = started_key(NAMESPACE)
    give_up = time.monotonic() + timeout
    while client.llen(key) < count:
        worker.check_alive()
        if time.monotonic() > give_up:
            raise RuntimeError(f"{client.llen(key)} of {count} jobs started:\n{worker.tail()}")
        time.sleep(0.01)
    notes = sorted(float(v) for v in client.lrange(key, 0, -1))
    client.delete(key)
    return notes


def burst(client: redis.Redis, worker: WorkerProcess, kind: str, mode: str, count: int) -> Row:
    # A warm-up burst of the same size first (numbered apart, so that no debounce key is
    # shared): the handlers' connection pools and the worker's threads are then as in a
    # worker that has been running a while.
    for n, base in ((count, 10_000_000), (count, 0)):
        arm_burst(client, kind, mode, n, base)
        late = collect(client, worker, n, LEAD_S + 30 + n / 500)
    span_s = max(late[-1] - late[0], 1.0) / 1000
    per_s = count / span_s
    target = 5_000 if mode == "sync" else 20_000
    figure = (f"p50 {percentile(late, 0.5):.0f} / p99 {percentile(late, 0.99):.0f} / "
              f"max {late[-1]:.0f} ms, {per_s:,.0f} jobs/s")  # fmt: skip
    return Row(
        f"  {kind}, {mode} handler, {count:,} due at once",
        figure,
        f">= {target:,} jobs/s",
        per_s >= target,
    )


def burst_rows(url: str, cfg: Config, client: redis.Redis, workdir: Path) -> Iterator[Row]:
    for label, extra in settings(cfg):
        log = workdir / f"worker-burst-{label.split()[0]}.log"
        with worker_process(url, extra, log) as worker:
            worker.wait_ready(ping.schedule, client, ping_key(NAMESPACE))
            yield Row(f"bursts, one Redis write per job, worker {label}", "")
            for count in cfg.bursts:
                for kind in KINDS:
                    for mode in MODES:
                        yield burst(client, worker, kind, mode, count)


def settings(cfg: Config) -> list[tuple[str, tuple[str, ...]]]:
    tuned = ("--concurrency", str(cfg.tuned_concurrency))
    return [("defaults", ()), (f"--concurrency {cfg.tuned_concurrency}", tuned)]


# -- 3. sustained load --------------------------------------------------------------------------


def paced_schedule(plain: Task[..., Any], cfg: Config) -> int:
    """One ``schedule()`` per timer, each sent ``ahead_s`` before its deadline, the deadlines
    spread evenly over the window; returns how many calls returned after their deadline."""
    late = 0
    rate = cfg.sustained / cfg.window
    t0 = time.time() + 0.2
    for i in range(cfg.sustained):
        send = t0 + i / rate
        wait = send - time.time()
        if wait > 0:
            time.sleep(wait)
        due_ms = (send + cfg.ahead_s) * 1000
        plain.schedule(i, at=from_ms(due_ms))
        late += time.time() * 1000 > due_ms
    return late


def sustained_rows(url: str, cfg: Config, client: redis.Redis, workdir: Path) -> Iterator[Row]:
    rate = f"{cfg.sustained / cfg.window:,.0f} /s"
    for mode in MODES:
        for label, extra in settings(cfg):
            log = workdir / f"worker-sustained-{mode}-{label.split()[0]}.log"
            with worker_process(url, extra, log) as worker:
                worker.wait_ready(ping.schedule, client, ping_key(NAMESPACE))
                plain = task("plain", mode)
                burst(client, worker, "plain", mode, WARM_UP)
                cpu_before = cpu_seconds(worker.pid)
                late_sends = paced_schedule(plain, cfg)
                late = collect(client, worker, cfg.sustained, 60 + cfg.window)
                cpu_after = cpu_seconds(worker.pid)
            head = f"{cfg.sustained:,} due over {cfg.window:g} s ({rate}), {mode}, {label}"
            yield from sustained_figures(head, mode, late, late_sends, cfg, cpu_before, cpu_after)


def sustained_figures(
    head: str,
    mode: str,
    late: list[float],
    late_sends: int,
    cfg: Config,
    cpu_before: float | None,
    cpu_after: float | None,
) -> Iterator[Row]:
    p50, p99 = percentile(late, 0.5), percentile(late, 0.99)
    strict = mode == "sync"
    yield Row(f"{head}: lateness p50", f"{p50:.2f} ms", "<= 5 ms" if strict else "-",
              p50 <= 5 if strict else None)  # fmt: skip
    yield Row(f"{head}: lateness p99", f"{p99:.2f} ms", "<= 50 ms" if strict else "-",
              p99 <= 50 if strict else None)  # fmt: skip
    if cpu_before is not None and cpu_after is not None:
        per_job = (cpu_after - cpu_before) / (cfg.sustained + WARM_UP) * 1e6
        yield Row(f"{head}: worker CPU per job", f"{per_job:,.0f} µs")
    if late_sends:
        yield Row(f"  WARNING: {late_sends} schedule() calls returned after their deadline", "")


# -- report -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast run")
    parser.add_argument("--sustained", type=int, help=f"timers of the sustained run "
                        f"({FULL.sustained:,})")  # fmt: skip
    parser.add_argument("--window", type=float, help=f"seconds they fall due over ({FULL.window})")
    parser.add_argument(
        "--tuned-concurrency",
        type=int,
        help=f"--concurrency of the tuned worker ({FULL.tuned_concurrency})",
    )
    ns = parser.parse_args(argv)
    base = QUICK if ns.quick else FULL
    given = {k: v for k, v in vars(ns).items() if k != "quick" and v is not None}
    cfg = replace(base, **given)
    if min(cfg.sustained, cfg.tuned_concurrency) < 1 or cfg.window <= 0:
        parser.error("sizes must be at least 1 and --window positive")
    return cfg


def run(cfg: Config, url: str, workdir: Path) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    app.override(url=url, namespace=NAMESPACE)
    try:
        print(describe_host(client), flush=True)
        yield from producer_rows(cfg)
        client.flushall()
        yield from burst_rows(url, cfg, client, workdir)
        yield from sustained_rows(url, cfg, client, workdir)
    finally:
        app.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    return report("delayq-bench-load-", lambda url, workdir: run(cfg, url, workdir))


if __name__ == "__main__":
    sys.exit(main())
