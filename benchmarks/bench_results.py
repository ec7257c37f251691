"""What outcomes cost and how fast they arrive; prints one table.

On a scratch server of the bundled binary, with one ``delayq worker`` child process:

- the round trip from a job's return to its waiter waking (``await t.aresult()``, one job at
  a time; the job returns ``time.time()`` as it ends, the waiter subtracts it on waking);
- no-op jobs per second, all due at once, with the default result_ttl (outcomes kept) and
  with ``result_ttl=0`` (none kept), async and plain-function handlers, default concurrency;
- the same with events off (the default) and with ``events=True`` on the task.

Run from the repository root (about a minute; ``--jobs`` and ``--waits`` for other sizes):

    .venv/bin/python benchmarks/bench_results.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from bench_core import arm_all, fresh_app, from_ms, wait_drained, worker_process
from bench_table import Row, report
from bench_tasks import BenchTasks, ping_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq  # noqa: E402
from delayq.testing import describe_host  # noqa: E402


def round_trips(app: Delayq, tasks: BenchTasks, waits: int) -> list[float]:
    async def main() -> list[float]:
        async with app:
            late: list[float] = []
            for _ in range(waits):
                timer = await tasks.stamp.adelay()
                ended = await timer.aresult(timeout=30)
                late.append((time.time() - ended) * 1000)
            return late

    return asyncio.run(main())


def drain(app: Delayq, client: redis.Redis, worker: object, task: object, jobs: int) -> float:
    due_s = time.time() + 1.0 + jobs / 20_000
    at = from_ms(due_s * 1000)
    arm_all(app, [task.prepare(i, at=at) for i in range(jobs)])  # type: ignore[attr-defined]
    drained = wait_drained(app, client, worker, timeout=60 + jobs / 1000)  # type: ignore[arg-type]
    return jobs / (drained - due_s)


def best_of_two(app: Delayq, client: redis.Redis, worker: object, first: object,
                second: object, jobs: int) -> tuple[float, float]:  # fmt: skip
    """Jobs/s of two tasks, alternated, best of two each: a run's warm-up or a neighbour's
    noise falls on both sides alike."""
    a = b = 0.0
    for _ in range(2):
        a = max(a, drain(app, client, worker, first, jobs))
        b = max(b, drain(app, client, worker, second, jobs))
    return a, b


def measure(url: str, workdir: Path, jobs: int, waits: int) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    print(describe_host(client), flush=True)
    ns = "bench-results"
    app, tasks = fresh_app(url, ns, client)
    with worker_process(url, ns, None, workdir / "worker-results.log") as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))
        late = sorted(round_trips(app, tasks, waits))
        p50, p99 = late[len(late) // 2], late[int(len(late) * 0.99)]
        yield Row(f"job's return to its waiter waking, p50 ({waits:,} waits)", f"{p50:.2f} ms",
                  "<= 1 ms", p50 <= 1.0)  # fmt: skip
        yield Row("  p99", f"{p99:.2f} ms", "<= 5 ms", p99 <= 5.0)
        yield Row("  mean", f"{statistics.fmean(late):.2f} ms")
        for mode, kept, unkept in (("async", tasks.noop, tasks.noop_unkept),
                                   ("sync", tasks.noop_sync, tasks.noop_sync_unkept)):  # fmt: skip
            without, with_results = best_of_two(app, client, worker, unkept, kept, jobs)
            cost = 1 - with_results / without
            yield Row(f"no-op jobs/s, {mode}, result_ttl=0 ({jobs:,})", f"{without:,.0f} /s")
            yield Row("  default result_ttl (kept)", f"{with_results:,.0f} /s ({cost:+.0%} cost)",
                      "< 15 % cost", cost < 0.15)  # fmt: skip
        for mode, quiet, told in (("async", tasks.noop, tasks.noop_events),
                                  ("sync", tasks.noop_sync, tasks.noop_sync_events)):  # fmt: skip
            off, on = best_of_two(app, client, worker, quiet, told, jobs)
            yield Row(f"no-op jobs/s, {mode}, events off (default)", f"{off:,.0f} /s")
            yield Row("  events=True (4 events a job)", f"{on:,.0f} /s ({1 - on / off:+.0%} cost)")
    app.close()
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--waits", type=int, default=2_000)
    args = parser.parse_args()
    return report("bench-results-",
                  lambda url, workdir: measure(url, workdir, args.jobs, args.waits))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
