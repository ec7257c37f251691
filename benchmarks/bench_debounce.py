"""Debounced timers and watched keys (on_expire) against the bundled Valkey server; one table.

1. touch throughput: one ``touch()`` call per touch, and ``touch_many()`` batches
2. debounced firing lateness: each key is touched 3 times, 0.3 s apart (each touch pushes the
   timer back), and the keys' last touches are paced so that they fall due evenly over a window;
   lateness = when the handler started - the due time the last touch returned
3. watched-key firing lateness: each key is written 3 times, 0.3 s apart, with a plain
   ``SET key 1 PX 2000``, paced the same way; lateness = when the handler started - the key's
   expiry time (``PEXPIRETIME`` after its last SET)

2 and 3 run with a worker in a separate process (``delayq worker``), started for each database
state: empty; beside --unrelated TTL keys that outlive the run; and (unless --no-churn) beside as
many that expire during it. Run from the repository root:

    .venv/bin/python benchmarks/bench_debounce.py            # full sizes, about 3 minutes
    .venv/bin/python benchmarks/bench_debounce.py --quick    # small sizes, under a minute
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
from bench_debounce_tasks import (
    WATCHED_PREFIX,
    WINDOW_S,
    app,
    far,
    fired_key,
    ping,
    ping_key,
    quiet,
)
from bench_table import cpu_seconds

from delayq.testing import (
    WorkerProcess,
    describe_host,
    format_table,
    percentile,
    scratch_server,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER_APP = "benchmarks.bench_debounce_tasks:app"
NAMESPACE = "bench-debounce"
REPEATS = 3  # sends per key in the lateness runs; the last one sets the deadline measured
SPACING_S = 0.3  # between them: well inside the window, so each send re-arms the same timer
WATCH_TTL_MS = 2000
LEAD_S = 1.0  # from planning the sends to the first one
SETTLE_S = 1.0  # after the last expected firing: time for a doubled one to show up
PREPARE_CHUNK = 10_000  # requests built per touch_many call: bounds this process's memory
FILL_CHUNK = 10_000
EARLY_TOLERANCE_MS = 1.0  # deadlines are whole ms


@dataclass(frozen=True, slots=True)
class Config:
    single: int
    batch: int
    keys: int
    chunk: int
    fire: int
    window: float
    unrelated: int
    churn: bool
    concurrency: int


FULL = Config(single=20_000, batch=200_000, keys=10_000, chunk=1000, fire=10_000, window=10.0,
              unrelated=200_000, churn=True, concurrency=100)  # fmt: skip
QUICK = replace(FULL, single=2_000, batch=20_000, keys=2_000, fire=2_000, window=3.0,
                unrelated=20_000)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    database: str
    result: str
    lateness: tuple[float, float, float] | None = None  # p50, p99, max in ms
    ok: bool | None = None  # None: a figure with nothing to check


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table

    def add(self, row: Row) -> None:
        self.rows.append(row)
        figures = ""
        if row.lateness is not None:
            p50, p99, top = row.lateness
            figures = f", lateness p50 / p99 / max {p50:.1f} / {p99:.1f} / {top:.1f} ms"
        print(f"  {row.measurement} [{row.database}]: {row.result}{figures}", flush=True)


# -- the worker process -------------------------------------------------------------------------


def worker_process(concurrency: int, log_path: Path) -> WorkerProcess:
    """``delayq worker`` as a child process; ``with`` stops it with SIGTERM (also on error).
    cwd: the CLI imports benchmarks.bench_debounce_tasks from there."""
    return WorkerProcess(WORKER_APP, app.url, NAMESPACE, "--concurrency", str(concurrency),
                         "--shutdown-timeout", "5", cwd=ROOT, log_path=log_path)  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------


def flush(client: redis.Redis) -> None:
    # SYNC: a lazy (background) flush would still be freeing memory during the next run.
    client.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} /s"


# -- 1. touch throughput ------------------------------------------------------------------------


def bench_touch(cfg: Config, client: redis.Redis, report: Report) -> None:
    flush(client)
    far.touch(key=-1, n=0)  # connect and load the script outside the clock

    started = time.perf_counter()
    for i in range(cfg.single):
        far.touch(key=i % cfg.keys, n=i)  # the first round over the keys arms, the rest re-arm
    single_s = time.perf_counter() - started
    flush(client)

    started = time.perf_counter()
    for start in range(0, cfg.batch, PREPARE_CHUNK):
        stop = min(cfg.batch, start + PREPARE_CHUNK)
        reqs = [far.prepare_touch(key=i % cfg.keys, n=i) for i in range(start, stop)]
        app.touch_many(reqs, chunk=cfg.chunk)
    batch_s = time.perf_counter() - started
    pending = app.pending_count()
    flush(client)

    prepared = min(cfg.batch, 50_000)
    started = time.perf_counter()
    for i in range(prepared):
        far.prepare_touch(key=i % cfg.keys, n=i)
    prepare_s = time.perf_counter() - started
    keys = min(cfg.keys, cfg.batch)
    report.add(Row("touch(): one call (round trip) per touch", "empty",
                   rate(cfg.single, single_s)))  # fmt: skip
    report.add(Row(f"touch_many(), chunk {cfg.chunk:,}, incl. prepare_touch()", "empty",
                   rate(cfg.batch, batch_s), ok=pending == keys))  # fmt: skip
    report.add(Row("prepare_touch() alone (no I/O)", "-", rate(prepared, prepare_s)))
    report.notes.append(
        f"touch(): {cfg.single:,} touches over {min(cfg.keys, cfg.single):,} keys; touch_many(): "
        f"{cfg.batch:,} over {keys:,} keys, {pending:,} timers pending afterwards (one per key)."
        " A key's first touch arms its timer, the others push it back."
    )


# -- 2 and 3. firing lateness -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    at: float  # when to send it, time.time()
    key: int
    n: int  # 0 .. REPEATS - 1


@dataclass
class Outcome:
    expected: int
    once: int = 0  # keys that fired exactly once, with the last send's payload
    duplicates: int = 0
    missing: int = 0
    wrong_payload: int = 0
    early: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    lag_s: float = 0.0  # how far the sender fell behind its plan, at worst


def plan(count: int, window: float) -> list[Send]:
    """Sends whose last ones (per key) fall ``window / count`` s apart, after a short lead."""
    first_last = time.time() + LEAD_S + SPACING_S * (REPEATS - 1)
    step = window / count
    sends = [
        Send(first_last + i * step - (REPEATS - 1 - n) * SPACING_S, i, n)
        for i in range(count)
        for n in range(REPEATS)
    ]
    sends.sort(key=lambda s: s.at)
    return sends


def send_paced(
    sends: list[Send], send: Callable[[list[Send]], dict[int, int]]
) -> tuple[dict[int, int], float]:
    """Send each at its time, all those due at once in one batch. Returns each key's deadline
    (ms, from its last send) and the sender's worst lag behind the plan (s)."""
    deadlines: dict[int, int] = {}
    lag = 0.0
    i = 0
    while i < len(sends):
        now = time.time()
        if sends[i].at > now:
            time.sleep(sends[i].at - now)
            continue
        j = i
        while j < len(sends) and sends[j].at <= now:
            j += 1
        lag = max(lag, now - sends[i].at)
        deadlines.update(send(sends[i:j]))
        i = j
    return deadlines, lag


