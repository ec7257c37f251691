"""A state-machine property test: the real system against a small model of what fires when.

Hypothesis drives random sequences of schedule (new ids and idempotent re-schedules), touch
(debounced keys, with and without ``max_wait``), reschedule (``delay=`` and ``at=``), restart,
extend, pause, resume, cancel, inspection (``app.timer``, ``remaining``), worker kills (SIGKILL,
with or without an immediate restart), worker starts, steps of the worker's wall clock (up to
5 minutes either way: tests/clockstep.py), time advances, and races (sleep until a
pending timer's deadline, give or take a few ms, then operate on it), against the bundled
server and a ``delayq worker`` child process (tests/state_app.py). Every job is instantaneous
and reports its tag, its time and its worker's pid. The same machine runs against a local
cluster of 3 primaries, the namespace spread over the default 16 shards (``Target``).

The model keeps, for every timer (a *unit*: a plain timer's generation, or one cycle of a
debounced key), its deadline by the server's clock, its armed duration, and whether it is
pending, paused, cancelled or fired. Every operation is timed (``t0`` before the call, ``t1``
after it; the server and the worker share this machine's clock), and:

- An operation that ends before the unit's deadline (``t1 < due``) cannot race its firing: its
  result must be exactly what the model says (``True``/``False``, ``created``, ``TimerPaused``,
  the new deadline within ``[t0, t1]`` plus the duration, the time left of a pause...).
- An operation at or after the deadline is ambiguous (the timer may have fired): its result
  decides. "Not pending" marks the unit fired, and it must then run; "still pending" must not
  happen once the unit is overdue beyond what the workers' history allows (``expected_by``).
  A touch after the deadline must start a new cycle, whether the old one fired or not
  (docs/debounce.md: an overdue cycle is complete; it is retired and still fires once).
- After every step: every run belongs to a known unit, with that unit's last payload (the newest
  touch of a debounced cycle), never before its deadline, never for a cancelled or paused unit,
  and at most once, unless its first run was in a worker that was killed afterwards (at-least-once
  execution). Every unit that is due by the model has run once a worker had time to fire it:
  ``TOL_MS`` with a worker up; after a kill, the takeover of a job in flight
  (``visibility_timeout`` and the reclaim period); with no worker, once one is ready.
- At the end: paused units are resumed, everything the model expects runs, and the namespace is
  drained (no timer data, no due index, no paused or first-touch entries, nothing in the ready
  stream or pending in its group).

Deliberately bounded: 16 examples of up to 25 steps on each target (about 40-70 s each),
delays of 0.1-1.5 s, real time, no shrinking (a failure prints its steps and the model's event
log instead).
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.cluster import RedisCluster

from delayq import Delayq, EmbeddedServer, TimerPaused
from delayq._cluster_server import LocalCluster
from delayq._debounce import Debounced
from delayq._layout import meta_key
from delayq._task import Task
from delayq._timer import Timer
from tests import clockstep, state_app
from tests.conftest import WorkerProcess, expiring_outcomes
from tests.test_faults import wait_drained

TOL_MS = 2000.0  # a due timer has run within this, with a worker up all along (loaded machine)
EPS_MS = 3.0  # ms truncation of the server's TIME, rounding of the recorded times
GRACE_MS = 1000  # a shadow key outlives its deadline by this (SHADOW_GRACE_MS)
VISIBILITY_S = 2.0  # --visibility-timeout of tests.conftest.WorkerProcess
TAKEOVER_MS = VISIBILITY_S * 1000 * 1.25 + 300  # a killed worker's job runs again after this
MAX_KILLS = 2  # per example: each kill may cost a takeover (~2.5 s) at the end
WINDOW_MS = {"k": round(state_app.DEBOUNCE_S * 1000), "c": round(state_app.CAPPED_S * 1000)}
MAX_WAIT_MS = {"k": 0, "c": round(state_app.CAPPED_MAX_WAIT_S * 1000)}
DEBOUNCED_KEYS = ["k:a", "k:b", "k:c", "c:x", "c:y"]
# "again": schedule the same id (plain timers) or touch the key (debounced)
RACING_OPS = ["again", "reschedule_delay", "reschedule_at", "restart", "extend", "pause",
              "cancel", "inspect"]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def now_ms() -> float:
    return time.time() * 1000


class StateWorker(WorkerProcess):
    """``delayq worker -A tests.state_app:app`` as a child process (visibility timeout 2 s)."""

    def __init__(self, url: str, namespace: str, clock_file: Path) -> None:
        super().__init__(url, namespace, app="tests.state_app:app",
                         env={"CLOCK_STEP_FILE": str(clock_file)})  # fmt: skip
        self.clock_file = clock_file


@dataclass
class Up:
    """One worker process: ready (it ran a job end to end) at ``ready``, SIGKILLed between
    ``kill_start`` and ``kill_end`` (local ms)."""

    proc: StateWorker
    pid: int
    ready: float
    kill_start: float | None = None  # before the SIGKILL: alive until at least then
    kill_end: float | None = None  # after it was reaped


@dataclass
class Unit:
    """One timer as the model sees it: a plain timer's generation or a debounced cycle."""

    id: str
    kind: str  # "plain", "k" (debounced) or "c" (debounced with max_wait)
    tags: list[str]  # what its job reports; the last one is the payload it must fire with
    due: int  # server ms (meaningless while paused)
    duration: tuple[float, float] | None  # bounds of the armed duration (ms); None: unknown
    state: str = "pending"  # pending | paused | cancelled | fired
    left: int | None = None  # ms left, while paused
    first: int | None = None  # "c": server ms of the cycle's first touch
    runs: list[tuple[float, int]] = field(default_factory=list)  # (local ms, worker pid)

    @property
    def tag(self) -> str:
        return self.tags[-1]


