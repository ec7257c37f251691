"""delayq works as a Redis ACL user that may do only what it needs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from typer.testing import CliRunner

from delayq import Delayq, EmbeddedServer
from delayq.cli import cli
from tests.conftest import WorkerThread, wait_until


def test_whole_flow_as_a_least_privilege_user(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    result = CliRunner().invoke(cli, ["acl", "-A", "tests.acl_app:app", "--user", "limited"])
    assert result.exit_code == 0, result.output
    words = result.output.split()
    assert words[:3] == ["ACL", "SETUSER", "limited"]
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(*words, ">s3cret")
    # The limited user may not CONFIG SET: the operator enables notifications once.
    flags = admin.config_get("notify-keyspace-events")["notify-keyspace-events"]
    admin.config_set("notify-keyspace-events", "".join(sorted(set(flags) | set("KEg$x"))))
    url = server.url.replace("redis://", "redis://limited:s3cret@")
    limited = redis.Redis.from_url(url)

    app = Delayq(url, namespace="acl")
    ran: list[str] = []
    lock = threading.Lock()

    @app.task(retries=1, retry_backoff=0.05)
    def job(tag: str) -> None:
        with lock:
            ran.append(tag)
        if tag == "bad":
            raise RuntimeError("bad")

    @app.debounced(seconds=0.2, key="d:{tag}")
    def debounced(tag: str) -> None:
        with lock:
            ran.append("debounced-" + tag)

    @app.periodic(every=__import__("datetime").timedelta(seconds=1), name="acl.tick")
    def tick() -> None:
        with lock:
            ran.append("tick")

    @app.on_expire("acl-seen:*", data="acl-data:{suffix}")
    def silent(key: str, suffix: str, data: bytes | None) -> None:
        with lock:
            ran.append(f"silent-{suffix}-{data!r}")

    start_worker(app)
    job.schedule("good", delay=0.1)
    job.schedule("bad", delay=0.1)
    debounced.touch("x")
    debounced.touch("x")
    paused = job.schedule("paused", delay=60)
    assert paused.pause() and paused.resume() and paused.cancel()
    admin.set("acl-data:7", "payload")
    admin.set("acl-seen:7", "1", px=300)
    wait_until(
        lambda: (
            {"good", "debounced-x", "tick", "silent-7-b'payload'"} <= set(ran)
            and len(app.dead_letters()) == 1
        ),
        timeout=20,
    )
    assert ran.count("bad") == 2
    assert app.retry_dead(app.dead_letters()[0])
    # Outside its namespace the user can do nothing.
    for command in (("GET", "other:key"), ("SET", "dq:{other}:x", "1"), ("FLUSHALL",)):
        try:
            limited.execute_command(*command)
        except redis.exceptions.NoPermissionError:
            continue
        raise AssertionError(f"{command} was allowed")
    time.sleep(0.1)
    limited.close()
    app.close()
    admin.acl_deluser("limited")
    admin.close()
