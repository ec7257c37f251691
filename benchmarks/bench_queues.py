"""What queues and priorities cost, and whether a backlog in one queue delays another; prints
one table.

On a scratch server of the bundled binary, with one ``delayq worker`` child process at its
default settings (it takes ``default`` and ``bench``, the queues its app names):

- no-op jobs per second, all due at once, of the default queue at level 0 and of the queue
  ``bench`` at level 5, async and plain-function handlers, alternated, best of two;
- start lateness of 2,000 jobs due over 4 s in ``default``, alone, then beside 100,000 jobs
  waiting in a queue no worker takes (``--backlog``).

Run from the repository root (about a minute):

    .venv/bin/python benchmarks/bench_queues.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from bench_core import arm_all, fresh_app, from_ms, worker_process
from bench_results import best_of_two
from bench_table import Row, report
from bench_tasks import BenchTasks, lateness_key, noop, ping_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq  # noqa: E402
from delayq.testing import describe_host  # noqa: E402

TARGET_COST = 0.05  # a routed job against a default one
SPREAD_JOBS, SPREAD_S = 2000, 4.0


def spread_lateness(
    app: Delayq, client: redis.Redis, tasks: BenchTasks, worker: object
) -> list[float]:
    key = lateness_key(app.namespace)
    client.delete(key)
    first = time.time() * 1000 + 1000
    due = [round(first + n * SPREAD_S * 1000 / SPREAD_JOBS) for n in range(SPREAD_JOBS)]
    arm_all(app, [tasks.record.prepare(ms, at=from_ms(ms)) for ms in due])
    give_up = time.monotonic() + SPREAD_S + 30
    while client.llen(key) < SPREAD_JOBS and time.monotonic() < give_up:
        worker.check_alive()  # type: ignore[attr-defined]
        time.sleep(0.1)
    return [float(v) for v in client.lrange(key, 0, -1)]


def late_row(what: str, late: list[float]) -> Row:
    cuts = statistics.quantiles(late, n=100, method="inclusive")
    return Row(f"{what} ({len(late):,})", f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms")


def measure(url: str, workdir: Path, jobs: int, backlog: int) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    print(describe_host(client), flush=True)
    ns = "bench-queues"
    app, tasks = fresh_app(url, ns, client)
    with worker_process(url, ns, None, workdir / "worker-queues.log") as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))
        for mode, plain, routed in (("async", tasks.noop, tasks.noop_routed),
                                    ("sync", tasks.noop_sync, tasks.noop_sync_routed)):  # fmt: skip
            free, other = best_of_two(app, client, worker, plain, routed, jobs)
            cost = 1 - other / free
            yield Row(f"no-op jobs/s, {mode}, default queue ({jobs:,}, all due at once)",
                      f"{free:,.0f} /s")  # fmt: skip
            yield Row("  queue 'bench', priority 5", f"{other:,.0f} /s ({cost:+.0%} cost)",
                      f"<= {TARGET_COST:.0%} cost", cost <= TARGET_COST)  # fmt: skip
        alone = spread_lateness(app, client, tasks, worker)
        yield late_row("default jobs due over 4 s, start lateness", alone)
        waiting = app.task(name="bench.waiting", retries=0, queue="nobody")(noop)
        for start in range(0, backlog, 10_000):
            app.schedule_many([waiting.prepare() for _ in range(min(10_000, backlog - start))])
        stream = app.keys.stream("nobody", 0)
        while client.xlen(stream) < backlog:
            time.sleep(0.1)
        beside = spread_lateness(app, client, tasks, worker)
        yield late_row(f"  beside {backlog:,} jobs waiting in another queue", beside)
        p99 = [statistics.quantiles(x, n=100, method="inclusive")[98] for x in (alone, beside)]
        yield Row("  p99 change", f"{p99[1] - p99[0]:+.2f} ms", "unchanged (<= +5 ms)",
                  p99[1] - p99[0] <= 5)  # fmt: skip
    app.close()
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    args = parser.parse_args()
    return report(
        "bench-queues-", lambda url, workdir: measure(url, workdir, args.jobs, args.backlog)
    )


if __name__ == "__main__":
    raise SystemExit(main())