def touch_batch(batch: list[Send]) -> dict[int, int]:
    timers = app.touch_many([quiet.prepare_touch(key=s.key, touch=s.n) for s in batch])
    return {s.key: t.due_ms for s, t in zip(batch, timers, strict=True) if s.n == REPEATS - 1}


def set_batch(client: redis.Redis) -> Callable[[list[Send]], dict[int, int]]:
    def send(batch: list[Send]) -> dict[int, int]:
        pipe = client.pipeline(transaction=False)
        for s in batch:
            pipe.set(f"{WATCHED_PREFIX}{s.key}", "1", px=WATCH_TTL_MS)  # what a producer does
        last = [s for s in batch if s.n == REPEATS - 1]
        for s in last:
            pipe.pexpiretime(f"{WATCHED_PREFIX}{s.key}")  # the benchmark's measuring stick
        replies = pipe.execute()[len(batch) :]
        return {s.key: int(ms) for s, ms in zip(last, replies, strict=True)}

    return send


def collect(
    client: redis.Redis, worker: WorkerProcess, expected: int, until: float
) -> list[tuple[int, int, float]]:
    """Firings (key, touch or -1, fired ms) once ``expected`` are in or ``until`` passed."""
    key = fired_key(NAMESPACE)
    while client.llen(key) < expected and time.time() < until:
        worker.check_alive()
        time.sleep(0.1)
    time.sleep(SETTLE_S)  # a late duplicate would land now
    raw: list[Any] = client.lrange(key, 0, -1)
    client.delete(key)
    notes = []
    for item in raw:
        k, touch, ms = item.split()
        notes.append((int(k), int(touch), float(ms)))
    return notes


