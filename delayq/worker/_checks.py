"""Start-up checks of the server's configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from delayq._calls import command
from delayq._errors import ConfigurationError
from delayq._keys import Keys
from delayq._runners import AsyncRunner

log = logging.getLogger("delayq.worker")

NEEDED_FLAGS_HELP = (
    "delayq needs keyspace notifications for expired keys: set notify-keyspace-events to a "
    "value containing 'E' and 'x' (for example 'Ex') in the server configuration, or in your "
    "provider's parameter group when CONFIG SET is not allowed"
)


def _classes(flags: str) -> set[str]:
    have = set(flags)
    if "A" in have:
        have |= set("g$lshzxetd")  # 'A' is an alias for every class of event
    return have


# Event classes that publish more than expiries for shadow keys: `set` ($), `del` and `expire`
# (g), `new` (n) and `keymiss` (m).
_SHADOW_WRITES = set("g$nm")


@dataclass(frozen=True, slots=True)
class HintSource:
    """Where a worker hears of expired shadow keys (expiry hints), if anywhere."""

    pattern: str | None = None  # a keyspace pattern matching this namespace's shadow keys only
    channel: str | None = None  # the database-wide `expired` keyevent channel
    why: str = ""


def hint_source(flags: str | None, keys: Keys, db: int) -> HintSource:
    """From the server's notify-keyspace-events (None: unknown, found by experiment).

    Hints only hasten timers the deadline loop has missed (it fires everything from the due
    index): they are taken where they cost no more than the expiries of delayq's own keys."""
    if flags is None:
        return HintSource(channel=Keys.expired_channel(db), why="flags unknown")
    have = _classes(flags)
    if "K" in have and "x" in have and not have & _SHADOW_WRITES:
        return HintSource(pattern=keys.shadow_events(db))
    if have & _SHADOW_WRITES:
        # Keyspace events would bring every write of a shadow key, and the keyevent channel
        # every expiry in the database, to every worker.
        return HintSource(why=f"notify-keyspace-events {flags!r} publishes key writes")
    return HintSource(channel=Keys.expired_channel(db),
                      why=f"notify-keyspace-events {flags!r} has no 'K'")  # fmt: skip


def missing_flags(flags: str, *, keyspace: bool) -> str:
    """The notify-keyspace-events classes delayq needs that ``flags`` lacks ("" if none)."""
    have = _classes(flags)
    # E and x: the expired keyevents every worker needs. K with g and $: keyspace events of
    # generic and string commands, telling when a watched key gets or loses a TTL.
    wanted = ["E", "x"] + (["K", "g", "$"] if keyspace else [])
    return "".join(flag for flag in wanted if flag not in have)


async def ensure_notifications(
    io: AsyncRunner, keys: Keys, *, configure: bool, keyspace: bool = False
) -> str | None:
    """Make sure the needed keyspace notifications are published; enable them if allowed.
    Returns the flags now set on the node holding ``keys`` (None when CONFIG is not allowed
    and they were probed).

    On a cluster every node is checked, replicas too: events are published by the node that
    holds a key, and a replica promoted by a failover must publish them as well."""
    help_text = NEEDED_FLAGS_HELP + (
        "; on_expire watchers also need 'K', 'g' and '$' (for example 'KEg$x')" if keyspace else ""
    )
    owner = io.node_for(keys.index)
    found: str | None = None
    for node in io.every_node():
        flags = await _ensure_on(node, keys, help_text, configure=configure, keyspace=keyspace,
                                 probe=node is owner)  # fmt: skip
        if node is owner:
            found = flags
    return found


async def _ensure_on(
    node: AsyncRunner, keys: Keys, help_text: str, *, configure: bool, keyspace: bool, probe: bool
) -> str | None:
    try:
        config: dict[Any, Any] = await node.run(command("CONFIG GET", "notify-keyspace-events"))
    except ResponseError:
        # CONFIG is disabled (managed services): find out by experiment instead, where the
        # namespace's keys may be written (another node of a cluster cannot be checked).
        if probe and not await _probe_events(node, keys, keyspace=keyspace):
            raise ConfigurationError(help_text) from None
        return None
    flags = _text(config.get(b"notify-keyspace-events", config.get("notify-keyspace-events", "")))
    missing = missing_flags(flags, keyspace=keyspace)
    if not missing:
        return flags
    if not configure:
        raise ConfigurationError(f"{help_text} (it is now {flags!r})")
    # K too: a worker then hears only the expiries of its own keys (see hint_source).
    wanted = flags + missing + ("" if "K" in flags + missing else "K")
    try:
        await node.run(command("CONFIG SET", "notify-keyspace-events", wanted))
    except ResponseError as exc:
        raise ConfigurationError(
            f"{help_text} (it is now {flags!r}; CONFIG SET failed: {exc})"
        ) from None
    log.info("enabled keyspace notifications: notify-keyspace-events=%s", wanted)
    return wanted


async def warn_on_eviction(io: AsyncRunner) -> None:
    with contextlib.suppress(ResponseError):
        config: dict[Any, Any] = await io.run(command("CONFIG GET", "maxmemory-policy"))
        policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy", "")))
        if policy and policy != "noeviction":
            log.warning(
                "maxmemory-policy is %r: under memory pressure the server may evict timers "
                "(volatile-* policies evict the shadow keys first); use 'noeviction'",
                policy,
            )


async def _probe_events(io: AsyncRunner, keys: Keys, *, keyspace: bool) -> bool:
    """Set a short-lived key and see which notifications arrive for it."""
    probe = keys.probe(secrets.token_hex(6))
    db = io.db
    expired_channel = Keys.expired_channel(db)
    keyspace_channel = Keys.keyspace_pattern(db, probe)
    # "set" needs the $ class, "expire" (from SET ... PX) the g class, "expired" E and x.
    missing = {("expired", expired_channel)}
    if keyspace:
        missing |= {("set", keyspace_channel), ("expire", keyspace_channel)}
    pubsub = io.subscription()
    try:
        await pubsub.subscribe(*{channel for _, channel in missing})
        await io.run(command("SET", probe, "1", "PX", 20))
        await asyncio.sleep(0.05)
        # An access expires the key lazily and publishes at once.
        await io.run(command("EXISTS", probe))
        deadline = asyncio.get_running_loop().time() + 2.0
        while missing and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.message(timeout=0.2)
            if message is None:
                continue
            channel, data = _text(message["channel"]), _text(message["data"])
            event = "expired" if channel == expired_channel and data == probe else data
            missing.discard((event, channel))
        return not missing
    finally:
        await pubsub.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
