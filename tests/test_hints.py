"""Expiry hints: a worker hears of expired shadow keys where that costs no more than delayq's
own expiries; unrelated keys expiring in the database never reach its listener."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from delayq import Delayq, EmbeddedServer
from delayq._keys import Keys
from delayq._runners import AsyncRunner
from delayq.worker._checks import hint_source
from delayq.worker._listener import Listener
from tests.conftest import WorkerThread, wait_until


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("KEx", "pattern"),
        ("Kx", "pattern"),
        ("Ex", "channel"),  # no keyspace events: the database-wide channel
        ("KEg$x", None),  # keyspace events of every write: no hints at all
        ("AKE", None),
        ("KExn", None),
        (None, "channel"),  # CONFIG not allowed: what the probe found works
    ],
)
def test_hint_source_follows_the_servers_flags(flags: str | None, expected: str | None) -> None:
    keys = Keys("ns")
    source = hint_source(flags, keys, 3)
    if expected == "pattern":
        assert source.pattern == "__keyspace@3__:dq:{ns}:s:*" and source.channel is None
    elif expected == "channel":
        assert source.channel == "__keyevent@3__:expired" and source.pattern is None
    else:
        assert source.pattern is None and source.channel is None and source.why


def test_listener_hears_only_its_own_shadow_keys_expire(fresh_server: EmbeddedServer) -> None:
    client = redis.Redis.from_url(fresh_server.url)
    client.config_set("notify-keyspace-events", "KEx")
    keys, other = Keys("mine"), Keys("other")
    hinted: list[str] = []

    async def scenario() -> None:
        listen = AsyncRunner.from_url(fresh_server.url, {}, retry=False)
        stopping = asyncio.Event()
        listener = Listener(listen, keys, hint_source("KEx", keys, 0), on_expired=hinted.append,
                            on_wake=lambda: None, on_connect=lambda: None,
                            stopping=stopping)  # fmt: skip
        running = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.subscribed.wait(), 10)
        # Flags changed since the listener chose (a worker with watchers enabled them): the
        # shadow keys' writes now arrive too, and are no hints.
        client.config_set("notify-keyspace-events", "KEg$x")
        client.set(keys.shadow("a"), 1, px=20)
        client.set(other.shadow("b"), 1, px=20)  # another namespace's timer
        client.set("unrelated:c", 1, px=20)
        client.set(keys.shadow("d"), 1)
        client.delete(keys.shadow("d"))  # removed, not expired: no hint
        time.sleep(0.05)
        for name in (keys.shadow("a"), other.shadow("b"), "unrelated:c"):
            client.exists(name)  # an access expires an overdue key at once
        deadline = time.monotonic() + 5
        while not hinted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # anything else would have arrived by now
        stopping.set()
        await running
        await listen.close()

    asyncio.run(scenario())
    assert hinted == ["a"]
    client.close()


@pytest.mark.parametrize(
    ("flags", "numsub", "patterns"), [("KEx", 0, 1), ("Ex", 1, 0), ("KEg$x", 0, 0)]
)
def test_worker_subscribes_to_hints_by_the_servers_flags(
    fresh_server: EmbeddedServer,
    start_worker: Callable[..., WorkerThread],
    flags: str,
    numsub: int,
    patterns: int,
) -> None:
    client = redis.Redis.from_url(fresh_server.url)
    client.config_set("notify-keyspace-events", flags)
    app = Delayq(fresh_server.url, namespace="hints")
    ran: list[int] = []

    @app.task
    def job(n: int) -> None:
        ran.append(n)

    start_worker(app)
    expired = Keys.expired_channel(0)
    assert dict(client.pubsub_numsub(expired)) == {expired.encode(): numsub}
    assert client.pubsub_numpat() == patterns
    job.schedule(1, delay=0.1)
    wait_until(lambda: ran == [1])  # whichever the hints, timers fire from the index
    app.close()
    client.close()
