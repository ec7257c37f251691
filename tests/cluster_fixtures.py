"""The ``cluster`` fixture: one local Valkey cluster (3 primaries, 1 replica each) per session;
and the ledger of the cluster tests and benchmarks."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from delayq import Delayq
from delayq._cluster_server import LocalCluster


class Ledger:
    """Which timer ids ran, how often, when first, and how late (by this machine's clock)."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.lateness: list[float] = []
        self.ran_at: dict[str, float] = {}
        self.due: dict[str, float] = {}
        self.lock = threading.Lock()

    def app(self, url: str, namespace: str) -> tuple[Delayq, Any]:
        app = Delayq(url, namespace=namespace)

        @app.task(name="ledger.note")
        def note(timer_id: str, due: float) -> None:
            now = time.time()
            with self.lock:
                self.runs[timer_id] += 1
                self.lateness.append(now - due)
                self.ran_at.setdefault(timer_id, now)
                self.due[timer_id] = due

        return app, note

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Tests that fail over or restart nodes leave it ready, but roles may have moved: find the
    primaries with ``primary_urls()``, not by node position."""
    local = LocalCluster(3, 1, data_dir=tmp_path_factory.mktemp("cluster"))
    # Generous: the machine has 2 cores and may be busy with other tests.
    local.start(timeout=60.0)
    yield local
    local.cleanup()
