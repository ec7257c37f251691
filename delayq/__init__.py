"""delayq: timers and delayed tasks on Redis/Valkey that fire on time, exactly once."""

from delayq._app import Delayq
from delayq._codec import Payload, Touch
from delayq._context import JobContext, current_job
from delayq._debounce import Debounced
from delayq._defaults import configure, default_app, delayed, set_default_app, task
from delayq._errors import (
    ConfigurationError,
    DelayqError,
    InvalidTimerId,
    JobFailed,
    JobTimeout,
    NotReplicated,
    PayloadError,
    ResultUnavailable,
    ScheduleError,
    ServerOutOfMemory,
    TimerCancelled,
    TimerPaused,
)
from delayq._events import JobEvent
from delayq._outcomes import Outcome, Progress
from delayq._queues import QueueInfo
from delayq._server import EmbeddedServer
from delayq._store import DeadLetter, ScheduleRequest
from delayq._task import RetryPolicy, Task
from delayq._timer import Timer
from delayq.worker import Worker, WorkerSettings

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DeadLetter",
    "Debounced",
    "Delayq",
    "DelayqError",
    "EmbeddedServer",
    "InvalidTimerId",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobTimeout",
    "NotReplicated",
    "Outcome",
    "Payload",
    "PayloadError",
    "Progress",
    "QueueInfo",
    "ResultUnavailable",
    "RetryPolicy",
    "ScheduleError",
    "ScheduleRequest",
    "ServerOutOfMemory",
    "Task",
    "Timer",
    "TimerCancelled",
    "TimerPaused",
    "Touch",
    "Worker",
    "WorkerSettings",
    "__version__",
    "configure",
    "current_job",
    "default_app",
    "delayed",
    "set_default_app",
    "task",
]
