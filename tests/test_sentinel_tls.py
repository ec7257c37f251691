"""TLS through Sentinel (``rediss+sentinel://``) against Debian's ``redis-server`` (or the binary
named by ``DELAYQ_TLS_SERVER``), as in tests/test_tls.py: a primary, a replica and three
sentinels, each on a TLS port only with client certificates required. Skipped without such a
binary, unless ``DELAYQ_REQUIRE_TLS=1``."""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from delayq import Delayq
from delayq._errors import ConfigurationError
from delayq._sentinel_server import LocalSentinel, query
from delayq._server import TlsFiles
from tests.conftest import WorkerThread, wait_until
from tests.test_tls import find_server_binary, make_certs, unavailable


@pytest.fixture
def tls_sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    binary, openssl = find_server_binary(), shutil.which("openssl")
    if binary is None or openssl is None:
        unavailable("TLS through Sentinel needs redis-server (or DELAYQ_TLS_SERVER) and openssl")
    assert binary is not None and openssl is not None
    certs = make_certs(tmp_path, openssl)
    files = TlsFiles(ca=certs.ca, cert=certs.server_cert, key=certs.server_key,
                     client_cert=certs.client_cert, client_key=certs.client_key)  # fmt: skip
    deployment = LocalSentinel(1, 3, data_dir=tmp_path / "sentinel", binary=binary, tls=files)
    try:
        deployment.start(timeout=60.0)
    except ConfigurationError as exc:
        if "exited with" not in str(exc):
            raise
        unavailable(f"{binary} cannot run a TLS sentinel: {exc}")
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
