"""Running jobs: retries with backoff, dead letters, bad jobs that must not stop a worker."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

import redis

from delayq import Delayq, EmbeddedServer, JobContext, RetryPolicy, current_job
from delayq._codec import encode_payload
from tests.conftest import WorkerThread, wait_until


def test_retries_with_backoff_then_dead_letter(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    attempts: list[float] = []

    @app.task(retries=3, retry_backoff=0.2)
    def flaky(x: int) -> None:
        attempts.append(time.monotonic())
        raise ValueError(f"bad {x}")

    start_worker(app)
    timer = flaky.schedule(7, delay=0.05)
    wait_until(lambda: app.dead_letters(), timeout=20)
    assert len(attempts) == 4  # the first run and 3 retries
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # backoff 0.2 * 2**n with up to 50% jitter below it: at least 0.1, 0.2, 0.4 s
    for n, gap in enumerate(gaps):
        assert gap >= 0.2 * 2**n * 0.5 - 0.02, gaps
    (letter,) = app.dead_letters()
    assert letter.timer_id == timer.id and letter.task == flaky.name
    assert "ValueError: bad 7" in letter.reason and "retries exhausted" in letter.reason
    assert "Traceback" in letter.traceback and "bad 7" in letter.traceback
    assert app.timer(timer.id) is None
    assert not rclient.exists(app.keys.data(timer.id))
    assert app.stats()["retried"] == 3 and app.stats()["dead"] == 1


def test_retry_for_limits_which_errors_retry(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    calls: list[str] = []

    @app.task(retries=5, retry_backoff=0.05, retry_for=(ConnectionError,))
    def picky(kind: str) -> None:
        calls.append(kind)
        if kind == "conn" and calls.count("conn") < 3:
            raise ConnectionError("try again")
        if kind == "type":
            raise TypeError("will never work")

    start_worker(app)
    picky.delay("conn")
    picky.delay("type")
    wait_until(lambda: calls.count("conn") == 3 and app.dead_letters())
    (letter,) = app.dead_letters()
    assert "TypeError" in letter.reason and "not retried" in letter.reason
    assert calls.count("type") == 1


def test_dead_letter_retry_and_purge(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    fail = threading.Event()
    fail.set()
    ran: list[int] = []

    @app.task(retries=0)
    def fragile(x: int) -> None:
        if fail.is_set():
            raise RuntimeError("down")
        ran.append(x)

    start_worker(app)
    fragile.delay(1)
    fragile.delay(2)
    wait_until(lambda: len(app.dead_letters()) == 2)
    fail.clear()
    first, second = app.dead_letters()
    assert app.retry_dead(first) is True
    assert app.retry_dead(first) is False  # gone from the dead letters now
    wait_until(lambda: ran == [first_arg(first)])
    assert app.purge_dead() == 1
    assert app.dead_letters() == []
    assert second.entry_id


def test_dead_letters_are_bounded_by_bytes(
    server: EmbeddedServer,
    namespace: str,
    start_worker: Callable[..., WorkerThread],
    rclient: redis.Redis,
) -> None:
    """Letters hold whole payloads: the stream keeps to about dead_letter_max_bytes, dropping
    the oldest first, and always keeps the newest."""
    app = Delayq(server.url, namespace=namespace, dead_letter_max_bytes=1_000_000)

    @app.task(retries=0)
    def bulky(n: int, blob: bytes) -> None:
        raise RuntimeError("no")

    start_worker(app)
    app.schedule_many([bulky.prepare(n, b"x" * 100_000) for n in range(40)])
    wait_until(lambda: app.stats().get("dead") == 40, timeout=20)
    client = rclient
    size = client.memory_usage(app.keys.dead, samples=0)
    assert size is not None and size < 1_300_000, size
    letters = app.dead_letters(count=100)
    assert 5 <= len(letters) <= 12, len(letters)
    app.close()


def first_arg(letter: object) -> int:
    from delayq._codec import decode_payload

    return int(decode_payload(letter.raw_payload).args[0])  # type: ignore[attr-defined]


def test_unknown_task_and_corrupt_payload_are_dead_lettered(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    ran: list[str] = []

    @app.task
    def fine(x: str) -> None:
        ran.append(x)

    start_worker(app)
    # A timer for a task this worker does not know (e.g. renamed in the code).
    unknown = encode_payload("no.such.task", (), {}, attempt=0, created_ms=0, max_bytes=1 << 20)
    # A timer whose payload was corrupted in storage.
    k = app.keys
    for timer_id, payload in (("unknown", unknown), ("corrupt", b"\xc1garbage")):
        good = fine.schedule("placeholder", delay=30, id=timer_id)
        rclient.hset(k.data(timer_id), timer_id, payload)
        assert good.reschedule(delay=0.05)
    fine.schedule("after", delay=0.3)
    wait_until(lambda: len(app.dead_letters()) == 2 and ran == ["after"])
    reasons = {letter.timer_id: letter.reason for letter in app.dead_letters()}
    assert "unknown task 'no.such.task'" in reasons["unknown"]
    assert "undecodable payload" in reasons["corrupt"]


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(retries=10, backoff=1.0, backoff_max=30.0, jitter=0.5)
    for attempt, base in enumerate([1, 2, 4, 8, 16, 30, 30]):
        for _ in range(50):
            assert base * 0.5 <= policy.delay_for(attempt) <= base
    assert RetryPolicy(jitter=0).delay_for(2) == 4.0


def test_retry_never_replaces_a_newer_timer_with_the_same_id(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    """Once fired, an id is free: a new timer may take it while the old job still fails."""
    release = threading.Event()
    calls: list[str] = []

    @app.task(retries=1, retry_backoff=0.05)
    def once_failing(tag: str) -> None:
        calls.append(tag)
        if tag == "old" and calls.count("old") == 1:
            release.wait(10)
            raise RuntimeError("first attempt fails")

    start_worker(app)
    once_failing.schedule("old", delay=0.05, id="shared-id")
    wait_until(lambda: calls == ["old"])
    assert app.timer("shared-id") is None  # fired: the id is free
    newer = once_failing.schedule("new", delay=1.0, id="shared-id")
    assert newer.created
    release.set()  # the old job fails now, and its retry must not replace the newer timer
    wait_until(lambda: sorted(calls) == ["new", "old", "old"], timeout=15)
    assert app.dead_letters() == []


def test_hanging_job_times_out_and_frees_its_slot(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    from delayq import WorkerSettings

    release = threading.Event()
    done: list[str] = []

    @app.task(timeout=0.5, retries=1, retry_backoff=0.05)
    def hangs() -> None:
        release.wait(30)  # hangs (until the test ends)

    @app.task(timeout=0.5, retries=0)
    async def hangs_async() -> None:
        await asyncio.sleep(30)

    @app.task
    def quick(tag: str) -> None:
        done.append(tag)

    start_worker(app, WorkerSettings(concurrency=1, visibility_timeout=5, shutdown_timeout=1))
    hangs.delay()
    hangs_async.delay()
    wait_until(lambda: len(app.dead_letters()) == 2, timeout=20)
    reasons = sorted(letter.reason for letter in app.dead_letters())
    assert all(r.startswith("JobTimeout: ran longer than its timeout of 0.5 s") for r in reasons)
    # With one slot, the hung threads would block everything: they must not.
    quick.delay("after")
    wait_until(lambda: done == ["after"], timeout=10)
    release.set()


def test_current_job_tells_a_handler_which_firing_it_runs(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    seen: list[tuple[str, JobContext | None]] = []

    @app.task(retries=1, retry_backoff=0.05)
    def sync_job(tag: str) -> None:
        job = current_job()
        seen.append((tag, job))
        if job is not None and job.attempt == 0:
            raise ValueError("first attempt fails")

    @app.task
    async def async_job(tag: str) -> None:
        seen.append((tag, current_job()))

    sync_job("plain call")  # run in-process, not by a worker: no job
    assert seen == [("plain call", None)] and current_job() is None
    start_worker(app)
    first = sync_job.schedule("sync", delay=0.05)
    second = async_job.schedule("async", delay=0.05)
    wait_until(lambda: len(seen) == 4, timeout=15)
    jobs = {(tag, job.attempt): job for tag, job in seen[1:] if job is not None}
    assert sorted(jobs) == [("async", 0), ("sync", 0), ("sync", 1)]
    assert jobs["async", 0].timer_id == second.id and jobs["async", 0].task == async_job.name
    assert jobs["async", 0].due_ms == second.due_ms
    assert jobs["async", 0].fired_ms >= second.due_ms
    retried = jobs["sync", 1]
    assert jobs["sync", 0].timer_id == retried.timer_id == first.id
    assert jobs["sync", 0].delivery_id != retried.delivery_id  # a retry is a new firing
    assert retried.due_at.timestamp() * 1000 == retried.due_ms
