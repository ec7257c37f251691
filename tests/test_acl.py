"""delayq works as a Redis ACL user that may do only what it needs: on one server, and on a
cluster where the namespace is spread over 16 shards and every node has the user."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from delayq import ConfigurationError, Delayq, EmbeddedServer
from delayq._cluster_server import LocalCluster
from delayq._keys import Keys
from delayq._layout import Layout
from delayq.cli import cli
from tests.conftest import WorkerThread, wait_until

PASSWORD = "s3cret"


def acl_setuser(*options: str) -> list[str]:
    """`delayq acl` for tests/acl_app.py's app, as the words of the command, with a password."""
    result = CliRunner().invoke(cli, ["acl", "-A", "tests.acl_app:app", "--user", "limited",
                                      *options])  # fmt: skip
    assert result.exit_code == 0, result.output
    words = result.output.split()
    assert words[:3] == ["ACL", "SETUSER", "limited"]
    return [*words, ">" + PASSWORD]


def as_limited(url: str) -> str:
    return url.replace("redis://", f"redis://limited:{PASSWORD}@")


# What the app's own jobs add to the set of tags that ran, before the worker starts.
Extra = Callable[[Delayq, Callable[[str], None]], set[str]]


def run_the_flow(app: Delayq, start_worker: Callable[..., WorkerThread], timer_ids: list[str],
                 extra: Extra | None = None) -> WorkerThread:  # fmt: skip
    """Timers (one per id in ``timer_ids``), a retry and its dead letter, a re-drive, a
    debounced key, a periodic task and pause/resume/cancel, as the limited user: each timer
    runs once. Returns the worker, still running."""
    ran: Counter[str] = Counter()
    lock = threading.Lock()

    def note(tag: str) -> None:
        with lock:
            ran[tag] += 1

    @app.task(retries=1, retry_backoff=0.05)
    def job(tag: str) -> None:
        note(tag)
        if tag == "bad":
            raise RuntimeError("bad")

    @app.debounced(seconds=0.2, key="d:{tag}")
    def debounced(tag: str) -> None:
        note("debounced-" + tag)

    @app.periodic(every=dt.timedelta(seconds=1), name="acl.tick")
    def tick() -> None:
        note("tick")

    expected = {"debounced-x", "tick", *timer_ids, *(extra(app, note) if extra else ())}
    runner = start_worker(app)
    for tag in ["bad", *timer_ids]:
        job.schedule(tag, delay=0.1, id=tag)
    debounced.touch("x")
    debounced.touch("x")
    paused = job.schedule("paused", delay=60)
    assert paused.pause() and paused.resume() and paused.cancel()
    wait_until(lambda: expected <= set(ran) and len(app.dead_letters()) == 1, timeout=30)
    assert ran["bad"] == 2
    assert all(ran[tag] == 1 for tag in timer_ids), ran
    # Events, read back as the limited user (XREAD, XREVRANGE), from every shard.
    told = {e.kind for e in app.events(follow=False)}
    assert told >= {"scheduled", "rescheduled", "cancelled", "fired", "started", "succeeded",
                    "retried", "failed"}, told  # fmt: skip
    assert next(iter(app.events(since="$", follow=False)), None) is None
    assert app.retry_dead(app.dead_letters()[0])
    return runner


def assert_confined(limited: Any) -> None:
    """Outside its namespace the user can do nothing."""
    for command in (("GET", "other:key"), ("SET", "dq:{other}:x", "1"), ("FLUSHALL",)):
        try:
            limited.execute_command(*command)
        except redis.exceptions.NoPermissionError:
            continue
        raise AssertionError(f"{command} was allowed")


