"""Tasks run by bench_debounce.py's worker (``delayq worker -A benchmarks.bench_debounce_tasks``).

Task names are explicit: the benchmark imports this module as ``bench_debounce_tasks`` while
the worker imports it as ``benchmarks.bench_debounce_tasks``, and both must agree on what a
payload names. Handlers are coroutines that note when they started; a reporter pushes the
notes to Redis in batches, so that reporting does not disturb the worker being measured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import redis.asyncio as aredis

from delayq import Delayq

WINDOW_S = 1.0  # debounce window of the lateness runs
WATCHED_PREFIX = "bench:watched:"
REPORT_EVERY_S = 0.05

# The worker's app; the CLI's --url/--namespace override these before it connects.
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_client: aredis.Redis | None = None
_notes: list[str] = []  # firings not yet reported
_reporter: asyncio.Task[None] | None = None


def fired_key(namespace: str) -> str:
    return f"bench:{namespace}:fired"


def ping_key(namespace: str) -> str:
    return f"bench:{namespace}:ping"


def _redis() -> aredis.Redis:
    # Created on first use, inside the worker's event loop, which then owns its connections.
    global _client
    if _client is None:
        _client = aredis.Redis.from_url(app.url)
    return _client


def _note(note: str) -> None:
    global _reporter
    _notes.append(note)
    if _reporter is None:
        _reporter = asyncio.get_running_loop().create_task(_report_forever())


async def _report_forever() -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        if not _notes:
            continue
        batch = _notes[:]
        del _notes[:]
        try:
            await _redis().rpush(fired_key(app.namespace), *batch)
        except Exception:
            logging.getLogger("bench").exception("cannot report firings; retrying")
            _notes[:0] = batch


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
    await _redis().rpush(ping_key(app.namespace), "1")
