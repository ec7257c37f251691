"""``python -m tests.chaos [--full] [scenario ...]``: run the chaos scenarios, print the ledger.

Exits 1 if any scenario found a problem. ``make chaos`` runs every scenario at full scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.chaos.report import ledger_table
from tests.chaos.scenarios import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full scale (default: bounded)")
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], metavar="scenario",
                        help=f"some of: {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    options = parser.parse_args()
    ledgers = []
    for name in options.scenarios or list(SCENARIOS):
        with tempfile.TemporaryDirectory(prefix=f"delayq-chaos-{name}-") as tmp:
            print(f"running {name} ...", flush=True)
            ledger = SCENARIOS[name](Path(tmp), options.full)
        ledgers.append(ledger)
        for problem in ledger.problems:
            print(f"  PROBLEM: {problem}", flush=True)
    print()
    print("\n".join(ledger_table(ledgers)))
    return 0 if all(ledger.ok for ledger in ledgers) else 1


if __name__ == "__main__":
    sys.exit(main())
