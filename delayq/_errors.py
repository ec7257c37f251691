"""Exceptions raised by delayq. Every one derives from DelayqError."""

from __future__ import annotations


class DelayqError(Exception):
    """Base class of every delayq error."""


class ConfigurationError(DelayqError, ValueError):
    """A setting is invalid, or the server is not configured as delayq needs."""


class ScheduleError(DelayqError, ValueError):
    """A timer could not be scheduled because of its arguments; nothing was stored."""


class InvalidTimerId(ScheduleError):
    """A timer id is empty, too long or not a string."""


class PayloadError(ScheduleError):
    """A payload cannot be serialized, is too large, or cannot be decoded."""


class JobTimeout(DelayqError, TimeoutError):
    """A job ran longer than its task's ``timeout=``; it is retried or dead-lettered."""


class TimerPaused(DelayqError):
    """The timer is paused: resume it before changing its deadline."""


class ServerOutOfMemory(DelayqError):
    """The server's memory is full (``maxmemory`` under ``noeviction``): the write that adds
    work was refused whole, and nothing stored before it was changed."""

    def __init__(self, message: str, *, completed: int = 0) -> None:
        super().__init__(message)
        #: For a batch: how many of its operations, in order, were done before the refusal.
        self.completed = completed


class NotReplicated(DelayqError):
    """With ``wait_replicas``: a write was made on the primary, but fewer replicas than asked
    confirmed it within ``wait_timeout``. It is stored, and fires as usual, unless the primary
    fails before it replicates it. Scheduling again with the same timer id is safe."""

    def __init__(self, message: str, *, acknowledged: int, wanted: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.wanted = wanted


class ResultUnavailable(DelayqError, LookupError):
    """No outcome is known for this id: it never existed, its result was kept for no time
    (``result_ttl=0``), or its retention ended."""


class TimerCancelled(DelayqError):
    """The timer was cancelled before it fired: it has no result."""


class JobFailed(DelayqError):
    """The job failed for good (its retries exhausted, or an error not retried): the remote
    exception's type name, message and traceback text, and the attempts made."""

    def __init__(self, message: str, *, type_name: str, error: str, traceback: str,
                 attempts: int) -> None:  # fmt: skip
        super().__init__(message)
        self.type_name = type_name
        self.error = error
        self.traceback = traceback
        self.attempts = attempts
