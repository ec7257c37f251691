"""TLS: ``rediss://`` URLs with a CA and client certificates, against a TLS-only redis-server.

The bundled Valkey is built without TLS, so these tests start ``redis-server`` from the system
(Debian's package supports TLS), or the binary named by ``DELAYQ_TLS_SERVER``. The server listens
on a TLS port only (``--port 0``) and requires a client certificate (``--tls-auth-clients yes``),
so every connection that works went through a verified TLS handshake both ways. Without such a
binary the tests are skipped, unless ``DELAYQ_REQUIRE_TLS=1`` (set by CI), which makes them fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from delayq import Delayq, EmbeddedServer
from delayq._connection import redact_url
from delayq._errors import ConfigurationError
from delayq._server import TlsFiles, free_port
from tests.conftest import ROOT, WorkerProcess, WorkerThread, wait_until

# -- certificates ---------------------------------------------------------------------------

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def unavailable(reason: str) -> None:
    if os.environ.get("DELAYQ_REQUIRE_TLS") == "1":
        pytest.fail(f"{reason} (DELAYQ_REQUIRE_TLS=1 requires the TLS tests to run)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a second, unrelated self-signed CA
    stray_cert: Path  # a client certificate signed by other_ca, which the server does not trust
    stray_key: Path


def make_certs(directory: Path, openssl: str) -> Certs:
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args], cwd=directory, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"openssl {' '.join(args)} failed: {done.stderr}"

    def ca(name: str) -> None:
        run("req", "-x509", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", f"/CN=delayq test {name}", "-config", str(config),
            "-extensions", "ca_ext")  # fmt: skip

    def leaf(name: str, cn: str, signer: str, extensions: str) -> None:
        run("req", "-new", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}", "-config", str(config))  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{signer}.crt", "-CAkey",
            f"{signer}.key", "-set_serial", str(secrets.randbits(63)), "-days", "2",
            "-out", f"{name}.crt", "-extfile", str(config), "-extensions", extensions)  # fmt: skip

    ca("ca")
    ca("other_ca")
    leaf("server", "127.0.0.1", "ca", "server_ext")
    leaf("client", "delayq client", "ca", "client_ext")
    leaf("stray", "delayq stray client", "other_ca", "client_ext")
    return Certs(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other_ca.crt",
        stray_cert=directory / "stray.crt",
        stray_key=directory / "stray.key",
    )


# -- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsServer:
    port: int
    certs: Certs

    def options(self, *, client_cert: bool = True) -> dict[str, Any]:
        """The certificates as ``redis_options``."""
        options: dict[str, Any] = {"ssl_ca_certs": str(self.certs.ca)}
        if client_cert:
            options |= {
                "ssl_certfile": str(self.certs.client_cert),
                "ssl_keyfile": str(self.certs.client_key),
            }
        return options

    def url(
        self,
        *,
        certs: bool = True,
        client_cert: bool = True,
        ca: Path | None = None,
        cert: tuple[Path, Path] | None = None,
        auth: str = "",
        host: str = "127.0.0.1",
    ) -> str:
        """A ``rediss://`` URL, with the certificates as query parameters unless ``certs=False``."""
        base = f"rediss://{auth + '@' if auth else ''}{host}:{self.port}/0"
        if not certs:
            return base
        query = [f"ssl_ca_certs={ca or self.certs.ca}"]
        if cert is not None:
            query += [f"ssl_certfile={cert[0]}", f"ssl_keyfile={cert[1]}"]
        elif client_cert:
            query += [
                f"ssl_certfile={self.certs.client_cert}",
                f"ssl_keyfile={self.certs.client_key}",
            ]
        return base + "?" + "&".join(query)

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_timeout=5)


def find_server_binary() -> str | None:
    return shutil.which(os.environ.get("DELAYQ_TLS_SERVER") or "redis-server")


def tls_setup(directory: Path, what: str) -> tuple[str, TlsFiles]:
    """The TLS server binary and fresh certificates in ``directory``, for ``what`` (a TLS
    cluster, Sentinel...); skipped (or failed, with DELAYQ_REQUIRE_TLS=1) without them."""
    binary, openssl = find_server_binary(), shutil.which("openssl")
    if binary is None or openssl is None:
        unavailable(f"{what} needs redis-server (or DELAYQ_TLS_SERVER) and openssl")
    assert binary is not None and openssl is not None
    certs = make_certs(directory, openssl)
    files = TlsFiles(ca=certs.ca, cert=certs.server_cert, key=certs.server_key,
                     client_cert=certs.client_cert, client_key=certs.client_key)  # fmt: skip
    return binary, files


