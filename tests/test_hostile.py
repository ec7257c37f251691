"""Hostile input: garbage payloads never crash a decoder or a worker; namespaces are sealed."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delayq import Delayq, EmbeddedServer, PayloadError
from delayq._codec import decode_payload, decode_touches
from tests.conftest import WorkerThread, wait_until

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_survives_arbitrary_bytes(raw: bytes) -> None:
    for decode in (decode_payload, decode_touches):
        with contextlib.suppress(PayloadError):
            decode(raw)


@settings(max_examples=400, deadline=None)
@given(msgpack_values)
def test_decoder_survives_valid_msgpack_of_any_shape(value: object) -> None:
    raw = msgpack.packb(value, use_bin_type=True)
    try:
        payload = decode_payload(raw)
    except PayloadError:
        return
    assert isinstance(payload.task, str) and isinstance(payload.kwargs, dict)


def test_two_namespaces_never_see_each_other(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: dict[str, list[str]] = {"left": [], "right": []}
    lock = threading.Lock()
    apps = {side: Delayq(server.url, namespace=f"iso-{side}") for side in ran}
    tasks = {}
    for side, app in apps.items():

        def job(tag: str, side: str = side) -> None:
            with lock:
                ran[side].append(tag)
            if tag == "fail":
                raise RuntimeError(side)

        tasks[side] = app.task(name="same.name", retries=0)(job)
    for side in apps:
        start_worker(apps[side])
    for side, task in tasks.items():
        task.schedule(f"{side}-1", delay=0.1, id="same-id")
        task.schedule("fail", delay=0.1)
    wait_until(lambda: all(len(v) == 2 for v in ran.values()), timeout=15)
    assert sorted(ran["left"]) == ["fail", "left-1"] and sorted(ran["right"]) == ["fail", "right-1"]
    for side, app in apps.items():
        wait_until(lambda app=app: len(app.dead_letters()) == 1)
        assert app.dead_letters()[0].reason.startswith(f"RuntimeError: {side}")
        app.close()


def test_passwords_never_reach_logs_or_reprs(
    server: EmbeddedServer,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import redis

    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("secretive", enabled=True, passwords=["+Sw0rdf1sh"], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    url = server.url.replace("redis://", "redis://secretive:Sw0rdf1sh@")
    app = Delayq(url, namespace="secretive")
    done = threading.Event()

    @app.task
    def job() -> None:
        done.set()

    with caplog.at_level(logging.DEBUG, logger="delayq"):
        start_worker(app).stop()
    assert "Sw0rdf1sh" not in caplog.text and "secretive:***@" in caplog.text
    assert "Sw0rdf1sh" not in repr(app)
    app.close()
    admin.acl_deluser("secretive")
    admin.close()
