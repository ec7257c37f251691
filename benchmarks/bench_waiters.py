"""What awaiting many outcomes costs the waiting process; prints one table.

On a scratch server of the bundled binary, with one ``delayq worker`` child process (default
settings), this process awaits no-op jobs in batches of concurrent waiters (``await
t.aresult()`` each) and reads its own resident memory (VmRSS) after 0, 1/4, 1/2, 3/4 and all of
``--waits`` waits, and the live blocks of Python's allocator (exact where RSS is coarse): once
the pools and the outcomes subscription are warm, both must stay flat.
Then ``--concurrent`` waiters at once, on jobs all due at one instant: the time until the last
one woke, the memory while they wait and after, and what a second such burst adds to it.

Run from the repository root (about half a minute; ``--waits``, ``--batch`` and
``--concurrent`` for other sizes):

    .venv/bin/python benchmarks/bench_waiters.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from bench_core import fresh_app, from_ms, worker_process
from bench_table import Row, report
from bench_tasks import BenchTasks, ping_key

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq  # noqa: E402
from delayq._waiting import AsyncWaiters  # noqa: E402
from delayq.testing import describe_host  # noqa: E402

MIB = 1024 * 1024
WAIT_S = 120.0  # per waiter: a lost wake-up fails the run instead of hanging it
# Verdicts. RSS: a leak of 100 B per wait is 7 MiB over 75,000 waits; the allocator's noise is
# about 1 MiB over batches, a few MiB over one burst of 10,000 (so that one is a figure only).
# Live Python blocks are exact: a leak of one small object per wait is one block per wait.
GROWTH_MIB = 4.0
GROWTH_BLOCKS = 2_000


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int  # bytes resident (VmRSS)
    blocks: int  # live blocks of Python's allocator

    @classmethod
    def now(cls) -> Memory:
        gc.collect()  # cycles the collector would free anyway do not count
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return cls(int(line.split()[1]) * 1024, sys.getallocatedblocks())
        raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def held(waiters: AsyncWaiters) -> int:
    """Waiters held right now, over every shard (private: a benchmark's peek)."""
    shards = waiters.shards.values()
    return sum(len(events) for watch in shards for events in watch.waiting.values())


async def batches(app: Delayq, tasks: BenchTasks, waits: int, batch: int) -> list[Memory]:
    """Memory before any wait and after each quarter of ``waits``, ``batch`` waiters at once."""
    marks = [waits * q // 4 for q in range(1, 5)]
    seen = [Memory.now()]
    done = 0
    while done < waits:
        size = min(batch, min(m for m in marks if m > done) - done)
        timers = await app.aschedule_many([tasks.noop.prepare(i) for i in range(size)])
        await asyncio.gather(*(t.aresult(timeout=WAIT_S) for t in timers))
        done += size
        if done in marks:
            seen.append(Memory.now())
    return seen


async def concurrent(app: Delayq, tasks: BenchTasks, count: int) -> dict[str, Any]:
    """``count`` waiters on jobs due at one instant: when the last woke, memory around it."""
    waiters = await app._waiters()
    before = Memory.now()
    # Due once every waiter listens: scheduling and starting them takes about 0.1 ms each.
    due_s = time.time() + 1.0 + count / 5_000
    timers = await app.aschedule_many([tasks.stamp.prepare(at=from_ms(due_s * 1000))
                                       for _ in range(count)])  # fmt: skip

    async def one(timer: Any) -> tuple[float, float]:
        ended = await timer.aresult(timeout=WAIT_S)
        woke = time.time()
        return woke, woke - ended

    waiting = asyncio.gather(*(one(t) for t in timers))
    while held(waiters) < count and time.time() < due_s:
        await asyncio.sleep(0.01)
    listening, during = time.time() <= due_s, Memory.now()
    woken = await waiting
    late = sorted(lag for _, lag in woken)
    figures = {
        "before": before, "during": during, "listening": listening,
        "all_woken_s": max(w for w, _ in woken) - due_s,
        "lag_p50_ms": late[len(late) // 2] * 1000, "lag_max_ms": late[-1] * 1000,
        "held_after": held(waiters),
    }  # fmt: skip
    del timers, waiting, woken  # the caller's own: what is left after is the waiters'
    return {**figures, "after": Memory.now()}


def measure(url: str, workdir: Path, waits: int, batch: int, count: int) -> Iterator[Row]:
    client = redis.Redis.from_url(url)
    print(describe_host(client), flush=True)
    ns = "bench-waiters"
    app, tasks = fresh_app(url, ns, client)
    with worker_process(url, ns, None, workdir / "worker-waiters.log") as worker:
        worker.wait_ready(tasks.ping.schedule, client, ping_key(ns))

        async def run() -> tuple[list[Memory], dict[str, Any], dict[str, Any]]:
            async with app:
                started = time.perf_counter()
                seen = await batches(app, tasks, waits, batch)
                print(f"  {waits:,} waits in {time.perf_counter() - started:.1f} s", flush=True)
                first = await concurrent(app, tasks, count)
                # Again: a leak grows by as much again, memory the allocator kept is reused.
                return seen, first, await concurrent(app, tasks, count)

        seen, burst, again = asyncio.run(run())
    app.close()
    client.close()
    yield from rows(seen, burst, again, waits, batch, count)


def rows(
    seen: list[Memory], burst: dict[str, Any], again: dict[str, Any], waits: int, batch: int,
    count: int,
) -> Iterator[Row]:  # fmt: skip
    yield Row("RSS of the waiting process, connected, 0 waits", f"{seen[0].rss / MIB:.1f} MiB")
    for q, value in enumerate(seen[1:], 1):
        yield Row(f"  after {waits * q // 4:,} waits ({batch:,} concurrent at a time)",
                  f"{value.rss / MIB:.1f} MiB")  # fmt: skip
    grown, blocks = (seen[-1].rss - seen[1].rss) / MIB, seen[-1].blocks - seen[1].blocks
    yield Row(f"RSS growth {waits // 4:,}→{waits:,} waits", f"{grown:+.1f} MiB",
              f"<= {GROWTH_MIB:g} MiB", grown <= GROWTH_MIB)  # fmt: skip
    yield Row("  live Python blocks, growth", f"{blocks:+,}", f"<= {GROWTH_BLOCKS:,}",
              blocks <= GROWTH_BLOCKS)  # fmt: skip
    yield Row(f"{count:,} concurrent waiters: due → all woken", f"{burst['all_woken_s']:.2f} s",
              "all listening before due", burst["listening"])  # fmt: skip
    yield Row("  job's end → its waiter woken, p50", f"{burst['lag_p50_ms']:.1f} ms")
    yield Row("  max", f"{burst['lag_max_ms']:.1f} ms")
    before, during, after = burst["before"], burst["during"], burst["after"]
    yield Row("  RSS before", f"{before.rss / MIB:.1f} MiB")
    yield Row(f"  RSS with {count:,} waiting", f"{during.rss / MIB:.1f} MiB")
    per_waiter = (during.rss - before.rss) / count / 1024
    yield Row("    per waiter (its coroutine, Timer, Event, tasks)", f"{per_waiter:.1f} KiB")
    yield Row("  RSS after", f"{after.rss / MIB:.1f} MiB")
    yield Row(f"  RSS after a second {count:,}", f"{again['after'].rss / MIB:.1f} MiB")
    blocks = again["after"].blocks - after.blocks
    yield Row("    live Python blocks, growth", f"{blocks:+,}", f"<= {GROWTH_BLOCKS:,}",
              blocks <= GROWTH_BLOCKS)  # fmt: skip
    still = burst["held_after"] + again["held_after"]
    yield Row("  waiters still held after", f"{still}", "0", still == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, default=100_000, help="waits for the RSS series")
    parser.add_argument("--batch", type=int, default=1_000, help="concurrent waiters per batch")
    parser.add_argument("--concurrent", type=int, default=10_000, help="waiters all at once")
    args = parser.parse_args()
    if args.waits < 4 or min(args.batch, args.concurrent) < 1:
        parser.error("--waits must be at least 4 (a figure per quarter), sizes at least 1")
    return report("bench-waiters-", lambda url, workdir: measure(
        url, workdir, args.waits, args.batch, args.concurrent))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
