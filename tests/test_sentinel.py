"""Redis Sentinel: ``redis+sentinel://`` URLs and ``sentinels=``/``service_name=`` read into one
target, calls sent again through a failover, and a producer and a worker on a real deployment
(a primary, a replica and three sentinels from the bundled binary) that fails over mid-run."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import ReadOnlyError, ResponseError

from delayq import ConfigurationError, Delayq
from delayq._calls import command
from delayq._sentinel import (
    Attempt,
    Rediscover,
    Unanswered,
    parse_target,
    through_failover,
)

# -- the URL and the keyword arguments -------------------------------------------------------


def test_a_url_names_sentinels_service_database_and_credentials() -> None:
    target = parse_target(
        "redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/my%20primary/3"
        "?sentinel_password=watch&socket_timeout=2",
        {"socket_connect_timeout": 1.5, "sentinel_password": "overridden"},
    )
    assert target.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert target.service_name == "my primary"
    assert target.db == 3
    # The URL's user and password are the primary's; the URL's options win over redis_options.
    assert target.connection == {"username": "app", "password": "s@cret", "db": 3,
                                 "socket_timeout": 2.0, "socket_connect_timeout": 1.5}  # fmt: skip
    # The sentinels get their own password, and the socket timeouts.
    assert target.sentinel == {"password": "watch", "socket_timeout": 2.0,
                               "socket_connect_timeout": 1.5}  # fmt: skip


def test_a_url_without_database_keeps_the_one_of_redis_options() -> None:
    target = parse_target("redis+sentinel://s1/mymaster", {"db": 2, "sentinel_username": "w"})
    assert target.db == 2 and target.sentinel == {"username": "w"}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "the path must be /service_name"),
        ("redis+sentinel://s1:26379/a/1/2", "the path must be /service_name"),
        ("redis+sentinel://s1:26379/mymaster/one", "'one' is not a database number"),
        ("redis+sentinel://s1:port/mymaster", "'port' is not a port"),
        ("redis+sentinel://s1:70000/mymaster", "'70000' is not a port"),
        ("redis+sentinel://s1,,s2/mymaster", "a sentinel's host is missing"),
        ("redis+sentinel://s1/mymaster?sentinel_db=1", "unknown Sentinel option"),
        ("rediss+sentinel://s1/mymaster", "TLS through Sentinel"),
    ],
)
def test_a_bad_url_is_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Delayq(url)


def test_a_bad_url_never_shows_its_passwords() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Delayq("redis+sentinel://u:hunter2@s1/?sentinel_password=hunter3")
    assert "hunter" not in str(raised.value)


def test_keyword_arguments_are_written_as_the_url() -> None:
    app = Delayq(sentinels=[("10.0.0.1", 26379), ("::1", 5000)], service_name="shop/main",
                 redis_options={"password": "p"}, namespace="n")  # fmt: skip
    assert app.url == "redis+sentinel://10.0.0.1:26379,[::1]:5000/shop%2Fmain"
    target = parse_target(app.url, app.redis_options)
    assert target.service_name == "shop/main" and target.connection == {"password": "p"}


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"sentinels": [("s1", 26379)]}, "sentinels= needs service_name="),
        ({"service_name": "mymaster"}, "service_name= needs sentinels="),
        ({"sentinels": [], "service_name": "m"}, "at least one"),
        ({"sentinels": "s1:26379", "service_name": "m"}, "a list of"),
        ({"sentinels": [("s1", "26379")], "service_name": "m"}, "is not a \\(host, port\\)"),
        ({"sentinels": [("s1", 26379)], "service_name": "m", "url": "redis://h/0"}, "not both"),
    ],
)
def test_bad_keyword_arguments_are_refused_naming_the_problem(
    kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        Delayq(**kwargs)


# -- what is sent again through a failover ---------------------------------------------------


def test_only_the_calls_left_unanswered_or_refused_are_sent_again() -> None:
    calls = [command("SET", str(i), "v", raw=True) for i in range(4)]
    flow = through_failover(calls, False, wait=5.0)
    step = next(flow)
    assert isinstance(step, Attempt) and list(step.calls) == calls
    lost = Unanswered(ConnectionLost("closed"))
    # Call 0 ran; 1 was refused by a demoted primary; 2 and 3 were never read.
    assert isinstance(flow.send(["OK", ReadOnlyError("READONLY"), lost, lost]), Rediscover)
    step = flow.send(None)
    assert isinstance(step, Attempt) and list(step.calls) == calls[1:]
    # A primary cut off from its replicas (min-replicas-to-write) refuses as a demoted one does.
    flow.send(["OK", ResponseError("NOREPLICAS Not enough good replicas to write."), "OK"])
    step = flow.send(None)
    assert isinstance(step, Attempt) and list(step.calls) == [calls[2]]
    with pytest.raises(StopIteration) as done:
        flow.send(["OK"])
    assert done.value.value == ["OK", "OK", "OK", "OK"]


def test_an_error_reply_is_a_reply_and_a_failover_that_never_ends_raises() -> None:
    calls = [command("INCR", "k", raw=True)]
    flow = through_failover(calls, False, wait=5.0)
    next(flow)
    wrong = ResponseError("WRONGTYPE")
    with pytest.raises(StopIteration) as done:
        flow.send([wrong])
    assert done.value.value == [wrong]
    flow = through_failover(calls, False, wait=0.0)
    next(flow)
    with pytest.raises(ConnectionLost, match="closed"):
        flow.send([Unanswered(ConnectionLost("closed"))])
