"""A state-machine property test of watched keys (on_expire) against a model of their lives.

Hypothesis drives another program's writes to three watched keys: new lives and refreshes
(``SET … PX``, ``PEXPIRE``, keys arriving by ``RENAME``, ``COPY`` and ``RESTORE``), lives
without a time-to-live (``SET``, ``PERSIST``), removals (``DEL``, ``UNLINK``, ``GETDEL``, ``MOVE``,
``RENAME`` away, also onto another watched key), races with a key's deadline, and the workers'
faults: SIGSTOP stalls shorter than the lease with writes during them (among them expiries
followed by a new write before the leader runs again), after which the worker's wall clock is
stepped (a resumed VM), and a SIGKILL or SIGTERM of a worker (with or without a replacement).
Real ``delayq worker`` processes (tests/watch_state_app.py) run on a server of the test's own.

The model (tests/watch_model.py) keeps each key's lives, the deadline of each and how it ended:

- a life that expired fires exactly once, never before its deadline;
- a life removed, replaced or refreshed fires never;
- except in a *gap*, from the moment a leader is stopped or killed (or from the start of its
  last stall, when that ended less than ``CATCH_UP_MS`` before: what it buffered then is lost
  with it) until the next leader is subscribed: there, events are lost by design
  (docs/guarantees.md, known limitations), so a life written, removed or ended in a gap may
  fire once or not at all.

After every step the firings so far must fit the model (never more than the lives allow, never
early), and every expiry outside a gap must have fired within ``LIVE_MS`` of a calm moment. At the
end, the keys with a time-to-live expire, and every firing the model expects has happened, and
nothing else; no watch timer is left.
"""

from __future__ import annotations

import collections
import functools
import math
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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

from delayq import Delayq, EmbeddedServer
from tests import clockstep
from tests.conftest import WorkerProcess, wait_until
from tests.test_faults import wait_drained
from tests.watch_model import EPS_MS, OPS, Lives, Write

# A leader stopped or killed this soon after a stall may not have read the events it buffered
# during it (a loaded machine may take this long to schedule it again).
CATCH_UP_MS = 1000.0
LIVE_MS = 6000.0  # an expiry outside a gap fires within this of a calm moment (loaded machine)
LEASE_S = 4.0  # --watch-lease: stalls stay well under it, so a stalled leader keeps it
KEYS = ["a", "b", "c"]
VISIBILITY_S = 3  # longer than the longest stall, or running jobs would be taken over
MAX_STOPS = 1  # worker kills or terminations per example
SKEWS_S = [-300, -120, -30, 0, 30, 120, 300]

F = TypeVar("F", bound=Callable[..., Any])


def now_ms() -> float:
    return clockstep.true_ms()


@dataclass
class Up:
    proc: WorkerProcess
    pid: int
    clock_file: Path
    stopped_at: float | None = None
    stalled: tuple[float, float] | None = None  # its last SIGSTOP stall: (from, to)


