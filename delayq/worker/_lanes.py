"""Threads for plain-function handlers, so that a blocking handler never stalls the loop.

``run_in_executor`` costs each call a wake-up of the loop and a chain of two futures; under a
burst of short jobs that hand-off, not the jobs, is what the worker spends its time on. Here
the calls go through one queue, and calls that finished while the loop was busy come back
together, with one wake-up for all of them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None  # what a thread takes from the queue to end


class Lanes:
    """``size`` threads (started on first use) that run the calls given to :meth:`run`."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None]
        self._queue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._finished: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._wake_sent = False
        self._in_call: set[asyncio.Future[Any]] = set()  # calls running on a thread now
        # Calls given up on (past their timeout): each one's thread has been replaced, and
        # ends once the call returns, if it ever does.
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``call`` on one of the threads; the future gets its result or exception."""
        loop = self._loop = asyncio.get_running_loop()
        if not self._threads:
            for _ in range(self.size):
                self._start_thread()
        future = loop.create_future()
        self._queue.put((call, future))
        return future

    def abandon(self, future: asyncio.Future[Any]) -> None:
        """The call behind ``future`` runs past its timeout and cannot be stopped: start a
        thread in its place, so that the other jobs keep ``size`` threads; its own thread
        ends when the call returns."""
        with self._lock:
            if future not in self._in_call:  # it returned meanwhile: its thread carries on
                return
            self._abandoned.add(future)
        self._start_thread()

    def shutdown(self) -> bool:
        """Let the threads end once the queue is empty; True if a call is still running."""
        for _ in self._threads:
            self._queue.put(_STOP)
        with self._lock:
            return bool(self._in_call)

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}",
                                  daemon=True)  # fmt: skip
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            call, future = item
            if future.cancelled():  # timed out before a thread was free: never run it
                continue
            with self._lock:
                self._in_call.add(future)
            try:
                outcome: tuple[bool, Any] = (True, call())
            except BaseException as exc:  # the job's failure, recorded by the executor
                outcome = (False, exc)
            with self._lock:
                self._in_call.discard(future)
                self._finished.append((future, *outcome))
                wake = not self._wake_sent
                self._wake_sent = True
                retire = future in self._abandoned
                self._abandoned.discard(future)
            if wake and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._settle)
                except RuntimeError:  # the loop closed: nobody waits for the result
                    return
            if retire:
                return

    def _settle(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._wake_sent = False
        for future, ok, value in finished:
            if future.done():  # its job timed out, or the worker gave up on it
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
