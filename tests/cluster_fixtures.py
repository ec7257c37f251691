"""The ``cluster`` fixture: one local Valkey cluster (3 primaries, 1 replica each) per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from delayq._cluster_server import LocalCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Tests that fail over or restart nodes leave it ready, but roles may have moved: find the
    primaries with ``primary_urls()``, not by node position."""
    local = LocalCluster(3, 1, data_dir=tmp_path_factory.mktemp("cluster"))
    # Generous: the machine has 2 cores and may be busy with other tests.
    local.start(timeout=60.0)
    yield local
    local.cleanup()
