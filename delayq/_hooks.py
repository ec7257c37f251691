"""What passes between the worker and the hooks of each kind of task.

The worker runs every job the same way and asks the task's hooks (``Task.job_args``,
``retry_as``, ``dead_payload``, ``after_success``, ``run_gate``) where kinds differ: a
debounced task's touches, a watcher's companion data, a periodic task's tick rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from delayq._periodic import Periodic

Decision = Literal["run", "skip", "requeued"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One fired job as read from a ready stream."""

    entry_id: str
    timer_id: str
    raw: bytes
    due_ms: int
    items: bytes | None = None  # debounced payload="all": the touches, concatenated msgpack
    watched_data: bytes | None = None  # on_expire: the companion key's value
    stream: str = ""  # the ready stream it was read from (its queue's level)
    priority: int = 0  # its level: higher is taken first

    @property
    def fired_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


class RunGate(Protocol):
    """Decides before each run whether it runs, and is told when it is over."""

    async def before_run(self, d: Delivery, attempt: int) -> Decision: ...

    async def after_run(self, d: Delivery) -> None: ...


class RunGates(Protocol):
    """The worker's gates, one kind of task each."""

    def periodic(self, task: Periodic[Any, Any]) -> RunGate: ...
