"""Heartbeat demo: devices report with plain SETs; a worker alerts once when one goes silent.

On the bundled Valkey server, beside many unrelated TTL keys, simulated devices heartbeat every
second, in two groups:

- watched devices write ``SET device_data_id<N> <payload>`` (no TTL) and
  ``SET last_connection_time_of_device<N> <unix ts> EX 3``, nothing else; the worker's
  ``@app.on_expire`` handler alerts when such a key expires;
- debounced devices are reported by the application with ``device_quiet.touch(...)`` on each
  heartbeat (``@app.debounced(seconds=2, key="device:{device_id}")``).

In each group some devices go silent at known times and must alert once, on time; some of
those come back and go silent again (a second alert); some miss a beat (shorter than the
timeout: no alert); the rest beat to the end and must never alert. Every alert is printed with
its lateness, then a summary; the exit status is 1 if anything was missing, doubled, false,
early, late (over 1 s) or carried the wrong data. Run from the repository root:

    .venv/bin/python examples/heartbeat_demo.py
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
from heartbeat_tasks import (
    DATA_PREFIX,
    HEARTBEAT_PREFIX,
    QUIET_SECONDS,
    alerts_key,
    app,
    device_quiet,
    ping,
    ping_key,
)

from delayq import EmbeddedServer
from delayq.testing import WorkerProcess, format_table, percentile, scratch_server

HERE = Path(__file__).resolve().parent
WORKER_APP = "heartbeat_tasks:app"
TTL_S = 3  # of the heartbeat keys
PERIOD_S = 1.0  # between heartbeats of one device
SILENCE_FROM_S, SILENCE_TO_S = 3.0, 12.0  # devices go silent at times spread over this span
BACK_BEATS_S = 3.0  # a device that comes back beats this long before its second silence
LATE_LIMIT_MS = 1000.0  # an alert later than this is not on time
EARLY_TOLERANCE_MS = 1.0  # the server keeps deadlines in whole ms
AMBIGUOUS_S = 0.05  # a gap this close to the timeout: whether it should alert is a coin toss
GRACE_S = 1.5  # after the last expected alert: time for late or doubled alerts to show up
POLL_S = 0.1  # how often new alerts are read and printed

Kind = Literal["watched", "debounced"]


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    """The first beat planned at or after ``after`` (s from the start) comes ``length`` s after
    the previous beat instead (``inf``: the device stays silent)."""

    after: float
    length: float


@dataclass(frozen=True, slots=True)
class Beat:
    sent: float  # time.time() just before the command left: the server saw it later
    seq: int
    expires: float  # sent + TTL for a watched key; the touch's due time for a debounced one


@dataclass(slots=True)
class Device:
    kind: Kind
    number: int
    role: str  # "silent", "comeback", "blip" or "alive"
    timeout: float  # TTL or debounce window, s
    gaps: list[Gap]
    beats: list[Beat] = field(default_factory=list)
    next_gap: int = 0

    @property
    def planned_alerts(self) -> int:
        return sum(1 for g in self.gaps if g.length > self.timeout)

    def next_beat(self, planned: float) -> float:
        """When the beat after the one planned at ``planned`` (s from the start) is due."""
        at = planned + PERIOD_S
        if self.next_gap < len(self.gaps) and at >= self.gaps[self.next_gap].after:
            at = planned + self.gaps[self.next_gap].length
            self.next_gap += 1
        return at


def plan_group(
    kind: Kind, first: int, count: int, timeout: float, rng: random.Random
) -> list[Device]:
    """A quarter goes silent (a fifth of those come back), a twentieth misses a beat."""
    numbers = list(range(first, first + count))
    order = rng.sample(numbers, count)
    silent = order[: count // 4]
    blips = order[count // 4 : count // 4 + count // 20]
    devices = {n: Device(kind, n, "alive", timeout, []) for n in numbers}
    for k, n in enumerate(silent):
        at = SILENCE_FROM_S + (SILENCE_TO_S - SILENCE_FROM_S) * k / max(1, len(silent) - 1)
        if k % 5 == 0:
            away = timeout + 3.0  # long enough to alert, then back
            gaps = [Gap(at, away), Gap(at + away + BACK_BEATS_S, float("inf"))]
            devices[n] = Device(kind, n, "comeback", timeout, gaps)
        else:
            devices[n] = Device(kind, n, "silent", timeout, [Gap(at, float("inf"))])
    for n in blips:
        # Quiet for half a second less than the timeout: the timer must be pushed back in time.
        at = rng.uniform(SILENCE_FROM_S, SILENCE_TO_S)
        devices[n] = Device(kind, n, "blip", timeout, [Gap(at, timeout - 0.5)])
    return [devices[n] for n in numbers]


def last_alert_s(devices: list[Device]) -> float:
    """The latest an expected alert can come (s from the start), on time."""
    return max(
        (g.after + d.timeout for d in devices for g in d.gaps if g.length > d.timeout),
        default=0.0,
    )


def describe_group(devices: list[Device]) -> str:
    roles = {r: sum(1 for d in devices if d.role == r) for r in ("silent", "comeback", "blip")}
    alive = len(devices) - sum(roles.values())
    return (
        f"{len(devices)} devices: {roles['silent'] + roles['comeback']} go silent between "
        f"{SILENCE_FROM_S:g} and {SILENCE_TO_S:g} s ({roles['comeback']} of them come back and go "
        f"silent again), {roles['blip']} miss a beat, {alive} beat to the end; "
        f"{sum(d.planned_alerts for d in devices)} alerts expected"
    )


# -- the devices --------------------------------------------------------------------------------


def device_payload(number: int, seq: int) -> str:
    return json.dumps({"device": number, "fw": f"2.{number % 7}.1", "seq": seq})


class Devices:
    """Sends every device's heartbeats at their planned times (one heap, one thread)."""

    def __init__(self, devices: list[Device], client: redis.Redis, start: float) -> None:
        self.devices = devices
        self.client = client
        self.start = start
        # Phases spread over the period: a steady load, and expiries spread out in time.
        self.heap = [(i * PERIOD_S / len(devices), i) for i in range(len(devices))]
        heapq.heapify(self.heap)

    def next_due(self) -> float:
        return self.start + self.heap[0][0] if self.heap else float("inf")

    def beat_due(self) -> None:
        """Send every heartbeat that is due now."""
        while self.heap and self.start + self.heap[0][0] <= time.time():
            planned, i = heapq.heappop(self.heap)
            device = self.devices[i]
            self.beat(device)
            after = device.next_beat(planned)
            if after != float("inf"):
                heapq.heappush(self.heap, (after, i))

    def beat(self, device: Device) -> None:
        seq = len(device.beats)
        if device.kind == "watched":
            pipe = self.client.pipeline(transaction=False)
            pipe.set(f"{DATA_PREFIX}{device.number}", device_payload(device.number, seq))
            sent = time.time()
            pipe.set(f"{HEARTBEAT_PREFIX}{device.number}", f"{sent:.3f}", ex=TTL_S)
            pipe.execute()
            device.beats.append(Beat(sent, seq, sent + TTL_S))
        else:
            sent = time.time()
            timer = device_quiet.touch(device_id=device.number, seq=seq)
            device.beats.append(Beat(sent, seq, timer.due_ms / 1000))


