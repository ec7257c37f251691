"""Core benchmarks of delayq against the bundled Valkey server; prints one table.

1. schedule throughput: one ``Task.schedule`` call per timer, and ``Delayq.schedule_many``
2. end-to-end fire lateness with many far-future timers pending and thousands falling due a second
3. no-op jobs executed per second by one worker process: `async def` and plain functions, at the
   worker's default concurrency and tuned (--concurrency)
4. server memory per pending timer

Workers run as separate processes (``delayq worker``), so they never share a GIL with this one.
Run from the repository root:

    .venv/bin/python benchmarks/bench_core.py            # full sizes, a few minutes
    .venv/bin/python benchmarks/bench_core.py --quick    # small sizes, well under a minute
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
from bench_table import Row, report
from bench_tasks import BenchTasks, lateness_key, ping_key, register

from delayq import Delayq, ScheduleRequest
from delayq.testing import (
    WorkerProcess,
    describe_host,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER_APP = "benchmarks.bench_tasks:app"
# Far-future timers are spread over a week starting a day out: none fires during the run, and
# their random deadlines insert all over the due index, as real timers would.
FAR_DELAY_S = 86_400.0
FAR_SPREAD_S = 7 * 86_400.0
PREPARE_CHUNK = 10_000  # requests built per schedule_many call: bounds this process's memory
POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class Config:
    single: int
    batch: int
    pending: int
    due: int
    window: float
    noop: int
    concurrency: int
    seed: int


FULL = Config(single=20_000, batch=200_000, pending=1_000_000, due=20_000, window=10.0,
              noop=100_000, concurrency=200, seed=1)  # fmt: skip
QUICK = replace(FULL, single=2_000, batch=20_000, pending=50_000, due=4_000, window=2.0,
                noop=10_000)  # fmt: skip


# -- the worker process -------------------------------------------------------------------------


def worker_process(
    url: str, namespace: str, concurrency: int | None, log_path: Path
) -> WorkerProcess:
    """``delayq worker`` for one namespace as a child process; ``with`` stops it (also on error).
    ``concurrency`` None: the worker's default."""
    tuned = () if concurrency is None else ("--concurrency", str(concurrency))
    return WorkerProcess(WORKER_APP, url, namespace, *tuned, "--shutdown-timeout", "5",
                         cwd=ROOT, log_path=log_path)  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------


def fresh_app(url: str, namespace: str, client: redis.Redis) -> tuple[Delayq, BenchTasks]:
    # Each measurement starts from an empty server: a worker's start-up scan walks the whole
    # keyspace, and leftovers would skew the memory figures. SYNC: a lazy (background) flush
    # would still be freeing memory while the next one is measured.
    client.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]
    app = Delayq(url, namespace=namespace)
    return app, register(app)


def from_ms(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def arm_far(app: Delayq, tasks: BenchTasks, count: int, rng: random.Random) -> int:
    """Arm ``count`` far-future no-op timers with the batch API; returns their payload bytes."""
    payload_bytes = 0
    for start in range(0, count, PREPARE_CHUNK):
        stop = min(count, start + PREPARE_CHUNK)
        reqs = [
            tasks.noop.prepare(i, delay=FAR_DELAY_S + rng.random() * FAR_SPREAD_S)
            for i in range(start, stop)
        ]
        payload_bytes += sum(len(r.payload) for r in reqs)
        app.schedule_many(reqs)
    return payload_bytes


def arm_all(app: Delayq, reqs: list[ScheduleRequest]) -> list[int]:
    """Arm prepared timers with the batch API; returns their due times (ms)."""
    due: list[int] = []
    for start in range(0, len(reqs), PREPARE_CHUNK):
        due += [t.due_ms for t in app.schedule_many(reqs[start : start + PREPARE_CHUNK])]
    return due


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} /s"


# -- 1. schedule throughput ---------------------------------------------------------------------


def bench_schedule(url: str, cfg: Config, client: redis.Redis) -> tuple[list[Row], float]:
    """Rows, and the batch rate (timers/s) later phases use to leave time for scheduling."""
    app, tasks = fresh_app(url, "bench-sched", client)
    rng = random.Random(cfg.seed)
    tasks.noop.schedule(0, delay=FAR_DELAY_S)  # connect and load the script outside the clock

    started = time.perf_counter()
    for i in range(cfg.single):
        tasks.noop.schedule(i, delay=FAR_DELAY_S + rng.random() * FAR_SPREAD_S)
    single_s = time.perf_counter() - started

    started = time.perf_counter()
    arm_far(app, tasks, cfg.batch, rng)
    batch_s = time.perf_counter() - started

    started = time.perf_counter()
    prepared = [tasks.noop.prepare(i, delay=FAR_DELAY_S + rng.random() * FAR_SPREAD_S)
                for i in range(min(cfg.batch, 50_000))]  # fmt: skip
    prepare_s = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(prepared), PREPARE_CHUNK):
        app.schedule_many(prepared[start : start + PREPARE_CHUNK])
    armed_s = time.perf_counter() - started
    app.close()
    single_rate, many_rate = cfg.single / single_s, len(prepared) / armed_s
    rows = [
        Row(f"schedule(): one call per timer ({cfg.single:,})", rate(cfg.single, single_s),
            ">= 10,000 /s", single_rate >= 10_000),
        Row(f"schedule_many() incl. prepare() ({cfg.batch:,})", rate(cfg.batch, batch_s)),
        Row(f"schedule_many() of prepared requests ({len(prepared):,})",
            rate(len(prepared), armed_s), ">= 100,000 /s", many_rate >= 100_000),
        Row("  prepare() alone", rate(len(prepared), prepare_s)),
    ]  # fmt: skip
    return rows, cfg.batch / batch_s


