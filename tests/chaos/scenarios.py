"""The chaos scenarios. Each takes a scratch directory and ``full`` (``make chaos``) or not (the
bounded form run by tests/test_chaos.py), and returns its settled ledger.

The sleeps here pace the faults (they are the workload's clock); every wait for a result is a
poll with a deadline (``Chaos.drain``).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from delayq import EmbeddedServer
from tests import clockstep
from tests.chaos.churn import Churn
from tests.chaos.harness import Chaos, Ledger, rss_kb, wait_ready

Scenario = Callable[[Path, bool], Ledger]


@contextmanager
def world(
    name: str, workdir: Path, *server_args: str, appendonly: bool = True, **chaos_options: float
) -> Iterator[Chaos]:
    """A server of the scenario's own and its Chaos; both torn down at the end."""
    with EmbeddedServer(
        data_dir=workdir / "valkey", appendonly=appendonly, extra_args=server_args
    ) as server:
        chaos = Chaos(name, server, workdir, **chaos_options)  # type: ignore[arg-type]
        try:
            yield chaos
        finally:
            chaos.close()


def worker_kills(workdir: Path, full: bool) -> Ledger:
    """Three workers; one killed with SIGKILL at a random moment about every second, and a
    new one started at once (it may itself be killed while starting)."""
    kills = 60 if full else 20
    rng = random.Random(11)
    with world("worker SIGKILLs", workdir) as chaos:
        for _ in range(3):
            chaos.start_worker()
        with chaos.traffic(rate=100):
            for _ in range(kills):
                time.sleep(rng.uniform(0.3, 1.5))
                chaos.kill(rng.choice(chaos.alive()))
                chaos.start_worker(wait=False)
        chaos.ledger.faults.append(f"{kills} SIGKILLs")
        return chaos.settle()


def server_restart_aof(workdir: Path, full: bool) -> Ledger:
    """The server crashes (SIGKILL) and comes back from its AOF (``appendfsync always``: every
    acknowledged write is on disk), repeatedly, under traffic."""
    restarts = 5 if full else 2
    with world("server restarts, AOF", workdir, "--appendfsync", "always") as chaos:
        for _ in range(2):
            chaos.start_worker()
        # Delays of 1 s or more: a producer call retried after the outage (same timer id)
        # must find its timer still pending, not fired and gone.
        with chaos.traffic(rate=100, delays=(1.0, 4.0)):
            for _ in range(restarts):
                time.sleep(3.0)
                chaos.server.restart(kill=True)
        chaos.ledger.faults.append(f"{restarts} server crashes (SIGKILL), AOF reload")
        return chaos.settle()


def server_restart_rdb(workdir: Path, full: bool) -> Ledger:
    """The server crashes and comes back from an RDB snapshot 2.5 s later: the shadow keys of
    the timers that fell due meanwhile are dropped at load; their timers still fire."""
    rounds = 3 if full else 1
    with world("server restart, RDB only", workdir, appendonly=False) as chaos:
        for _ in range(2):
            chaos.start_worker()
        dropped = 0
        for _ in range(rounds):
            with chaos.traffic(rate=100, delays=(1.0, 5.0)):
                time.sleep(3.0)
            # Writes paused, so the snapshot is the last state: nothing that happens after it
            # is lost with the crash (that loss would be the persistence mode's, not ours).
            chaos.client.client_pause(10_000, all=False)
            chaos.client.save()
            snapshot_ms = chaos.producer.server_time_ms()
            chaos.server.stop(kill=True)
            time.sleep(2.5)
            chaos.server.start()
            loaded_ms = chaos.producer.server_time_ms()
            # A shadow key lives until its deadline plus a 1 s grace.
            dropped += sum(
                snapshot_ms < due + 1000 < loaded_ms for due in chaos.delayed_due.values()
            )
        with chaos.traffic(rate=100):
            time.sleep(2.0)
        chaos.ledger.faults.append(f"{rounds} crash(es), RDB reload after 2.5 s")
        chaos.ledger.figures.append(f"{dropped} shadow keys dropped at load")
        ledger = chaos.settle()
        ledger.check(dropped > 0, "no shadow key was dropped: the scenario tested nothing")
        return ledger


def listener_kills_and_freezes(workdir: Path, full: bool) -> Ledger:
    """The workers' notification listeners disconnected every 0.5 s (CLIENT KILL TYPE pubsub),
    and the whole server frozen for 2 s, by CLIENT PAUSE and by DEBUG SLEEP."""
    seconds = 40.0 if full else 14.0
    with world("listener kills, freezes", workdir, "--enable-debug-command", "local") as chaos:
        for _ in range(2):
            chaos.start_worker()
        kills = freezes = 0
        began = time.monotonic()
        with chaos.traffic(rate=100):
            while (elapsed := time.monotonic() - began) < seconds:
                kills += chaos.client.client_kill_filter(_type="pubsub")
                if freezes < elapsed // 5:  # at 5, 10, 15 ... s, alternately
                    freezes += 1
                    if freezes % 2:
                        chaos.client.client_pause(2000, all=True)
                    else:
                        chaos.client.execute_command("DEBUG", "SLEEP", 2)
                time.sleep(0.5)
        chaos.ledger.faults.append(f"{kills} listener kills, {freezes} 2-s freezes")
        return chaos.settle()


