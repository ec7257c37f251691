"""Tasks run by bench_debounce.py's worker (``delayq worker -A benchmarks.bench_debounce_tasks``).

Task names are explicit: the benchmark imports this module as ``bench_debounce_tasks`` while
the worker imports it as ``benchmarks.bench_debounce_tasks``, and both must agree on what a
payload names. Handlers are coroutines that note when they started; a reporter pushes the
notes to Redis in batches, so that reporting does not disturb the worker being measured.
"""

from __future__ import annotations

import os
import time

from delayq import Delayq
from delayq.testing import BatchPusher

WINDOW_S = 1.0  # debounce window of the lateness runs
WATCHED_PREFIX = "bench:watched:"
REPORT_EVERY_S = 0.05

# The worker's app; the CLI's --url/--namespace override these before it connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))


def fired_key(namespace: str) -> str:
    return f"bench:{namespace}:fired"


def ping_key(namespace: str) -> str:
    return f"bench:{namespace}:ping"


# Firings go to Redis in batches, over one connection made inside the worker's event loop.
_reporter = BatchPusher(app, fired_key, REPORT_EVERY_S)
_note = _reporter.add


# retries=0 everywhere: a failing benchmark job should show up as a dead letter, not run again.


@app.debounced(seconds=WINDOW_S, key="k:{key}", name="bench.debounce.quiet", retries=0)
async def quiet(key: int, touch: int) -> None:
    """Fires WINDOW_S after the key's last touch; ``touch`` tells which touch that was."""
    _note(f"{key} {touch} {time.time() * 1000:.3f}")


@app.on_expire(WATCHED_PREFIX + "*", name="bench.debounce.expired", retries=0)
async def expired(key: str, suffix: str, data: bytes | None) -> None:
    """A key written with a plain SET ... PX expired."""
    _note(f"{suffix} -1 {time.time() * 1000:.3f}")


@app.debounced(seconds=3600, key="t:{key}", name="bench.debounce.far", retries=0)
async def far(key: int, n: int) -> None:
    """Touched by the throughput runs, with no worker running: never fires."""


@app.task(name="bench.debounce.ping", retries=0)
async def ping() -> None:
    """Tells the benchmark the worker is up and runs jobs end to end."""
    await _reporter.redis().rpush(ping_key(app.namespace), "1")
