"""What a crash failover costs: SIGKILL of a primary while timers fire, repeated; prints one table.

Each round arms timers spread over a few seconds on a local 3-primary, 3-replica cluster (the
bundled binary), lets two workers fire about a quarter of them, kills the primary holding the
most shards, and waits for every timer to fire after its replica is promoted. The ledger counts,
per round:

- lost: timers that never ran (armed before the crash, so replicated in the usual case);
- repeated: timers that ran twice (fired on the old primary in its last moments, before the
  replica had the firing: the replica still holds them pending);
- outage: from the kill to the first job that ran from a timer of the killed primary's shards;
- lateness, max: how late the timers due during the outage ran.

Run from the repository root (a few minutes; ``--rounds`` and ``--timers`` for other sizes):

    .venv/bin/python benchmarks/bench_failover.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from bench_table import Row, report
from redis.crc import key_slot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq, Worker, WorkerSettings  # noqa: E402
from delayq._cluster_server import LocalCluster  # noqa: E402
from delayq.testing import describe_host  # noqa: E402
from tests.cluster_fixtures import Ledger  # noqa: E402

SETTINGS = WorkerSettings(visibility_timeout=3.0, sweep_interval=1.0, shutdown_timeout=5.0)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _start_worker(app: Delayq) -> tuple[Worker, threading.Thread]:
    worker = Worker(app, SETTINGS)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False},
                              daemon=True)  # fmt: skip
    thread.start()
    if not worker.ready.wait(30):
        raise RuntimeError("worker did not start")
    return worker, thread


def _owners(cluster: LocalCluster, layout: Any) -> list[int]:
    """The port of the primary holding each shard."""
    slots = cluster.nodes[0].query("CLUSTER", "SLOTS")

    def owner(key: str) -> int:
        slot = key_slot(key.encode())
        return next(int(r[2][1]) for r in slots if int(r[0]) <= slot <= int(r[1]))

    return [owner(keys.index) for keys in layout.shards]


def one_round(cluster: LocalCluster, timers: int, spread: float) -> dict[str, float]:
    cluster.wait_ready(timeout=60.0)
    namespace = "f" + uuid.uuid4().hex[:10]
    ledger = Ledger()
    producer, note = ledger.app(cluster.url, namespace)
    workers = [_start_worker(ledger.app(cluster.url, namespace)[0]) for _ in range(2)]
    now = time.time()
    producer.schedule_many([
        note.request((f"t{i}", now + 0.5 + spread * i / timers), {},
                     delay=0.5 + spread * i / timers, timer_id=f"t{i}")
        for i in range(timers)
    ])  # fmt: skip
    layout = producer._run(producer.store.layout())
    _wait(lambda: len(ledger.runs) > timers // 4, 60)
    owners = _owners(cluster, layout)
    port = Counter(owners).most_common(1)[0][0]
    victim = next(n for n in cluster.nodes if n.port == port)
    victim_shards = {k for k, owner in enumerate(owners) if owner == port}
    killed_at = time.time()
    victim.stop(kill=True)
    try:
        _wait(lambda: len(ledger.runs) == timers, 90)
        time.sleep(1.0)  # a repeat would come soon after
    finally:
        victim.start()
        for worker, thread in workers:
            worker.stop()
            thread.join(30)
        producer.close()
    with ledger.lock:
        after = [(ledger.ran_at[t], t) for t in ledger.ran_at if ledger.ran_at[t] > killed_at
                 and layout.shard_of(t) in victim_shards]  # fmt: skip
        outage = min(after)[0] - killed_at if after else float("nan")
        late = [ledger.ran_at[t] - ledger.due[t] for _, t in after if ledger.due[t] > killed_at]
        return {
            "lost": timers - len(ledger.runs),
            "repeated": sum(1 for n in ledger.runs.values() if n > 1),
            "outage": outage,
            "late": max(late, default=float("nan")),
        }


def rows(results: list[dict[str, float]], timers: int) -> Iterator[Row]:
    for i, r in enumerate(results, 1):
        lost, repeated = r["lost"], r["repeated"]
        yield Row(f"round {i}: lost / repeated, of {timers:,}", f"{lost:.0f} / {repeated:.0f}")
        yield Row("  outage: kill to the first job of its shards", f"{r['outage']:.1f} s")
        yield Row("  lateness of timers due in the outage, max", f"{r['late']:.1f} s")
    total_lost = sum(r["lost"] for r in results)
    yield Row("all rounds: lost in all", f"{total_lost:.0f}", "0", total_lost == 0)
    yield Row("all rounds: repeated, most in a round", f"{max(r['repeated'] for r in results):.0f}")
    outage = statistics.median(r["outage"] for r in results)
    yield Row("all rounds: outage, median", f"{outage:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timers", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=8.0, help="seconds the timers span")
    args = parser.parse_args()
    # Each shard's listener warns at every reconnect attempt while its node is down.
    logging.getLogger("delayq").setLevel(logging.ERROR)

    def run(url: str, workdir: Path) -> Iterator[Row]:
        with redis.Redis.from_url(url) as client:
            print(describe_host(client), flush=True)
        cluster = LocalCluster(3, 1, data_dir=workdir / "cluster")
        cluster.start(timeout=60.0)
        try:
            results = []
            for i in range(args.rounds):
                results.append(one_round(cluster, args.timers, args.spread))
                print(f"  round {i + 1}: {results[-1]}", flush=True)
        finally:
            cluster.cleanup()
        yield from rows(results, args.timers)

    return report("bench-failover-", run)


if __name__ == "__main__":
    raise SystemExit(main())
