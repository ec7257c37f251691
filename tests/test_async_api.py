"""The awaitable twins of the producer API, against the real server: the same behaviour and the
same errors as their synchronous twins, safe from many tasks at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from delayq import (
    Delayq,
    EmbeddedServer,
    InvalidTimerId,
    PayloadError,
    ScheduleError,
    ServerOutOfMemory,
    TimerPaused,
)
from tests.conftest import WorkerThread, wait_until


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def recorder(app: Delayq) -> tuple[Any, Counter[str], threading.Lock]:
    ran: Counter[str] = Counter()
    lock = threading.Lock()

    @app.task(name="aio.note")
    def note(value: str) -> None:
        with lock:
            ran[value] += 1

    return note, ran, lock


def test_aschedule_fires_and_is_idempotent_by_id(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    note, ran, _ = recorder(app)

    async def scenario() -> tuple[Any, Any, Any]:
        async with app:
            first = await note.aschedule("a", delay=0.3, id="welcome:42")
            again = await note.aschedule("b", delay=60, id="welcome:42")
            soon = await note.adelay("now")
            return first, again, soon

    first, again, soon = run(scenario())
    assert first.created and not again.created and again.due_ms == first.due_ms
    assert again.payload.args == ("a",)  # the pending timer is returned unchanged
    assert soon.created
    start_worker(app)
    wait_until(lambda: ran == Counter({"a": 1, "now": 1}))


def test_async_twins_refuse_bad_input_like_their_sync_twins(app: Delayq) -> None:
    note, _, _ = recorder(app)

    @app.debounced(seconds=1, key="{device}")
    def offline(device: str) -> None: ...

    async def scenario() -> None:
        with pytest.raises(InvalidTimerId, match="reserved"):
            await note.aschedule("x", id="~mine")
        with pytest.raises(InvalidTimerId, match="must not be empty"):
            await app.atimer("")
        with pytest.raises(PayloadError):
            await note.aschedule(object())
        with pytest.raises(ScheduleError, match="missing a required argument"):
            await offline.atouch(other=1)
        with pytest.raises(ValueError, match="aware"):
            await note.aschedule("x", at=dt.datetime(2030, 1, 1))
        timer = await note.aschedule("x", delay=60)
        with pytest.raises(ValueError, match="delay= or at="):
            await timer.areschedule()
        await app.aclose()

    run(scenario())
    assert app.pending_count() == 1  # the refused calls stored nothing


def test_timer_handles_work_from_either_side(app: Delayq) -> None:
    note, _, _ = recorder(app)
    sync_made = note.schedule("s", delay=30, id="from-sync")

    async def scenario() -> Any:
        async with app:
            assert await sync_made.aextend(by=30)
            assert await sync_made.apause()
            with pytest.raises(TimerPaused):
                await sync_made.arestart()
            left = await sync_made.aremaining()
            assert left is not None and dt.timedelta(seconds=58) < left <= dt.timedelta(seconds=60)
            assert await sync_made.aresume()
            assert await sync_made.areschedule(delay=5)
            assert await sync_made.arestart()
            return await app.atimer("from-sync"), await note.aschedule("a", delay=30)

    looked_up, async_made = run(scenario())
    assert looked_up is not None and 4 < looked_up.remaining().total_seconds() <= 5
    assert async_made.extend(by=1) and async_made.pause() and async_made.resume()
    assert async_made.cancel() and not async_made.cancel()

    async def cancel_by_id() -> tuple[bool, bool, Any]:
        async with app:
            return (await app.acancel("from-sync"), await app.acancel("from-sync"),
                    await app.atimer("from-sync"))  # fmt: skip

    assert run(cancel_by_id()) == (True, False, None)


def test_many_concurrent_aschedules_each_arm_once_and_fire_once(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    note, ran, _ = recorder(app)
    ids = [f"c{i}" for i in range(1000)]

    async def scenario() -> list[Any]:
        async with app:
            timers = await asyncio.gather(*(note.aschedule(i, delay=0.5, id=i) for i in ids))
            # The same ids again, concurrently: every one is already pending.
            again = await asyncio.gather(*(note.aschedule(i, delay=0.5, id=i) for i in ids))
            assert not any(t.created for t in again)
            return list(timers)

    timers = run(scenario())
    assert all(t.created for t in timers) and app.pending_count() == 1000
    start_worker(app)
    wait_until(lambda: sum(ran.values()) >= 1000, timeout=30)
    wait_until(lambda: app.pending_count() == 0, timeout=10)
    assert ran == Counter(dict.fromkeys(ids, 1))


def test_a_task_cancelled_during_a_call_is_cancelled(app: Delayq) -> None:
    """A cancellation that races the server's reply still reaches the task (redis-py's use of
    ``asyncio.wait_for`` on Python 3.11 would drop it, and a loop meant to stop would not)."""
    note, _, _ = recorder(app)

    async def busy() -> None:
        while True:  # stops only by cancellation
            await app.aserver_time_ms()
            await note.aschedule("x", delay=60, id="busy")

    async def scenario() -> list[str]:
        outcomes = []
        async with app:
            for i in range(300):
                task = asyncio.create_task(busy())
                await asyncio.sleep((i % 20) / 10_000)  # lands at varied points of a call
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=5)
                if not done:
                    outcomes.append("still running")
                    task.cancel()
                    break
                outcomes.append("cancelled" if task.cancelled() else repr(task.exception()))
        return outcomes

    outcomes = run(scenario())
    assert Counter(outcomes) == Counter(cancelled=300)


def test_async_batches_listing_and_dead_letters(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    note, _, _ = recorder(app)

    @app.task(name="aio.fails", retries=0)
    def fails() -> None:
        raise RuntimeError("boom")

    @app.debounced(seconds=30, key="{device}")
    def offline(device: str) -> None: ...

    async def arm() -> None:
        async with app:
            armed = await app.aschedule_many([note.prepare(str(i), delay=60) for i in range(5)])
            assert [t.created for t in armed] == [True] * 5
            touched = await app.atouch_many([offline.prepare_touch("d1"),
                                             offline.prepare_touch("d1")])  # fmt: skip
            assert [t.created for t in touched] == [True, False]
            assert (await offline.atouch("d2")).created
            assert await app.apending_count() == 7
            listed = await app.atimers(task="aio.note")
            assert sorted(t.payload.args[0] for t in listed) == ["0", "1", "2", "3", "4"]
            assert await app.areschedule(listed[0].id, delay=120)
            assert await app.aserver_time_ms() > 0
            await fails.adelay()

    run(arm())
    start_worker(app)
    wait_until(lambda: app.stats().get("dead") == 1)

    async def letters() -> None:
        async with app:
            (letter,) = await app.adead_letters()
            assert letter.task == "aio.fails" and "boom" in letter.reason
            assert (await app.astats())["dead"] == 1
            assert await app.aretry_dead(letter)
            assert not await app.aretry_dead(letter)  # gone once re-armed
            await asyncio.sleep(0)

    run(letters())
    wait_until(lambda: app.stats().get("dead") == 2)

    async def purge() -> int:
        async with app:
            return await app.apurge_dead()

    assert run(purge()) == 1


def test_sync_and_async_calls_use_their_own_pools_and_new_loops(
    app: Delayq, rclient: redis.Redis
) -> None:
    note, _, _ = recorder(app)
    app.connect()
    before = int(rclient.info("clients")["connected_clients"])

    async def one(tag: str) -> int:
        async with app:  # closes this loop's pool as the loop ends
            await note.aschedule(tag, delay=60)
            return int(rclient.info("clients")["connected_clients"])

    assert run(one("first")) > before  # the sync pool's connection stays; this one is new
    assert run(one("second")) > before  # another event loop: a pool of its own
    note.schedule("sync", delay=60)
    assert app.pending_count() == 3
    app.close()

    async def close() -> None:
        await app.aclose()  # nothing open: harmless
        assert await app.apending_count() == 3  # a pool for this loop
        await app.aclose()
        await app.aclose()  # closing twice is harmless

    run(close())


def test_aconnect_reports_an_unreachable_server() -> None:
    app = Delayq("redis://127.0.0.1:1/0", namespace="nothere")

    async def scenario() -> None:
        with pytest.raises(redis.ConnectionError):
            await app.aconnect()

    run(scenario())


def test_a_full_server_refuses_async_calls_as_it_refuses_sync_ones(
    tmp_path: Path, namespace: str
) -> None:
    limits = ("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    with EmbeddedServer(data_dir=tmp_path / "valkey", extra_args=limits) as server:
        app = Delayq(server.url, namespace=namespace)

        @app.task(name="aio.bulky")
        def bulky(blob: str) -> None: ...

        @app.debounced(seconds=1.0, key="{tag}")
        def quiet(tag: str) -> None: ...

        async def scenario() -> None:
            armed = []
            with pytest.raises(ServerOutOfMemory, match="memory is full") as full:
                for _ in range(20_000):
                    armed.append(await bulky.aschedule("x" * 2000, delay=60))
            assert "refused, and nothing stored before was changed" in str(full.value)
            assert await app.apending_count() == len(armed) > 100
            with pytest.raises(ServerOutOfMemory) as batch:
                await app.aschedule_many([bulky.prepare("x", delay=1.0) for _ in range(10)])
            assert batch.value.completed == 0 and "10 of a batch of 10 were" in str(batch.value)
            with pytest.raises(ServerOutOfMemory, match="touch of timer"):
                await quiet.atouch("door")
            with pytest.raises(ServerOutOfMemory, match="reschedule of timer"):
                await armed[1].areschedule(delay=5.0)
            assert await armed[0].acancel()  # cancelling frees memory: always allowed
            await app.aclose()

        run(scenario())
        app.close()
