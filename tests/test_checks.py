"""Start-up checks: keyspace notifications and eviction policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
import redis

from delayq import ConfigurationError, Delayq, EmbeddedServer, Worker, WorkerSettings
from tests.conftest import WorkerThread


def test_worker_enables_notifications_when_off(
    fresh_server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    client = redis.Redis.from_url(fresh_server.url)
    client.config_set("notify-keyspace-events", "")
    app = Delayq(fresh_server.url, namespace="checks")
    start_worker(app)
    flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert "E" in flags and "x" in flags
    client.close()


def test_worker_refuses_to_start_without_notifications_when_not_allowed(
    fresh_server: EmbeddedServer,
) -> None:
    admin = redis.Redis.from_url(fresh_server.url)
    admin.config_set("notify-keyspace-events", "")
    # A user who may not run CONFIG, as on managed services.
    admin.acl_setuser("app", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
                      commands=["+@all", "-config"])  # fmt: skip
    url = fresh_server.url.replace("redis://", "redis://app:s3cret@")
    worker = Worker(Delayq(url, namespace="checks"), WorkerSettings())
    with pytest.raises(ConfigurationError) as info:
        asyncio.run(worker.arun())
    message = str(info.value)
    assert "notify-keyspace-events" in message and "'E' and 'x'" in message
    assert "s3cret" not in message
    # With notifications on, the same restricted user passes the check by experiment.
    admin.config_set("notify-keyspace-events", "Ex")
    worker = Worker(Delayq(url, namespace="checks"), WorkerSettings())
    worker.stop()  # stops as soon as it is ready
    asyncio.run(worker.arun())
    admin.close()


def test_configure_server_false_reports_instead_of_changing(
    fresh_server: EmbeddedServer,
) -> None:
    admin = redis.Redis.from_url(fresh_server.url)
    admin.config_set("notify-keyspace-events", "K$")
    worker = Worker(
        Delayq(fresh_server.url, namespace="checks"), WorkerSettings(configure_server=False)
    )
    with pytest.raises(ConfigurationError, match="it is now '\\$K'"):
        asyncio.run(worker.arun())
    assert admin.config_get("notify-keyspace-events")["notify-keyspace-events"] == "$K"
    admin.close()


def test_eviction_policy_warning(
    fresh_server: EmbeddedServer,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = redis.Redis.from_url(fresh_server.url)
    admin.config_set("maxmemory-policy", "volatile-lru")
    with caplog.at_level(logging.WARNING, logger="delayq"):
        start_worker(Delayq(fresh_server.url, namespace="checks"))
    assert any("maxmemory-policy is 'volatile-lru'" in r.getMessage() for r in caplog.records)
    admin.close()
