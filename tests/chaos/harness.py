"""What every chaos scenario shares: worker processes, the producer's traffic, the ledger."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from delayq import Delayq, EmbeddedServer, ServerOutOfMemory
from delayq.testing import WorkerProcess, percentile
from tests.chaos.app import DEBOUNCE_S, THEN_CONCURRENCY, declare, then_key
from tests.conftest import expiring_outcomes, payload_ids

ROOT = Path(__file__).resolve().parents[2]
# Errors a producer meets while the server restarts, freezes or is full: the operation is
# tried again with the same timer id (idempotent) or the same touch.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ServerOutOfMemory)


@dataclass
class Ledger:
    """What one scenario did and what it found; ``problems`` empty means every check held."""

    scenario: str
    timers: int = 0  # delayed timers plus debounced cycles expected to fire once each
    firings: int = 0
    duplicates: int = 0  # timers fired more than once
    lost: int = 0  # timers that never ran to completion
    reruns: int = 0  # a firing's job run again (its worker was killed): allowed, counted
    repairs: int = 0  # the sweeper's repairs (stats: repaired_data + repaired_index)
    ticks: int = 0  # periodic ticks run
    lateness_ms: list[int] = field(default_factory=list)  # firing minus deadline
    faults: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def worst_ms(self) -> int:
        return max(self.lateness_ms, default=0)

    def p99_ms(self) -> int:
        return int(percentile(sorted(self.lateness_ms), 0.99)) if self.lateness_ms else 0

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


@dataclass(frozen=True)
class RunLine:
    kind: str
    tag: str
    timer_id: str
    delivery: str
    attempt: int
    due_ms: int
    fired_ms: int
    ran_ms: int
    pid: int
    extra: str


class Chaos:
    """One scenario's world: a namespace on ``server``, its workers, the producer, the ledger."""

    def __init__(
        self,
        scenario: str,
        server: EmbeddedServer,
        workdir: Path,
        *,
        visibility_timeout: float = 2.0,
        concurrency: int = 20,
    ) -> None:
        self.server = server
        self.namespace = f"chaos-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.runs_dir = workdir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.producer = Delayq(server.url, namespace=self.namespace)
        self.tasks = declare(self.producer)
        self.client = redis.Redis.from_url(server.url, socket_timeout=10)
        self.worker_args = ("--visibility-timeout", str(visibility_timeout),
                            "--concurrency", str(concurrency),
                            "--shutdown-timeout", "5")  # fmt: skip
        self.workers: list[WorkerProcess] = []
        self.app_spec = "tests.chaos.app:app"  # the workers' app
        self.expiries: dict[str, int] = {}  # watched key's device -> expiries (must fire once)
        self.delayed_due: dict[str, int] = {}  # tag -> deadline (server ms)
        self.touches: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (seq, due ms)
        self.retried_operations = 0
        self.refused_full = 0  # of which: refused by a full server
        self.pad = ""  # added to every delayed payload
        self.ledger = Ledger(scenario)
        self._started = time.monotonic()
        self._serial = itertools.count()
        self._tags = itertools.count()  # unique over the scenario: a tag is also a timer id
        self._lock = threading.Lock()

    # -- workers ------------------------------------------------------------------------------

    def start_worker(
        self, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProcess:
        n = next(self._serial)
        proc = WorkerProcess(
            self.app_spec, self.server.url, self.namespace, *self.worker_args,
            cwd=ROOT, log_path=self.workdir / f"worker-{n}.log",
            env={"CHAOS_DIR": str(self.runs_dir), **(env or {})},
        ).start()  # fmt: skip
        self.workers.append(proc)
        if wait:
            wait_ready(proc)
        return proc

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.running()]

    def kill(self, proc: WorkerProcess) -> None:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.stop()  # reaps it: the status is -9

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            status = proc.stop(timeout=30)
            if status not in (0, -signal.SIGKILL, None):
                self.ledger.problems.append(f"a worker exited with {status}: {proc.tail(500)}")

    # -- the producer -------------------------------------------------------------------------

    def retrying(self, operation: Callable[[], Any], *, patience: float = 60.0) -> Any:
        """Run ``operation``; after a transient error, run it again until it goes through."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return operation()
            except TRANSIENT as exc:
                with self._lock:
                    self.retried_operations += 1
                    self.refused_full += isinstance(exc, ServerOutOfMemory)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def schedule(self, tag: str, delay: float) -> None:
        timer = self.retrying(
            lambda: self.tasks.delayed.schedule(
                tag, self.pad, delay=delay, id=tag, on_success=self.tasks.then
            )
        )
        with self._lock:
            self.delayed_due[tag] = timer.due_ms

    def schedule_many(self, delays: dict[str, float]) -> None:
        requests = [self.tasks.delayed.prepare(tag, delay=d, id=tag, on_success=self.tasks.then)
                    for tag, d in delays.items()]  # fmt: skip
        timers = self.retrying(lambda: self.producer.schedule_many(requests))
        with self._lock:
            self.delayed_due.update({t.id: t.due_ms for t in timers})

    def touch(self, key: str, seq: int) -> None:
        timer = self.retrying(lambda: self.tasks.debounced.touch(key, seq))
        with self._lock:
            self.touches[key].append((seq, timer.due_ms))

    @contextlib.contextmanager
    def traffic(self, rate: float, *, delays: tuple[float, float] = (0.3, 3.0)) -> Iterator[None]:
        """Delayed timers at ``rate`` per second and debounce bursts at a tenth of it, from a
        thread, until the block ends. Each burst touches one key 5 times ~50 ms apart."""
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(rate, delays, stop), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(120)
            assert not thread.is_alive(), "the producer is stuck"

    def _produce(self, rate: float, delays: tuple[float, float], stop: threading.Event) -> None:
        rng = random.Random(7)
        bursts: dict[str, int] = {}  # key -> touches so far
        tick = 0.05
        while not stop.is_set():
            began = time.monotonic()
            for _ in range(rng.randint(0, max(1, round(2 * rate * tick)))):
                self.schedule(f"d{next(self._tags)}", rng.uniform(*delays))
            if rng.random() < rate * tick / 10:
                bursts[f"k{next(self._tags)}"] = 0
            for key in list(bursts):
                bursts[key] += 1
                self.touch(key, bursts[key])
                if bursts[key] == 5:
                    del bursts[key]
            stop.wait(max(0.0, tick - (time.monotonic() - began)))
        for key, seq in bursts.items():  # finish the open bursts, so each key fires once
            for more in range(seq + 1, 6):
                self.touch(key, more)

    # -- the ledger ---------------------------------------------------------------------------

    def runs(self) -> list[RunLine]:
        found = []
        for path in self.runs_dir.glob("runs-*.log"):
            for line in path.read_text().splitlines():
                parts = line.split("|")
                if len(parts) != 10:
                    continue  # a line torn by a SIGKILL
                kind, tag, tid, dlv, att, due, fired, ran, pid, extra = parts
                found.append(RunLine(kind, tag, tid, dlv, int(att), int(due), int(fired),
                                     int(ran), int(pid), extra))  # fmt: skip
        return found

    def all_ran(self) -> bool:
        done: dict[str, set[str]] = defaultdict(set)
        for r in self.runs():
            done[r.kind].add(r.tag if r.kind in ("delayed", "then") else f"{r.tag}:{r.extra}")
        with self._lock:
            want_delayed = set(self.delayed_due)
            want_debounced = {f"{k}:{touches[-1][0]}" for k, touches in self.touches.items()}
        watched = Counter(r.tag for r in self.runs() if r.kind == "watched")
        return (want_delayed <= done["delayed"] and want_delayed <= done["then"]
                and want_debounced <= done["debounced"]
                and all(watched[tag] >= n for tag, n in self.expiries.items()))  # fmt: skip

    def leftovers(self) -> dict[str, int]:
        k = self.producer.keys
        data = [i for i in payload_ids(self.client, k) if not i.startswith("~")]  # not ticks
        pending = 0
        if self.client.exists(k.ready):
            pending = int(self.client.xpending(k.ready, "workers")["pending"])
        return {"data": len(data), "ready": int(self.client.xlen(k.ready)), "pending": pending}

    def drain(self, timeout: float = 90.0) -> dict[str, int]:
        """Wait until every expected job ran and the namespace drained; what is left."""
        deadline = time.monotonic() + timeout
        while not self.all_ran() and time.monotonic() < deadline:
            time.sleep(0.2)
        # What was seen drained, not read once more: a periodic tick fired since would sit in
        # the ready stream for the moment a worker takes to read it.
        left = self.leftovers()
        while time.monotonic() < deadline and any(left.values()):
            time.sleep(0.2)
            left = self.leftovers()
        return left

    def release_outcomes(self) -> int:
        """Delete the namespace's outcome records (kept result_ttl by design, not left behind),
        each checked to expire within result_ttl first; how many there were."""
        pattern = self.producer.keys.outcome_prefix + "*"
        names = {k.decode() for k in self.client.scan_iter(pattern, 1000)}
        expiring = expiring_outcomes(self.client, names, self.producer.result_ttl)
        never = len(names - expiring)
        self.ledger.check(not never, f"{never} outcome record(s) would never expire")
        if names:
            self.client.delete(*names)
        return len(names)

    def settle(self, timeout: float = 90.0) -> Ledger:
        """Drain, stop the workers, and fill in the ledger."""
        left = self.drain(timeout)
        self.stop_workers()
        self.account(left)
        return self.ledger

    def account(self, left: dict[str, int]) -> None:
        ledger = self.ledger
        by_tag: dict[tuple[str, str], list[RunLine]] = defaultdict(list)
        for r in self.runs():
            by_tag[r.kind, r.tag].append(r)
        followed: Counter[int] = Counter()  # firings of each timer's callback: 1 each
        self.account_limits([r for (kind, _), runs in by_tag.items() if kind == "then"
                             for r in runs])  # fmt: skip
        for tag in self.delayed_due:
            firsts = self.account_firings(tag, by_tag.pop(("delayed", tag), []), cycles=1)
            ledger.duplicates += max(0, len(firsts) - 1)
            followed[len({r.delivery for r in by_tag.pop(("then", tag), [])})] += 1
        for key, touches in self.touches.items():
            self.account_debounced(key, touches, by_tag.pop(("debounced", key), []))
        for device, expiries in self.expiries.items():
            firsts = self.account_firings(device, by_tag.pop(("watched", device), []),
                                          cycles=expiries)  # fmt: skip
            ledger.duplicates += max(0, len(firsts) - expiries)
            ledger.lost += max(0, expiries - len(firsts)) if firsts else 0
        ticks = {tag: runs for (kind, tag), runs in by_tag.items() if kind == "periodic"}
        unexpected = [key for key in by_tag if key[0] != "periodic"]
        self.account_ticks(ticks)
        stats = self.producer.stats()
        ledger.repairs = stats.get("repaired_data", 0) + stats.get("repaired_index", 0)
        ledger.seconds = time.monotonic() - self._started
        if self.retried_operations:
            ledger.figures.append(f"{self.retried_operations} producer calls retried")
        ledger.check(ledger.lost == 0, f"{ledger.lost} timer(s) lost")
        ledger.figures.append(f"{followed[1]} on_success callbacks, each fired once")
        ledger.check(not followed[0], f"{followed[0]} timer(s) without their callback")
        twice = sum(n for firings, n in followed.items() if firings > 1)
        ledger.check(not twice, f"{twice} callback(s) fired more than once")
        ledger.check(ledger.duplicates == 0, f"{ledger.duplicates} timer(s) fired twice")
        ledger.check(not unexpected, f"jobs nobody scheduled ran: {unexpected[:5]}")
        early = [ms for ms in ledger.lateness_ms if ms < 0]
        ledger.check(not early, f"{len(early)} timer(s) fired early, up to {-min(early or [0])} ms")
        ledger.check(not any(left.values()), f"left behind: {left}")

    def account_limits(self, runs: list[RunLine]) -> None:
        """The callbacks' concurrency limit per key, over every run that ended (a run killed
        with its worker wrote nothing; its slot stays held until its lease ends)."""
        edges: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for r in runs:
            key = then_key({"timer_id": r.tag})
            edges[key] += ((int(r.extra), 1), (r.ran_ms, -1))
        most = 0
        for steps in edges.values():
            running = 0
            for _, step in sorted(steps):  # an end at the instant of a start comes first
                running += step
                most = max(most, running)
        self.ledger.figures.append(f"callbacks at most {most} at once per key "
                                   f"(concurrency={THEN_CONCURRENCY})")  # fmt: skip
        self.ledger.check(most <= THEN_CONCURRENCY,
                          f"{most} callbacks ran at once for one key, over the limit")  # fmt: skip

    def account_firings(self, tag: str, runs: list[RunLine], *, cycles: int) -> list[RunLine]:
        """Count a timer's firings (one per distinct delivery) and its jobs' runs; returns the
        first run of each firing, oldest first."""
        ledger = self.ledger
        firsts = list({r.delivery: r for r in sorted(runs, key=lambda r: -r.ran_ms)}.values())
        firsts.sort(key=lambda r: r.ran_ms)
        ledger.timers += cycles
        ledger.firings += len(firsts)
        ledger.reruns += len(runs) - len(firsts)
        ledger.lateness_ms += [r.fired_ms - r.due_ms for r in firsts]
        if not runs:
            ledger.lost += cycles
        return firsts

    def account_debounced(
        self, key: str, touches: list[tuple[int, int]], runs: list[RunLine]
    ) -> None:
        """A debounced key fires once per cycle, with the cycle's last touch. A touch more than
        the window after the previous one (by the server's clock) starts a new cycle; within
        50 ms of the window either outcome is right (the touch raced the firing)."""
        window = round(DEBOUNCE_S * 1000)
        must, may = {touches[-1][0]}, set()
        for (seq, due), (_next_seq, next_due) in itertools.pairwise(touches):
            gap = next_due - due  # the time between the two touches
            if gap > window + 50:
                must.add(seq)
            elif gap >= window - 50:
                may.add(seq)
        firsts = self.account_firings(key, runs, cycles=len(must))
        fired = [int(r.extra) for r in firsts]
        twice = len(fired) - len(set(fired))
        self.ledger.duplicates += twice
        missing, wrong = must - set(fired), set(fired) - must - may
        self.ledger.lost += len(missing) if runs else 0
        self.ledger.check(
            not wrong, f"{key} fired with touches {sorted(wrong)}: not a cycle's last"
        )

    def account_ticks(self, ticks: dict[str, list[RunLine]]) -> None:
        ledger = self.ledger
        ledger.ticks = len(ticks)
        twice = [tag for tag, runs in ticks.items() if len({r.delivery for r in runs}) > 1]
        ledger.check(not twice, f"{len(twice)} periodic tick(s) fired twice")
        ledger.duplicates += len(twice)
        if ticks:
            instants = sorted(int(tag) for tag in ticks)
            missing = (instants[-1] - instants[0]) // 1000 + 1 - len(instants)
            ledger.check(missing == 0, f"{missing} periodic tick(s) missing (catch_up='all')")
            ledger.lost += max(0, missing)

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=5)
        self.producer.close()
        self.client.close()


def wait_ready(proc: WorkerProcess, timeout: float = 60.0) -> None:
    """Until the worker logged that it is ready (connected, subscribed, swept)."""
    deadline = time.monotonic() + timeout
    while " ready: " not in proc.tail(100_000):
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready within {timeout:g} s:\n{proc.tail()}")
        time.sleep(0.05)


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
