"""The cluster routing decisions of ``_topology``, which need no server: which node each call
goes to, and what happens after a redirect or an unreachable node."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import MovedError

from delayq._calls import command, script
from delayq._topology import (
    Fanout,
    Refresh,
    Send,
    Unreachable,
    _topology,
    node_url,
    route_key,
    routed,
)

A, B = ("127.0.0.1", 7000), ("127.0.0.1", 7001)
HALVES = [[0, 8191, [b"127.0.0.1", 7000, b"a"]], [8192, 16383, [b"127.0.0.1", 7001, b"b"]]]
TWO = _topology(HALVES)
ONE = _topology([[0, 16383, [b"127.0.0.1", 7001, b"b"]]])


def test_route_keys() -> None:
    assert route_key(command("GET", "k")) == "k"
    assert route_key(command("XINFO", "CONSUMERS", "s", "g")) == "s"
    assert (
        route_key(command("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s", ">")) == "s"
    )
    assert route_key(command("SCAN", 0, "MATCH", "dq:{shop}:d:*")) == "dq:{shop}:d:*"
    assert route_key(command("SCAN", 0, "MATCH", "user:*")) is None  # no hash tag: every node
    assert route_key(command("TIME")) is None
    assert route_key(script("fire", ["dq:{x}:due", "other"], ["1"])) == "dq:{x}:due"


def test_node_url_keeps_scheme_credentials_and_options() -> None:
    url = "rediss://user:secret@example:6380/0?ssl_ca_certs=/ca.pem"
    assert node_url(url, A) == "rediss://user:secret@127.0.0.1:7000/0?ssl_ca_certs=/ca.pem"


def _drive(calls: list[Any], answer: Any) -> tuple[list[Any], list[Any]]:
    """Run ``routed`` with ``answer(step)`` playing the cluster; the steps seen and replies."""
    flow = routed(TWO, calls, False, attempts=5)
    seen: list[Any] = []
    reply: Any = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return seen, done.value
        if not isinstance(step, Fanout):
            seen.append(step)
            reply = answer(step)
            continue
        reply = []
        for send in step.sends:
            seen.append(send)
            try:
                reply.append(answer(send))
            except Unreachable as exc:
                reply.append(exc)


def test_calls_split_by_node_and_keyless_calls_follow_the_batch() -> None:
    calls = [command("GET", "a"), command("GET", "b"), command("TIME")]  # a: 7001, b: 7000
    seen, replies = _drive(calls, lambda step: [f"{step.node[1]}:{c.args[-1]}" for c in step.calls])
    assert [s.node for s in seen] == [B, A]
    assert replies == ["7001:a", "7000:b", "7001:TIME"]


def test_a_moved_call_is_sent_again_after_a_fresh_topology() -> None:
    def answer(step: Any) -> Any:
        if isinstance(step, Refresh):
            return ONE
        if step.node == A:
            return [MovedError("3300 127.0.0.1:7001")]
        return [f"{step.node[1]}:{c.args[-1]}" for c in step.calls]

    seen, replies = _drive([command("GET", "a"), command("GET", "b")], answer)
    assert replies == ["7001:a", "7001:b"]
    assert any(isinstance(s, Refresh) for s in seen)
    assert [s.node for s in seen if isinstance(s, Send)] == [B, A, B]


def test_an_unreachable_node_raises_once_the_attempts_are_spent() -> None:
    def answer(step: Any) -> Any:
        if isinstance(step, Refresh):
            return TWO
        raise Unreachable(ConnectionLost("refused"))

    with pytest.raises(ConnectionLost):
        _drive([command("GET", "a")], answer)
