"""How a namespace is split into shards, each a hash slot of its own; no I/O.

A namespace of one shard keeps the layout delayq always had: every key under ``dq:{ns}:``.
A namespace of S > 1 shards has, for each shard k, the same set of keys under ``dq:{tag_k}:``,
where ``tag_k`` is ``ns/k`` (with a salt ``.n`` if needed) chosen so that its slot falls in
the k-th S-th of the slot space: on a cluster whose primaries split the slots evenly, the
shards are spread evenly too. (``/`` is refused in namespaces, so tags cannot collide.)

A timer lives in the shard of its *base id*, so that everything a script must change
together stays in one slot: an idempotent id and its retries, a debounced key and the cycles
it retires, a periodic task's ticks, state and lock. The count is fixed when the namespace is
created (``dq:{ns}:meta``); ids would land in other shards if it changed.

The meta value is ``<shards>:<buckets>``: each shard keeps its payloads as fields of that many
hashes (``Keys.data``). A namespace created before buckets stores just ``<shards>`` and keeps
a key per payload, as does one with keys from before shard counts were stored.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from delayq._calls import Flow, command
from delayq._errors import ConfigurationError
from delayq._keys import (
    BUCKETS,
    KEY_ROOT,
    RESERVED_PREFIX,
    WATCH_ID_PREFIX,
    WATCH_JOB_PREFIX,
    Keys,
    acl_rules,
    check_namespace,
    origin_id,
)
from delayq._topology import SLOTS, slot_of

T = TypeVar("T")

MAX_SHARDS = 256
# Ids made of another job's id, in its shard: a retired debounce cycle (Keys.retired_cycle_id:
# "~c:<nonce>:<timer id>") and a callback (Keys.callback_id: "~s:<entry>:<id>", "~f:...").
_WRAPPED = tuple(RESERVED_PREFIX + kind for kind in ("c:", "s:", "f:"))
_WATCHED = (WATCH_ID_PREFIX, WATCH_JOB_PREFIX)
_TICK = "p:"  # a periodic tick without its "~": "p:<task>@<ms>"


def check_shards(shards: object) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ConfigurationError(
            f"shards must be an integer from 1 to {MAX_SHARDS}, not {shards!r}"
        )
    return shards


def base_id(timer_id: str) -> str:
    """The id whose shard ``timer_id`` belongs to."""
    timer_id = origin_id(_unwrapped(timer_id)).removeprefix(RESERVED_PREFIX)
    if timer_id.startswith(_TICK):
        timer_id = timer_id.rpartition("@")[0] or timer_id
    return timer_id


def _unwrapped(timer_id: str) -> str:
    while timer_id.startswith(_WRAPPED):  # a callback of a callback is wrapped twice
        timer_id = timer_id[3:].partition(":")[2]
    return timer_id


def shard_of(timer_id: str, count: int) -> int:
    timer_id = _unwrapped(timer_id)
    if count == 1 or timer_id.startswith(_WATCHED):
        # Watched keys' timers are the watch leader's, which applies their events in order
        # through one script: they all live in the first shard, with the watch index.
        return 0
    return zlib.crc32(base_id(timer_id).encode("utf-8", "surrogatepass")) % count


@functools.lru_cache(maxsize=4096)
def shard_tag(namespace: str, shard: int, count: int) -> str:
    """The hash tag of one shard: its slot falls near the middle of the ``shard``-th
    ``count``-th of the slots (for the first salt that puts it there). The middle, not just
    anywhere in the share: primaries holding equal ranges then get as equal a number of shards
    as can be (16 on 3: 5, 6, 5), where a share cut by a range boundary could go either way."""
    if count == 1:
        return namespace
    share = SLOTS / count
    middle = (shard + 0.5) * share
    # A window of 1/16 of the share, and at least 64 slots (or the whole share): at most
    # about 256 tries of a salt per shard, under a second for MAX_SHARDS, once a process.
    half = max(share / 32, min(share, 64) / 2)
    low, high = math.floor(middle - half), math.ceil(middle + half)
    salt = 0
    while True:
        tag = f"{namespace}/{shard}" + (f".{salt}" if salt else "")
        if low <= slot_of(tag) < high:
            return tag
        salt += 1


def buckets_per_shard(count: int) -> int:
    """A new namespace's payload hashes per shard: about BUCKETS in all."""
    return max(256, BUCKETS // count)


def meta_key(namespace: str) -> str:
    """Where a namespace's shard count is kept (in the slot of the one-shard layout)."""
    return f"{KEY_ROOT}{namespace}}}:meta"


@dataclass(frozen=True)
class Layout:
    """A namespace's shards: the keys of each, and which shard holds a timer id."""

    namespace: str
    shards: tuple[Keys, ...]

    @classmethod
    def of(cls, namespace: str, count: int, buckets: int | None = None) -> Layout:
        """``buckets``: per shard; by default, what a namespace created now gets."""
        check_namespace(namespace)
        check_shards(count)
        if buckets is None:
            buckets = buckets_per_shard(count)
        return cls(namespace, tuple(Keys(namespace, tag=shard_tag(namespace, k, count),
                                         buckets=buckets)
                                    for k in range(count)))  # fmt: skip

    @property
    def count(self) -> int:
        return len(self.shards)

    @property
    def buckets(self) -> int:
        return self.shards[0].buckets

    def shard_of(self, timer_id: str) -> int:
        return shard_of(timer_id, self.count)

    def shard_of_scope(self, scope: str) -> int:
        """The shard holding a limit's state (_limits: a task name and key), whichever shards
        its jobs are in."""
        if len(self.shards) == 1:
            return 0
        return zlib.crc32(scope.encode("utf-8", "surrogatepass")) % len(self.shards)

    def keys_for(self, timer_id: str) -> Keys:
        return self.shards[self.shard_of(timer_id)]

    def acl_rules(self, db: int = 0, watch: tuple[tuple[str, str | None], ...] = ()) -> list[str]:
        """ACL SETUSER rules for every shard of the namespace (see ``_keys.acl_rules``)."""
        return acl_rules(Keys(self.namespace), self.shards, db, watch)

    def grouped(self, timer_ids: Iterable[str]) -> dict[int, list[int]]:
        """Positions of ``timer_ids`` by shard, each list in the given order."""
        groups: dict[int, list[int]] = {}
        for position, timer_id in enumerate(timer_ids):
            groups.setdefault(self.shard_of(timer_id), []).append(position)
        return groups


def resolve(
    namespace: str, wanted: int | None, default: int, *, bucketed: bool = True
) -> Flow[Layout]:
    """The namespace's layout as stored, created with ``wanted`` (else ``default``) shards if
    it has none yet, with payload buckets if ``bucketed``. A namespace with keys from before
    shard counts were stored has one shard and a key per payload."""
    stored = yield command("GET", meta_key(namespace))
    if stored is None:
        shards = wanted or default
        old = yield from _has_old_keys(namespace)
        if old or not bucketed:
            created = "1" if old else str(shards)
        else:
            created = f"{shards}:{buckets_per_shard(shards)}"
        yield command("SET", meta_key(namespace), created, "NX")
        stored = yield command("GET", meta_key(namespace))  # another app may have won
    count, buckets = _parsed_meta(namespace, stored)
    if wanted is not None and wanted != count:
        raise ConfigurationError(
            f"namespace {namespace!r} has {count} shard(s), not the {wanted} asked for: the "
            "count is fixed when a namespace is created (use another namespace, or drop "
            "shards= to use the stored count)"
        )
    return Layout.of(namespace, count, buckets)


def _parsed_meta(namespace: str, stored: bytes) -> tuple[int, int]:
    """(shards, buckets) from a meta value; buckets 0 for a namespace from before them."""
    count, _, buckets = stored.decode("ascii", "replace").partition(":")
    try:
        shards, per_shard = check_shards(int(count)), int(buckets or 0)
        if per_shard < 0:
            raise ValueError(buckets)
        return shards, per_shard
    except (ValueError, ConfigurationError):
        raise ConfigurationError(
            f"namespace {namespace!r} has a layout this version of delayq cannot read "
            f"({meta_key(namespace)} = {stored!r}): it was written by another version"
        ) from None


def stored_count(namespace: str, default: int) -> Flow[int]:
    """The namespace's shard count as stored, else the one ``resolve`` would store given
    ``default``; stores nothing."""
    stored = yield command("GET", meta_key(namespace))
    if stored is not None:
        return _parsed_meta(namespace, stored)[0]
    return 1 if (yield from _has_old_keys(namespace)) else default


def _has_old_keys(namespace: str) -> Flow[bool]:
    """Whether the namespace has keys from before shard counts were stored."""
    legacy = Keys(namespace)
    found = yield command("EXISTS", legacy.index, legacy.ready, legacy.dead, legacy.periodics,
                          legacy.paused, legacy.stats)  # fmt: skip
    return bool(found)
