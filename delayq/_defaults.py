"""Module-level ``delayq.task`` / ``delayq.delayed``: tasks declared without an app in scope.

Library code can declare tasks without importing the project's app (like Celery's shared_task).
Such a task schedules through the *default app*: the one given to ``configure()`` or
``set_default_app()``, else one built from DELAYQ_URL / DELAYQ_NAMESPACE the first time a shared
task is scheduled. Every worker also knows the shared tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from delayq._app import Delayq, TaskRegistry
from delayq._declare import TaskKwargs, declare
from delayq._task import Task
from delayq._when import Delay

P = ParamSpec("P")
R = TypeVar("R")

SHARED_TASKS = TaskRegistry()
_lock = threading.Lock()
_default: Delayq | None = None


def configure(url: str | None = None, *, namespace: str | None = None, **options: Any) -> Delayq:
    """Build the default app (no I/O) and return it."""
    app = Delayq(url, namespace=namespace, **options)
    set_default_app(app)
    return app


def set_default_app(app: Delayq | None) -> None:
    global _default
    with _lock:
        _default = app


def default_app() -> Delayq:
    global _default
    with _lock:
        if _default is None:
            _default = Delayq()  # from the environment; still no I/O until first command
        return _default


def find_task(app: Delayq, name: str) -> Task[Any, Any] | None:
    return app.tasks.get(name) or SHARED_TASKS.get(name)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    fn: None = None, /, *, delay: Delay | None = None, **options: Unpack[TaskKwargs]
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    delay: Delay | None = None,
    **options: Unpack[TaskKwargs],
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a task bound to the default app (see module docstring); the options of
    ``Delayq.task``."""
    declared = declare(options, delay=delay)

    def decorate(func: Callable[P, R]) -> Task[P, R]:
        shared = Task(func, declared.options_for(func), default_app)
        SHARED_TASKS.add(shared)
        return shared

    return decorate if fn is None else decorate(fn)


@overload
def delayed(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def delayed(
    fn: None = None, /, *, seconds: Delay = 0.0, **options: Unpack[TaskKwargs]
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def delayed(
    fn: Callable[P, R] | None = None,
    /,
    *,
    seconds: Delay = 0.0,
    **options: Unpack[TaskKwargs],
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """Declare a delayed task bound to the default app."""
    decorator: Callable[[Callable[P, R]], Task[P, R]] = task(delay=seconds, **options)
    return decorator if fn is None else decorator(fn)
