"""The ledger table that ``make chaos`` prints and docs/chaos.md quotes."""

from __future__ import annotations

from collections.abc import Sequence

from delayq.testing import format_table
from tests.chaos.harness import Ledger

HEADER = ("scenario", "faults", "timers", "firings", "dup", "lost", "reruns", "repairs", "ticks",
          "p99 ms", "worst ms", "s", "result")  # fmt: skip


def ledger_row(ledger: Ledger) -> list[str]:
    return [
        ledger.scenario,
        "; ".join(ledger.faults) or "-",
        f"{ledger.timers:,}",
        f"{ledger.firings:,}",
        str(ledger.duplicates),
        str(ledger.lost),
        str(ledger.reruns),
        str(ledger.repairs),
        str(ledger.ticks),
        str(ledger.p99_ms()),
        str(ledger.worst_ms()),
        f"{ledger.seconds:.0f}",
        "ok" if ledger.ok else "FAIL",
    ]


def ledger_table(ledgers: Sequence[Ledger]) -> list[str]:
    lines = format_table(
        [HEADER, *(ledger_row(ledger) for ledger in ledgers)], "<<>>>>>>>>>>>", rule=True
    )
    for ledger in ledgers:
        for figure in ledger.figures:
            lines.append(f"  {ledger.scenario}: {figure}")
    return lines
