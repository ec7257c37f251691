"""Calling a job's handler: on the loop, or on a thread for a plain function, within its
timeout, with its job context bound."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from delayq._codec import Payload
from delayq._context import JobContext, bind_job, unbind_job
from delayq._errors import JobTimeout
from delayq._hooks import Delivery
from delayq._task import Task
from delayq.worker._lanes import Lanes

log = logging.getLogger("delayq.worker")


async def call_handler(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], job: JobContext,
    lanes: Lanes, on_abandon: Callable[[], None],
) -> Any:  # fmt: skip
    """The handler's return value; JobTimeout past the task's timeout (a thread still running
    then is abandoned: ``on_abandon`` is told)."""
    limit = task.options.timeout
    # Each delivery runs in a task of its own (admit_outcome), so the job bound here is seen
    # by a coroutine awaited in it, or by the task wait_for makes for a timeout (a copy of
    # this context), and by nothing else.
    token = bind_job(job)
    in_thread: asyncio.Future[Any] | None = None
    try:
        if task.is_async:
            run: Awaitable[Any] = task.call_async(args, kwargs)
        else:
            # Threads do not inherit context variables: hand this one over explicitly.
            context = contextvars.copy_context()
            call = functools.partial(context.run, task.call_sync, args, kwargs)
            run = in_thread = lanes.run(call)
        return await asyncio.wait_for(run, limit)
    except TimeoutError:
        if in_thread is not None:
            # A thread cannot be stopped: the worker keeps its full concurrency without it.
            on_abandon()
            log.warning("a job thread is still running past its timeout; it is abandoned")
            lanes.abandon(in_thread)
        raise JobTimeout(f"ran longer than its timeout of {limit} s") from None
    finally:
        unbind_job(token)


def job_context(
    d: Delivery, task: Task[Any, Any], payload: Payload, report: Callable[[float, str | None], None]
) -> JobContext:
    return JobContext(
        timer_id=d.timer_id,
        task=task.name,
        attempt=payload.attempt,
        delivery_id=d.entry_id,
        due_ms=d.due_ms,
        fired_ms=d.fired_ms,
        report=report,
    )