def judge(
    notes: list[tuple[int, int, float]], deadlines: dict[int, int], lag: float, *, watched: bool
) -> Outcome:
    out = Outcome(expected=len(deadlines), lag_s=lag)
    seen: dict[int, int] = {}
    for key, touch, fired_ms in notes:
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1 or key not in deadlines:
            out.duplicates += 1
            continue
        late = fired_ms - deadlines[key]
        out.lateness_ms.append(late)
        out.early += late < -EARLY_TOLERANCE_MS
        # payload="last": the handler gets the last touch's arguments.
        if not watched and touch != REPEATS - 1:
            out.wrong_payload += 1
        elif late >= -EARLY_TOLERANCE_MS:
            out.once += 1
    out.missing = sum(1 for k in deadlines if k not in seen)
    return out


def lateness_run(
    cfg: Config, client: redis.Redis, worker: WorkerProcess, *, watched: bool
) -> Outcome:
    sends = plan(cfg.fire, cfg.window)
    sender = set_batch(client) if watched else touch_batch
    deadlines, lag = send_paced(sends, sender)
    until = max(deadlines.values()) / 1000 + 30
    notes = collect(client, worker, len(deadlines), until)
    return judge(notes, deadlines, lag, watched=watched)


def outcome_row(what: str, database: str, out: Outcome, report: Report) -> None:
    ok = out.once == out.expected and not (out.duplicates or out.early or out.wrong_payload)
    lateness = None
    if out.lateness_ms:
        ordered = sorted(out.lateness_ms)
        lateness = (percentile(ordered, 0.5), percentile(ordered, 0.99), ordered[-1])
    result = f"{out.once:,} / {out.expected:,} once"
    report.add(Row(what, database, result, lateness, ok))
    if not ok:
        report.notes.append(
            f"MISS {what} [{database}]: duplicates {out.duplicates}, missing {out.missing}, "
            f"early {out.early}, wrong payload {out.wrong_payload}"
        )
    if out.lag_s > 0.1:
        # The deadlines come from the sends as made, so lateness is still exact; only the
        # rate was not the one planned.
        report.notes.append(f"{what} [{database}]: the sender fell {out.lag_s:.2f} s behind")


def fill_unrelated(client: redis.Redis, count: int, ttl_ms: Callable[[], int]) -> None:
    """Keys of other programs, each with a TTL: the server's and the worker's haystack."""
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"unrelated:{i}", "x" * 32, px=ttl_ms())
        if i % FILL_CHUNK == FILL_CHUNK - 1:
            pipe.execute()
    pipe.execute()


def fire_pass(
    cfg: Config, client: redis.Redis, workdir: Path, database: str, unrelated: int, churn: bool,
    report: Report,
) -> None:  # fmt: skip
    """One database state: debounced then watched lateness, with one worker process."""
    flush(client)
    rng = random.Random(1)
    # Expiring ones: spread over the time both runs take (after the worker's start-up), so
    # that they expire all along.
    run_s = LEAD_S + SPACING_S * (REPEATS - 1) + cfg.window + WATCH_TTL_MS / 1000 + SETTLE_S
    if churn:
        fill_unrelated(client, unrelated, lambda: rng.randint(2_000, 2_000 + int(2_000 * run_s)))
    else:
        fill_unrelated(client, unrelated, lambda: rng.randint(3_600_000, 7_200_000))
    log = workdir / f"worker-{unrelated}-{'churn' if churn else 'stay'}.log"
    with worker_process(cfg.concurrency, log) as worker:
        worker.wait_ready(ping.schedule, client, ping_key(NAMESPACE))
        cpu_before, expired_before = cpu_seconds(worker.pid), expired_keys(client)
        began = time.perf_counter()
        debounced = lateness_run(cfg, client, worker, watched=False)
        watched = lateness_run(cfg, client, worker, watched=True)
        took = time.perf_counter() - began
        cpu_after, expired = cpu_seconds(worker.pid), expired_keys(client) - expired_before
        status = worker.stop()
    dead = int(client.xlen(app.keys.dead))
    outcome_row(f"debounced: fires {WINDOW_S:g} s after the last of {REPEATS} touches",
                database, debounced, report)  # fmt: skip
    outcome_row(f"watched key: {REPEATS} x SET PX {WATCH_TTL_MS}, fires at expiry",
                database, watched, report)  # fmt: skip
    cpu = "" if cpu_before is None or cpu_after is None else (
        f"worker CPU {cpu_after - cpu_before:.1f} s, "
    )  # fmt: skip
    ok = status == 0 and dead == 0
    report.notes.append(
        f"[{database}]: both runs {took:.0f} s, {cpu}server expired {expired:,} keys "
        f"({expired / took:,.0f} /s); worker exit status {status} after SIGTERM, {dead} dead "
        f"letters{'' if ok else '  MISS'}"
    )
    if not ok:
        report.rows.append(Row("worker exit status / dead letters", database,
                               f"{status} / {dead}", ok=False))  # fmt: skip


