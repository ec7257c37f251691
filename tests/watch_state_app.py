"""The app of the worker processes of tests/test_watch_state_machine.py.

``WATCH_SM_PREFIX`` names the watched keys (``<prefix>:w:*``). Each firing pushes
``<suffix>|<fired ms, server>|<delivery id>|<pid>`` to the list ``<prefix>:fired``. The worker's
wall clock can be stepped while it runs (tests/clockstep.py).
"""

from __future__ import annotations

import os

from delayq import Delayq, current_job
from delayq.testing import LazyRedis
from tests import clockstep

clockstep.install()
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
PREFIX = os.environ.get("WATCH_SM_PREFIX", "watch-sm")
_redis = LazyRedis(app)


@app.on_expire(PREFIX + ":w:*", name="wsm.offline")
def offline(key: str, suffix: str, data: bytes | None) -> None:
    job = current_job()
    assert job is not None
    row = f"{suffix}|{job.fired_ms}|{job.delivery_id}|{os.getpid()}"
    _redis().rpush(f"{PREFIX}:fired", row)
