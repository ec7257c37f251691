"""What flow control costs, and how late throttled jobs start; prints one table.

On a scratch server of the bundled binary, with one ``delayq worker`` child process at its
default settings:

- no-op jobs per second, all due at once, for a task without limits, with a concurrency limit
  and with a rate limit (both far above what the worker runs, so that they never bind: what is
  measured is the cost of asking), async and plain-function handlers, alternated, best of two;
- throttled jobs of a task limited to 500/s, all due at once: how late each started past the
  moment its token allowed (the n-th start may come n intervals after the first);
- runs of a task limited to one at a time: the gap from one run's end (its slot's release) to
  the next one's start.

Run from the repository root (about a minute; ``--jobs`` for other sizes):

    .venv/bin/python benchmarks/bench_limits.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from bench_core import arm_all, fresh_app, worker_process
from bench_results import best_of_two
from bench_table import Row, report
from bench_tasks import BenchTasks, lateness_key, ping_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq  # noqa: E402
from delayq.testing import describe_host  # noqa: E402

TARGET_COST = 0.20
TARGET_LATE_MS = 10.0


def late_rows(what: str, late: list[float]) -> Iterator[Row]:
    cuts = statistics.quantiles(late, n=100, method="inclusive")
    yield Row(f"{what}, p50 ({len(late):,})", f"{cuts[49]:.2f} ms")
    yield Row(
        "  p99", f"{cuts[98]:.2f} ms", f"<= {TARGET_LATE_MS:g} ms", cuts[98] <= TARGET_LATE_MS
    )
    yield Row("  max", f"{max(late):.2f} ms")


def collect(
    client: redis.Redis, app: Delayq, count: int, worker: object, timeout: float
) -> list[float]:
    key = lateness_key(app.namespace)
    give_up = time.monotonic() + timeout
    while client.llen(key) < count and time.monotonic() < give_up:
        worker.check_alive()  # type: ignore[attr-defined]
        time.sleep(0.1)
    values = [float(v) for v in client.lrange(key, 0, -1)]
    client.delete(key)
    return values


def measure(url: str, workdir: Path, jobs: int) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    print(describe_host(client), flush=True)
    ns = "bench-limits"
    app, tasks = fresh_app(url, ns, client)
    with worker_process(url, ns, None, workdir / "worker-limits.log") as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))
        client.delete(lateness_key(ns))
        yield from cost_rows(app, client, worker, tasks, jobs)
        paced = max(1000, jobs // 20)
        arm_all(app, [tasks.paced.prepare() for _ in range(paced)])
        starts = sorted(collect(client, app, paced, worker, timeout=paced / 500 + 30))
        # A saturated 500/s limit lets the n-th run start 2 ms x n after the first.
        late = [at - (starts[0] + 2.0 * n) for n, at in enumerate(starts)]
        yield from late_rows("throttled by 500/s: start past its token's time", late)
        serial = 500
        arm_all(app, [tasks.serial.prepare() for _ in range(serial)])
        gaps = collect(client, app, serial - 1, worker, timeout=60)
        yield from late_rows("concurrency=1: a slot's release to the next start", gaps)
    app.close()
    client.close()


def cost_rows(app: Delayq, client: redis.Redis, worker: object, tasks: BenchTasks,
              jobs: int) -> Iterator[Row]:  # fmt: skip
    for mode, plain, conc, rate in (
        ("async", tasks.noop, tasks.noop_concurrency, tasks.noop_rate),
        ("sync", tasks.noop_sync, tasks.noop_sync_concurrency, tasks.noop_sync_rate),
    ):
        free, limited = best_of_two(app, client, worker, plain, conc, jobs)
        free_too, rated = best_of_two(app, client, worker, plain, rate, jobs)
        yield Row(f"no-op jobs/s, {mode}, no limit ({jobs:,}, all due at once)",
                  f"{free:,.0f} /s, {free_too:,.0f} /s")  # fmt: skip
        for what, value, beside in (("with a concurrency limit", limited, free),
                                    ("with a rate limit", rated, free_too)):  # fmt: skip
            cost = 1 - value / beside
            yield Row(f"  {what}", f"{value:,.0f} /s ({cost:+.0%} cost)",
                      f"<= {TARGET_COST:.0%} cost", cost <= TARGET_COST)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    return report("bench-limits-", lambda url, workdir: measure(url, workdir, args.jobs))


if __name__ == "__main__":
    raise SystemExit(main())