# -- alerts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    kind: Kind
    device: int
    fired: float
    data: str | None
    seq: int | None

    @classmethod
    def parse(cls, raw: bytes) -> Alert:
        doc: dict[str, Any] = json.loads(raw)
        return cls(doc["kind"], int(doc["device"]), float(doc["fired"]), doc.get("data"),
                   doc.get("seq"))  # fmt: skip


def beat_before(device: Device, at: float) -> int | None:
    """Index of the device's last beat sent before ``at``: the one an alert at ``at`` is about."""
    found = None
    for j, beat in enumerate(device.beats):
        if beat.sent >= at:
            break
        found = j
    return found


def alert_line(alert: Alert, device: Device | None, start: float, nth: int) -> str:
    j = None if device is None else beat_before(device, alert.fired)
    label = "offline (expired key)" if alert.kind == "watched" else "quiet (debounced)"
    head = f"[{alert.fired - start:6.2f} s] device {alert.device} {label:<21}"
    if device is None or j is None:
        return f"{head} ALERT FOR A DEVICE THAT NEVER BEAT"
    beat = device.beats[j]
    late_ms = (alert.fired - beat.expires) * 1000
    again = ", again" if nth > 1 else ""
    if late_ms < -EARLY_TOLERANCE_MS:
        again += ", BEFORE ITS TIMEOUT RAN OUT"
    return (f"{head} late {late_ms:6.1f} ms  (last beat #{beat.seq} at "
            f"{beat.sent - start:5.2f} s{again})")  # fmt: skip


class AlertReader:
    """Reads the alerts the worker recorded, and prints the new ones."""

    def __init__(
        self, client: redis.Redis, devices: dict[tuple[Kind, int], Device], start: float
    ) -> None:
        self.client = client
        self.devices = devices
        self.start = start
        self.alerts: list[Alert] = []
        self.counts: dict[tuple[Kind, int], int] = {}

    def poll(self) -> None:
        raw: list[Any] = self.client.lrange(alerts_key(app.namespace), len(self.alerts), -1)
        for item in raw:
            alert = Alert.parse(item)
            self.alerts.append(alert)
            key = (alert.kind, alert.device)
            self.counts[key] = self.counts.get(key, 0) + 1
            line = alert_line(alert, self.devices.get(key), self.start, self.counts[key])
            print(line, flush=True)


