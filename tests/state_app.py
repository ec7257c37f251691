"""The app of the worker processes of tests/test_state_machine.py.

Every job is instantaneous: it pushes ``<tag>|<local time, ms>|<pid>`` to the list
``test:<namespace>:ran`` and returns, so the test can tell which timer (and which touch of a
debounced key) fired, when, and in which worker process. The worker's wall clock can be stepped
while it runs (tests/clockstep.py).
"""

from __future__ import annotations

import os

from delayq import Delayq
from delayq.testing import LazyRedis
from tests import clockstep

clockstep.install()
app = Delayq(os.environ.get("DELAYQ_URL"), namespace=os.environ.get("DELAYQ_NAMESPACE"))
_redis = LazyRedis(app)

DEBOUNCE_S = 0.6  # window of `debounced`
CAPPED_S = 0.5  # window of `capped`
CAPPED_MAX_WAIT_S = 1.2  # its max_wait


def report(list_name: str, value: str) -> None:
    _redis().rpush(f"test:{app.namespace}:{list_name}", value)


def ran(tag: str) -> None:
    # The true clock: the worker's own may have been stepped (clockstep).
    report("ran", f"{tag}|{clockstep.true_ms():.1f}|{os.getpid()}")


@app.task(name="sm.record")
def record(tag: str) -> None:
    """A plain timer; ``tag`` is ``<timer id>.<generation>``."""
    ran(tag)


@app.debounced(seconds=DEBOUNCE_S, key="k:{key}", name="sm.debounced")
def debounced(key: str, seq: int) -> None:
    """Debounced per key, payload "last": ``seq`` names the newest touch of the cycle."""
    ran(f"k:{key}#{seq}")


@app.debounced(seconds=CAPPED_S, key="c:{key}", max_wait=CAPPED_MAX_WAIT_S, name="sm.capped")
def capped(key: str, seq: int) -> None:
    """Debounced with a cap: fires at the latest ``max_wait`` after the cycle's first touch."""
    ran(f"c:{key}#{seq}")


@app.task(name="sm.ping")
def ping(token: str) -> None:
    """Readiness probe: the worker is connected and runs jobs end to end."""
    report("ping", token)
