"""Debounced timers: one firing per key, after the last touch; max_wait; payload modes; races."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import redis

from delayq import ConfigurationError, Delayq, ScheduleError, Touch
from delayq._store import StoreCalls
from tests.conftest import WorkerThread, wait_until


def test_10000_keys_touched_20_times_fire_once_after_last_touch(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    fired: dict[str, list[tuple[int, float]]] = defaultdict(list)
    lock = threading.Lock()
    # Wide enough that one key's consecutive touches (two rounds of 10,000 apart, at most) stay
    # inside it on a slow, loaded machine; the "most keys fired once" check below needs that.
    window = 5.0

    @app.debounced(seconds=window, key="device:{device_id}")
    def offline(device_id: str, seq: int) -> None:
        with lock:
            fired[device_id].append((seq, time.time()))

    start_worker(app)
    keys = [f"dev-{i}" for i in range(10_000)]
    # Each key's touches, as (sent no earlier than, sent no later than): a chunk's bounds.
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    rng = random.Random(7)
    for seq in range(20):
        order = keys[:]
        rng.shuffle(order)
        for start in range(0, len(order), 2000):
            chunk = order[start : start + 2000]
            before = time.time()
            app.touch_many([offline.prepare_touch(k, seq=seq) for k in chunk])
            after = time.time()
            for k in chunk:
                sent[k].append((before, after))

    # A key whose touches were once more than the window apart fired early, then fires again
    # after its last touch: wait for every key's last firing, not for its first.
    def all_fired_last() -> bool:
        with lock:
            return len(fired) == 10_000 and all(runs[-1][0] == 19 for runs in fired.values())

    wait_until(all_fired_last, timeout=120)
    time.sleep(0.5)  # a second firing of any key would show up now
    for key, runs in fired.items():
        if len(runs) > 1:
            # Only a pause between two touches longer than the window (a stalled, loaded
            # machine) allows an earlier firing; on time, a key fires once.
            widest = max(b[1] - a[0] for a, b in itertools.pairwise(sent[key]))
            assert widest > window - 0.05, f"{key} fired {len(runs)} times, touches <= window"
        seq, at = runs[-1]
        assert seq == 19, "payload='last' keeps the newest arguments"
        assert at >= sent[key][-1][0] + window - 0.05, f"{key} fired before last touch + window"
    assert sum(len(runs) == 1 for runs in fired.values()) >= 5_000, "most keys fired once"
    assert app.pending_count() == 0


def test_touch_returns_timer_and_first_payload(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    got: list[Any] = []

    @app.debounced(seconds=0.5, key="k:{name}", payload="first")
    def keep_first(name: str, value: int) -> None:
        got.append(value)

    first = keep_first.touch("a", 1)
    second = keep_first.touch("a", 2)
    assert first.id == "k:a" and first.created and not second.created
    assert second.due_ms >= first.due_ms
    timer = app.timer("k:a")
    assert timer is not None and timer.payload.args == ("a", 1)
    start_worker(app)
    wait_until(lambda: got)
    assert got == [1]


def test_max_wait_fires_despite_constant_touches(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    fired: list[float] = []

    @app.debounced(seconds=1.0, key="busy", max_wait=1.5)
    def busy(n: int) -> None:
        fired.append(time.time())

    start_worker(app)
    start = time.time()
    n = 0
    while time.time() - start < 4.0:
        busy.touch(n)
        n += 1
        time.sleep(0.1)  # a producer touching every 100 ms, never quiet for the 1 s window
    wait_until(lambda: len(fired) >= 3, timeout=10)
    # Cycles are capped at 1.5 s after their first touch: the first fires ~1.5 s in.
    assert 1.4 <= fired[0] - start <= 2.5, fired[0] - start
    assert 1.4 <= fired[1] - fired[0] <= 2.5


def test_payload_all_keeps_order_and_cap(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    digests: list[list[Touch]] = []

    @app.debounced(seconds=0.5, key="post:{post_id}", payload="all", max_items=5)
    def digest(touches: list[Touch]) -> None:
        digests.append(touches)

    for i in range(8):
        digest.touch(post_id=1, comment=f"c{i}")
    start_worker(app)
    wait_until(lambda: digests)
    (touches,) = digests
    assert [t.kwargs["comment"] for t in touches] == ["c3", "c4", "c5", "c6", "c7"]
    assert all(t.kwargs["post_id"] == 1 for t in touches)
    assert touches[0].touched_at <= touches[-1].touched_at


def test_touch_racing_the_firing_is_never_lost_nor_doubled(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    """Touches keep arriving across many firings: each lands in exactly one firing."""
    seen: list[int] = []
    lock = threading.Lock()

    @app.debounced(seconds=0.05, key="race", payload="all", max_items=10_000)
    def collect(touches: list[Touch]) -> None:
        with lock:
            seen.extend(t.args[0] for t in touches)

    start_worker(app)
    start_worker(app)
    total = 0
    deadline = time.time() + 4
    rng = random.Random(3)
    while time.time() < deadline:
        collect.touch(total)
        total += 1
        time.sleep(rng.choice([0.0, 0.01, 0.04, 0.05, 0.06]))  # around the window's edge
    wait_until(lambda: len(seen) >= total, timeout=15)
    time.sleep(0.3)
    assert sorted(seen) == list(range(total)), "a touch was lost or delivered twice"


def test_pause_resume_restart_extend(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: list[str] = []

    @app.task
    def note(tag: str) -> None:
        ran.append(tag)

    start_worker(app)
    paused = note.schedule("paused", delay=0.6)
    assert paused.pause() is True
    assert paused.paused and paused.pause() is True  # pausing twice changes nothing
    left = paused.remaining()
    assert left is not None and 0.3 < left.total_seconds() <= 0.6
    control = note.schedule("control", delay=1.0)
    wait_until(lambda: ran == ["control"], timeout=10)  # the paused one did not fire
    assert app.timer(paused.id) is not None and app.timer(paused.id).paused  # type: ignore[union-attr]
    assert paused.resume() is True and paused.resume() is False
    resumed_at = time.time()
    wait_until(lambda: "paused" in ran, timeout=10)
    assert time.time() - resumed_at >= 0.25

    restarted = note.schedule("restarted", delay=1.0)
    time.sleep(0.5)  # half the duration passes
    assert restarted.restart() is True
    remaining = restarted.remaining()
    assert remaining is not None and remaining.total_seconds() > 0.9  # the full second again
    extended = note.schedule("extended", delay=0.5)
    assert extended.extend(by=2) is True
    remaining = extended.remaining()
    assert remaining is not None and remaining.total_seconds() > 2.0
    wait_until(lambda: "restarted" in ran and "extended" in ran, timeout=15)
    assert control.restart() is False and control.extend(1) is False
    assert control.pause() is False and control.resume() is False


def test_paused_timer_survives_the_sweeper(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: list[str] = []

    @app.task
    def note(tag: str) -> None:
        ran.append(tag)

    timer = note.schedule("p", delay=0.2)
    timer.pause()
    runner = start_worker(app)
    wait_until(lambda: runner.worker.sweep_counters.sweeps >= 2, timeout=10)
    assert ran == [] and app.stats().get("repaired_data", 0) == 0
    assert timer.cancel() is True
    assert app.timer(timer.id) is None


def test_debounce_declaration_errors(app: Delayq) -> None:
    with pytest.raises(ConfigurationError, match="payload"):
        app.debounced(seconds=1, payload="most")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_wait"):
        app.debounced(seconds=10, max_wait=5)
    with pytest.raises(ConfigurationError, match="seconds"):
        app.debounced(seconds=0)

    @app.debounced(seconds=1, key="device:{device_id}")
    def needs_key(device: str) -> None: ...

    with pytest.raises(ScheduleError, match="device_id"):
        needs_key.touch("x")


def test_callable_key_and_cancel(app: Delayq) -> None:
    @app.debounced(seconds=60, key=lambda user, **_: f"user:{user.lower()}")
    def remind(user: str, note: str = "") -> None: ...

    timer = remind.touch("ALICE", note="hi")
    assert timer.id == "user:alice"
    assert remind.touch("alice").created is False
    assert timer.cancel() is True
    assert remind.touch("alice").created is True


def test_touch_after_an_unfired_deadline_starts_a_new_cycle(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    """With no worker to fire it, a cycle whose quiet period elapsed is still complete: a later
    touch must not fold into it (a heartbeat after 31 minutes of silence still raises the
    30-minute alert), whoever fires it and whenever."""
    runs: list[tuple[str, Any]] = []

    @app.debounced(seconds=0.3, key="{device}")
    def last(device: str, n: int) -> None:
        runs.append((device, n))

    @app.debounced(seconds=0.3, key="all-{device}", payload="all")
    def every(touches: list[Touch]) -> None:
        runs.append(("all", [t.kwargs["n"] for t in touches]))

    for n in (1, 2):
        last.touch("door", n=n)
        every.touch(device="door", n=n)
    first = last.touch("door", n=3)
    every.touch(device="door", n=3)
    wait_until(lambda: app.server_time_ms() > first.due_ms + 100, timeout=10)
    second = last.touch("door", n=4)  # the first cycle's deadline has passed: a new cycle
    every.touch(device="door", n=4)
    assert second.due_ms > first.due_ms + 300
    assert app.pending_count() == 4  # two cycles of each: the overdue ones retired, not lost

    start_worker(app)
    wait_until(lambda: len(runs) == 4, timeout=15)
    assert sorted(runs, key=repr) == sorted(
        [("door", 3), ("door", 4), ("all", [1, 2, 3]), ("all", [4])], key=repr
    )
    wait_until(lambda: app.pending_count() == 0)


def test_restart_keeps_the_duration_of_a_timer_long_overdue(
    app: Delayq, rclient: redis.Redis
) -> None:
    """No worker: the deadline passes and the shadow key (which holds the armed duration)
    expires a grace later. pause/resume/extend must not turn the duration into their own
    argument, and restart() must still re-arm the original duration."""

    @app.task
    def job(tag: str) -> None: ...

    first = job.schedule("a", delay=0.2, id="overdue-a")
    second = job.schedule("b", delay=0.2, id="overdue-b")
    wait_until(lambda: app.server_time_ms() > first.due_ms + 1300, timeout=10)
    assert not rclient.exists(app.keys.shadow(first.id))
    assert first.pause() and first.resume() and first.restart()
    assert second.extend(0.05) and second.restart()
    for timer in (first, second):
        left = timer.remaining()
        # The estimate (deadline minus the payload's creation) is the duration within a few ms.
        assert left is not None and 0.1 < left.total_seconds() < 0.3, (timer.id, left)


def test_max_wait_holds_for_a_cycle_waiting_for_its_retry(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    """A failed cycle's retry is pending under the key, and touches join it: max_wait must cap
    it from the first touch that joined, as it caps a fresh cycle."""
    runs: list[float] = []

    @app.debounced(seconds=1.0, key="flaky", max_wait=2.0, retries=1, retry_backoff=0.2)
    def flaky(n: int) -> None:
        runs.append(time.time())
        if len(runs) == 1:
            raise RuntimeError("first attempt fails")

    start_worker(app)
    flaky.touch(0)
    wait_until(lambda: runs, timeout=10)
    joined = time.time()
    n = 1
    while time.time() - joined < 5.0 and len(runs) < 2:
        flaky.touch(n)  # never quiet for the 1 s window
        n += 1
        time.sleep(0.1)
    wait_until(lambda: len(runs) >= 2, timeout=10)
    assert runs[1] - joined <= 2.8, f"the retry cycle ran {runs[1] - joined:.2f} s after joining"


def test_max_wait_added_to_a_task_with_a_pending_cycle(app: Delayq) -> None:
    """A cycle armed before the task had max_wait is capped from the next touch on."""
    other = Delayq(app.url, namespace=app.namespace)

    @app.debounced(seconds=10, key="k", name="capped")
    def before(n: int) -> None: ...

    @other.debounced(seconds=1, key="k", name="capped", max_wait=1.5)
    def after(n: int) -> None: ...

    before.touch(1)
    joined_ms = after.touch(2).due_ms - 1000  # the server's clock at that touch
    time.sleep(0.8)
    assert after.touch(3).due_ms <= joined_ms + 1500 + 5  # not 1 s after this touch
    other.close()


def test_touch_heals_an_index_entry_without_data(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """Leftovers of a failure (an index entry whose data is gone, overdue or not, and its
    touches list) never make a touch fail, and the touch's cycle fires with its own payload."""
    runs: list[Any] = []

    @app.debounced(seconds=0.2, key="{name}", payload="first")
    def first(name: str, n: int) -> None:
        runs.append((name, n))

    client = rclient
    now = app.server_time_ms()
    client.zadd(app.keys.index, {"overdue": now - 5000, "future": now + 60_000})
    client.rpush(app.keys.items("overdue"), b"leftover")
    assert first.touch("overdue", 1).created and first.touch("future", 2).created
    assert not client.exists(app.keys.items("overdue"))
    start_worker(app)
    wait_until(lambda: len(runs) == 2, timeout=10)
    assert sorted(runs) == [("future", 2), ("overdue", 1)]
    wait_until(lambda: app.pending_count() == 0)


