"""Redis Sentinel as values, without I/O: where the sentinels are and which service they watch,
read from a ``redis+sentinel://`` URL (``Delayq(sentinels=, service_name=)`` is written as one),
and how calls are sent again while the sentinels promote a new primary.

The URL::

    redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service_name[/db][?options]

names the sentinels (port 26379 by default), the service (the name in ``sentinel monitor``) and
the database. The user and password are those of the primary. ``sentinel_username`` and
``sentinel_password`` are those of the sentinels, as query options or in ``redis_options``;
every other option goes to the connections to the primary, as in a ``redis://`` URL.

The Sentinel runners (``_sentinel_runners``) send what ``through_failover`` asks for; it is
written once, as a generator, for the synchronous and the asyncio runner alike.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.connection import parse_url
from redis.exceptions import ReadOnlyError, ResponseError

from delayq._calls import Call
from delayq._connection import redact_url
from delayq._errors import ConfigurationError
from delayq._topology import Address

SCHEME = "redis+sentinel"
TLS_SCHEME = "rediss+sentinel"
DEFAULT_PORT = 26379
# Options of the connections to the sentinels (the user and password of the URL are the
# primary's), and what redis-py calls them there.
SENTINEL_OPTIONS = {"sentinel_username": "username", "sentinel_password": "password"}
# Calls refused or unanswered because the primary changes wait this long for the sentinels to
# promote another, then fail: Sentinel's default down-after-milliseconds is 30 s, and the
# election and promotion take a few more.
PROMOTION_WAIT_S = 40.0
RETRY_PAUSE_S = 0.1


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in (SCHEME, TLS_SCHEME)


@dataclass(frozen=True)
class SentinelTarget:
    """The sentinels to ask, the service they watch, and the keyword arguments of redis-py's
    connections to the primary (``connection``) and to the sentinels (``sentinel``)."""

    sentinels: tuple[Address, ...]
    service_name: str
    connection: dict[str, Any]
    sentinel: dict[str, Any]

    @property
    def db(self) -> int:
        return int(self.connection.get("db") or 0)


def sentinel_url(sentinels: Iterable[Any], service_name: Any, *, tls: bool = False) -> str:
    """The ``redis+sentinel://`` URL of ``Delayq(sentinels=, service_name=)`` (``rediss+``
    with ``tls``): no database and no credentials, which ``redis_options`` may then give."""
    if isinstance(sentinels, str | bytes) or not isinstance(sentinels, Iterable):
        raise ConfigurationError("sentinels must be a list of (host, port) pairs")
    pairs = [_pair(entry) for entry in sentinels]
    if not pairs:
        raise ConfigurationError("sentinels must name at least one (host, port) pair")
    if not isinstance(service_name, str) or not service_name:
        raise ConfigurationError("sentinels= needs service_name=, the name the sentinels monitor")
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in pairs)
    scheme = TLS_SCHEME if tls else SCHEME
    return f"{scheme}://{hosts}/{urllib.parse.quote(service_name, safe='')}"


def _pair(entry: Any) -> Address:
    if isinstance(entry, tuple | list) and len(entry) == 2:
        host, port = entry
        if isinstance(host, str) and host and _is_port(port):
            return host, port
    raise ConfigurationError(f"sentinels: {entry!r} is not a (host, port) pair")


def _is_port(port: Any) -> bool:
    return isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536


def parse_target(url: str, options: Mapping[str, Any]) -> SentinelTarget:
    """``url`` and the app's ``redis_options`` read into one target; the URL's options win, as
    redis-py's ``from_url`` lets them."""
    parts = urllib.parse.urlsplit(url)
    shown = redact_url(url)
    tls = parts.scheme.lower() == TLS_SCHEME
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_address(h, shown) for h in hosts.split(","))
    service, db = _path(parts.path, shown)
    # The user, password and options are read as redis-py reads them in a redis:// URL.
    userinfo = f"{userinfo}@" if userinfo else ""
    query = f"?{parts.query}" if parts.query else ""
    from_url: dict[str, Any] = parse_url(f"redis://{userinfo}localhost/{query}")  # type: ignore[no-untyped-call]
    from_url.pop("host", None)
    if tls:
        # redis-py's Sentinel pools pick their TLS connection class from ``ssl``.
        from_url["ssl"] = True
    if db is not None:
        from_url["db"] = db
    connection = {**options, **from_url}
    _check_options(connection, shown, tls=tls)
    sentinel = {name: connection.pop(option) for option, name in SENTINEL_OPTIONS.items()
                if option in connection}  # fmt: skip
    unknown = sorted(k for k in connection if k.startswith("sentinel"))
    if unknown:
        raise ConfigurationError(
            f"{shown}: unknown Sentinel option(s) {', '.join(unknown)}; the sentinels take "
            f"{' and '.join(SENTINEL_OPTIONS)}"
        )
    # As redis-py does by default: the sentinels share the primary's socket timeouts; with
    # TLS, its certificates too (sentinels of a TLS deployment listen with TLS).
    for name, value in connection.items():
        if name.startswith("socket_") or name == "ssl" or name.startswith("ssl_"):
            sentinel.setdefault(name, value)
    return SentinelTarget(sentinels, service, connection, sentinel)


