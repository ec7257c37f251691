"""The worker: fires timers at their deadlines and runs their jobs."""

from delayq.worker._settings import WorkerSettings
from delayq.worker._worker import Worker

__all__ = ["Worker", "WorkerSettings"]