def test_whole_flow_as_a_least_privilege_user(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    words = acl_setuser("--url", server.url)  # namespace "acl": one shard on one server
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(*words)
    # The limited user may not CONFIG SET: the operator enables notifications once.
    flags = admin.config_get("notify-keyspace-events")["notify-keyspace-events"]
    admin.config_set("notify-keyspace-events", "".join(sorted(set(flags) | set("KEg$x"))))
    url = as_limited(server.url)
    limited = redis.Redis.from_url(url)
    app = Delayq(url, namespace="acl", events=True)

    def watched(app: Delayq, note: Callable[[str], None]) -> set[str]:
        @app.on_expire("acl-seen:*", data="acl-data:{suffix}")
        def silent(key: str, suffix: str, data: bytes | None) -> None:
            note(f"silent-{suffix}-{data!r}")

        admin.set("acl-data:7", "payload")
        admin.set("acl-seen:7", "1", px=300)
        return {"silent-7-b'payload'"}

    try:
        run_the_flow(app, start_worker, ["good"], watched).stop()  # before its user goes
        assert_confined(limited)
    finally:
        limited.close()
        app.close()
        admin.acl_deluser("limited")
        admin.close()


def one_id_per_shard(layout: Layout) -> list[str]:
    ids: dict[int, str] = {}
    for i in range(10_000):
        ids.setdefault(layout.shard_of(f"t{i}"), f"t{i}")
        if len(ids) == layout.count:
            return sorted(ids.values())
    raise AssertionError("no id found for some shard")


def test_a_sharded_namespace_on_a_cluster_as_a_least_privilege_user(
    cluster: LocalCluster, start_worker: Callable[..., WorkerThread]
) -> None:
    """`delayq acl --url <a node>` reads that a new namespace there gets 16 shards; its rule on
    every node (ACL users are per node) lets a producer and a worker fire timers on all, and
    watched keys on every node fire."""
    cluster.wait_ready(timeout=60.0)
    namespace = "acl" + uuid.uuid4().hex[:8]
    words = acl_setuser("--url", cluster.url, "--namespace", namespace)
    flags = {}
    for node in cluster.nodes:
        node.query(*words)
        reply = node.query("CONFIG", "GET", "notify-keyspace-events")
        flags[node] = reply["notify-keyspace-events"] if isinstance(reply, dict) else reply[1]
        node.query("CONFIG", "SET", "notify-keyspace-events", "KEg$x")
    app = Delayq(as_limited(cluster.url), namespace=namespace, events=True)
    admin = redis.RedisCluster.from_url(cluster.url)

    def watched(app: Delayq, note: Callable[[str], None]) -> set[str]:
        @app.on_expire("acl-seen:*", data="acl-data:{suffix}")
        def silent(key: str, suffix: str, data: bytes | None) -> None:
            note(f"silent-{suffix}-{data!r}")

        for i in range(6):  # on every primary, their companions too
            admin.set(f"acl-data:{i}", f"p{i}")
            admin.set(f"acl-seen:{i}", "1", px=300)
        return {f"silent-{i}-{f'p{i}'.encode()!r}" for i in range(6)}

    try:
        layout = app._run(app.store.layout())
        assert layout.count == 16
        assert len({admin.get_node_from_key(f"acl-seen:{i}").name for i in range(6)}) == 3
        run_the_flow(app, start_worker, one_id_per_shard(layout), watched).stop()
        for node in cluster.nodes:  # ACL refuses before the node looks at the key's slot
            with redis.Redis.from_url(as_limited(node.url)) as limited:
                assert_confined(limited)
    finally:
        app.close()
        admin.close()
        for node in cluster.nodes:
            node.query("ACL", "DELUSER", "limited")
            node.query("CONFIG", "SET", "notify-keyspace-events", flags[node])


def test_rules_name_every_shard() -> None:
    """Keys of every shard (and the namespace's own: its meta key), and each shard's channels
    as they are subscribed: a PSUBSCRIBE pattern passes only if listed literally."""
    layout = Layout.of("shop", 4)
    rules = layout.acl_rules(0)
    for keys in layout.shards:
        assert f"~{keys.prefix}*" in rules
        assert f"&{keys.wake_channel}" in rules
        assert f"&{keys.shadow_events(0)}" in rules
    assert "~dq:{shop}:*" in rules and "&__keyevent@0__:expired" in rules
    assert len([r for r in rules if r.startswith("~")]) == 5
    assert "+cluster|slots" in rules and "+asking" in rules
    # One shard: the namespace's own keys, each rule once.
    single = Layout.of("shop", 1).acl_rules(0)
    assert len(single) == len(set(single))
    assert [r for r in single if r[0] in "~&"] == [
        "~dq:{shop}:*", "&dq:{shop}:wake", "&dq:{shop}:outcomes", "&__keyevent@0__:expired",
        f"&{Keys('shop').shadow_events(0)}", "&dq:{shop}:wb:*",
    ]  # fmt: skip


def test_the_shard_count_comes_from_the_option_the_app_or_the_server(
    server: EmbeddedServer,
) -> None:
    def rules(*options: str) -> list[str]:
        return [w for w in acl_setuser(*options) if w.startswith("~dq:")]

    assert len(rules("--shards", "8")) == 9  # without asking the server (port 1 of acl_app)
    namespace = "acl" + uuid.uuid4().hex[:8]
    assert len(rules("--url", server.url, "--namespace", namespace)) == 1  # a new one: 1
    with Delayq(server.url, namespace=namespace, shards=3) as app:
        app.pending_count()  # stores the count
    assert len(rules("--url", server.url, "--namespace", namespace)) == 4
    result = CliRunner().invoke(cli, ["acl", "-A", "tests.acl_app:app", "--url",
                                      "redis://127.0.0.1:1/0"])  # fmt: skip
    assert isinstance(result.exception, ConfigurationError)
    assert "pass --shards" in str(result.exception) and "127.0.0.1:1" in str(result.exception)
    redis.Redis.from_url(server.url).delete(f"dq:{{{namespace}}}:meta")


@pytest.mark.parametrize("shards", ["0", "257"])
def test_a_shard_count_out_of_range_is_refused(shards: str) -> None:
    result = CliRunner().invoke(cli, ["acl", "-A", "tests.acl_app:app", "--shards", shards])
    assert isinstance(result.exception, ConfigurationError)