def expired_keys(client: redis.Redis) -> int:
    """Keys the server has expired so far (each one an ``expired`` event to every worker)."""
    stats: dict[str, Any] = client.info("stats")
    return int(stats["expired_keys"])


# -- report -------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "database", "result", "p50 ms", "p99 ms", "max ms", "")
    cells = [
        (r.measurement, r.database, r.result,
         *(("", "", "") if r.lateness is None else (f"{x:.1f}" for x in r.lateness)),
         verdict(r.ok))
        for r in rows
    ]  # fmt: skip
    print("\n".join(format_table([header, *cells], "<<>>>><", rule=True)))


def describe(cfg: Config, client: redis.Redis) -> str:
    worker = f"worker: 1 process, --concurrency {cfg.concurrency}, async handlers"
    return f"{describe_host(client)}\n{worker}"


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast run")
    parser.add_argument("--single", type=int, help=f"touch() calls ({FULL.single:,})")
    parser.add_argument("--batch", type=int, help=f"touches by touch_many() ({FULL.batch:,})")
    parser.add_argument("--keys", type=int, help=f"keys they rotate over ({FULL.keys:,})")
    parser.add_argument("--chunk", type=int, help=f"touch_many() chunk ({FULL.chunk:,})")
    parser.add_argument("--fire", type=int, help=f"keys falling due per run ({FULL.fire:,})")
    parser.add_argument("--window", type=float, help=f"seconds they fall due over ({FULL.window})")
    parser.add_argument(
        "--unrelated", type=int, help=f"unrelated TTL keys in the database ({FULL.unrelated:,})"
    )
    parser.add_argument(
        "--no-churn", dest="churn", action="store_false", default=None,
        help="skip the run beside unrelated keys that expire during it",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, help=f"worker concurrency ({FULL.concurrency})")
    ns = parser.parse_args(argv)
    base = QUICK if ns.quick else FULL
    given = {k: v for k, v in vars(ns).items() if k != "quick" and v is not None}
    cfg = replace(base, **given)  # explicit sizes win over --quick's
    if min(cfg.single, cfg.batch, cfg.keys, cfg.chunk, cfg.fire, cfg.concurrency) < 1:
        parser.error("sizes, --chunk and --concurrency must be at least 1")
    if cfg.window <= 0 or cfg.unrelated < 0:
        parser.error("--window must be positive and --unrelated at least 0")
    return cfg


def run(cfg: Config, url: str, workdir: Path, report: Report) -> None:
    client = redis.Redis.from_url(url)
    app.override(url=url, namespace=NAMESPACE)
    try:
        print(describe(cfg, client), flush=True)
        bench_touch(cfg, client, report)
        passes = [("empty", 0, False), (f"+{cfg.unrelated:,} TTL keys", cfg.unrelated, False)]
        if cfg.churn:
            passes.append((f"+{cfg.unrelated:,} keys expiring", cfg.unrelated, True))
        for database, unrelated, churn in passes:
            fire_pass(cfg, client, workdir, database, unrelated, churn, report)
    finally:
        app.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter()
    report = Report()
    with scratch_server("delayq-bench-debounce-") as (server, workdir):
        run(cfg, server.url, workdir, report)
    print()
    print_table(report.rows)
    print()
    lateness = (
        f"lateness: when the handler started in the worker process minus the deadline: the due "
        f"time the last touch returned, or the key's PEXPIRETIME after its last SET. "
        f"{cfg.fire:,} keys fall due evenly over {cfg.window:g} s per run; "
        f"'+N keys expiring': other keys whose TTLs run out all through the runs."
    )
    for note in [lateness, *report.notes]:
        print(textwrap.fill(note, 100, subsequent_indent="  "))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 1 if any(r.ok is False for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