# -- 2 and 4. memory per pending timer, then fire lateness with them pending -------------------


def bench_pending(
    url: str, cfg: Config, batch_rate: float, client: redis.Redis, workdir: Path
) -> list[Row]:
    ns = "bench-late"
    app, tasks = fresh_app(url, ns, client)
    log = workdir / "worker-late.log"
    # The worker starts on an empty keyspace (so its start-up scan is instant) and stays up
    # while the pending timers are armed: the window below then sees a steady-state worker.
    with worker_process(url, ns, cfg.concurrency, log) as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))
        before = used_memory(client)
        payload_bytes = arm_far(app, tasks, cfg.pending, random.Random(cfg.seed))
        after = used_memory(client)
        lateness, overran = fire_window(app, tasks, cfg, batch_rate, client, worker)
    app.close()
    memory = memory_rows(cfg.pending, after - before, payload_bytes)
    return memory + lateness_rows(cfg, lateness, overran)


def fire_window(
    app: Delayq,
    tasks: BenchTasks,
    cfg: Config,
    batch_rate: float,
    client: redis.Redis,
    worker: WorkerProcess,
) -> tuple[list[float], bool]:
    """Arm ``cfg.due`` timers spread evenly over ``cfg.window`` s; return their lateness (ms)."""
    # Scheduling must be over before the first one falls due: the window measures the worker
    # alone, not the worker competing with this process's scheduling burst.
    lead_s = 1.0 + 3 * cfg.due / batch_rate
    first_ms = (time.time() + lead_s) * 1000
    step_ms = cfg.window * 1000 / cfg.due
    due = [round(first_ms + i * step_ms) for i in range(cfg.due)]
    reqs = [tasks.record.prepare(ms, at=from_ms(ms)) for ms in due]
    if arm_all(app, reqs) != due:
        # Each job computes its lateness from the due time it carries: it must be the real one.
        raise RuntimeError("the server armed the timers at other times than requested")
    overran = time.time() * 1000 > first_ms
    key = lateness_key(app.namespace)
    give_up = time.monotonic() + lead_s + cfg.window + 30
    while client.llen(key) < cfg.due and time.monotonic() < give_up:
        worker.check_alive()
        time.sleep(0.1)
    return [float(v) for v in client.lrange(key, 0, -1)], overran


def memory_rows(count: int, grown: int, payload_bytes: int) -> list[Row]:
    per_timer = grown / count
    payload = payload_bytes / count
    overhead = per_timer - payload
    return [
        Row(f"server memory per pending timer ({count:,})", f"{per_timer:,.1f} B"),
        Row("  payload (msgpack) per timer", f"{payload:,.1f} B"),
        Row("  per timer minus payload", f"{overhead:,.1f} B", "<= 250 B", overhead <= 250),
    ]


def lateness_rows(cfg: Config, lateness: list[float], overran: bool) -> list[Row]:
    falling = f"{cfg.due / cfg.window:,.0f} /s"
    head = f"lateness, {cfg.pending:,} pending, {falling} due"
    rows = [
        Row(f"timers falling due ({cfg.due:,} over {cfg.window:g} s)", falling, ">= 2,000 /s",
            cfg.due / cfg.window >= 2000),
        Row("  of them executed", f"{len(lateness):,}", f"{cfg.due:,}", len(lateness) == cfg.due),
    ]  # fmt: skip
    if overran:
        rows.append(Row("  WARNING: scheduling overran the first deadline", "", "", False))
    if len(lateness) < 2:
        return rows
    cuts = statistics.quantiles(lateness, n=100, method="inclusive")
    return [
        *rows,
        Row(f"{head} p50", f"{cuts[49]:.2f} ms"),
        Row(f"{head} p99", f"{cuts[98]:.2f} ms", "<= 5 ms", cuts[98] <= 5),
        Row(f"{head} max", f"{max(lateness):.2f} ms"),
        Row(f"{head} min", f"{min(lateness):.2f} ms", ">= 0 ms (never early)",
            min(lateness) >= 0),
    ]  # fmt: skip


