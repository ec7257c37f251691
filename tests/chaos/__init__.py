"""The fault-injection suite: ``make chaos`` (full scale) and tests/test_chaos.py (bounded, in CI).

Each scenario runs real ``delayq worker`` processes against a real server, drives a known
workload of delayed, debounced and periodic timers while it injects faults, and settles a
ledger: every timer fired exactly once, every fired job ran to completion, nothing left behind.
"""
