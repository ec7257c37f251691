"""TLS through Sentinel (``rediss+sentinel://``) against Debian's ``redis-server`` (or the binary
named by ``DELAYQ_TLS_SERVER``), as in tests/test_tls.py: a primary, a replica and three
sentinels, each on a TLS port only with client certificates required. Skipped without such a
binary, unless ``DELAYQ_REQUIRE_TLS=1``."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from delayq import Delayq
from delayq._sentinel_server import LocalSentinel, query
from tests.conftest import WorkerThread, wait_until
from tests.test_tls import started_or_unavailable, tls_setup


@pytest.fixture
def tls_sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    binary, files = tls_setup(tmp_path, "TLS through Sentinel")
    deployment = LocalSentinel(1, 3, data_dir=tmp_path / "sentinel", binary=binary, tls=files)
    started_or_unavailable(lambda: deployment.start(timeout=60.0), binary, "a TLS sentinel")
    yield deployment
    deployment.cleanup()


def test_timers_fire_through_tls_sentinels_and_a_crash_failover(
    tls_sentinel: LocalSentinel, start_worker: Callable[..., WorkerThread]
) -> None:
    url = tls_sentinel.url
    assert url.startswith("rediss+sentinel://")
    for process in [*tls_sentinel.servers, *tls_sentinel.sentinels]:
        assert query(process, "PING") in ("PONG", True)  # over TLS, with the client certificate
        plain = redis.Redis(host="127.0.0.1", port=process.port, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()  # no plain port: every connection that works is TLS
        plain.close()
    namespace = "t" + uuid.uuid4().hex[:8]
    ran: Counter[str] = Counter()

    def app() -> tuple[Delayq, object]:
        made = Delayq(url, namespace=namespace)

        @made.task(name="tls.note")
        def note(tag: str) -> None:
            ran[tag] += 1

        return made, note

    producer, note = app()
    start_worker(app()[0])
    for i in range(20):
        note.schedule(f"a{i}", delay=0.2, id=f"a{i}")  # type: ignore[attr-defined]
    wait_until(lambda: len(ran) == 20, timeout=20)
    tls_sentinel.kill_primary()
    started = time.monotonic()
    for i in range(20):  # waits out the promotion, then goes to the new primary over TLS
        note.schedule(f"b{i}", delay=0.2, id=f"b{i}")  # type: ignore[attr-defined]
    wait_until(lambda: len(ran) == 40, timeout=60)
    assert max(ran.values()) == 1
    assert time.monotonic() - started < 45
    producer.close()
