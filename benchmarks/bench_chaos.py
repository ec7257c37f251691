"""The fault-injection scenarios at full scale, with their ledger table (``make chaos``).

    .venv/bin/python benchmarks/bench_chaos.py [--bounded] [scenario ...]

The scenarios live in tests/chaos/ (tests/test_chaos.py runs them bounded in ``make test``);
docs/chaos.md explains each one and quotes the table this prints. Exits 1 if any ledger found a
problem.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.__main__ import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--bounded" in args:
        args.remove("--bounded")
    else:
        args.insert(0, "--full")
    sys.argv[1:] = args
    sys.exit(main())
