"""The chaos scenarios (tests/chaos/) in their bounded form; ``make chaos`` runs them in full.

Each one prints its ledger line (``pytest -s`` shows it) and fails with the problems found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.report import ledger_table
from tests.chaos.scenarios import SCENARIOS


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chaos_scenario(name: str, tmp_path: Path) -> None:
    ledger = SCENARIOS[name](tmp_path, False)
    print("\n" + "\n".join(ledger_table([ledger])))
    assert ledger.ok, "; ".join(ledger.problems)
    assert ledger.timers > 0 and ledger.firings >= ledger.timers
