"""Redis Sentinel: ``redis+sentinel://`` URLs and ``sentinels=``/``service_name=`` read into one
target, calls sent again through a failover, and a producer and a worker on a real deployment
(a primary, a replica and three sentinels from the bundled binary) that fails over mid-run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import ReadOnlyError, ResponseError

from delayq import ConfigurationError, Delayq, EmbeddedServer
from delayq._calls import command
from delayq._scripts import SCRIPTS
from delayq._sentinel import (
    Attempt,
    Rediscover,
    Unanswered,
    parse_target,
    through_failover,
)
from delayq._sentinel_server import LocalSentinel, fields, query
from delayq.testing import LazyRedis
from tests.conftest import ROOT, WorkerThread, process_gone, wait_until

# -- the URL and the keyword arguments -------------------------------------------------------


def test_a_url_names_sentinels_service_database_and_credentials() -> None:
    target = parse_target(
        "redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/my%20primary/3"
        "?sentinel_password=watch&socket_timeout=2",
        {"socket_connect_timeout": 1.5, "sentinel_password": "overridden"},
    )
    assert target.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert target.service_name == "my primary"
    assert target.db == 3
    # The URL's user and password are the primary's; the URL's options win over redis_options.
    assert target.connection == {"username": "app", "password": "s@cret", "db": 3,
                                 "socket_timeout": 2.0, "socket_connect_timeout": 1.5}  # fmt: skip
    # The sentinels get their own password, and the socket timeouts.
    assert target.sentinel == {"password": "watch", "socket_timeout": 2.0,
                               "socket_connect_timeout": 1.5}  # fmt: skip


def test_a_url_without_database_keeps_the_one_of_redis_options() -> None:
    target = parse_target("redis+sentinel://s1/mymaster", {"db": 2, "sentinel_username": "w"})
    assert target.db == 2 and target.sentinel == {"username": "w"}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "the path must be /service_name"),
        ("redis+sentinel://s1:26379/a/1/2", "the path must be /service_name"),
        ("redis+sentinel://s1:26379/mymaster/one", "'one' is not a database number"),
        ("redis+sentinel://s1:port/mymaster", "'port' is not a port"),
        ("redis+sentinel://s1:70000/mymaster", "'70000' is not a port"),
        ("redis+sentinel://s1,,s2/mymaster", "a sentinel's host is missing"),
        ("redis+sentinel://s1/mymaster?sentinel_db=1", "unknown Sentinel option"),
    ],
)
def test_a_bad_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Delayq(url)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"host": "h"}, "host cannot be set with Sentinel"),
        ({"ssl": True}, "ssl options need a rediss"),
    ],
)
def test_redis_options_that_cannot_apply_are_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Delayq("redis+sentinel://s1/mymaster", redis_options=options)


def test_a_bad_url_never_shows_its_passwords() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Delayq("redis+sentinel://u:hunter2@s1/?sentinel_password=hunter3")
    assert "hunter" not in str(raised.value)


def test_keyword_arguments_are_written_as_the_url() -> None:
    app = Delayq(sentinels=[("10.0.0.1", 26379), ("::1", 5000)], service_name="shop/main",
                 redis_options={"password": "p"}, namespace="n")  # fmt: skip
    assert app.url == "redis+sentinel://10.0.0.1:26379,[::1]:5000/shop%2Fmain"
    target = parse_target(app.url, app.redis_options)
    assert target.service_name == "shop/main" and target.connection == {"password": "p"}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"sentinels": [("s1", 26379)]}, "sentinels= needs service_name="),
        ({"service_name": "mymaster"}, "service_name= needs sentinels="),
        ({"sentinels": [], "service_name": "m"}, "at least one"),
        ({"sentinels": "s1:26379", "service_name": "m"}, "a list of"),
        ({"sentinels": [("s1", "26379")], "service_name": "m"}, "is not a \\(host, port\\)"),
        ({"sentinels": [("s1", 26379)], "service_name": "m", "url": "redis://h/0"}, "not both"),
    ],
)
def test_bad_keyword_arguments_are_refused_naming_the_problem(
    kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Delayq(**kwargs)


# -- what is sent again through a failover ---------------------------------------------------


def test_only_the_calls_left_unanswered_or_refused_are_sent_again() -> None:
    calls = [command("SET", str(i), "v", raw=True) for i in range(4)]
    flow = through_failover(calls, False, wait=5.0)
    step = next(flow)
    assert isinstance(step, Attempt) and list(step.calls) == calls
    lost = Unanswered(ConnectionLost("closed"))
    # Call 0 ran; 1 was refused by a demoted primary; 2 and 3 were never read.
    assert isinstance(flow.send(["OK", ReadOnlyError("READONLY"), lost, lost]), Rediscover)
    step = flow.send(None)
    assert isinstance(step, Attempt) and list(step.calls) == calls[1:]
    # A primary cut off from its replicas (min-replicas-to-write) refuses as a demoted one does.
    flow.send(["OK", ResponseError("NOREPLICAS Not enough good replicas to write."), "OK"])
    step = flow.send(None)
    assert isinstance(step, Attempt) and list(step.calls) == [calls[2]]
    with pytest.raises(StopIteration) as done:
        flow.send(["OK"])
    assert done.value.value == ["OK", "OK", "OK", "OK"]


def test_an_error_reply_is_a_reply_and_a_failover_that_never_ends_raises() -> None:
    calls = [command("INCR", "k", raw=True)]
    flow = through_failover(calls, False, wait=5.0)
    next(flow)
    wrong = ResponseError("WRONGTYPE")
    with pytest.raises(StopIteration) as done:
        flow.send([wrong])
    assert done.value.value == [wrong]
    flow = through_failover(calls, False, wait=0.0)
    next(flow)
    with pytest.raises(ConnectionLost, match="closed"):
        flow.send([Unanswered(ConnectionLost("closed"))])


# -- a real deployment failing over ----------------------------------------------------------


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A primary, a replica and three sentinels of the test's own: each test fails it over."""
    local = LocalSentinel(1, 3, data_dir=tmp_path / "sentinel")
    # Generous: the machine has 2 cores and may be busy with other tests.
    local.start(timeout=60.0)
    yield local
    local.cleanup()