def step(fn: F) -> F:
    """Marks the machine broken while a step runs: teardown then only cleans up."""

    @functools.wraps(fn)
    def wrapper(self: StateMachine, *args: Any, **kwargs: Any) -> Any:
        self.broken = True
        result = fn(self, *args, **kwargs)
        self.broken = False
        return result

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Target:
    """Where the machine runs: one server, or a cluster with the namespace over ``shards``."""

    url: str
    cluster: bool = False
    shards: int | None = None  # None: the server's default (1 on one server, 16 on a cluster)

    def client(self) -> Any:
        """A redis.Redis, or a RedisCluster (keys routed by slot, SCAN over every primary)."""
        return RedisCluster.from_url(self.url) if self.cluster else redis.Redis.from_url(self.url)


class StateMachine(RuleBasedStateMachine):
    def __init__(self, target: Target) -> None:
        super().__init__()
        self.broken = False
        self.url = target.url
        self.namespace = "sm" + uuid.uuid4().hex[:10]
        self.app = Delayq(target.url, namespace=self.namespace, shards=target.shards)
        self.client = target.client()
        self.record = Task(state_app.record.fn, state_app.record.options, lambda: self.app)
        self.ping = Task(state_app.ping.fn, state_app.ping.options, lambda: self.app)
        self.debounced = {
            kind: Debounced(task.fn, task.options, lambda: self.app, task.debounce)
            for kind, task in (("k", state_app.debounced), ("c", state_app.capped))
        }
        self.t_zero = now_ms()
        self.events: list[str] = []
        self.units: list[Unit] = []
        self.current: dict[str, Unit] = {}  # id -> its pending or paused unit
        self.by_tag: dict[str, Unit] = {}
        self.handles: dict[str, Timer] = {}
        self.ids: list[str] = []  # every id used, in order
        self.generation: dict[str, int] = {}
        self.seq = 0
        self.workers: list[Up] = []
        self.rows_seen = 0
        self.duplicates = 0
        self.op_first = 0  # operations at or after the deadline that found the timer pending
        self.fire_first = 0  # ... that found it fired
        self.ops = 0
        self.clock_steps = 0
        try:
            self._check_clock()
            # Stored before the worker starts, which takes the namespace's count as stored.
            self.layout = self.app._run(self.app.store.layout())
            self._start_worker()
        except BaseException:
            self.broken = True
            self.teardown()  # hypothesis only tears down a machine it finished building
            raise

    # -- bookkeeping ------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.events.append(f"{now_ms() - self.t_zero:8.0f} ms  {text}")

    def fail(self, text: str) -> None:
        tails = "\n".join(
            f"--- worker {w.pid} ---\n{w.proc.output()[-1500:]}" for w in self.workers
        )
        history = "\n".join(self.events[-60:])
        raise AssertionError(f"{text}\n--- model events (local ms since start) ---\n"
                             f"{history}\n{tails}")  # fmt: skip

    def expect(self, ok: bool, text: str) -> None:
        if not ok:
            self.fail(text)

    def _check_clock(self) -> None:
        t0 = now_ms()
        server = self.app.server_time_ms()
        t1 = now_ms()
        self.expect(t0 - EPS_MS <= server <= t1 + EPS_MS,
                    f"server clock {server} outside [{t0:.0f}, {t1:.0f}]")  # fmt: skip

    def alive(self) -> Up | None:
        return next((w for w in self.workers if w.kill_start is None), None)

    def expected_by(self, due: float) -> float:
        """The local time by which a timer due at ``due`` has run, given the workers' history."""
        t = due
        for _ in range(4 * len(self.workers) + 4):
            up = next(
                (w for w in self.workers
                 if w.ready <= t and (w.kill_start is None or t < w.kill_start)),
                None,
            )  # fmt: skip
            if up is None:  # no worker: it fires when the next one is ready
                later = [w.ready for w in self.workers if w.ready > t]
                if not later:
                    return math.inf
                t = min(later)
                continue
            if up.kill_start is None or t + TOL_MS <= up.kill_start:
                return t + TOL_MS
            # Killed while the job may have been in flight: it runs after a takeover.
            assert up.kill_end is not None
            t = up.kill_end + TAKEOVER_MS
        return math.inf

    def where(self, unit: Unit | None, t1: float) -> str:
        """What the model knows of a unit after an operation that ended at ``t1``."""
        if unit is None:
            return "gone"
        if unit.state == "paused":
            return "paused"
        return "sure" if t1 < unit.due - EPS_MS else "maybe"

    def fired(self, unit: Unit, why: str) -> None:
        unit.state = "fired"
        if self.current.get(unit.id) is unit:
            del self.current[unit.id]
        self.note(f"{unit.id} fired ({why}), due {unit.due - self.t_zero:.0f}")

    def still_pending(self, unit: Unit, t0: float, op: str) -> None:
        """An ambiguous operation found the unit pending: fine unless long overdue."""
        self.op_first += 1
        limit = self.expected_by(unit.due)
        self.expect(t0 <= limit, f"{op} {unit.id}: still pending at {t0 - self.t_zero:.0f} ms, "
                                 f"due {unit.due - self.t_zero:.0f}, should have fired by "
                                 f"{limit - self.t_zero:.0f}")  # fmt: skip

    def check_due(self, op: str, unit: Unit, due: int, lo: float, hi: float) -> None:
        self.expect(lo - EPS_MS <= due <= hi + EPS_MS,
                    f"{op} {unit.id}: deadline {due - self.t_zero:.0f} outside the model's "
                    f"[{lo - self.t_zero:.0f}, {hi - self.t_zero:.0f}]")  # fmt: skip

    def new_unit(self, uid: str, kind: str, tag: str, due: int, duration: float) -> Unit:
        unit = Unit(uid, kind, [tag], due, (duration, duration))
        if kind == "c":
            unit.first = due - WINDOW_MS["c"]
        self.units.append(unit)
        self.current[uid] = unit
        self.by_tag[tag] = unit
        self.note(f"{uid} armed as {tag}, due {due - self.t_zero:.0f}")
        return unit

    def pick(self, i: int, live: bool) -> str:
        pool = sorted(self.current) if live and self.current else self.ids
        return pool[i % len(pool)]

    # -- workers ----------------------------------------------------------------------------

    def _start_worker(self) -> None:
        clock_file = Path(tempfile.gettempdir()) / f"{self.namespace}-clock-{len(self.workers)}"
        clock_file.write_text("0")
        proc = StateWorker(self.url, self.namespace, clock_file)
        proc.start()
        assert proc.proc is not None
        up = Up(proc, proc.proc.pid, math.inf)
        self.workers.append(up)
        token = uuid.uuid4().hex
        self.ping.schedule(token)
        deadline = time.monotonic() + 60
        key = f"test:{self.namespace}:ping"
        # A ping of an earlier worker may run again (after a kill, before its acknowledgement)
        while True:
            popped: Any = self.client.blpop([key], timeout=0.5)
            if popped is not None and popped[1] == token.encode():
                break
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"worker {up.pid} did not start")
        up.ready = now_ms()
        self.note(f"worker {up.pid} ready")

    def _kill_worker(self, up: Up) -> None:
        up.kill_start = now_ms()
        up.proc.kill()
        up.kill_end = now_ms()
        self.note(f"worker {up.pid} killed")

    # -- rules: operations on timers -------------------------------------------------------
    # Each picks an id (any id used so far, or with ``live`` one the model holds pending or
    # paused) and applies an operation through the public API (``op_*`` below).

    @rule(delay=st.integers(150, 1500))
    @step
    def schedule_new(self, delay: int) -> None:
        uid = f"p{len(self.generation)}"
        self.ids.append(uid)
        self.op_schedule(uid, delay)

    @precondition(lambda self: any(uid.startswith("p") for uid in self.ids))
    @rule(i=st.integers(0, 999), live=st.booleans(), delay=st.integers(150, 1500))
    @step
    def schedule_again(self, i: int, live: bool, delay: int) -> None:
        """The same id again: idempotent while pending, a new timer once fired."""
        plain = [uid for uid in self.ids if uid.startswith("p")]
        live_plain = [uid for uid in plain if uid in self.current]
        pool = live_plain if live and live_plain else plain
        self.op_schedule(pool[i % len(pool)], delay)

    @rule(uid=st.sampled_from(DEBOUNCED_KEYS))
    @step
    def touch(self, uid: str) -> None:
        self.op_touch(uid)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans(), delay=st.integers(100, 1500))
    @step
    def reschedule_delay(self, i: int, live: bool, delay: int) -> None:
        self.op_reschedule_delay(self.pick(i, live), delay)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans(), delay=st.integers(100, 1500))
    @step
    def reschedule_at(self, i: int, live: bool, delay: int) -> None:
        self.op_reschedule_at(self.pick(i, live), delay)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans())
    @step
    def restart(self, i: int, live: bool) -> None:
        self.op_restart(self.pick(i, live))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans(), by=st.integers(0, 800))
    @step
    def extend(self, i: int, live: bool, by: int) -> None:
        self.op_extend(self.pick(i, live), by)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans())
    @step
    def pause(self, i: int, live: bool) -> None:
        self.op_pause(self.pick(i, live))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans())
    @step
    def resume(self, i: int, live: bool) -> None:
        self.op_resume(self.pick(i, live))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans())
    @step
    def cancel(self, i: int, live: bool) -> None:
        self.op_cancel(self.pick(i, live))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), live=st.booleans())
    @step
    def inspect(self, i: int, live: bool) -> None:
        self.op_inspect(self.pick(i, live))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), jitter=st.integers(-40, 30), op=st.sampled_from(RACING_OPS),
          arg=st.integers(100, 1200))  # fmt: skip
    @step
    def race(self, i: int, jitter: int, op: str, arg: int) -> None:
        """Sleep until around a pending timer's deadline, then operate on it: the operation
        may race the firing, and its result says which came first."""
        self.race_at(i, jitter, op, arg)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 999), jitter=st.integers(-3, 6), op=st.sampled_from(RACING_OPS),
          arg=st.integers(100, 1200))  # fmt: skip
    @step
    def race_closely(self, i: int, jitter: int, op: str, arg: int) -> None:
        """The same within a few ms of the deadline, where the firing is under way."""
        self.race_at(i, jitter, op, arg)

    def race_at(self, i: int, jitter: int, op: str, arg: int) -> None:
        # Preconditions must not depend on timing (hypothesis replays choice sequences and
        # insists that the same rules are enabled), so an empty pick is checked here.
        pending = sorted(uid for uid, u in self.current.items() if u.state == "pending")
        if not pending:
            return
        uid = pending[i % len(pending)]
        wait = (self.current[uid].due + jitter - now_ms()) / 1000
        if wait > 0:
            time.sleep(min(wait, 1.6))
        if op == "again" and uid.startswith("p"):
            self.op_schedule(uid, arg)
        elif op == "again":
            self.op_touch(uid)
        elif op in ("reschedule_delay", "reschedule_at", "extend"):
            getattr(self, f"op_{op}")(uid, arg)
        else:
            getattr(self, f"op_{op}")(uid)

    # -- the operations and what the model expects of them ------------------------------------

    def op_schedule(self, uid: str, delay: int) -> None:
        self.ops += 1
        gen = self.generation[uid] = self.generation.get(uid, 0) + 1
        tag = f"{uid}.{gen}"
        unit = self.current.get(uid)
        t0 = now_ms()
        timer = self.record.schedule(tag, delay=delay / 1000, id=uid)
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"schedule({tag}, delay={delay})"
        if unit is not None and where == "maybe" and timer.created:
            self.fire_first += 1
            self.fired(unit, f"{op} found the id free")
            where = "gone"
        if where == "gone":
            self.expect(timer.created, f"{op}: created=False but the id is free")
            self.check_due(op, Unit(uid, "plain", [tag], 0, None), timer.due_ms,
                           t0 + delay, t1 + delay)  # fmt: skip
            self.new_unit(uid, "plain", tag, timer.due_ms, delay)
            self.handles[uid] = timer
            return
        assert unit is not None
        self.expect(not timer.created, f"{op}: created=True but {uid} is {where}")
        if where == "paused":
            self.expect(timer.paused and timer.paused_left_ms == unit.left,
                        f"{op}: paused {uid} returned as {timer!r}, left "
                        f"{timer.paused_left_ms} (model {unit.left})")  # fmt: skip
            return
        if where == "maybe":
            self.still_pending(unit, t0, op)
        self.expect(timer.due_ms == unit.due,
                    f"{op}: existing due {timer.due_ms}, model {unit.due}")  # fmt: skip

    def op_touch(self, uid: str) -> None:
        self.ops += 1
        kind, key = uid.split(":")
        self.seq += 1
        tag = f"{uid}#{self.seq}"
        if uid not in self.ids:
            self.ids.append(uid)
        window = WINDOW_MS[kind]
        unit = self.current.get(uid)
        t0 = now_ms()
        timer = self.debounced[kind].touch(key, self.seq)
        t1 = now_ms()
        self.handles[uid] = timer
        where = self.where(unit, t1)
        op = f"touch({tag})"
        if unit is not None and where == "maybe" and t0 >= unit.due + EPS_MS:
            # By the server's clock the cycle is over, fired or not: the touch starts the next
            # one (an unfired cycle is retired under an id of its own and still fires).
            late = f"due {unit.due - self.t_zero:.0f}, touched {t0 - self.t_zero:.0f}"
            self.expect(timer.created, f"{op}: joined a cycle whose deadline had passed ({late})")
        if unit is not None and where == "maybe" and timer.created:
            self.fire_first += 1
            self.fired(unit, f"{op} started a new cycle")
            where = "gone"
        if where == "gone":
            self.expect(timer.created, f"{op}: created=False, the model has no pending cycle")
            self.check_due(op, Unit(uid, kind, [tag], 0, None), timer.due_ms,
                           t0 + window, t1 + window)  # fmt: skip
            self.new_unit(uid, kind, tag, timer.due_ms, window)
            return
        assert unit is not None
        self.expect(not timer.created, f"{op}: created=True but the cycle is {where}")
        if where == "maybe":
            self.still_pending(unit, t0, op)
        lo, hi = t0 + window, t1 + window
        if MAX_WAIT_MS[kind]:
            assert unit.first is not None
            cap = unit.first + MAX_WAIT_MS[kind]
            lo, hi = min(lo, cap), min(hi, cap)
        self.check_due(op, unit, timer.due_ms, lo, hi)
        unit.due, unit.state, unit.left = timer.due_ms, "pending", None
        unit.duration = (window, window)
        unit.tags.append(tag)
        self.by_tag[tag] = unit
        self.note(f"{uid} joined by {tag} ({where}), due {unit.due - self.t_zero:.0f}")

    def _control(self, uid: str, op: str, call: Callable[[Timer], bool],
                 new_due: Callable[[Unit, Timer, float, float, str], None]) -> None:  # fmt: skip
        """reschedule, restart, extend: False once gone, TimerPaused while paused."""
        self.ops += 1
        unit = self.current.get(uid)
        handle = self.handles[uid]
        t0 = now_ms()
        try:
            result: bool | None = call(handle)
        except TimerPaused:
            result = None
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"{op} {uid}"
        if where == "gone":
            self.expect(result is False, f"{op} returned {result} but {uid} is not pending")
            return
        assert unit is not None
        if where == "paused":
            self.expect(result is None, f"{op} returned {result} instead of TimerPaused")
            return
        if where == "maybe" and result is False:
            self.fire_first += 1
            self.fired(unit, f"{op} returned False")
            return
        self.expect(result is True, f"{op} returned {result} but {uid} is pending ({where})")
        if where == "maybe":
            self.still_pending(unit, t0, op)
        new_due(unit, handle, t0, t1, where)
        unit.due = handle.due_ms
        self.note(f"{op} -> due {unit.due - self.t_zero:.0f} ({where})")

    def shadow_sure(self, unit: Unit, t1: float, where: str) -> bool:
        """Whether the unit's shadow key (its armed duration) surely still exists."""
        return where == "sure" or t1 < unit.due + GRACE_MS - EPS_MS

    def op_reschedule_delay(self, uid: str, delay: int) -> None:
        def new_due(unit: Unit, h: Timer, t0: float, t1: float, where: str) -> None:
            self.check_due("reschedule", unit, h.due_ms, t0 + delay, t1 + delay)
            unit.duration = (delay, delay)

        self._control(uid, f"reschedule(delay={delay})",
                      lambda h: h.reschedule(delay=delay / 1000), new_due)  # fmt: skip

    def op_reschedule_at(self, uid: str, delay: int) -> None:
        at_ms = int(now_ms()) + delay
        at = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)

        def new_due(unit: Unit, h: Timer, t0: float, t1: float, where: str) -> None:
            self.check_due("reschedule", unit, h.due_ms, at_ms, max(at_ms, t1))
            unit.duration = (max(0, at_ms - t1 - EPS_MS), max(0, at_ms - t0 + EPS_MS))

        self._control(uid, f"reschedule(at=+{delay})",
                      lambda h: h.reschedule(at=at), new_due)  # fmt: skip

    def op_restart(self, uid: str) -> None:
        def new_due(unit: Unit, h: Timer, t0: float, t1: float, where: str) -> None:
            if unit.duration is not None and self.shadow_sure(unit, t1, where):
                lo, hi = unit.duration
                self.check_due("restart", unit, h.due_ms, t0 + lo, t1 + hi)
            else:  # the shadow key may be gone: restart falls back on the handle's guess
                self.check_due("restart", unit, h.due_ms, t0, math.inf)
                unit.duration = (h.due_ms - t1 - EPS_MS, h.due_ms - t0 + EPS_MS)

        self._control(uid, "restart()", lambda h: h.restart(), new_due)

    def op_extend(self, uid: str, by: int) -> None:
        def new_due(unit: Unit, h: Timer, t0: float, t1: float, where: str) -> None:
            target = unit.due + by
            if where == "sure" or h.due_ms == target:
                self.check_due("extend", unit, h.due_ms, target, target)
            else:  # overdue: never before now
                self.check_due("extend", unit, h.due_ms, max(target, t0), t1)
            if not self.shadow_sure(unit, t1, where):
                unit.duration = None

        self._control(uid, f"extend({by})",
                      lambda h: h.extend(by / 1000), new_due)  # fmt: skip

    def op_pause(self, uid: str) -> None:
        self.ops += 1
        unit = self.current.get(uid)
        handle = self.handles[uid]
        t0 = now_ms()
        result = handle.pause()
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"pause {uid}"
        if where == "gone":
            self.expect(result is False, f"{op} returned {result} but {uid} is not pending")
            return
        assert unit is not None
        self.expect(result or where == "maybe", f"{op} returned False but {uid} is {where}")
        if where == "paused":
            return
        if not result:
            self.fire_first += 1
            self.fired(unit, f"{op} returned False")
            return
        if where == "maybe":
            self.still_pending(unit, t0, op)
        left = handle.paused_left_ms
        assert left is not None
        lo, hi = max(0.0, unit.due - t1), max(0.0, unit.due - t0)
        self.expect(lo - EPS_MS <= left <= hi + EPS_MS,
                    f"{op}: {left} ms left, model [{lo:.0f}, {hi:.0f}]")  # fmt: skip
        if not self.shadow_sure(unit, t1, where):
            unit.duration = None
        unit.state, unit.left = "paused", left
        self.note(f"{op}: {left} ms left ({where})")

    def op_resume(self, uid: str) -> None:
        self.ops += 1
        unit = self.current.get(uid)
        t0 = now_ms()
        result = self.handles[uid].resume()
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"resume {uid}"
        if where != "paused":
            self.expect(result is False, f"{op} returned {result} but {uid} is {where}")
            return
        assert unit is not None and unit.left is not None
        self.expect(result is True, f"{op} returned {result} but {uid} is paused")
        due = self.handles[uid].due_ms
        self.check_due(op, unit, due, t0 + unit.left, t1 + unit.left)
        unit.state, unit.left, unit.due = "pending", None, due
        self.note(f"{op} -> due {due - self.t_zero:.0f}")

    def op_cancel(self, uid: str) -> None:
        self.ops += 1
        unit = self.current.get(uid)
        t0 = now_ms()
        result = self.handles[uid].cancel()
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"cancel {uid}"
        if where == "gone":
            self.expect(result is False, f"{op} returned {result} but {uid} is not pending")
            return
        assert unit is not None
        self.expect(result or where == "maybe", f"{op} returned False but {uid} is {where}")
        if not result:
            self.fire_first += 1
            self.fired(unit, f"{op} returned False")
            return
        if where == "maybe":
            self.still_pending(unit, t0, op)
        unit.state = "cancelled"
        del self.current[uid]
        self.note(f"{op} ({where})")

    def op_inspect(self, uid: str) -> None:
        """app.timer(id) and remaining() agree with the model."""
        self.ops += 1
        unit = self.current.get(uid)
        t0 = now_ms()
        found = self.app.timer(uid)
        left = found.remaining() if found is not None else None
        t1 = now_ms()
        where = self.where(unit, t1)
        op = f"inspect {uid}"
        if where == "gone":
            self.expect(found is None, f"{op}: found {found!r} but it is not pending")
            return
        assert unit is not None
        if where == "maybe" and (found is None or left is None):
            self.fire_first += 1
            self.fired(unit, f"{op} found nothing")
            return
        self.expect(found is not None and left is not None,
                    f"{op}: not found but it is {where}")  # fmt: skip
        assert found is not None and left is not None
        if where == "paused":
            self.expect(found.paused and found.paused_left_ms == unit.left
                        and left == dt.timedelta(milliseconds=unit.left or 0),
                        f"{op}: {found!r} left {found.paused_left_ms} / {left}, "
                        f"model {unit.left}")  # fmt: skip
            return
        if where == "maybe":
            self.still_pending(unit, t0, op)
        self.expect(found.due_ms == unit.due, f"{op}: due {found.due_ms}, model {unit.due}")
        ms = left.total_seconds() * 1000
        lo, hi = max(0.0, unit.due - t1), max(0.0, unit.due - t0)
        self.expect(lo - EPS_MS <= ms <= hi + EPS_MS,
                    f"{op}: remaining {ms:.0f} ms, model [{lo:.0f}, {hi:.0f}]")  # fmt: skip

    # -- rules: time and workers ------------------------------------------------------------

    @rule(ms=st.integers(20, 1000))
    @step
    def advance(self, ms: int) -> None:
        """Time goes by: the action being modelled, so a real sleep."""
        time.sleep(ms / 1000)

    @precondition(lambda self: self.alive() is not None
                  and sum(w.kill_start is not None for w in self.workers) < MAX_KILLS)  # fmt: skip
    @rule(restart=st.booleans())
    @step
    def kill_worker(self, restart: bool) -> None:
        """SIGKILL the worker; start a new one at once, or leave none running for a while."""
        up = self.alive()
        assert up is not None
        self._kill_worker(up)
        if restart:
            self._start_worker()

    @precondition(lambda self: self.alive() is None)
    @rule()
    @step
    def start_worker(self) -> None:
        self._start_worker()

    @precondition(lambda self: self.alive() is not None)
    @rule(skew=st.sampled_from([-300, -120, -30, 0, 30, 120, 300]))
    @step
    def step_clock(self, skew: int) -> None:
        """Step the worker's wall clock (NTP, a resumed VM): deadlines are the server's, so
        nothing the model says changes."""
        up = self.alive()
        assert up is not None
        clockstep.step(up.pid, up.proc.clock_file, skew)
        self.clock_steps += 1

    # -- what ran ---------------------------------------------------------------------------

    @invariant()
    @step
    def runs_agree_with_the_model(self) -> None:
        self.check_runs(now_ms())

    def check_runs(self, now: float) -> list[Unit]:
        """Fold in the new runs, check them; return the units still expected to run."""
        killed = {w.pid: w.kill_end for w in self.workers if w.kill_end is not None}
        rows: list[bytes] = self.client.lrange(  # type: ignore[assignment]
            f"test:{self.namespace}:ran", self.rows_seen, -1
        )
        self.rows_seen += len(rows)
        for row in rows:
            tag, at_text, pid_text = row.decode().split("|")
            at, pid = float(at_text), int(pid_text)
            unit = self.by_tag.get(tag)
            if unit is None:
                self.fail(f"{tag} ran at {at - self.t_zero:.0f} ms: no such timer in the model")
                return []
            what = f"{tag} ran at {at - self.t_zero:.0f} ms in {pid}"
            self.expect(unit.state not in ("cancelled", "paused"), f"{what}, but {unit.id} "
                        f"is {unit.state}")  # fmt: skip
            self.expect(tag == unit.tag, f"{what}, but its cycle's last touch is {unit.tag}")
            self.expect(at >= unit.due - EPS_MS,
                        f"{what}, before its deadline {unit.due - self.t_zero:.0f}")  # fmt: skip
            for _, earlier in unit.runs:
                end = killed.get(earlier)
                self.expect(end is not None and at >= end,
                            f"{what}, after running already in {earlier}, which was not "
                            f"killed in between")  # fmt: skip
            if unit.runs:
                self.duplicates += 1
                self.note(f"{what}: again, after its first worker was killed")
            unit.runs.append((at, pid))
            if unit.state == "pending":
                self.fired(unit, f"ran at {at - self.t_zero:.0f} in {pid}")
        waiting = []
        for unit in self.units:
            if unit.state in ("pending", "fired") and not unit.runs:
                limit = self.expected_by(unit.due)
                self.expect(limit >= now, f"{unit.tag} (due {unit.due - self.t_zero:.0f}) "
                            f"has not run by {now - self.t_zero:.0f}, expected by "
                            f"{limit - self.t_zero:.0f}")  # fmt: skip
                waiting.append(unit)
        return waiting

    # -- the end ----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.finish()
        finally:
            for up in self.workers:
                up.proc.close()
                up.proc.clock_file.unlink(missing_ok=True)
            # Every shard's tag starts with the namespace ("<ns>/<k>"): one pattern for all.
            keys = [*self.client.scan_iter(f"dq:{{{self.namespace}*", 1000),
                    *self.client.scan_iter(f"test:{self.namespace}:*", 1000)]  # fmt: skip
            if keys:
                self.client.delete(*keys)
            self.client.close()
            self.app.close()

    def finish(self) -> None:
        """Resume what is paused, let everything run, and check nothing is left behind."""
        if self.alive() is None:
            self._start_worker()
        for uid, unit in sorted(self.current.items()):
            if unit.state == "paused":
                self._resume_for_the_end(uid)
        while self.check_runs(now_ms()):
            time.sleep(0.05)
        app = self.app
        wait_drained(self.client, app, timeout=20)
        self.check_runs(now_ms())
        expected = {meta_key(app.namespace)}
        # The worker's streams (the default queue's ten levels, empty but for their group).
        expected.update(name for keys in self.layout.shards
                        for name in (*keys.streams(["default"]), keys.stats))  # fmt: skip
        found = {k.decode() for k in self.client.scan_iter(f"dq:{{{app.namespace}*", 1000)}
        found -= expiring_outcomes(self.client, found, app.result_ttl)
        self.expect(found <= expected, f"left behind: {sorted(found - expected)}")
        for unit in self.units:
            runs = len(unit.runs)
            if unit.state == "cancelled":
                self.expect(runs == 0, f"cancelled {unit.tag} ran")
            else:
                self.expect(runs >= 1, f"{unit.tag} never ran")
        kills = sum(w.kill_start is not None for w in self.workers)
        counts = {"examples": 1, "timers": len(self.units), "operations": self.ops,
                  "racing ops that found the timer pending": self.op_first,
                  "racing ops that found it fired": self.fire_first,
                  "worker kills": kills, "runs again after a kill": self.duplicates,
                  "worker clock steps": self.clock_steps}  # fmt: skip
        TOTALS.update(counts)
        SHARDS_HIT.update(self.layout.shard_of(unit.id) for unit in self.units)
        self.note(f"done: {counts}")

    def _resume_for_the_end(self, uid: str) -> None:
        unit = self.current[uid]
        t0 = now_ms()
        self.expect(self.handles[uid].resume(), f"resume {uid} at the end returned False")
        t1 = now_ms()
        assert unit.left is not None
        due = self.handles[uid].due_ms
        self.check_due(f"resume {uid}", unit, due, t0 + unit.left, t1 + unit.left)
        unit.state, unit.left, unit.due = "pending", None, due