# -- 3. no-op jobs per second -------------------------------------------------------------------


def bench_noop(
    url: str, cfg: Config, batch_rate: float, client: redis.Redis, workdir: Path
) -> Iterator[Row]:
    """Async and plain-function no-op jobs, at the worker's default concurrency and tuned."""
    for mode in ("async", "sync"):
        for concurrency in (None, cfg.concurrency):
            yield from drain_noop(url, cfg, batch_rate, client, workdir, mode, concurrency)


def drain_noop(
    url: str, cfg: Config, batch_rate: float, client: redis.Redis, workdir: Path, mode: str,
    concurrency: int | None,
) -> list[Row]:  # fmt: skip
    ns = "bench-noop"
    app, tasks = fresh_app(url, ns, client)
    task = tasks.noop if mode == "async" else tasks.noop_sync
    log = workdir / f"worker-noop-{mode}-{concurrency}.log"
    with worker_process(url, ns, concurrency, log) as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))
        # All due at one instant after scheduling ends, so the worker (already warm and idle)
        # is timed alone, from that instant until the last job is acknowledged.
        due_s = time.time() + 1.0 + 3 * cfg.noop / batch_rate
        at = from_ms(due_s * 1000)
        arm_all(app, [task.prepare(i, at=at) for i in range(cfg.noop)])
        overran = time.time() > due_s
        drained = wait_drained(app, client, worker, timeout=60 + cfg.noop / 1000)
        dead = int(client.xlen(app.keys.dead))
    app.close()
    per_s = cfg.noop / (drained - due_s)
    setting = "default concurrency" if concurrency is None else f"concurrency {concurrency}"
    label = f"no-op jobs/s, 1 worker, {mode}, {setting} ({cfg.noop:,})"
    target = mode == "async"
    rows = [Row(label, f"{per_s:,.0f} /s", ">= 25,000 /s" if target else "-",
                per_s >= 25_000 if target else None)]  # fmt: skip
    if dead or overran:
        rows.append(Row(f"  WARNING: dead letters {dead}, scheduling overran {overran}", ""))
    return rows


def wait_drained(app: Delayq, client: redis.Redis, worker: WorkerProcess, timeout: float) -> float:
    """time.time() once no timer is pending and every fired job is acknowledged."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        pending = client.zcard(app.keys.index)
        # Every queue's streams: jobs of another queue or priority wait in streams of their own.
        unacked = sum(q.waiting + q.in_flight for q in app.queues())
        if pending == 0 and unacked == 0:
            return time.time()
        worker.check_alive()
        time.sleep(POLL_S)
    raise RuntimeError(f"jobs not drained within {timeout:.0f}s:\n{worker.tail()}")


# -- report -------------------------------------------------------------------------------------


def describe(cfg: Config, client: redis.Redis) -> str:
    worker = f"worker: 1 process, --concurrency {cfg.concurrency}, async tasks"
    return f"{describe_host(client)}\n{worker}"


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast run")
    parser.add_argument("--single", type=int, help=f"schedule() calls (default {FULL.single:,})")
    parser.add_argument("--batch", type=int, help=f"schedule_many() timers ({FULL.batch:,})")
    parser.add_argument("--pending", type=int, help=f"far-future timers ({FULL.pending:,})")
    parser.add_argument("--due", type=int, help=f"timers falling due in the window ({FULL.due:,})")
    parser.add_argument("--window", type=float, help=f"seconds they fall due over ({FULL.window})")
    parser.add_argument("--noop", type=int, help=f"no-op jobs to drain ({FULL.noop:,})")
    parser.add_argument("--concurrency", type=int, help=f"worker concurrency ({FULL.concurrency})")
    parser.add_argument("--seed", type=int, help="random seed for the far-future deadlines")
    ns = parser.parse_args(argv)
    base = QUICK if ns.quick else FULL
    # Explicit sizes win over --quick's.
    given = {k: v for k, v in vars(ns).items() if k != "quick" and v is not None}
    cfg = replace(base, **given)
    if min(cfg.single, cfg.batch, cfg.pending, cfg.due, cfg.noop, cfg.concurrency) < 1:
        parser.error("sizes and --concurrency must be at least 1")
    if cfg.window <= 0:
        parser.error("--window must be positive")
    return cfg


def run(cfg: Config, url: str, workdir: Path) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    try:
        print(describe(cfg, client), flush=True)
        rows, batch_rate = bench_schedule(url, cfg, client)
        yield from rows
        yield from bench_noop(url, cfg, batch_rate, client, workdir)
        yield from bench_pending(url, cfg, batch_rate, client, workdir)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    return report("delayq-bench-", lambda url, workdir: run(cfg, url, workdir))


if __name__ == "__main__":
    sys.exit(main())
