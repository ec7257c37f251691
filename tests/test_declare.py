"""One declaration path: every decorator takes the same task options, checked the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

import delayq
from delayq import ConfigurationError, Delayq, RetryPolicy, ScheduleError
from tests.conftest import WorkerThread, wait_until


def declarations(app: Delayq) -> dict[str, Callable[..., Any]]:
    """Each decorator of the app and of the module, taking the common options."""
    return {
        "task": lambda **o: app.task(**o),
        "delayed": lambda **o: app.delayed(seconds=5, **o),
        "debounced": lambda **o: app.debounced(seconds=5, key="{x}", **o),
        "on_expire": lambda **o: app.on_expire("dev:*", **o),
        "periodic": lambda **o: app.periodic(every=dt.timedelta(hours=1), **o),
        "delayq.task": lambda **o: delayq.task(**o),
        "delayq.delayed": lambda **o: delayq.delayed(seconds=5, **o),
    }


def handler(kind: str) -> Callable[..., None]:
    def fn(key: str, suffix: str = "", data: bytes | None = None) -> None: ...

    fn.__name__ = fn.__qualname__ = "h_" + kind.replace(".", "_")
    return fn


@pytest.mark.parametrize("kind", list(declarations(Delayq(namespace="d"))))
def test_every_decorator_takes_the_same_options(kind: str, namespace: str) -> None:
    app = Delayq(namespace=namespace)
    declare = declarations(app)[kind]
    policy = RetryPolicy(retries=7, backoff=2.0, backoff_max=9.0, jitter=0.0)
    task = declare(name=f"n.{namespace}.{kind}", retry=policy, timeout=3)(handler(kind))
    assert task.name == f"n.{namespace}.{kind}"
    assert task.options.retry == policy and task.options.timeout == 3.0

    task = declare(retries=2, retry_backoff=dt.timedelta(seconds=4), retry_backoff_max=8,
                   retry_for=(KeyError,))(handler(kind))  # fmt: skip
    assert task.options.retry == RetryPolicy(retries=2, backoff=4.0, backoff_max=8.0,
                                             retry_for=(KeyError,))  # fmt: skip

    default = declare()(handler(kind + "d"))
    assert default.options.retry.retries == (0 if kind == "periodic" else 3)


@pytest.mark.parametrize("kind", list(declarations(Delayq(namespace="d"))))
def test_bad_options_are_refused_when_the_decorator_is_called(kind: str) -> None:
    declare = declarations(Delayq(namespace="d"))[kind]
    with pytest.raises(TypeError, match="'retires'"):
        declare(retires=3)  # misspelt: never silently ignored
    with pytest.raises(ConfigurationError, match="not both"):
        declare(retry=RetryPolicy(), retries=2)
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        declare(retry={"retries": 2})
    with pytest.raises(ConfigurationError, match="retries must be an integer"):
        declare(retries=-1)
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        declare(timeout=0)
    with pytest.raises(ScheduleError, match="retry_backoff must not be negative"):
        declare(retry_backoff=-1)  # as a bad delay is refused when scheduling


def test_a_retry_policy_given_whole_is_followed(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    runs: list[int] = []

    @app.task(retry=RetryPolicy(retries=2, backoff=0.05, retry_for=(KeyError,)))
    def flaky(n: int) -> None:
        runs.append(n)
        raise KeyError(n) if len(runs) < 3 else ValueError(n)

    @app.task(retry=RetryPolicy(retries=5, retry_for=(KeyError,)))
    def not_retried() -> None:
        raise ValueError("not a KeyError")

    start_worker(app)
    flaky.delay(1)
    not_retried.delay()
    wait_until(lambda: len(app.dead_letters()) == 2, timeout=20)
    assert runs == [1, 1, 1]  # the first run and its two retries
    reasons = sorted(letter.reason for letter in app.dead_letters())
    assert "retries exhausted after 3 attempt(s)" in reasons[0]
    assert "not retried after 1 attempt(s)" in reasons[1]
