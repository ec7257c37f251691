"""delayq on a local Valkey cluster (3 primaries, 1 replica each, from the bundled binary)
next to one server; prints one table.

On a 2-core machine the cluster cannot be faster than one server (six servers share the two
cores), so what is measured is what shows the load spreads, with default settings throughout:

1. schedule throughput, one call per timer and batched (``schedule_many``), on one server and
   on the cluster (a namespace of the default 16 shards there)
2. server memory and CPU per primary while a million timers are armed: balanced within 15 %
3. fire lateness on the cluster with those timers pending, one worker process (`async def`
   handler), timers falling due spread over a window

    .venv/bin/python benchmarks/bench_cluster.py            # full sizes, a few minutes
    .venv/bin/python benchmarks/bench_cluster.py --quick    # small sizes, about a minute
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import redis
from bench_core import FAR_DELAY_S, FAR_SPREAD_S, PREPARE_CHUNK, arm_far, from_ms, rate
from bench_table import Row, cpu_seconds, report
from bench_tasks import lateness_key, ping_key, register

from delayq import Delayq
from delayq._calls import command
from delayq._cluster_server import ClusterNode, LocalCluster
from delayq.testing import WorkerProcess, describe_host

ROOT = Path(__file__).resolve().parent.parent
WORKER_APP = "benchmarks.bench_tasks:app"


@dataclass(frozen=True, slots=True)
class Config:
    single: int
    batch: int
    pending: int
    due: int
    window: float
    seed: int


FULL = Config(single=10_000, batch=100_000, pending=1_000_000, due=20_000, window=10.0, seed=1)
QUICK = replace(FULL, single=2_000, batch=20_000, pending=50_000, due=4_000, window=4.0)


def schedule_rates(url: str, namespace: str, cfg: Config) -> tuple[float, float]:
    """(single calls/s, batched timers/s) on a fresh namespace with default settings."""
    app = Delayq(url, namespace=namespace)
    tasks = register(app)
    rng = random.Random(cfg.seed)
    tasks.noop.schedule(0, delay=FAR_DELAY_S)  # connect, read the layout, load the scripts
    started = time.perf_counter()
    for i in range(cfg.single):
        tasks.noop.schedule(i, delay=FAR_DELAY_S + rng.random() * FAR_SPREAD_S)
    single = cfg.single / (time.perf_counter() - started)
    prepared = [tasks.noop.prepare(i, delay=FAR_DELAY_S + rng.random() * FAR_SPREAD_S)
                for i in range(cfg.batch)]  # fmt: skip
    started = time.perf_counter()
    for start in range(0, len(prepared), PREPARE_CHUNK):
        app.schedule_many(prepared[start : start + PREPARE_CHUNK])
    batched = cfg.batch / (time.perf_counter() - started)
    app.close()
    return single, batched


def bench_throughput(server_url: str, cluster: LocalCluster, cfg: Config) -> Iterator[Row]:
    one_single, one_batch = schedule_rates(server_url, "bench-one", cfg)
    yield Row(
        f"one server: schedule(), one call per timer ({cfg.single:,})", f"{one_single:,.0f} /s"
    )
    yield Row(f"one server: schedule_many() ({cfg.batch:,})", f"{one_batch:,.0f} /s")
    c_single, c_batch = schedule_rates(cluster.url, "bench-cluster", cfg)
    yield Row("cluster: schedule(), one call per timer", f"{c_single:,.0f} /s")
    share = c_batch / one_batch
    yield Row("cluster: schedule_many()", f"{c_batch:,.0f} /s ({share:.0%} of one server)",
              ">= 80 % of one server", share >= 0.8)  # fmt: skip


def _primaries(cluster: LocalCluster) -> list[ClusterNode]:
    urls = cluster.primary_urls()
    return [node for url in urls for node in cluster.nodes if node.url == url]


def _used_memory(node: ClusterNode) -> int:
    text = str(node.query("INFO", "memory"))
    line = next(x for x in text.splitlines() if x.startswith("used_memory:"))
    return int(line.partition(":")[2])


def _spread(values: list[float]) -> float:
    """The largest distance from the mean, as a share of it."""
    mean = statistics.fmean(values)
    return max(abs(v - mean) for v in values) / mean if mean else 0.0


def bench_pending(cluster: LocalCluster, cfg: Config, workdir: Path) -> Iterator[Row]:
    namespace = "bench-late"
    app = Delayq(cluster.url, namespace=namespace)
    tasks = register(app)
    log = workdir / "worker.log"
    with WorkerProcess(WORKER_APP, cluster.url, namespace, "--shutdown-timeout", "5",
                       cwd=ROOT, log_path=log) as worker:  # fmt: skip
        _wait_ready(app, tasks.ping.schedule, worker)
        primaries = _primaries(cluster)
        memory = [_used_memory(node) for node in primaries]
        cpu = [cpu_seconds(node.pid) or 0.0 for node in primaries]
        started = time.perf_counter()
        payload_bytes = arm_far(app, tasks, cfg.pending, random.Random(cfg.seed))
        armed_s = time.perf_counter() - started
        time.sleep(1.0)  # the replicas' output buffers, counted in used_memory, drain first
        grown = [_used_memory(n) - m for n, m in zip(primaries, memory, strict=True)]
        used = [(cpu_seconds(n.pid) or 0.0) - c for n, c in zip(primaries, cpu, strict=True)]
        yield Row(f"cluster: arming {cfg.pending:,} timers (schedule_many)",
                  rate(cfg.pending, armed_s))  # fmt: skip
        yield Row("  memory per primary (MB)", " / ".join(f"{g / 1e6:,.1f}" for g in grown),
                  "within 15 % of the mean", _spread(grown) <= 0.15)  # fmt: skip
        per_timer = sum(grown) / cfg.pending
        yield Row(
            "  memory per timer, all primaries",
            f"{per_timer:,.1f} B (payload {payload_bytes / cfg.pending:,.1f} B)",
            "<= 200 B",
            per_timer <= 200,
        )
        yield Row("  server CPU per primary while arming (s)",
                  " / ".join(f"{u:.2f}" for u in used), "within 15 % of the mean",
                  _spread(used) <= 0.15)  # fmt: skip
        yield from _lateness(app, tasks, cfg, worker)
    app.close()


def _wait_ready(app: Delayq, ping: object, worker: WorkerProcess) -> None:
    assert callable(ping)
    ping()
    deadline = time.monotonic() + 60
    while app._run(command("LPOP", ping_key(app.namespace))) is None:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready:\n{worker.tail()}")
        time.sleep(0.05)


def _lateness(app: Delayq, tasks: object, cfg: Config, worker: WorkerProcess) -> Iterator[Row]:
    record = tasks.record  # type: ignore[attr-defined]
    first_ms = (time.time() + 3.0) * 1000
    step_ms = cfg.window * 1000 / cfg.due
    reqs = [record.prepare(round(first_ms + i * step_ms), at=from_ms(round(first_ms + i * step_ms)))
            for i in range(cfg.due)]  # fmt: skip
    for start in range(0, len(reqs), PREPARE_CHUNK):
        app.schedule_many(reqs[start : start + PREPARE_CHUNK])
    overran = time.time() * 1000 > first_ms
    key = lateness_key(app.namespace)
    give_up = time.monotonic() + 3 + cfg.window + 30
    while app._run(command("LLEN", key)) < cfg.due and time.monotonic() < give_up:
        worker.check_alive()
        time.sleep(0.1)
    late = [float(v) for v in app._run(command("LRANGE", key, 0, -1))]
    head = f"cluster lateness, {cfg.pending:,} pending, {cfg.due / cfg.window:,.0f} /s due"
    yield Row("  of them executed", f"{len(late):,}", f"{cfg.due:,}", len(late) == cfg.due)
    if overran:
        yield Row("  WARNING: scheduling overran the first deadline", "", "", False)
    if len(late) > 1:
        cuts = statistics.quantiles(late, n=100, method="inclusive")
        yield Row(f"{head} p50", f"{cuts[49]:.2f} ms")
        yield Row(f"{head} p99", f"{cuts[98]:.2f} ms", "<= 10 ms", cuts[98] <= 10)
        yield Row(f"{head} min", f"{min(late):.2f} ms", ">= 0 ms", min(late) >= 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    cfg = QUICK if parser.parse_args().quick else FULL

    def run(url: str, workdir: Path) -> Iterator[Row]:
        with redis.Redis.from_url(url) as client:
            print(describe_host(client), flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as data:
            cluster = LocalCluster(3, 1, data_dir=Path(data))
            cluster.start(timeout=60)
            try:
                yield from bench_throughput(url, cluster, cfg)
                yield from bench_pending(cluster, cfg, workdir)
            finally:
                cluster.cleanup()

    return report("bench-cluster-", run)


if __name__ == "__main__":
    sys.exit(main())
