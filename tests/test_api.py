"""Scheduling, inspecting, rescheduling and cancelling timers, against the real server."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import delayq
from delayq import ConfigurationError, Delayq, InvalidTimerId, PayloadError, ScheduleError
from tests.conftest import WorkerThread, wait_until


def recorder(app: Delayq) -> tuple[Any, list[tuple[Any, float]]]:
    ran: list[tuple[Any, float]] = []
    lock = threading.Lock()

    @app.task
    def note(value: Any) -> None:
        with lock:
            ran.append((value, time.time()))

    return note, ran


def test_schedule_fires_after_delay(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    note, ran = recorder(app)
    start_worker(app)
    timer = note.schedule("a", delay=0.3)
    assert timer.created
    assert timer.payload.task == note.name and timer.payload.args == ("a",)
    wait_until(lambda: ran)
    assert ran[0][0] == "a"
    assert ran[0][1] >= timer.due_ms / 1000 - 0.005  # never early (same machine's clock)
    wait_until(lambda: app.timer(timer.id) is None)  # acknowledged: data removed


def test_delay_accepts_timedelta_and_at(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    note, ran = recorder(app)
    start_worker(app)
    note.schedule("td", delay=dt.timedelta(milliseconds=200))
    note.schedule("at", at=dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=300))
    note.schedule("past", at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # overdue: fires at once
    wait_until(lambda: len(ran) == 3)
    assert {v for v, _ in ran} == {"td", "at", "past"}


def test_delayed_default_delay_and_plain_call(app: Delayq) -> None:
    calls: list[int] = []

    @app.delayed(seconds=3 * 24 * 3600)
    def follow_up(user_id: int) -> int:
        calls.append(user_id)
        return user_id * 2

    assert follow_up(21) == 42  # a plain call runs now, in-process
    assert calls == [21]
    timer = follow_up.delay(42)
    left = timer.remaining()
    assert left is not None
    assert dt.timedelta(days=3) - dt.timedelta(seconds=5) < left <= dt.timedelta(days=3)
    assert abs((timer.due_at - dt.datetime.now(dt.UTC)) - dt.timedelta(days=3)).total_seconds() < 5


def test_idempotent_id(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    note, ran = recorder(app)
    first = note.schedule("first", delay=0.5, id="welcome:42")
    second = note.schedule("second", delay=60, id="welcome:42")
    assert first.created and not second.created
    assert second.due_ms == first.due_ms
    assert second.payload.args == ("first",)
    start_worker(app)
    wait_until(lambda: ran)
    wait_until(lambda: app.timer("welcome:42") is None)
    assert [v for v, _ in ran] == ["first"]
    # Once fired and done, the id is free again.
    assert note.schedule("third", delay=0.1, id="welcome:42").created
    wait_until(lambda: len(ran) == 2)


def test_timer_handle_inspect(app: Delayq) -> None:
    note, _ = recorder(app)
    note.schedule("x", delay=60, id="inspect")
    timer = app.timer("inspect")
    assert timer is not None
    assert timer.payload.args == ("x",) and timer.payload.attempt == 0
    assert dt.timedelta(seconds=55) < timer.remaining() <= dt.timedelta(seconds=60)  # type: ignore[operator]
    assert app.timer("missing") is None
    assert app.pending_count() == 1


def test_cancel_before_deadline_never_fires(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    note, ran = recorder(app)
    start_worker(app)
    doomed = note.schedule("doomed", delay=0.4)
    assert doomed.cancel() is True
    assert doomed.cancel() is False
    assert app.cancel("never-existed") is False
    marker = note.schedule("marker", delay=0.8)
    wait_until(lambda: ran)
    assert [v for v, _ in ran] == ["marker"]
    assert app.timer(doomed.id) is None and doomed.remaining() is None
    assert not rclient.hexists(app.keys.data(doomed.id), doomed.id)
    assert not rclient.exists(app.keys.shadow(doomed.id))
    assert marker.id


def test_reschedule_earlier_and_later(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    note, ran = recorder(app)
    start_worker(app)
    early = note.schedule("early", delay=3600)
    late = note.schedule("late", delay=0.2)
    assert early.reschedule(delay=0.3)
    assert late.reschedule(at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.2))
    start = time.time()
    wait_until(lambda: len(ran) == 2)
    order = [v for v, _ in sorted(ran, key=lambda item: item[1])]
    assert order == ["early", "late"]
    assert ran[[v for v, _ in ran].index("late")][1] - start >= 0.9
    assert early.reschedule(delay=1) is False  # fired: no longer pending


def test_reschedule_wakes_a_sleeping_worker(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    """The worker sleeps until the earliest deadline; an earlier one must wake it."""
    note, ran = recorder(app)
    note.schedule("far", delay=3600)
    start_worker(app)
    time.sleep(0.2)  # let the worker settle into its long wait (not a correctness wait)
    timer = note.schedule("near", delay=0.1)
    wait_until(lambda: ran, timeout=5)
    assert ran[0][1] - timer.due_ms / 1000 < 1.0


def test_batch_schedule(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    note, ran = recorder(app)
    timers = app.schedule_many([note.prepare(i, delay=0.2) for i in range(2500)], chunk=1000)
    assert len(timers) == 2500 and all(t.created for t in timers)
    assert app.pending_count() == 2500
    start_worker(app)
    wait_until(lambda: len(ran) == 2500, timeout=30)
    assert sorted(v for v, _ in ran) == list(range(2500))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, "must not be negative"),
        ({"delay": math.nan}, "finite"),
        ({"delay": math.inf}, "finite"),
        ({"delay": "10"}, "seconds"),
        ({"delay": True}, "seconds"),
        ({"at": dt.datetime(2030, 1, 1)}, "time-zone aware"),
        ({"delay": 1, "at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}, "not both"),
        ({"id": ""}, "empty"),
        ({"id": "x" * 2000}, "longer than"),
        ({"id": 42}, "must be a str"),
    ],
)
def test_bad_input_is_refused_and_stores_nothing(
    app: Delayq, kwargs: dict[str, Any], message: str
) -> None:
    note, _ = recorder(app)
    note.schedule("kept", delay=60, id="kept")
    with pytest.raises(ScheduleError, match=message):
        note.schedule("x", **kwargs)
    assert app.pending_count() == 1
    assert app.timer("kept") is not None


def test_unserializable_and_oversized_arguments(server: delayq.EmbeddedServer) -> None:
    app = Delayq(server.url, namespace="tsmall", max_payload_bytes=1024)

    @app.task
    def job(*args: Any, **kwargs: Any) -> None: ...

    with pytest.raises(PayloadError, match="argument 'handle'"):
        job.schedule(1, delay=1, handle=object())
    with pytest.raises(PayloadError, match="over the limit"):
        job.schedule("x" * 2000, delay=1)
    assert app.pending_count() == 0
    app.close()


def test_invalid_namespace() -> None:
    for bad in ["", "has space", "a{b}", "x" * 65, "star*"]:
        with pytest.raises(ConfigurationError, match="invalid namespace"):
            Delayq("redis://127.0.0.1:1/0", namespace=bad)


def test_unusual_ids_work(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    note, ran = recorder(app)
    ids = ["with space", "new\nline", "{brace}", "star*", "ünïcødé ✓", "x" * 1000]
    for timer_id in ids:
        note.schedule(timer_id, delay=0.1, id=timer_id)
    with pytest.raises(InvalidTimerId):
        note.schedule("bad", id="\ud800")
    start_worker(app)
    wait_until(lambda: len(ran) == len(ids))
    assert sorted(v for v, _ in ran) == sorted(ids)


def test_module_level_decorators_use_default_app(server: delayq.EmbeddedServer) -> None:
    app = delayq.configure(server.url, namespace="tshared")
    try:

        @delayq.task(retries=1)
        def shared_job(x: int) -> int:
            return x + 1

        @delayq.delayed(seconds=120)
        def shared_later(x: int) -> None: ...

        assert shared_job(1) == 2
        timer = shared_later.delay(5)
        assert app.timer(timer.id) is not None
        assert shared_job.app is app
    finally:
        delayq.set_default_app(None)
        app.close()


def test_async_task(app: Delayq, start_worker: Callable[..., WorkerThread]) -> None:
    done = threading.Event()

    @app.task
    async def async_job(value: str) -> None:
        if value == "ok":
            done.set()

    start_worker(app)
    async_job.schedule("ok", delay=0.1)
    assert done.wait(10)
