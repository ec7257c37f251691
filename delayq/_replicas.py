"""Opt-in durability: a producer's writes wait until replicas have them (``WAIT``).

Replication is asynchronous: a primary that crashes loses what it acknowledged but had not yet
sent to a replica. With ``Delayq(wait_replicas=N)``, every write a producer makes (scheduling,
touching, pausing, rescheduling, cancelling, re-driving) is followed, on the same connection and
in the same round trip, by ``WAIT N timeout``: the call returns once N replicas have the write,
or raises ``NotReplicated`` if they do not confirm it in time. WAIT counts the writes of its own
connection, so it is added here, to the calls sent on one connection, never as a call of its own.
No I/O: the runners call ``waited`` before sending and ``unwaited`` on the replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from delayq._calls import Call
from delayq._errors import ConfigurationError, NotReplicated


@dataclass(frozen=True, slots=True)
class WaitForReplicas:
    """Wait for ``replicas`` replicas to confirm a write, at most ``timeout_ms``."""

    replicas: int
    timeout_ms: int

    @classmethod
    def of(cls, replicas: object, timeout: object) -> WaitForReplicas | None:
        """The setting of ``Delayq(wait_replicas=, wait_timeout=)``; None for no waiting."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigurationError(f"wait_replicas must be an integer >= 0, not {replicas!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError(f"wait_timeout must be a number of seconds > 0, not "
                                     f"{timeout!r}")  # fmt: skip
        return cls(replicas, max(1, round(timeout * 1000))) if replicas else None

    def call(self) -> Call[int]:
        return Call(("WAIT", self.replicas, self.timeout_ms), raw=True)


def waited(
    calls: Sequence[Call[Any]], transaction: bool, wait: WaitForReplicas | None
) -> Sequence[Call[Any]]:
    """``calls``, and a WAIT after them if they write what a producer asked for."""
    if wait is None or transaction or not any(call.replicate for call in calls):
        return calls
    return [*calls, wait.call()]


def unwaited(
    calls: Sequence[Call[Any]], sent: Sequence[Call[Any]], replies: list[Any],
    wait: WaitForReplicas | None,
) -> list[Any]:  # fmt: skip
    """The replies to ``calls`` (``sent`` with the WAIT ``waited`` added, if it did): a write
    the replicas did not confirm in time gets ``NotReplicated`` for its reply."""
    if wait is None or len(sent) == len(calls):
        return replies
    *replies, acknowledged = replies
    if isinstance(acknowledged, int) and acknowledged >= wait.replicas:
        return replies
    count = acknowledged if isinstance(acknowledged, int) else 0
    failure = NotReplicated(
        f"the write was made on the primary, but {count} of the {wait.replicas} replica(s) "
        f"asked for confirmed it within {wait.timeout_ms} ms"
        + ("" if isinstance(acknowledged, int) else f" (WAIT failed: {acknowledged})")
        + ": it would be lost if the primary failed before replicating it",
        acknowledged=count, wanted=wait.replicas,
    )  # fmt: skip
    return [failure if call.replicate and not isinstance(reply, Exception) else reply
            for call, reply in zip(calls, replies, strict=True)]  # fmt: skip