def _check_options(connection: dict[str, Any], shown: str, *, tls: bool) -> None:
    placed = sorted(k for k in ("host", "port", "unix_socket_path", "connection_pool")
                    if k in connection)  # fmt: skip
    if placed:
        raise ConfigurationError(
            f"{shown}: {', '.join(placed)} cannot be set with Sentinel: the sentinels say where "
            "the primary is"
        )
    if not tls and any(k == "ssl" or k.startswith("ssl_") for k in connection):
        raise ConfigurationError(
            f"{shown}: ssl options need a rediss+sentinel:// URL (TLS to the sentinels and "
            "the servers alike)"
        )


def _address(text: str, shown: str) -> Address:
    host, port = text, ""
    if text.startswith("["):  # [v6 address]:port
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ConfigurationError(f"{shown}: a sentinel's host is missing (host:port,host:port)")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not _is_port(int(port)):
        raise ConfigurationError(f"{shown}: {port!r} is not a port (sentinel {host!r})")
    return host, int(port)


def _path(path: str, shown: str) -> tuple[str, int | None]:
    words = path.strip("/").split("/") if path.strip("/") else []
    if not words or len(words) > 2:
        raise ConfigurationError(
            f"{shown}: the path must be /service_name or /service_name/db (the name the "
            "sentinels monitor)"
        )
    service = urllib.parse.unquote(words[0])
    if len(words) == 1:
        return service, None
    if not words[1].isdigit():
        raise ConfigurationError(f"{shown}: {words[1]!r} is not a database number")
    return service, int(words[1])


# -- sending through a failover --------------------------------------------------------------


class Unanswered(Exception):
    """A call whose reply was not read: its connection failed (it may or may not have run)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class Attempt:
    """Send ``calls`` to the primary the runner knows; the reply is one entry per call: its
    reply, an error reply as its exception, or ``Unanswered``."""

    calls: Sequence[Call[Any]]
    transaction: bool


@dataclass(frozen=True)
class Rediscover:
    """Wait ``pause`` s, then ask the sentinels where the primary is; the reply is ignored."""

    pause: float


SentinelStep = Attempt | Rediscover


def fenced(reply: Any) -> bool:
    """Whether ``reply`` means the server no longer takes writes as the primary: it became a
    replica (READONLY), or lost the replicas ``min-replicas-to-write`` asks for (NOREPLICAS,
    which is how a primary cut off by a failover refuses writes). Such a call did not run."""
    return isinstance(reply, ReadOnlyError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("NOREPLICAS")
    )


def through_failover(
    calls: Sequence[Call[Any]], transaction: bool, *, wait: float = PROMOTION_WAIT_S
) -> Generator[SentinelStep, Any, list[Any]]:
    """The calls' replies in order. Those unanswered or refused because the primary changes are
    sent again, only those, to the primary the sentinels name next, for up to ``wait`` s; after
    that the first of them raises its failure."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    deadline = time.monotonic() + wait
    while True:
        got = yield Attempt([calls[i] for i in todo], transaction)
        for i, reply in zip(todo, got, strict=True):
            replies[i] = reply
        todo = [i for i in todo if isinstance(replies[i], Unanswered) or fenced(replies[i])]
        if not todo:
            return replies
        if time.monotonic() >= deadline:
            first = replies[todo[0]]
            raise first.cause if isinstance(first, Unanswered) else first
        yield Rediscover(RETRY_PAUSE_S)
