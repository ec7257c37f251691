# Checked by tests/test_typing.py with mypy --strict; lines marked "E:" must be errors.
from __future__ import annotations

import delayq
from delayq import Delayq, Timer

app = Delayq("redis://127.0.0.1:1/0", namespace="typing")


@app.task(retries=5)
def send_email(to: str, template: str) -> None: ...


@app.delayed(seconds=60)
def follow_up(user_id: int) -> int:
    return user_id


@app.task
async def refresh(rate: float) -> None: ...


@delayq.task
def shared(x: int) -> str:
    return str(x)


@delayq.delayed(seconds=5)
def shared_later(x: int) -> None: ...


def uses() -> None:
    timer: Timer = follow_up.delay(42)
    result: int = follow_up(1)
    text: str = shared(3)
    shared_later.delay(1)
    send_email.delay("a@b.c", "welcome")
    send_email.schedule("a@b.c", "welcome", delay=10)
    follow_up.delay("42")  # E: arg-type
    send_email.delay("a@b.c")  # E: call-arg
    bad: str = follow_up(1)  # E: assignment
    shared("x")  # E: arg-type
    print(timer, result, text, bad)
