"""The follow-up a job asked for (``schedule(on_success=, on_failure=)``), built by the worker
when the job's outcome is final, and armed by the script that records that outcome (ack.lua,
bury.lua): only if that script settles the delivery, so each final outcome arms it once.

The callback task gets one argument, a dict of the outcome: ``timer_id``, ``task``, ``state``
("succeeded" or "failed"), ``attempts``, then ``result`` (None if it could not be carried), or
``error_type``, ``error`` and ``traceback``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from delayq._codec import Payload, encode_payload
from delayq._errors import PayloadError
from delayq._hooks import Delivery
from delayq._keys import Keys, origin_id
from delayq._route import DEFAULT_ROUTE, Route
from delayq._task import Task

log = logging.getLogger("delayq.worker")
_TEXT = 2000  # characters of an error message a failure callback gets (4 times: traceback)


@dataclass(frozen=True, slots=True)
class Then:
    """A callback job to arm: its timer id and payload."""

    timer_id: str
    payload: bytes


RouteOf = Callable[[str], Route]


def routes(find_task: Callable[[str], Task[Any, Any] | None]) -> RouteOf:
    """A callback task's queue and priority by its name: the default ones if this worker does
    not know the task."""

    def route_of(name: str) -> Route:
        task = find_task(name)
        return DEFAULT_ROUTE if task is None else task.options.route

    return route_of


def _then(kind: str, task: str, d: Delivery, info: dict[str, Any], max_bytes: int,
          route_of: RouteOf) -> Then:  # fmt: skip
    payload = encode_payload(task, (info,), {}, attempt=0, created_ms=int(time.time() * 1000),
                             max_bytes=max_bytes, route=route_of(task))  # fmt: skip
    return Then(Keys.callback_id(kind, d.entry_id, origin_id(d.timer_id)), payload)


def on_success(d: Delivery, payload: Payload, value: Any, attempts: int,
               max_bytes: int, route_of: RouteOf) -> Then | None:  # fmt: skip
    if payload.on_success is None:
        return None
    info = {"timer_id": origin_id(d.timer_id), "task": payload.task, "state": "succeeded",
            "attempts": attempts, "result": value}  # fmt: skip
    try:
        return _then("s", payload.on_success, d, info, max_bytes, route_of)
    except PayloadError as exc:
        log.warning("job %s: its result is not passed to %s: %s", d.timer_id,
                    payload.on_success, exc)  # fmt: skip
        return _then("s", payload.on_success, d, {**info, "result": None}, max_bytes, route_of)


def on_failure(d: Delivery, payload: Payload | None, *, attempts: int, error_type: str,
               error: str, traceback: str, max_bytes: int,
               route_of: RouteOf) -> Then | None:  # fmt: skip
    if payload is None or payload.on_failure is None:
        return None
    info = {"timer_id": origin_id(d.timer_id), "task": payload.task, "state": "failed",
            "attempts": attempts, "error_type": error_type, "error": error[:_TEXT],
            "traceback": traceback[-4 * _TEXT :]}  # fmt: skip
    try:
        return _then("f", payload.on_failure, d, info, max_bytes, route_of)
    except PayloadError as exc:  # max_payload_bytes smaller than a few kB
        log.error("job %s: its failure cannot be passed to %s: %s", d.timer_id,
                  payload.on_failure, exc)  # fmt: skip
        return None