def started_or_unavailable(start: Callable[[], None], binary: str, what: str) -> None:
    """``start()``, or the test skipped if ``binary`` cannot run ``what`` (it exited)."""
    try:
        start()
    except ConfigurationError as exc:
        if "exited with" not in str(exc):
            raise
        unavailable(f"{binary} cannot run {what}: {exc}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    binary = find_server_binary()
    if binary is None:
        wanted = os.environ.get("DELAYQ_TLS_SERVER") or "redis-server"
        unavailable(
            f"no {wanted!r} found for the TLS tests (install Debian's redis-server package, "
            "or set DELAYQ_TLS_SERVER to a TLS-enabled redis-server or valkey-server)"
        )
    assert binary is not None
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("the openssl command is needed to make the test certificates")
    assert openssl is not None
    directory = tmp_path_factory.mktemp("tls")
    certs = make_certs(directory, openssl)
    server = TlsServer(free_port(), certs)
    log = directory / "server.log"
    command = [
        binary, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
        "--notify-keyspace-events", "Ex", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(log), "--daemonize", "no",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_for_tls(server, proc, binary, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def wait_for_tls(server: TlsServer, proc: subprocess.Popen[bytes], binary: str, log: Path) -> None:
    admin = server.admin()
    deadline = time.monotonic() + 20
    try:
        while True:
            if proc.poll() is not None:
                lines = log.read_text(errors="replace").splitlines() if log.exists() else []
                unavailable(f"{binary} did not start with TLS options (exit {proc.returncode}); "
                            f"it may be built without TLS; its log ends: "
                            f"{' | '.join(lines[-2:])}")  # fmt: skip
            try:
                if admin.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{binary} did not answer over TLS within 20 s; see {log}")
            time.sleep(0.05)
    finally:
        admin.close()


@pytest.fixture
def admin(tls: TlsServer) -> Iterator[redis.Redis]:
    client = tls.admin()
    yield client
    client.close()


# -- a. the whole flow over TLS, in-process -------------------------------------------------


@pytest.mark.parametrize("where", ["url", "redis_options"])
def test_timers_and_debounce_fire_once_over_tls(
    tls: TlsServer, namespace: str, start_worker: Callable[..., WorkerThread], where: str
) -> None:
    if where == "url":
        app = Delayq(tls.url(), namespace=namespace)
    else:
        app = Delayq(tls.url(certs=False), namespace=namespace, redis_options=tls.options())
    ran: list[tuple[str, float]] = []
    lock = threading.Lock()

    @app.task(retries=0)
    def job(tag: str) -> None:
        with lock:
            ran.append((tag, time.time()))

    @app.debounced(seconds=0.3, key="d:{device}")
    def settled(device: str) -> None:
        with lock:
            ran.append(("debounced-" + device, time.time()))

    try:
        app.connect()
        runner = start_worker(app)
        timer = job.schedule("delayed", delay=0.4)
        for _ in range(3):
            settled.touch("x")
        wait_until(lambda: {"delayed", "debounced-x"} <= {tag for tag, _ in ran}, timeout=20)
        wait_until(lambda: app.pending_count() == 0, timeout=10)
        runner.stop()  # drains: any duplicate run would have happened by now
        assert sorted(tag for tag, _ in ran) == ["debounced-x", "delayed"]
        fired_at = dict(ran)["delayed"]
        assert fired_at >= timer.due_at.timestamp() - 0.05, "fired before its deadline"
        assert app.timer(timer.id) is None
        assert runner.worker.fired >= 2
    finally:
        app.close()


def test_url_parameters_reach_both_redis_clients(tls: TlsServer) -> None:
    """What docs/configuration.md says of the query parameters holds for redis-py's sync and
    asyncio clients (the producer's and the worker's): any name in the server certificate's SAN
    works as the host (``localhost``), and ``ssl_cert_reqs=none`` turns verification off."""
    urls = [
        tls.url(host="localhost"),
        tls.url(certs=False) + f"?ssl_cert_reqs=none&ssl_certfile={tls.certs.client_cert}"
        f"&ssl_keyfile={tls.certs.client_key}",
    ]

    async def async_ping(url: str) -> bool:
        client = aredis.Redis.from_url(url)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    for url in urls:
        app = Delayq(url, namespace="tls-params")
        try:
            app.connect()
        finally:
            app.close()
        assert asyncio.run(async_ping(url))


# -- b. `delayq worker` over TLS, as an ACL user with a password in the URL -----------------


def test_cli_worker_runs_a_job_over_tls_and_hides_the_password(
    tls: TlsServer, admin: redis.Redis, namespace: str
) -> None:
    user, password = "tls" + uuid.uuid4().hex[:6], "pw-" + secrets.token_hex(12)
    admin.acl_setuser(user, enabled=True, passwords=["+" + password], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    url = tls.url(auth=f"{user}:{password}")
    producer = Delayq(url, namespace=namespace)

    @producer.task(name="tls.record", retries=0)
    def record(tag: str) -> None: ...

    proc = WorkerProcess(url, namespace, "--log-level", "DEBUG")
    proc.args[proc.args.index("tests.worker_app:app")] = "tests.tls_app:app"
    proc.start()
    try:
        timer = record.schedule("over-tls", delay=0.5)
        reported = f"test:{namespace}:tls"
        wait_until(lambda: admin.llen(reported) == 1, timeout=30)
        # The worker is connected as that user (over TLS: the server has no plain port).
        assert any(client["user"] == user for client in admin.client_list())
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.output()
        assert admin.lrange(reported, 0, -1)[0].decode().startswith("over-tls|")
        assert producer.timer(timer.id) is None
        assert f"rediss://{user}:***@127.0.0.1:{tls.port}/0" in out and "ready" in out
        assert password not in out
    finally:
        proc.close()
        producer.close()
        admin.acl_deluser(user)


# -- c. a bad TLS set-up fails with a clear error -------------------------------------------

BAD_SETUPS = ["no client certificate", "wrong CA", "untrusted client certificate"]


def bad_url(tls: TlsServer, setup: str, auth: str = "") -> str:
    if setup == "no client certificate":
        return tls.url(client_cert=False, auth=auth)
    if setup == "wrong CA":
        return tls.url(ca=tls.certs.other_ca, auth=auth)
    return tls.url(cert=(tls.certs.stray_cert, tls.certs.stray_key), auth=auth)


EXPECTED_HINT = {
    "no client certificate": "client certificate",
    "wrong CA": "the server's certificate is not trusted",
    # TLS 1.3: the client sees either the server's alert or only the closed connection.
    "untrusted client certificate": "client certificate",
}


@pytest.mark.parametrize("setup", BAD_SETUPS)
def test_bad_tls_setup_fails_connect_with_a_clear_error(
    tls: TlsServer, admin: redis.Redis, namespace: str, setup: str
) -> None:
    app = Delayq(bad_url(tls, setup, auth="someone:hunter2"), namespace=namespace)

    @app.task
    def job() -> None: ...

    try:
        with pytest.raises(redis.ConnectionError) as caught:
            app.connect()
        message = str(caught.value)
        redacted = f"rediss://someone:***@127.0.0.1:{tls.port}/0"
        assert message.startswith(f"TLS connection to {redacted}"), message
        assert EXPECTED_HINT[setup] in message, message
        assert "hunter2" not in message and "\n" not in message
        # The first schedule fails too (redis-py's own ConnectionError), and stores nothing.
        with pytest.raises(redis.ConnectionError):
            job.schedule(delay=1)
        assert admin.keys(f"dq:{{{namespace}}}:*") == []
    finally:
        app.close()


def test_rediss_to_a_plain_server_says_it_does_not_speak_tls(server: EmbeddedServer) -> None:
    # The server reads the ClientHello as a partial command and waits: the handshake times
    # out after socket_timeout.
    app = Delayq(
        server.url.replace("redis://", "rediss://"),
        namespace="tls-plain",
        redis_options={"socket_timeout": 1},
    )
    try:
        with pytest.raises(redis.TimeoutError, match="speak TLS on this port"):
            app.connect()
    finally:
        app.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from delayq.cli import main; main()", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("setup", ["no client certificate", "wrong CA"])
@pytest.mark.parametrize("command", ["worker", "timers list"])
def test_bad_tls_setup_stops_the_cli_with_one_line(
    tls: TlsServer, namespace: str, setup: str, command: str
) -> None:
    url = bad_url(tls, setup, auth="someone:hunter2")
    if command == "worker":
        result = run_cli(
            "worker", "-A", "tests.tls_app:app", "--url", url, "--namespace", namespace
        )
    else:
        result = run_cli("timers", "list", "--url", url, "--namespace", namespace)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(
        f"error: TLS connection to rediss://someone:***@127.0.0.1:{tls.port}/0"
    )
    assert EXPECTED_HINT[setup] in lines[0], lines[0]


def test_passwords_in_the_query_string_are_redacted() -> None:
    url = "rediss://u:pw1@h:6380/0?ssl_keyfile=/k&ssl_password=pw2&password=pw3#x"
    assert redact_url(url) == (
        "rediss://u:***@h:6380/0?ssl_keyfile=/k&ssl_password=***&password=***#x"
    )