# -- checking -----------------------------------------------------------------------------------


@dataclass
class Verdict:
    kind: Kind
    devices: int = 0
    expected: int = 0
    fired: int = 0
    duplicates: int = 0
    false_alerts: int = 0
    missing: int = 0
    early: int = 0
    late: int = 0
    wrong_data: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def expiries(device: Device, stopped: float, verdict: Verdict) -> set[int]:
    """Beats after which the device's timer ran out (the next beat came too late, or never
    before the worker stopped). Gaps too close to the timeout to call are reported."""
    found = set()
    for j, beat in enumerate(device.beats):
        nxt = device.beats[j + 1].sent if j + 1 < len(device.beats) else stopped
        if abs(nxt - beat.expires) < AMBIGUOUS_S:
            verdict.problems.append(f"{device.kind} device {device.number}: a gap of "
                                    f"{nxt - beat.sent:.3f} s is too close to call")  # fmt: skip
        if nxt > beat.expires:
            found.add(j)
    if len(found) != device.planned_alerts:
        # The demo itself fell behind its heartbeat schedule (an overloaded machine).
        verdict.problems.append(
            f"{device.kind} device {device.number}: planned {device.planned_alerts} "
            f"expiries, its beats as sent gave {len(found)}"
        )
    return found


def judge(kind: Kind, devices: list[Device], alerts: list[Alert], stopped: float) -> Verdict:
    verdict = Verdict(kind, devices=len(devices))
    by_number = {d.number: d for d in devices}
    due = {d.number: expiries(d, stopped, verdict) for d in devices}
    verdict.expected = sum(len(v) for v in due.values())
    matched: set[tuple[int, int]] = set()
    for alert in sorted((a for a in alerts if a.kind == kind), key=lambda a: a.fired):
        verdict.fired += 1
        device = by_number.get(alert.device)
        j = None if device is None else beat_before(device, alert.fired)
        if device is None or j is None or j not in due[alert.device]:
            verdict.false_alerts += 1  # the device had beaten again within its timeout
            continue
        if (alert.device, j) in matched:
            verdict.duplicates += 1
            continue
        matched.add((alert.device, j))
        beat = device.beats[j]
        late_ms = (alert.fired - beat.expires) * 1000
        verdict.lateness_ms.append(late_ms)
        verdict.early += late_ms < -EARLY_TOLERANCE_MS
        verdict.late += late_ms > LATE_LIMIT_MS
        if kind == "watched":
            verdict.wrong_data += alert.data != device_payload(device.number, beat.seq)
        else:
            verdict.wrong_data += alert.seq != beat.seq
    verdict.missing = verdict.expected - len(matched)
    return verdict


def failures(v: Verdict) -> list[str]:
    counts = {"missing": v.missing, "duplicate": v.duplicates, "false": v.false_alerts,
              "early": v.early, f"late (> {LATE_LIMIT_MS:g} ms)": v.late,
              "wrong-data": v.wrong_data}  # fmt: skip
    found = [f"{v.kind}: {n} {what} alert(s)" for what, n in counts.items() if n]
    return found + [f"{v.kind}: {p}" for p in v.problems]


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    # Nearest rank: with a few dozen alerts, p99 is (almost) the maximum, as it should be.
    return f"{percentile(ordered, 0.5):.1f} / {percentile(ordered, 0.99):.1f} / {ordered[-1]:.1f}"


