"""Where a fired job waits: its queue, and its priority within the queue (docs/flow-control.md).

A job's route travels in its payload (``_codec``), so that ``fire.lua`` can put it in the
ready stream of its queue and level without knowing the task. Each (queue, level) is a stream
of its own: a backlog in one queue never stands in front of another's jobs, and a worker takes
a queue's levels highest first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from delayq._errors import ConfigurationError, ScheduleError

DEFAULT_QUEUE = "default"
# Priority levels 0 (the default, lowest) to 9: a few fixed levels, a stream each, rather than
# a sorted set, so that taking a job stays a stream read.
LEVELS = 10
DEFAULT_PRIORITY = 0
# Queue names become part of key names and of the worker's -Q list: no ":" (it separates a
# stream's queue from its level) and no ",".
_QUEUE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_queue(name: object) -> str:
    if not isinstance(name, str) or not _QUEUE.fullmatch(name):
        raise ConfigurationError(
            f"queue name {name!r:.80} is not 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return name


def check_priority(value: object, *, error: type[Exception] = ConfigurationError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < LEVELS:
        raise error(f"priority must be an integer from 0 to {LEVELS - 1}, got {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class Route:
    """A job's queue and priority level (higher runs first among jobs due together)."""

    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY

    def __post_init__(self) -> None:
        check_queue(self.queue)
        check_priority(self.priority)

    @property
    def is_default(self) -> bool:
        """Whether jobs go to the namespace's first stream (payloads keep their old format)."""
        return self.queue == DEFAULT_QUEUE and self.priority == DEFAULT_PRIORITY

    def at(self, priority: int | None) -> Route:
        """This route at a call's own priority (None: the task's)."""
        if priority is None or priority == self.priority:
            return self
        return Route(self.queue, check_priority(priority, error=ScheduleError))


DEFAULT_ROUTE = Route()


def parse_queues(text: str) -> tuple[str, ...]:
    """A worker's ``-Q reports,default``: the names, checked, in order, without repeats."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigurationError(f"no queue name in {text!r:.80}")
    return tuple(dict.fromkeys(check_queue(name) for name in names))