def test_restart_after_the_shadow_key_expired_uses_the_servers_clock_only(
    app: Delayq, monkeypatch: pytest.MonkeyPatch, rclient: redis.Redis
) -> None:
    """A producer whose clock is 5 minutes behind: restart() of a timer long overdue (its
    shadow key gone) re-arms the duration the server armed, not a span between two clocks.
    Debounced timers re-arm their window, whatever the age of the cycle."""

    @app.task
    def job() -> None: ...

    @app.debounced(seconds=0.3, key="d", payload="first")
    def quiet(n: int) -> None: ...

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 300)
    timer = job.schedule(delay=0.2)
    cycle = quiet.touch(1)
    time.sleep(0.2)
    quiet.touch(2)  # joins the cycle: its first touch is older than the window
    wait_until(lambda: app.server_time_ms() > cycle.due_ms + 1300, timeout=10)
    assert not rclient.exists(app.keys.shadow(timer.id))
    looked_up = app.timer(cycle.id)
    assert timer.restart() and looked_up is not None and looked_up.restart()
    for handle, duration in ((timer, 0.2), (looked_up, 0.3)):
        left = handle.remaining()
        assert left is not None and duration - 0.1 < left.total_seconds() <= duration, left


def test_a_forked_producer_names_retired_cycles_apart_from_its_parent(app: Delayq) -> None:
    """Producers made before fork() (a pre-forking web server) must not count out the same
    retired-cycle ids, or two overdue cycles retired in parent and child could collide."""
    import os
    import warnings

    @app.debounced(seconds=1, key="k")
    def note() -> None: ...

    # One shard's calls, where the nonces are made.
    store = StoreCalls(app.keys, max_payload_bytes=app.max_payload_bytes)
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of fork() beside threads; the child execs none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its first id, and leave without running pytest's exit
        try:
            os.write(write, store.touch(note.prepare_touch()).args[-2].encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = os.read(read, 1000).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent_id = store.touch(note.prepare_touch()).args[-2]  # before the events spec
    assert child_id.startswith("~c:") and child_id != parent_id
