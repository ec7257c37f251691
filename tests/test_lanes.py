"""The threads that run plain-function handlers (worker/_lanes.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from delayq.worker._lanes import Lanes


def lane_threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(name) and t.is_alive())


def test_results_and_errors_come_back_to_their_callers() -> None:
    async def scenario() -> None:
        lanes = Lanes(3, "lanes-results")
        results = await asyncio.gather(*(lanes.run(lambda i=i: i * i) for i in range(50)))
        assert results == [i * i for i in range(50)]

        def fail() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await lanes.run(fail)
        assert lanes.shutdown() is False

    asyncio.run(scenario())


def test_abandoned_calls_are_replaced_and_their_threads_end_when_they_return() -> None:
    release = threading.Event()

    async def scenario() -> None:
        lanes = Lanes(2, "lanes-hung")
        hung = [lanes.run(lambda: release.wait(30)) for _ in range(2)]
        for future in hung:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(future, 0.2)
            lanes.abandon(future)
        # Both threads hang; their replacements still give two calls at a time.
        both = threading.Barrier(2, timeout=10)
        await asyncio.gather(lanes.run(both.wait), lanes.run(both.wait))
        assert lane_threads("lanes-hung") == 4
        release.set()
        for _ in range(200):  # the hung calls return: their threads end, two remain
            if lane_threads("lanes-hung") == 2:
                break
            await asyncio.sleep(0.02)
        assert lane_threads("lanes-hung") == 2
        again = threading.Barrier(2, timeout=10)
        await asyncio.gather(lanes.run(again.wait), lanes.run(again.wait))
        assert lanes.shutdown() is False

    asyncio.run(scenario())


def test_a_call_that_timed_out_before_it_started_never_runs() -> None:
    ran: list[str] = []
    gate = threading.Event()

    async def scenario() -> None:
        lanes = Lanes(1, "lanes-queued")
        busy = lanes.run(lambda: gate.wait(30))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lanes.run(lambda: ran.append("late")), 0.1)
        gate.set()
        await busy
        await lanes.run(lambda: ran.append("next"))
        assert ran == ["next"]
        assert lanes.shutdown() is False

    asyncio.run(scenario())


def test_shutdown_tells_when_a_call_still_runs() -> None:
    release = threading.Event()

    async def scenario() -> None:
        lanes = Lanes(1, "lanes-stop")
        running = lanes.run(lambda: release.wait(30))
        await asyncio.sleep(0.1)
        assert lanes.shutdown() is True
        release.set()
        await running

    asyncio.run(scenario())
