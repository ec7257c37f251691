"""A job that kills its worker every time ends in the dead letters, not in a crash loop."""

from __future__ import annotations

from collections.abc import Callable

import redis

from delayq import Delayq, EmbeddedServer
from tests.conftest import WorkerProcess, wait_until


def test_job_that_kills_its_worker_is_dead_lettered(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    from tests.worker_app import die, record

    app = Delayq(server.url, namespace=namespace)
    die._app_ref = record._app_ref = lambda: app
    timer = die.schedule("poison", delay=0.1)
    started = f"test:{namespace}:started"
    for deliveries in (1, 2):
        proc = worker_process(server.url, namespace, "--max-deliveries", "2")
        wait_until(lambda n=deliveries: rclient.llen(started) == n, timeout=30)
        assert proc.wait(30) == 17  # the job took the worker down
    survivor = worker_process(server.url, namespace, "--max-deliveries", "2")
    wait_until(lambda: app.dead_letters(), timeout=30)
    (letter,) = app.dead_letters()
    assert letter.timer_id == timer.id
    assert "delivered 3 times" in letter.reason
    # The survivor still works.
    record.schedule("after", delay=0.1)
    wait_until(lambda: rclient.llen(f"test:{namespace}:ran") == 1, timeout=20)
    assert survivor.proc is not None and survivor.proc.poll() is None
    assert rclient.llen(started) == 2
    app.close()
