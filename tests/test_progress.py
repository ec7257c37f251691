"""Progress told by running jobs (``current_job().progress``), seen by waiters and handles, on a
real server with a worker."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from delayq import Delayq, JobContext, Progress, current_job
from tests.conftest import WorkerThread, wait_until


def _job() -> JobContext:
    job = current_job()
    assert job is not None
    return job


def test_waiters_and_handles_see_each_step(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    gates = [threading.Event() for _ in range(3)]

    @app.task(name="prog.steps")
    def steps() -> str:
        for i, gate in enumerate(gates):
            _job().progress((i + 1) / 3, f"step {i + 1}")
            assert gate.wait(20)
        return "done"

    start_worker(app)
    timer = steps.delay()
    seen: list[Progress] = []
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(timer.result(20, on_progress=seen.append)))
    waiter.start()
    for i, gate in enumerate(gates):
        wait_until(lambda i=i: len(seen) == i + 1, timeout=10)  # type: ignore[misc]
        assert seen[-1] == Progress((i + 1) / 3, f"step {i + 1}")
        gate.set()
    waiter.join(20)
    assert got == ["done"]
    assert [round(p.fraction, 3) for p in seen] == [0.333, 0.667, 1.0]
    timer.refresh()
    assert timer.state == "succeeded" and timer.progress == Progress(1.0, "step 3")


def test_an_async_handler_reports_and_a_retry_starts_afresh(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    tries: list[int] = []
    release = threading.Event()

    @app.task(name="prog.async", retries=1, retry_backoff=0.05)
    async def work() -> int:
        tries.append(_job().attempt)
        if len(tries) == 1:
            _job().progress(0.9, "almost, then fails")
            raise RuntimeError("first attempt fails")
        _job().progress(0.5)
        assert await asyncio.to_thread(release.wait, 20)
        return len(tries)

    start_worker(app)
    timer = work.delay()
    wait_until(lambda: timer.refresh() == "running" and timer.outcome.attempts == 2 and  # type: ignore[union-attr]
               timer.progress is not None, timeout=10)  # fmt: skip
    assert timer.progress == Progress(0.5, None)  # not the first attempt's 0.9
    release.set()

    async def main() -> int:
        async with app:
            seen: list[Progress] = []
            value: int = await timer.aresult(20, on_progress=seen.append)
            return value

    assert asyncio.run(main()) == 2


def test_progress_refuses_what_it_cannot_tell() -> None:
    job = JobContext("t", "task", 0, "1-0", 0, 0)
    job.progress(0.5, "made by hand: goes nowhere")
    for bad in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"from 0\.0 to 1\.0"):
            job.progress(bad)
    for wrong in ("half", None, True):
        with pytest.raises(TypeError, match="fraction"):
            job.progress(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 500 characters"):
        job.progress(0.1, "x" * 501)
    with pytest.raises(TypeError, match="message is a str"):
        job.progress(0.1, 3)  # type: ignore[arg-type]