def eight_workers(workdir: Path, full: bool) -> Ledger:
    """Eight workers competing for the same timers, all due within one second."""
    count = 10_000 if full else 3_000
    with world("8 competing workers", workdir) as chaos:
        for _ in range(8):
            chaos.start_worker(wait=False)
        for proc in chaos.workers:
            wait_ready(proc)
        rng = random.Random(3)
        chaos.schedule_many({f"e{i}": 1.0 + rng.random() for i in range(count)})
        chaos.ledger.faults.append(f"8 workers, {count:,} timers due in 1 s")
        ledger = chaos.settle()
        pids = {r.pid for r in chaos.runs()}
        ledger.figures.append(f"jobs ran in {len(pids)} processes")
        ledger.check(len(pids) >= 4, f"only {len(pids)} of 8 workers ran jobs: no competition")
        return ledger


def clock_skew(workdir: Path, full: bool) -> Ledger:
    """Two workers whose clocks are 5 minutes fast and 5 minutes slow."""
    seconds = 30.0 if full else 8.0
    with world("worker clocks +-5 min", workdir) as chaos:
        chaos.start_worker(env={"CLOCK_SKEW": "300"})
        chaos.start_worker(env={"CLOCK_SKEW": "-300"})
        with chaos.traffic(rate=100):
            time.sleep(seconds)
        chaos.ledger.faults.append("clocks +300 s and -300 s")
        ledger = chaos.settle()
        ledger.check(ledger.worst_ms() < 1000, f"{ledger.worst_ms()} ms late with skewed clocks")
        return ledger


def clock_steps(workdir: Path, full: bool) -> Ledger:
    """Two workers whose wall clocks are stepped back and forth by up to 2 minutes while they
    run (NTP steps, resumed VMs), beside 50,000 unrelated keys with a time-to-live, among which
    the server's own expiry cycle finds due shadow keys late: timers must fire from the deadline
    loop, by the server's clock, not from expiry hints."""
    seconds = 40.0 if full else 10.0
    rng = random.Random(17)
    with world("worker clock steps", workdir) as chaos:
        add_unrelated_ttl_keys(chaos.client, 50_000)
        files = [workdir / f"clock-{n}" for n in range(2)]
        workers = []
        for clock_file in files:
            clock_file.write_text("0")
            workers.append(chaos.start_worker(env={"CLOCK_STEP_FILE": str(clock_file)}))
        steps = 0
        with chaos.traffic(rate=100):
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                n = rng.randrange(2)
                assert workers[n].pid is not None
                clockstep.step(workers[n].pid, files[n], rng.choice([-120, -30, 0, 30, 120]))
                steps += 1
                time.sleep(rng.uniform(0.5, 1.5))
        chaos.ledger.faults.append(f"{steps} clock steps of up to 120 s, 50k TTL keys")
        ledger = chaos.settle()
        ledger.check(ledger.worst_ms() < 1000, f"{ledger.worst_ms()} ms late with stepped clocks")
        return ledger


def add_unrelated_ttl_keys(client: redis.Redis, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"noise:{i}", "x", ex=3600)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def watch_churn(workdir: Path, full: bool) -> Ledger:
    """Another program's heartbeats on 20 watched keys (re-SET, DEL, MOVE, RENAME away, SET
    without and PERSIST of the time-to-live), among ordinary traffic, while a worker, the watch
    leader or not, is stopped (SIGSTOP) for up to 2 s at random: each expiry fires once, no
    removal or refresh fires, and no watch timer is left."""
    seconds = 40.0 if full else 12.0
    rng = random.Random(23)
    with world("watched-key churn, stalls", workdir) as chaos:
        chaos.app_spec = "tests.chaos.watch_app:app"
        workers = [chaos.start_worker() for _ in range(2)]
        stalls = 0
        churn = Churn(chaos.server.url)
        try:
            with chaos.traffic(rate=50), churn:
                began = time.monotonic()
                while time.monotonic() - began < seconds:
                    time.sleep(rng.uniform(0.5, 1.5))
                    stalled = rng.choice(workers)
                    assert stalled.pid is not None
                    os.kill(stalled.pid, signal.SIGSTOP)
                    try:
                        time.sleep(rng.uniform(0.3, 2.0))
                    finally:
                        os.kill(stalled.pid, signal.SIGCONT)
                    stalls += 1
            churn.finish()
            chaos.expiries = dict(churn.expiries)
            ledger = chaos.settle()
        finally:
            churn.close()
        writes = ", ".join(f"{n} {op}" for op, n in churn.writes.most_common())
        ledger.faults.append(f"{stalls} worker stalls of up to 2 s, watched keys churned")
        ledger.figures.append(f"watched keys: {sum(churn.expiries.values())} expiries; {writes}")
        left = int(chaos.client.zcard(chaos.producer.keys.watch_index))
        ledger.check(left == 0, f"{left} watch timer(s) left behind")
        ledger.check(sum(churn.expiries.values()) > 0, "no watched key expired")
        return ledger