class Ledger:
    """Which timer ids ran, how often, when each was due and when it ran (this machine's
    clock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = "s" + uuid.uuid4().hex[:10]
        self.runs: Counter[str] = Counter()
        self.due: dict[str, float] = {}
        self.ran: dict[str, float] = {}
        self.lock = threading.Lock()
        self.producer, self.note = self.app()

    def app(self) -> tuple[Delayq, Any]:
        app = Delayq(self.url, namespace=self.namespace)

        @app.task(name="ledger.note")
        def note(timer_id: str) -> None:
            with self.lock:
                self.runs[timer_id] += 1
                self.ran.setdefault(timer_id, time.time())

        return app, note

    def schedule(self, prefix: str, count: int, spread: float) -> None:
        """``count`` timers due over the next ``spread`` s, in one batch."""
        now = time.time()
        requests = []
        for i in range(count):
            delay, timer_id = 0.3 + spread * i / count, f"{prefix}{i}"
            self.due[timer_id] = now + delay
            requests.append(self.note.request((timer_id,), {}, delay=delay, timer_id=timer_id))
        self.producer.schedule_many(requests)

    def count(self) -> int:
        with self.lock:
            return len(self.runs)

    def settled(self, timeout: float = 60.0) -> tuple[list[str], list[str]]:
        """Once every timer ran and nothing is pending or in flight (no duplicate can come
        after that): the timers lost and those run more than once."""

        def idle() -> bool:
            if self.count() < len(self.due) or self.producer.pending_count():
                return False
            return not self.producer._run(command("XLEN", self.producer.keys.ready))

        wait_until(idle, timeout=timeout)
        with self.lock:
            lost = sorted(set(self.due) - set(self.runs))
            repeated = sorted(t for t, n in self.runs.items() if n > 1)
        return lost, repeated


def _flags(server: EmbeddedServer) -> str:
    return str(fields(query(server, "CONFIG", "GET", "notify-keyspace-events"))[
        "notify-keyspace-events"])  # fmt: skip


def _replica_of(deployment: LocalSentinel) -> EmbeddedServer:
    primary = deployment.primary()
    return next(s for s in deployment.servers if s is not primary)


def _replicated(primary: EmbeddedServer, replica: EmbeddedServer) -> bool:
    """Whether the replica holds every write the primary had made when asked."""
    wanted = int(_info(query(primary, "INFO", "replication"))["master_repl_offset"])
    return int(_info(query(replica, "INFO", "replication"))["master_repl_offset"]) >= wanted


def _info(text: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}


def test_a_coordinated_failover_mid_run_loses_nothing_and_doubles_nothing(
    deployment: LocalSentinel, start_worker: Callable[..., WorkerThread]
) -> None:
    """``SENTINEL FAILOVER ... COORDINATED``: the primary lets its replica catch up and then
    refuses writes (READONLY), so every call is answered once, by one of them. The worker set
    notifications on the replica too: once promoted, it publishes the events of watched keys."""
    replica = _replica_of(deployment)
    query(replica, "CONFIG", "SET", "notify-keyspace-events", "")
    ledger = Ledger(deployment.url)
    worker_app = ledger.app()[0]
    expired: list[str] = []

    @worker_app.on_expire("session:*")
    def session_over(key: str, suffix: str, data: Any) -> None:
        expired.append(suffix)

    start_worker(worker_app)
    assert set("KEg$x") <= set(_flags(replica))
    ledger.schedule("t", 400, spread=4.0)
    # Scripts are not replicated: the new primary will answer NOSCRIPT, and get them again.
    schedule_sha = SCRIPTS.sha("schedule")
    assert query(replica, "SCRIPT", "EXISTS", schedule_sha) == [0]
    wait_until(lambda: ledger.count() > 50, timeout=30)
    promoted = deployment.failover(coordinated=True)
    assert promoted is replica
    ledger.schedule("u", 100, spread=1.0)
    assert query(promoted, "SCRIPT", "EXISTS", schedule_sha) == [1]
    assert ledger.settled() == ([], [])
    # The watch leader's subscription followed the primary: a watched key expiring there fires.
    wait_until(lambda: int(query(promoted, "PUBSUB", "NUMPAT")) > 0, timeout=15)
    ledger.producer._run(command("SET", "session:42", "x", "PX", 300))
    wait_until(lambda: expired == ["42"], timeout=15)
    ledger.producer.close()


def test_a_killed_primary_fires_what_fell_due_during_the_outage_after_the_promotion(
    deployment: LocalSentinel, start_worker: Callable[..., WorkerThread]
) -> None:
    """SIGKILL of the primary mid-run. Every timer armed before the crash (and replicated by
    then) runs once the replica is promoted, those due while no primary ran included; a timer
    fired in the last moments before the crash may run again (what was not replicated yet)."""
    ledger = Ledger(deployment.url)
    start_worker(ledger.app()[0])
    primary, replica = deployment.primary(), _replica_of(deployment)
    ledger.schedule("t", 500, spread=5.0)
    wait_until(lambda: _replicated(primary, replica), timeout=10)
    wait_until(lambda: ledger.count() > 50, timeout=30)
    killed_at = time.time()
    deployment.kill_primary()
    assert deployment.wait_promoted(primary, timeout=30) is replica
    promoted_at = time.time()
    lost, repeated = ledger.settled()
    assert lost == []
    assert len(repeated) <= 5, repeated
    outage = [t for t, due in ledger.due.items() if killed_at < due < promoted_at - 0.2]
    assert len(outage) > 20  # the outage lasted over a second, with a timer due every 10 ms
    assert min(ledger.ran[t] for t in outage) > killed_at


def test_a_plain_failover_with_min_replicas_to_write_loses_nothing(
    deployment: LocalSentinel, start_worker: Callable[..., WorkerThread]
) -> None:
    """A plain ``SENTINEL FAILOVER`` promotes the replica without waiting, and the old primary
    takes writes (lost when it is demoted) until the sentinels turn it into a replica, about
    10 s later. With ``min-replicas-to-write 1`` it refuses them (NOREPLICAS) from the moment
    its replica leaves; so does the new primary until the old one has rejoined it as its
    replica. The calls wait and go to the new primary then."""
    for server in deployment.servers:
        query(server, "CONFIG", "SET", "min-replicas-to-write", "1")
    ledger = Ledger(deployment.url)
    start_worker(ledger.app()[0])
    ledger.schedule("t", 300, spread=3.0)
    wait_until(lambda: ledger.count() > 50, timeout=30)
    old = deployment.primary()
    deployment.failover(coordinated=False)
    ledger.schedule("u", 100, spread=1.0)  # waits for the new primary to take writes
    assert query(old, "ROLE")[0] == "slave"
    lost, repeated = ledger.settled()
    # Only a write the old primary made in the instant before the promotion, not replicated
    # yet, is at risk; on one machine the replica is never behind by that much.
    assert lost == [] and len(repeated) <= 5, (lost, repeated)


def test_cli_server_sentinel_serves_a_deployment_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "delayq", "server", "--sentinel", "--dir", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()

    def url() -> str | None:
        found = re.search(r"connect to (redis\+sentinel://\S+);", "".join(lines))
        return found.group(1) if found else ("" if proc.poll() is not None else None)

    try:
        assert wait_until(lambda: url() is not None, timeout=60.0), "".join(lines)
        app = Delayq(url(), namespace="cli")
        app.task(lambda: None, name="noop").schedule(delay=60)
        assert app.pending_count() == 1
        assert LazyRedis(app)().exists(app.keys.index) == 1  # the testing helpers connect too
        app.close()
        # A service the sentinels do not know is reported at once, not waited for as a failover.
        unknown = Delayq(url().replace("/mymaster", "/other"), namespace="cli")
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="No master found for 'other'"):
            unknown.connect()
        with pytest.raises(ConnectionLost, match="No master found for 'other'"):
            asyncio.run(unknown.aconnect())
        assert time.monotonic() - started < 10
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(lines))]
    assert len(pids) == 5 and all(process_gone(pid) for pid in pids), "".join(lines)


def test_a_tls_url_speaks_tls_to_the_sentinels_and_the_servers() -> None:
    target = parse_target("rediss+sentinel://s1,s2/mymaster?ssl_ca_certs=/ca.pem", {})
    for side in (target.connection, target.sentinel):
        assert side["ssl"] is True and side["ssl_ca_certs"] == "/ca.pem"
    app = Delayq(sentinels=[("s1", 26379)], service_name="m", redis_options={"ssl": True})
    assert app.url == "rediss+sentinel://s1:26379/m"
