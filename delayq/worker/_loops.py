"""Background upkeep as named loops that log a failure and carry on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("delayq.worker")


async def wait_or_stop(stopping: asyncio.Event, timeout: float | None) -> bool:
    """Sleep up to ``timeout`` seconds; True if ``stopping`` was set meanwhile."""
    if timeout is not None and timeout <= 0:
        return stopping.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout)
    return stopping.is_set()


async def wait_any(events: list[asyncio.Event], timeout: float | None) -> None:
    """Return when any event is set or the timeout passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def guarded(name: str, body: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
    """Run ``body`` until stopping; after an error, log it and start again with a backoff."""
    backoff = 0.05
    while not stopping.is_set():
        try:
            await body()
            backoff = 0.05
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "%s failed (%s: %s); retrying in %.2fs", name, type(exc).__name__, exc, backoff
            )
            if await wait_or_stop(stopping, backoff):
                return
            backoff = min(backoff * 2, 2.0)


async def every(
    name: str,
    interval: float,
    body: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    kick: asyncio.Event | None = None,
) -> None:
    """Run ``body`` every ``interval`` seconds (or at once when ``kick`` is set), until stopping."""

    async def tick() -> None:
        while not stopping.is_set():
            if kick is not None:
                kick.clear()
            await body()
            events = [stopping] if kick is None else [stopping, kick]
            await wait_any(events, interval)

    await guarded(name, tick, stopping)
