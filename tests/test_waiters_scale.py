"""Awaited outcomes at scale, against a real server and a ``delayq worker`` child process:
10,000 coroutines of one process each get their own job's result, and rounds of waits leave
nothing behind in the app's waiters (no per-origin entries, no Events or Futures, no delayq or
redis allocations that pile up)."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from delayq import Delayq, EmbeddedServer
from delayq._waiting import AsyncWaiters
from tests.conftest import WorkerProcess

JOBS = 10_000
# Per wait, and for the whole gather: generous, so that a loaded 2-core machine is slow, not
# failing; a lost wake-up still ends the test well within pytest's own timeout.
WAIT_S = 120.0
ROUND = 500  # concurrent waits per round of the leak test
ROUNDS = 8
# Rounds 3..8 are compared with round 2 (round 1 warms up).
# A leak of one object per wait is ROUND * (ROUNDS - 2) = 3,000 of them; what else differs is a
# few objects made lazily.
SLACK_OBJECTS = 50
# A leaked Event is ~800 B (its deque), a dict or set entry with its origin id ~100 B: 300 KiB
# or more over those waits. Measured noise here: under 1 KiB.
SLACK_BYTES = 96 * 1024
TRACED = ("/delayq/", "/redis/")


async def echo(value: int) -> int:
    return value


# The worker child's app (-A tests.test_waiters_scale:worker_app); Delayq() reads its server and
# namespace from the environment the CLI sets.
worker_app = Delayq()
worker_app.task(name="scale.echo", retries=0)(echo)


def _start(
    app: Delayq, server: EmbeddedServer, worker_process: Callable[..., WorkerProcess]
) -> Any:
    worker_process(server.url, app.namespace, app="tests.test_waiters_scale:worker_app")
    return app.task(name="scale.echo", retries=0)(echo)


def _idle(waiters: AsyncWaiters) -> bool:
    """Nothing held for any origin id: every wait took its entry away."""
    return all(not watch.waiting for watch in waiters.shards.values())


def test_ten_thousand_coroutines_each_get_their_own_result(
    app: Delayq, server: EmbeddedServer, worker_process: Callable[..., WorkerProcess]
) -> None:
    task = _start(app, server, worker_process)

    async def one(i: int) -> None:
        timer = await task.adelay(i)
        got = await timer.aresult(timeout=WAIT_S)
        assert got == i, f"waiter {i} got {got!r}"

    async def main() -> None:
        async with app:
            async with asyncio.timeout(WAIT_S + 30):
                # Each coroutine schedules its own job, then waits for it: some jobs end before
                # their waiter listens, most after.
                await asyncio.gather(*(one(i) for i in range(JOBS)))
            assert _idle(await app._waiters())

    started = time.monotonic()
    asyncio.run(main())
    print(f"{JOBS:,} awaited jobs in {time.monotonic() - started:.1f} s")


def _live() -> dict[str, int]:
    """This loop's Events, Futures and Tasks (not another thread's), and all dicts and sets."""
    gc.collect()
    loop = asyncio.get_running_loop()
    counts = dict.fromkeys(("Event", "Future", "Task", "dict", "set"), 0)
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Event):
            # An Event is bound to its loop when first awaited.
            counts["Event"] += getattr(obj, "_loop", None) in (None, loop)
        elif isinstance(obj, asyncio.Future):
            counts["Task" if isinstance(obj, asyncio.Task) else "Future"] += obj.get_loop() is loop
        elif type(obj) in (dict, set):
            counts[type(obj).__name__] += 1
    return counts


def _traced_bytes() -> int:
    """Bytes still allocated with a delayq or redis frame anywhere in their traceback."""
    stats = tracemalloc.take_snapshot().statistics("traceback")
    return sum(s.size for s in stats if any(p in f.filename for f in s.traceback for p in TRACED))


def test_rounds_of_waits_leave_nothing_behind(
    app: Delayq, server: EmbeddedServer, worker_process: Callable[..., WorkerProcess]
) -> None:
    task = _start(app, server, worker_process)

    async def one_round(base: int) -> None:
        timers = await asyncio.gather(*(task.adelay(base + i) for i in range(ROUND)))
        async with asyncio.timeout(WAIT_S):
            got = await asyncio.gather(*(t.aresult(timeout=WAIT_S) for t in timers))
        assert got == [base + i for i in range(ROUND)]

    async def main() -> list[tuple[dict[str, int], int]]:
        async with app:
            waiters = await app._waiters()
            seen = []
            for r in range(1, ROUNDS + 1):
                if r == 2:
                    # Traced from here on: round 1 warmed up the pools, scripts and the
                    # subscription. 4 frames: an allocation made in asyncio or redis still
                    # shows the delayq frame that asked for it.
                    tracemalloc.start(4)
                await one_round(r * ROUND)
                assert _idle(waiters), f"round {r}: entries left in the waiters"
                if r in (2, ROUNDS):
                    seen.append((_live(), _traced_bytes()))
            return seen

    try:
        (second, second_bytes), (last, last_bytes) = asyncio.run(main())
    finally:
        tracemalloc.stop()
    grown = {kind: last[kind] - second[kind] for kind in last}
    assert all(n <= SLACK_OBJECTS for n in grown.values()), f"live objects grew: {grown}"
    assert last_bytes - second_bytes <= SLACK_BYTES, (
        f"delayq/redis allocations grew by {last_bytes - second_bytes:,} B "
        f"over {ROUNDS - 2} rounds of {ROUND} waits"
    )