def print_summary(verdicts: list[Verdict]) -> None:
    rows = [
        ("devices", [str(v.devices) for v in verdicts]),
        ("expected alerts", [str(v.expected) for v in verdicts]),
        ("fired alerts", [str(v.fired) for v in verdicts]),
        ("duplicates", [str(v.duplicates) for v in verdicts]),
        ("false alerts", [str(v.false_alerts) for v in verdicts]),
        ("missing", [str(v.missing) for v in verdicts]),
        ("wrong data", [str(v.wrong_data) for v in verdicts]),
        ("lateness p50 / p99 / max, ms", [percentiles(v.lateness_ms) for v in verdicts]),
    ]
    heads = ["watched (on_expire)" if v.kind == "watched" else "debounced" for v in verdicts]
    table = [["", *heads]] + [[label, *cells] for label, cells in rows]
    print("\n".join(format_table(table, "<" + ">" * len(heads))))


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=200, help="watched devices (200)")
    parser.add_argument("--debounced", type=int, default=100, help="debounced devices (100)")
    parser.add_argument("--unrelated", type=int, default=100_000,
                        help="unrelated TTL keys in the database (100,000)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="which devices do what")
    args = parser.parse_args(argv)
    if args.devices < 20 or args.debounced < 20 or args.unrelated < 0:
        parser.error("--devices and --debounced must be at least 20, --unrelated at least 0")
    return args


def fill_unrelated(client: redis.Redis, count: int, rng: random.Random) -> None:
    """Other programs' TTL keys: none expires during the demo, all are in the server's way."""
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"session:{i}", "x" * 32, ex=rng.randint(600, 3600))
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def run_devices(
    feed: Devices, reader: AlertReader, worker: WorkerProcess, end: float
) -> tuple[float, int | None]:
    """Beat and print alerts until ``end``; then stop the worker (SIGTERM) while the devices
    still beat, so that none of the devices still alive can time out before it is gone.
    Returns when the worker was asked to stop, and its exit status."""
    next_poll = time.time()
    stopped_at = 0.0
    while True:
        now = time.time()
        if not stopped_at and now >= end:
            stopped_at = now
            worker.terminate()
        if stopped_at and (not worker.running() or now - stopped_at > 15):
            return stopped_at, worker.stop(0)  # -9 if it had to be killed: a failure
        if not stopped_at and not worker.running():
            raise RuntimeError(f"the worker exited early:\n{worker.tail()}")
        feed.beat_due()
        if time.time() >= next_poll:
            reader.poll()
            next_poll = time.time() + POLL_S
        time.sleep(max(0.0, min(feed.next_due(), next_poll) - time.time()))


def scenario(args: argparse.Namespace, server: EmbeddedServer, workdir: Path) -> list[str]:
    """Run the demo against a started server; returns what went wrong (nothing: success)."""
    rng = random.Random(args.seed)
    client = redis.Redis.from_url(server.url)
    app.override(url=server.url)
    # cwd: the CLI imports heartbeat_tasks from its working directory.
    worker = WorkerProcess(WORKER_APP, server.url, app.namespace, "--shutdown-timeout", "5",
                           cwd=HERE, log_path=workdir / "worker.log")  # fmt: skip
    try:
        fill_unrelated(client, args.unrelated, rng)
        version = client.info("server").get("valkey_version", "?")
        print(f"valkey {version} at {server.url}, {args.unrelated:,} unrelated TTL keys")
        watched = plan_group("watched", 100_000, args.devices, TTL_S, rng)
        quiet = plan_group("debounced", 200_000, args.debounced, QUIET_SECONDS, rng)
        print(f"watched (SET ... EX {TTL_S}, on_expire): {describe_group(watched)}")
        print(f"debounced (touch, {QUIET_SECONDS:g} s): {describe_group(quiet)}")
        worker.start()
        # One job end to end: then the worker is subscribed and running jobs.
        worker.wait_ready(ping.schedule, client, ping_key(app.namespace), timeout=30)
        print(f"worker pid {worker.pid} ready; devices start\n")
        start = time.time()
        devices = {(d.kind, d.number): d for d in watched + quiet}
        feed = Devices(watched + quiet, client, start)
        reader = AlertReader(client, devices, start)
        end = start + last_alert_s(watched + quiet) + GRACE_S
        stopped_at, status = run_devices(feed, reader, worker, end)
        reader.poll()  # alerts recorded while the worker shut down
        verdicts = [
            judge("watched", watched, reader.alerts, stopped_at),
            judge("debounced", quiet, reader.alerts, stopped_at),
        ]
        print(f"\nworker stopped with SIGTERM at {stopped_at - start:.2f} s: exit status {status}")
        dead = app.dead_letters(10)
        print()
        print_summary(verdicts)
        problems = [p for v in verdicts for p in failures(v)]
        if status != 0:
            problems.append(f"the worker exited with {status}:\n{worker.tail()}")
        problems += [f"dead letter: {d.task} {d.reason}" for d in dead]
        return problems
    finally:
        worker.stop(15)  # on the way out, also on errors: SIGTERM, then SIGKILL if it stays
        app.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    with scratch_server("delayq-heartbeat-") as (server, workdir):
        problems = scenario(args, server, workdir)
    print(f"\ntotal {time.perf_counter() - began:.1f} s, server stopped")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every expected alert fired once, on time, with the right data; no false alerts")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: worker and server stopped")
        sys.exit(130)
    except (RuntimeError, redis.RedisError) as exc:
        # E.g. Ctrl-C reached the server first, or the worker would not start: one line, and
        # the worker and server were stopped on the way out all the same.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