TOTALS: collections.Counter[str] = collections.Counter()  # what the examples covered
SHARDS_HIT: set[int] = set()  # the shards that held a timer, over every example


def run_machine(target: Target, *, examples: int, steps: int) -> None:
    """Run the state machine against ``target``; print what the examples covered."""
    TOTALS.clear()
    SHARDS_HIT.clear()

    class OnTarget(StateMachine):
        def __init__(self) -> None:
            super().__init__(target)

    run_state_machine_as_test(
        OnTarget,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: real time is not replayable
            suppress_health_check=list(HealthCheck),
        ),
    )
    print("state machine covered:", dict(TOTALS), f"shards with timers: {len(SHARDS_HIT)}")
    assert TOTALS["timers"] > 0 and TOTALS["operations"] > 0


def test_timers_agree_with_the_model(server: EmbeddedServer) -> None:
    run_machine(Target(server.url), examples=16, steps=25)


def test_timers_agree_with_the_model_on_a_cluster(cluster: LocalCluster) -> None:
    """The same on 3 primaries, the namespace over the default 16 shards: each timer's calls
    go to its shard's node, and the worker serves every shard. Fewer examples: each costs
    more (a worker process that serves 16 shards starts in each)."""
    cluster.wait_ready(timeout=60.0)
    run_machine(Target(cluster.url, cluster=True), examples=16, steps=25)
    assert len(SHARDS_HIT) > 1, SHARDS_HIT