def step(fn: F) -> F:
    """Runs a rule, keeping the machine's event log readable on failure."""

    @functools.wraps(fn)
    def wrapper(self: WatchMachine, *args: Any, **kwargs: Any) -> Any:
        self.note(f"{fn.__name__}{args or ''}{kwargs or ''}")
        return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class WatchMachine(RuleBasedStateMachine):
    def __init__(self, server: EmbeddedServer, workdir: Path) -> None:
        super().__init__()
        self.broken = False
        self.server = server
        self.workdir = workdir
        self.namespace = "wsm" + uuid.uuid4().hex[:8]
        self.prefix = self.namespace
        self.app = Delayq(server.url, namespace=self.namespace)
        self.client = redis.Redis.from_url(server.url)
        self.other_db = redis.Redis.from_url(server.url.removesuffix("/0") + "/1")
        self.tmp = f"{self.prefix}:tmp"
        self.client.set(self.tmp, "dump")
        self.dump: bytes = self.client.dump(self.tmp)  # type: ignore[assignment]
        self.client.delete(self.tmp)
        self.workers: list[Up] = []
        self.calm_since = now_ms()
        self.rows_seen = 0
        self.reruns = 0
        self.values = 0
        self.t_zero = now_ms()
        self.events: list[str] = []
        self.model = Lives(KEYS, self.t_zero, self.note, self.expect)
        self.keys = self.model.keys
        self.counts: collections.Counter[str] = collections.Counter()
        try:
            self._start_worker()
        except BaseException:
            self.broken = True
            self.teardown()
            raise

    # -- bookkeeping --------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.events.append(f"{now_ms() - self.t_zero:8.0f} ms  {text}")

    def fail(self, text: str) -> None:
        tails = "\n".join(f"--- worker {w.pid} ---\n{w.proc.output()[-1500:]}"
                          for w in self.workers)  # fmt: skip
        lives = "\n".join(f"{k.name}: lives {self.model.show(k.lives)} firings "
                          f"{[round(f - self.t_zero) for f in k.firings]}"
                          for k in self.keys.values())  # fmt: skip
        raise AssertionError(f"{text}\n{lives}\n--- events (ms since start) ---\n"
                             + "\n".join(self.events[-60:]) + f"\n{tails}")  # fmt: skip

    def expect(self, ok: bool, text: str) -> None:
        if not ok:
            self.fail(text)

    def alive(self) -> list[Up]:
        return [w for w in self.workers if w.stopped_at is None]

    def leader(self) -> Up | None:
        for up in self.alive():
            out = up.proc.output()
            if out.rfind("leading the watched keys") > out.rfind("lost the watch lease"):
                return up
        return None

    # -- workers ------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        clock_file = self.workdir / f"clock-{len(self.workers)}"
        clock_file.write_text("0")
        proc = WorkerProcess(
            # A job held by a killed worker runs again after the visibility timeout: short,
            # so that an expiry fired just before a kill still fires within LIVE_MS.
            self.server.url, self.namespace, "--watch-lease", str(LEASE_S),
            "--visibility-timeout", str(VISIBILITY_S),
            app="tests.watch_state_app:app",
            env={"WATCH_SM_PREFIX": self.prefix, "CLOCK_STEP_FILE": str(clock_file)},
        ).start()  # fmt: skip
        assert proc.proc is not None
        up = Up(proc, proc.proc.pid, clock_file)
        self.workers.append(up)
        # Its own log line: with two workers, the other one may run any readiness job.
        deadline = time.monotonic() + 60
        while " ready: " not in proc.output():
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"worker {up.pid} did not start")
            time.sleep(0.02)
        self.note(f"worker {up.pid} ready")
        self._close_gap()

    def _subscribed_leader(self) -> bool:
        """One live leader holds the lease and has subscribed to the watched keys."""
        return int(self.client.pubsub_numpat()) == 1 and self.leader() is not None

    def _close_gap(self) -> None:
        if not self.model.gaps or self.model.in_gap:
            deadline = time.monotonic() + 30
            while not self._subscribed_leader():
                self.expect(time.monotonic() < deadline, "no worker leads the watched keys")
                time.sleep(0.02)
            if self.model.in_gap:
                self.model.gaps[-1][1] = now_ms()
                self.note("gap closed")
        self.calm_since = now_ms()

    # -- writes of another program -------------------------------------------------------------

    def write(self, name: str, op: str, ttl: int) -> None:
        """Apply ``op`` to the watched key ``name`` and fold the outcome into the model."""
        key, other = self.keys[name], self.keys[KEYS[(KEYS.index(name) + 1) % len(KEYS)]]
        self.values += 1
        write = Write(op, self.full(name), self.full(other.name), self.tmp, f"v{self.values}", ttl)
        if op == "move":
            self.other_db.delete(write.full)  # MOVE refuses a key that exists in the target
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(write.full)
        pipe.exists(write.other)
        write.queue(pipe, self.dump)
        self.model.resolve_by_time(key, now_ms())
        self.model.resolve_by_time(other, now_ms())
        gap = self.model.in_gap
        t0 = now_ms()
        replies = pipe.execute(raise_on_error=False)
        t1 = now_ms()
        existed, other_existed = bool(replies[0]), bool(replies[1])
        self.model.learn(key, existed, t0, t1, f"{op} {name}")
        if op == "rename_onto":
            self.model.learn(other, other_existed, t0, t1, f"{op} {name} -> {other.name}")
        self.model.apply(key, other, write, existed, t0, t1, gap)
        self.counts[op] += 1

    def full(self, name: str) -> str:
        return f"{self.prefix}:w:{name}"

    # -- rules ----------------------------------------------------------------------------------

    @rule(name=st.sampled_from(KEYS), op=st.sampled_from(OPS), ttl=st.integers(150, 1400))
    @step
    def write_key(self, name: str, op: str, ttl: int) -> None:
        self.write(name, op, ttl)

    @rule(name=st.sampled_from(KEYS), ttl=st.integers(150, 1400))
    @step
    def new_life_or_refresh(self, name: str, ttl: int) -> None:
        """The heartbeat: ``SET … PX``, most writes of a watched key."""
        self.write(name, "set_px", ttl)

    @precondition(lambda self: any(
        k.current is not None and not math.isinf(k.current.lo) for k in self.keys.values()
    ))  # fmt: skip
    @rule(i=st.integers(0, 99), jitter=st.integers(-25, 15), op=st.sampled_from(OPS),
          ttl=st.integers(150, 1400))  # fmt: skip
    @step
    def race_deadline(self, i: int, jitter: int, op: str, ttl: int) -> None:
        """Write a key about when its life ends: the new life and the expiry race."""
        live = [k for k in self.keys.values() if k.current and not math.isinf(k.current.lo)]
        key = live[i % len(live)]
        life = key.current
        assert life is not None
        time.sleep(max(0.0, (life.lo + jitter - now_ms()) / 1000))
        self.write(key.name, op, ttl)

    @rule(ms=st.integers(20, 1200))
    @step
    def advance(self, ms: int) -> None:
        time.sleep(ms / 1000)

    @precondition(lambda self: self.alive())
    @rule(i=st.integers(0, 9), ms=st.integers(200, 1500), skew=st.sampled_from(SKEWS_S),
          writes=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(OPS),
                                    st.integers(150, 1400)), max_size=3))  # fmt: skip
    @step
    def stall_worker(self, i: int, ms: int, skew: int, writes: list[tuple[str, str, int]]) -> None:
        """SIGSTOP a worker (the leader, perhaps) for less than its lease, as a suspended VM;
        keys are written, removed and moved meanwhile, and may expire. It resumes with its wall
        clock stepped (``skew`` 0: unchanged)."""
        up = self.alive()[i % len(self.alive())]
        began, stalled_from = time.monotonic(), now_ms()
        up.proc.signal(signal.SIGSTOP)
        try:
            for name, op, ttl in writes:
                time.sleep(ms / 1000 / (len(writes) + 1))
                self.write(name, op, ttl)
            time.sleep(max(0.0, ms / 1000 - (time.monotonic() - began)))
        finally:
            clockstep.step(up.pid, up.clock_file, skew)  # delivered once it runs again
            up.proc.signal(signal.SIGCONT)
        self.calm_since = now_ms()
        up.stalled = self._stall(up, stalled_from)
        self.counts["stalls"] += 1
        self.counts["clock steps"] += skew != 0

    @precondition(lambda self: self.leader() is not None)
    @rule(
        name=st.sampled_from(KEYS),
        armed=st.booleans(),
        ttl=st.integers(100, 400),
        op=st.sampled_from(OPS),
        ttl2=st.integers(150, 1400),
        skew=st.sampled_from(SKEWS_S),
    )
    @step
    def expire_while_stalled(self, name: str, armed: bool, ttl: int, op: str, ttl2: int,
                             skew: int) -> None:  # fmt: skip
        """The leader is stopped; a key's life ends by expiry, then the key is written again
        (or removed) before the leader runs again. Its life was written before the stop (its
        watch timer armed) or during it (never armed)."""
        up = self.leader()
        assert up is not None
        if armed:
            self.write(name, "set_px", ttl)
            time.sleep(0.05)  # the leader arms the life's timer
        stalled_from = now_ms()
        up.proc.signal(signal.SIGSTOP)
        try:
            if not armed:
                self.write(name, "set_px", ttl)
            life = self.keys[name].current
            assert life is not None
            time.sleep(max(0.0, (life.hi + 30 - now_ms()) / 1000))
            self.write(name, op, ttl2)
            time.sleep(0.1)
        finally:
            clockstep.step(up.pid, up.clock_file, skew)
            up.proc.signal(signal.SIGCONT)
        self.calm_since = now_ms()
        up.stalled = self._stall(up, stalled_from)
        self.counts["expiries while stalled"] += 1

    def _stall(self, up: Up, began: float) -> tuple[float, float]:
        """The stall that just ended, joined to the one before when the worker had no time to
        catch up in between."""
        if up.stalled is not None and began - up.stalled[1] < CATCH_UP_MS:
            began = up.stalled[0]
        return began, self.calm_since

    def _open_gap(self, leader: Up) -> None:
        """The leader goes: a gap opens now, or where its last stall began when it goes before
        it could have read what it buffered meanwhile (those events die with it)."""
        start = now_ms()
        if leader.stalled is not None and start - leader.stalled[1] < CATCH_UP_MS:
            start = leader.stalled[0]
            for key in self.keys.values():
                for life in key.lives:
                    life.maybe = life.maybe or life.hi >= start - 50
        self.model.gaps.append([start, math.inf])

    @precondition(lambda self: self.alive()
                  and sum(w.stopped_at is not None for w in self.workers) < MAX_STOPS)  # fmt: skip
    @rule(i=st.integers(0, 9), kill=st.booleans(), replace=st.booleans())
    @step
    def stop_worker(self, i: int, kill: bool, replace: bool) -> None:
        """SIGKILL or SIGTERM a worker; a new one starts at once, or later (start_worker)."""
        up = self.alive()[i % len(self.alive())]
        if up is self.leader() and not self.model.in_gap:
            self._open_gap(up)
        up.stopped_at = now_ms()
        if kill:
            up.proc.kill()
        else:
            up.proc.signal(signal.SIGTERM)
            up.proc.wait(30)
        self.note(f"worker {up.pid} {'killed' if kill else 'stopped'}")
        self.counts["kills" if kill else "terminations"] += 1
        if replace:
            self._start_worker()
        if self.alive() and self.model.in_gap:
            self._close_gap()  # the other worker takes the lease over

    @precondition(lambda self: len(self.alive()) < 2)
    @rule()
    @step
    def start_worker(self) -> None:
        self._start_worker()

    # -- what fired -----------------------------------------------------------------------------

    @invariant()
    def firings_agree_with_the_model(self) -> None:
        self.check_firings(now_ms())

    def check_firings(self, now: float) -> list[str]:
        """Fold in the new firings, check them; return the keys still expected to fire."""
        rows: list[bytes] = self.client.lrange(  # type: ignore[assignment]
            f"{self.prefix}:fired", self.rows_seen, -1
        )
        self.rows_seen += len(rows)
        for row in rows:
            name, fired_text, delivery, _pid = row.decode().split("|")
            key = self.keys[name]
            if delivery in key.deliveries:
                self.reruns += 1  # its worker was killed before acknowledging it
                continue
            key.deliveries.add(delivery)
            key.firings.append(float(fired_text))
            self.note(f"{name} fired at {float(fired_text) - self.t_zero:.0f}")
        waiting = []
        for key in self.keys.values():
            self.model.resolve_by_time(key, now)
            most = sum(life.fires_at_most(now) for life in key.lives)
            self.expect(
                len(key.firings) <= most,
                f"{key.name} fired {len(key.firings)} times, its lives allow {most}",
            )
            starts = sorted(life.lo for life in key.lives if life.fires_at_most(now))
            for n, (fired, lo) in enumerate(zip(sorted(key.firings), starts, strict=False)):
                self.expect(fired >= lo - EPS_MS,
                            f"{key.name}: firing {n + 1} at {fired - self.t_zero:.0f} is "
                            f"before the deadline {lo - self.t_zero:.0f}")  # fmt: skip
            must = [x for x in key.lives if x.end == "expired" and not x.maybe]
            late = [x for x in must if max(x.hi, self.calm_since) + LIVE_MS < now]
            if not self.model.in_gap:
                self.expect(len(key.firings) >= len(late),
                            f"{key.name}: {len(late)} expiries due long ago, "
                            f"{len(key.firings)} firings")  # fmt: skip
            if len(key.firings) < len(must):
                waiting.append(key.name)
        return waiting

    # -- the end --------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.finish()
        finally:
            for up in self.workers:
                if up.proc.proc is not None and up.proc.proc.poll() is None:
                    up.proc.signal(signal.SIGCONT)
                up.proc.close()
            self.client.flushall()
            self.client.close()
            self.other_db.close()
            self.app.close()

    def finish(self) -> None:
        """Remove the lives without a time-to-live, let the others expire, and check that
        every expiry fired, once, and that nothing is left."""
        if not self.alive():
            self._start_worker()
        self._close_gap()
        for key in self.keys.values():
            life = key.current
            if life is not None and math.isinf(life.lo):
                self.write(key.name, "del", 0)
        latest = max((life.hi for k in self.keys.values() for life in k.lives
                      if not math.isinf(life.hi)), default=0.0)  # fmt: skip
        time.sleep(max(0.0, (latest - now_ms()) / 1000))
        deadline = time.monotonic() + 20
        while self.check_firings(now_ms()):
            self.expect(time.monotonic() < deadline, "expiries never fired")
            time.sleep(0.05)
        wait_until(lambda: not self.client.zcard(self.app.keys.watch_index), timeout=10)
        wait_drained(self.client, self.app)
        time.sleep(1.0)  # a firing too many would show now (not a correctness wait)
        self.check_firings(now_ms())
        for key in self.keys.values():
            least = sum(x.end == "expired" and not x.maybe for x in key.lives)
            self.expect(
                len(key.firings) >= least,
                f"{key.name}: {least} expiries, {len(key.firings)} firings",
            )
        lost = [up.pid for up in self.workers if up.stopped_at is None
                and "lost the watch lease" in up.proc.output()]  # fmt: skip
        self.expect(not lost, f"workers {lost} lost the lease they held: a stall outlived it")
        self.counts.update(examples=1, lives=sum(len(k.lives) for k in self.keys.values()),
                           firings=sum(len(k.firings) for k in self.keys.values()),
                           gaps=len(self.model.gaps), reruns=self.reruns)  # fmt: skip
        TOTALS.update(self.counts)


TOTALS: collections.Counter[str] = collections.Counter()


def test_watched_keys_agree_with_the_model(fresh_server: EmbeddedServer, tmp_path: Path) -> None:
    TOTALS.clear()

    class OnTheServer(WatchMachine):
        def __init__(self) -> None:
            super().__init__(fresh_server, tmp_path)

    run_state_machine_as_test(
        OnTheServer,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: real time is not replayable
            suppress_health_check=list(HealthCheck),
        ),
    )
    print("watch state machine covered:", dict(TOTALS))
    assert TOTALS["lives"] > 0 and TOTALS["firings"] > 0 and TOTALS["stalls"] > 0