def hanging_job(workdir: Path, full: bool) -> Ledger:
    """Jobs that never return, on one worker of 4 slots, among ordinary traffic: each times out
    (``timeout=1``), is retried once and dead-lettered; the other jobs keep running on time."""
    hangs = 12 if full else 4
    seconds = 20.0 if full else 8.0
    with world("hanging jobs", workdir, concurrency=4) as chaos:
        chaos.start_worker()
        with chaos.traffic(rate=50):
            for i in range(hangs):
                chaos.tasks.hang.schedule(f"h{i}", delay=0.1)
                time.sleep(seconds / hangs)
        chaos.ledger.faults.append(f"{hangs} jobs that never return, 4 slots")
        ledger = chaos.settle()
        dead = chaos.producer.dead_letters()
        timed_out = [d for d in dead if d.task == "chaos.hang" and "JobTimeout" in d.reason]
        ledger.figures.append(f"{len(timed_out)} of {hangs} hanging jobs dead-lettered")
        ledger.check(len(timed_out) == hangs == len(dead), f"dead letters: {dead}")
        ledger.check(ledger.worst_ms() < 1000, f"{ledger.worst_ms()} ms late beside hung jobs")
        return ledger


def memory_full(workdir: Path, full: bool) -> Ledger:
    """``maxmemory`` 12 MB under ``noeviction``, a producer scheduling 4 KB timers as fast as
    it can: refused calls raise ServerOutOfMemory and are tried again; nothing pending is lost."""
    seconds = 30.0 if full else 8.0
    limits = ("--maxmemory", "12mb", "--maxmemory-policy", "noeviction")
    with world("memory full", workdir, *limits) as chaos:
        chaos.pad = "x" * 4096
        for _ in range(2):
            chaos.start_worker()
        peak = 0
        with chaos.traffic(rate=2000, delays=(3.0, 6.0)):
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                peak = max(peak, int(chaos.client.info("memory")["used_memory"]))
                time.sleep(0.2)
        chaos.ledger.faults.append("maxmemory 12 MB, 4 KB payloads")
        ledger = chaos.settle()
        ledger.figures.append(
            f"{chaos.refused_full} calls refused when full, peak {peak / 2**20:.1f} MB of 12"
        )
        ledger.check(chaos.refused_full > 0, "the server never filled: the scenario tested nothing")
        return ledger


def soak(workdir: Path, full: bool) -> Ledger:
    """30 minutes of a service making 5 timers a second and a debounce burst every 2 s,
    compressed (5 times more in the full run); worker and server memory sampled."""
    seconds = 150.0 if full else 30.0
    rate = 9000 / 30.0  # 9,000 timers = 30 min x 5 /s
    with world("soak", workdir) as chaos:
        workers = [chaos.start_worker() for _ in range(2)]
        server_before = used_memory(chaos.client)
        samples: list[tuple[float, int, int]] = []  # (s, workers' RSS kB, server bytes)
        began = time.monotonic()
        with chaos.traffic(rate=rate):
            while (elapsed := time.monotonic() - began) < seconds:
                rss = sum(rss_kb(w.pid) for w in workers if w.pid is not None)
                samples.append((elapsed, rss, used_memory(chaos.client)))
                time.sleep(0.5)
        chaos.ledger.faults.append(f"{seconds:.0f} s of mixed traffic, memory sampled")
        left = chaos.drain()
        records = chaos.release_outcomes()
        server_after = used_memory(chaos.client)
        rss_after = sum(rss_kb(w.pid) for w in workers if w.pid is not None)
        chaos.stop_workers()
        chaos.account(left)
        ledger = chaos.ledger
        warm = [rss for s, rss, _ in samples if s >= seconds / 3]
        peak_server = max(used for _, _, used in samples)
        minutes = ledger.timers / 5 / 60
        ledger.figures.append(
            f"{minutes:.0f} min of traffic; workers' RSS {warm[0] / 1024:.1f} -> "
            f"{rss_after / 1024:.1f} MB; server {server_before / 2**20:.2f} MB, "
            f"peak {peak_server / 2**20:.2f}, drained {server_after / 2**20:.2f} (after "
            f"{records:,} outcome records, each expiring, were removed)"
        )
        ledger.check(
            server_after - server_before < 1 * 2**20,
            f"server memory grew by {(server_after - server_before) / 2**20:.2f} MB once drained",
        )
        ledger.check(
            rss_after < warm[0] * 1.15 + 4096,
            f"workers' RSS grew from {warm[0]} kB to {rss_after} kB once warm",
        )
        return ledger


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


SCENARIOS: dict[str, Scenario] = {
    "worker-kills": worker_kills,
    "restart-aof": server_restart_aof,
    "restart-rdb": server_restart_rdb,
    "listener-freeze": listener_kills_and_freezes,
    "eight-workers": eight_workers,
    "clock-skew": clock_skew,
    "clock-steps": clock_steps,
    "watch-churn": watch_churn,
    "hanging-job": hanging_job,
    "memory-full": memory_full,
    "soak": soak,
}
