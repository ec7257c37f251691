"""The app the chaos workers run. Every finished job appends one line to a file of its process.

Recording to files, not to the server, keeps the ledger independent of the faults injected into
the server (restarts, a full memory). The worker's wall clock may be set off or stepped while it
runs (tests/clockstep.py), as on a machine with a wrong clock.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

from delayq import Debounced, Delayq, Task, current_job
from delayq._periodic import Periodic
from tests import clockstep

clockstep.install()

RUNS_DIR = os.environ.get("CHAOS_DIR", ".")
DEBOUNCE_S = 0.5
THEN_CONCURRENCY = 2
THEN_RUN_S = 0.02


def then_key(outcome: dict[str, object]) -> str:
    """The concurrency key of a callback: the last character of its timer's tag (10 keys)."""
    return str(outcome["timer_id"])[-1]


@dataclass(frozen=True)
class Tasks:
    delayed: Task[[str, str], None]
    debounced: Debounced[[str, int], None]
    periodic: Periodic[[], None]
    hang: Task[[str], None]
    then: Task[[dict[str, object]], None]


def declare(app: Delayq) -> Tasks:
    """The chaos tasks, declared on ``app``: the workers' app below, or a producer's."""

    @app.task(name="chaos.delayed", retries=5, retry_backoff=0.2)
    def delayed(tag: str, pad: str = "") -> None:
        """``pad`` only makes the payload bigger (the full-memory scenario)."""
        record("delayed", tag)

    @app.debounced(seconds=DEBOUNCE_S, key="{tag}", name="chaos.debounced")
    def debounced(tag: str, seq: int) -> None:
        record("debounced", tag, str(seq))

    @app.periodic(every=dt.timedelta(seconds=1), catch_up="all", name="chaos.periodic")
    def periodic() -> None:
        job = current_job()
        assert job is not None
        record("periodic", str(job.due_ms))

    @app.task(name="chaos.hang", retries=1, retry_backoff=0.1, timeout=1.0)
    def hang(tag: str) -> None:
        """Never returns: its timeout fails it; it is retried once, then dead-lettered."""
        time.sleep(3600)

    @app.task(name="chaos.then", retries=5, retry_backoff=0.2, concurrency=THEN_CONCURRENCY,
              concurrency_key=then_key)  # fmt: skip
    def then(outcome: dict[str, object]) -> None:
        """Every delayed timer's on_success callback: one firing per timer, whatever happens,
        and never more than THEN_CONCURRENCY at once per key; its run's start goes in extra."""
        began = int(clockstep.true_ms())
        time.sleep(THEN_RUN_S)
        record("then", str(outcome["timer_id"]), str(began))

    return Tasks(delayed, debounced, periodic, hang, then)


def record(kind: str, tag: str, extra: str = "") -> None:
    """``kind|tag|timer id|delivery|attempt|due ms|fired ms|ran ms|pid|extra``, one write."""
    job = current_job()
    assert job is not None, "chaos tasks run on workers only"
    ran_ms = int(clockstep.true_ms())  # the true clock
    fields = (kind, tag, job.timer_id, job.delivery_id, job.attempt, job.due_ms, job.fired_ms,
              ran_ms, os.getpid(), extra)  # fmt: skip
    line = "|".join(str(f).replace("|", "/") for f in fields) + "\n"  # watch ids hold a |
    fd = os.open(f"{RUNS_DIR}/runs-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
tasks = declare(app)
