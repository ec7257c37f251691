"""Every Redis key and channel name delayq uses is built here (and in ``_layout``, which
names the shards), and nowhere else.

All keys of one shard share a hash tag (``{namespace}`` for a namespace of one shard), so
every script touches a single cluster slot: a timer's shadow key, data key, the due index and
the ready stream live together.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from delayq._errors import ConfigurationError, InvalidTimerId
from delayq._route import DEFAULT_PRIORITY, DEFAULT_QUEUE, LEVELS

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# Ids travel inside key names and stream fields; a bound keeps one bad id from bloating the server.
MAX_ID_BYTES = 1024
# Task names travel in every payload and inside the ids delayq derives from them (periodic ticks
# `~p:<name>@<ms>`, watch timers `~w:<name>|<key>`, a debounced task's own id): half an id.
MAX_TASK_NAME_BYTES = 512
# Every key delayq writes starts with this; a watched-key pattern must not match any of them.
KEY_ROOT = "dq:{"
GROUP = "workers"
# A shadow key lives this long past its deadline (the scripts' GRACE): a timer claimed on time
# from the due index is deleted before it expires, so `expired` events come only from timers
# that were not claimed in time, and the notification path costs nothing in the common case.
SHADOW_GRACE_MS = 1000
# The outcome record of a job still under way (queued, running, retrying) lives this long
# (the scripts' HOLD): a job lost with its server must not keep its record for ever.
OUTCOME_HOLD_MS = 7 * 24 * 3600 * 1000
# A namespace's payloads are fields of about this many hashes ("buckets"), split among its
# shards: a field in a small (listpack-encoded) hash costs about 35 B less than a key of its
# own (docs/cluster.md, "Memory per timer"). Hashes stay small up to 128 fields (the server's
# hash-max-listpack-entries: 128 on Redis, 512 on Valkey), so up to about 2 million timers a
# namespace (8 million on Valkey).
BUCKETS = 16384


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"invalid namespace {namespace!r}: use 1-64 characters from A-Z a-z 0-9 _ . -"
        )
    return namespace


# Ids delayq makes itself (watch timers, periodic ticks) start with this; users' may not.
RESERVED_PREFIX = "~"
WATCH_ID_PREFIX = RESERVED_PREFIX + "w:"
# A watched key's job once fired (its retries, its re-drives): a plain timer, not a watch timer.
WATCH_JOB_PREFIX = RESERVED_PREFIX + "j:"
TICK_ID_PREFIX = RESERVED_PREFIX + "p:"


# Suffixes of ids delayq derives from another id for a later attempt of the same job (see
# Keys.retry_id, Keys.plain_watch_job_id).
DERIVED_MARKS = ("#retry-", "#redrive-")


def origin_id(timer_id: str) -> str:
    """The id a job was scheduled under, whichever attempt ``timer_id`` names: a retry's and a
    re-drive's are their origin's, and a watched key's job once fired is its watch timer."""
    cut = min((i for i in (timer_id.find(m) for m in DERIVED_MARKS) if i >= 0), default=-1)
    if cut >= 0:
        timer_id = timer_id[:cut]
    if timer_id.startswith(WATCH_JOB_PREFIX):
        timer_id = WATCH_ID_PREFIX + timer_id[len(WATCH_JOB_PREFIX) :]
    return timer_id


def check_user_timer_id(timer_id: str) -> str:
    check_timer_id(timer_id)
    if timer_id.startswith(RESERVED_PREFIX):
        raise InvalidTimerId(f"timer ids starting with {RESERVED_PREFIX!r} are reserved")
    return timer_id


def check_timer_id(timer_id: str) -> str:
    return _check_name(timer_id, "timer id", MAX_ID_BYTES, InvalidTimerId)


def check_task_name(name: object) -> str:
    """A task name: a non-empty str of valid Unicode, at most MAX_TASK_NAME_BYTES in UTF-8."""
    return _check_name(name, "task name", MAX_TASK_NAME_BYTES, ConfigurationError)


def _check_name(value: object, what: str, max_bytes: int, error: type[Exception]) -> str:
    """A non-empty str of valid Unicode, at most ``max_bytes`` in UTF-8; else ``error``."""
    if not isinstance(value, str):
        raise error(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise error(f"{what} must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise error(
            f"{what} {value[:40]!r}... is {size} bytes in UTF-8, longer than the limit of "
            f"{max_bytes} bytes"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} {value[:40]!r} is not valid unicode: {exc}") from None
    return value


def matches_own_keys(pattern: str) -> bool:
    """Whether a watched-key pattern (one ``*``) can match a key delayq writes itself."""
    head = pattern.split("*", 1)[0]
    return KEY_ROOT.startswith(head) or head.startswith(KEY_ROOT)


class Keys:
    """Names of one namespace's keys; pure string building, no I/O."""

    def __init__(self, namespace: str, *, tag: str | None = None, buckets: int = BUCKETS) -> None:
        """``tag``: the hash tag of one shard of the namespace (see ``_layout``); the
        namespace itself for a namespace of one shard. ``buckets``: how many hashes hold the
        shard's payloads; 0 for a namespace created before buckets, with a key per payload."""
        self.namespace = check_namespace(namespace)
        self.tag = tag or namespace
        self.buckets = buckets
        prefix = f"{KEY_ROOT}{self.tag}}}:"
        self.prefix = prefix
        self.index = prefix + "due"  # sorted set: timer id -> due time (ms, server clock)
        self.ready = prefix + "ready"  # stream of fired jobs, read by the consumer group
        self.queues = prefix + "queues"  # set: the queues whose streams exist (see stream())
        self.dead = prefix + "dead"  # stream of dead letters
        self.stats = prefix + "stats"  # hash of counters
        self.paused = prefix + "paused"  # hash: timer id -> "remaining_ms:duration_ms"
        self.first_touch = prefix + "first"  # hash: debounced timer id -> first touch ms
        self.periodics = prefix + "periodics"  # set: names of periodic tasks with state
        self.wake_channel = prefix + "wake"  # pub/sub nudge: a new earliest deadline
        self.shadow_prefix = prefix + "s:"
        self.data_prefix = prefix + "d:"  # a payload's own key (buckets=0)
        self.bucket_prefix = prefix + "b:"  # hash: timer id -> payload (see data())
        self.items_prefix = prefix + "a:"
        # Watch timers (on_expire) have an index of their own: only the watch leader, which
        # hears the watched keys' events in order, may fire them.
        self.watch_index = prefix + "wdue"  # sorted set: watch timer id -> the key's deadline
        self.watch_lease = prefix + "wlease"  # the watch leader's token, with a lifetime
        self.watch_epoch = prefix + "wepoch"  # counts leaderships, to tell a takeover apart
        self.watch_barrier_prefix = prefix + "wb:"
        # A job's outcome (state, attempts, result or error), kept result_ttl after it ends;
        # under its origin id, so that every attempt of one job shares it (see outcome()).
        self.outcome_prefix = prefix + "o:"
        # Sharded pub/sub (the shard's slot): the origin id of each job that ended.
        self.outcomes = prefix + "outcomes"
        # Capped stream of lifecycle events (_events), when some task tells them.
        self.events = prefix + "events"

    def shadow(self, timer_id: str) -> str:
        return self.shadow_prefix + timer_id

    def data(self, timer_id: str) -> str:
        """Where a timer's payload is: the bucket hash holding it as the field ``timer_id``,
        or its own key when buckets=0. Scripts tell the two apart by the name (prelude.lua
        ``bucketed``), so both layouts run the same scripts."""
        if not self.buckets:
            return self.data_prefix + timer_id
        # Bits the shard (crc32 % count, at most 256) does not use: the ids of one shard still
        # spread over all of its buckets.
        crc = zlib.crc32(timer_id.encode("utf-8", "surrogatepass"))
        return f"{self.bucket_prefix}{(crc >> 12) % self.buckets}"

    def stream(self, queue: str, priority: int) -> str:
        """The ready stream of a queue's priority level: ``ready`` for the default queue at
        the default level, else ``ready:<queue>:<level>``. prelude.lua's ``stream_of`` builds
        the same names from a payload's route (the queue's own name is checked by _route)."""
        if queue == DEFAULT_QUEUE and priority == DEFAULT_PRIORITY:
            return self.ready
        return f"{self.ready}:{queue}:{priority}"

    def streams(self, queues: Sequence[str]) -> dict[str, int]:
        """The ready streams of these queues with their levels, in the order a worker takes
        them: highest level first, the queues in the given order within a level."""
        return {self.stream(q, level): level for level in reversed(range(LEVELS)) for q in queues}

    def read_data(self, timer_id: str) -> tuple[str, ...]:
        """The command that reads a timer's payload (None when it has none)."""
        if not self.buckets:
            return ("GET", self.data_prefix + timer_id)
        return ("HGET", self.data(timer_id), timer_id)

    # Flow control (_limits.py, limits.lua), in the shard each scope's name hashes to.
    def slots(self, scope: str) -> str:
        """Sorted set: the concurrency slots of a scope, holder -> lease end ms."""
        return self.prefix + "cc:" + scope

    def line(self, scope: str) -> str:
        """Sorted set: the jobs waiting for a slot of a scope, timer id -> place."""
        return self.prefix + "cl:" + scope

    def rate_tat(self, scope: str) -> str:
        """A rate scope's theoretical arrival time (GCRA), ms."""
        return self.prefix + "rt:" + scope

    def rate_reserved(self, scope: str) -> str:
        """Sorted set: jobs told to come back for their token, timer id -> its time."""
        return self.prefix + "rr:" + scope

    def woken(self, timer_id: str) -> str:
        """A throttled job handed a slot before it was re-armed (wake.lua, retry.lua)."""
        return self.prefix + "wk:" + timer_id

    def outcome(self, timer_id: str) -> str:
        return self.outcome_prefix + origin_id(timer_id)

    def periodic_state(self, task: str) -> str:
        return self.prefix + "periodic:" + task

    def periodic_lock(self, task: str) -> str:
        return self.prefix + "plock:" + task

    def probe(self, token: str) -> str:
        """A throw-away key used to check that expired events are published."""
        return self.prefix + "probe:" + token

    def watch_barrier(self, consumer: str) -> str:
        """The watch leader's own channel: its probes' findings, in line with key events."""
        return self.watch_barrier_prefix + consumer

    def index_of(self, timer_id: str) -> str:
        """The index holding this timer: watch timers (``~w:``) have their own."""
        return self.watch_index if timer_id.startswith(WATCH_ID_PREFIX) else self.index

    @staticmethod
    def keyspace_pattern(db: int, pattern: str) -> str:
        return f"__keyspace@{db}__:{pattern}"

    def items(self, timer_id: str) -> str:
        return self.items_prefix + timer_id

    @staticmethod
    def retired_cycle_id(timer_id: str, nonce: str) -> str:
        """Id under which a touch retires a debounced cycle that is overdue (see touch.lua)."""
        return f"{RESERVED_PREFIX}c:{nonce}:{timer_id}"

    @staticmethod
    def callback_id(kind: str, entry_id: str, origin: str) -> str:
        """The job a callback (``kind`` "s": on_success, "f": on_failure) runs as: one per
        delivery that ended the job, in the job's shard (see _layout.shard_of)."""
        return f"{RESERVED_PREFIX}{kind}:{entry_id}:{origin}"

    @staticmethod
    def retry_id(timer_id: str, entry_id: str) -> str:
        """Id for a retry whose own id was taken meanwhile by a new pending timer."""
        return f"{timer_id}#retry-{entry_id}"

    @staticmethod
    def tick_id(task: str, tick_ms: int | str) -> str:
        """The timer of one tick of a periodic task (``@`` is refused in their names)."""
        return f"{TICK_ID_PREFIX}{task}@{tick_ms}"

    @staticmethod
    def tick_of(timer_id: str) -> tuple[str, int] | None:
        """(task name, tick ms) of a tick's timer id, or None."""
        if not timer_id.startswith(TICK_ID_PREFIX):
            return None
        name, _, tick = timer_id[len(TICK_ID_PREFIX) :].rpartition("@")
        return (name, int(tick)) if tick.isdigit() else None

    @staticmethod
    def watch_timer_id(task: str, key: str) -> str:
        """The watch timer of one on_expire task for one watched key."""
        return f"{WATCH_ID_PREFIX}{task}|{key}"

    @staticmethod
    def plain_watch_job_id(timer_id: str, kind: str, entry_id: str) -> str:
        """A plain timer for one expiry's job once it has fired (``kind``: retry, redrive): a
        watch timer id would be taken up by the watched key's next life."""
        watch = timer_id.removeprefix(WATCH_ID_PREFIX).removeprefix(WATCH_JOB_PREFIX)
        return f"{WATCH_JOB_PREFIX}{watch}#{kind}-{entry_id}"

    def data_pattern(self) -> str:
        """The keys holding payloads, as a SCAN pattern."""
        # SCAN MATCH treats [ ] * ? \ specially; the namespace charset excludes them.
        return (self.bucket_prefix if self.buckets else self.data_prefix) + "*"

    def id_from_shadow(self, key: str) -> str | None:
        if key.startswith(self.shadow_prefix):
            return key[len(self.shadow_prefix) :]
        return None

    def id_from_data(self, key: str) -> str | None:
        if key.startswith(self.data_prefix):
            return key[len(self.data_prefix) :]
        return None

    @staticmethod
    def expired_channel(db: int) -> str:
        return f"__keyevent@{db}__:expired"

    def shadow_events(self, db: int) -> str:
        """The keyspace channels of this namespace's shadow keys, as a subscription pattern."""
        return self.keyspace_pattern(db, self.shadow_prefix + "*")


def acl_rules(home: Keys, shards: Sequence[Keys], db: int = 0,
              watch: tuple[tuple[str, str | None], ...] = ()) -> list[str]:  # fmt: skip
    """ACL SETUSER rules granting what delayq needs in a namespace, and nothing else.

    ``home``: the namespace's own keys (``Keys(namespace)``: its meta key and watch barrier,
    and every key of a namespace of one shard); ``shards``: each shard's keys (see
    ``Layout.acl_rules``). ``watch``: (pattern, companion template or None) of each on_expire
    task. A subscription pattern passes only if it is listed as it is (an ``&`` rule is
    compared with a PSUBSCRIBE pattern literally), so every shard's is listed.
    """
    others = [k for k in shards if k.prefix != home.prefix]
    keys = [f"~{home.prefix}*", *(f"~{k.prefix}*" for k in others)]
    channels = [*(f"&{k.wake_channel}" for k in shards), *(f"&{k.outcomes}" for k in shards),
                f"&{Keys.expired_channel(db)}",
                *(f"&{k.shadow_events(db)}" for k in shards),
                f"&{home.watch_barrier_prefix}*"]  # fmt: skip
    for pattern, data in watch:
        keys.append(f"~{pattern}")
        channels.append(f"&{Keys.keyspace_pattern(db, pattern)}")
        if data:
            keys.append("~" + data.replace("{suffix}", "*").replace("{key}", "*"))
    return ["resetkeys", *keys, "resetchannels", *channels, "-@all",
            *(f"+{command}" for command in ACL_COMMANDS)]  # fmt: skip


# Every command delayq sends, directly or from its scripts. CONFIG GET lets a worker check
# notify-keyspace-events; without it the worker checks by experiment (CONFIG SET is optional).
# CLUSTER SLOTS and ASKING: a cluster's slot map, and a call sent to a slot being moved.
# WAIT: with wait_replicas. PEXPIRETIME: watched keys read on their own node (a cluster).
# XREAD, XREVRANGE: reading the events stream. ZREMRANGEBYSCORE, ZPOPMIN, ZRANK: limits.
ACL_COMMANDS = (
    "ping", "time", "hello", "select", "client|setinfo", "client|setname", "config|get",
    "memory|usage", "cluster|slots", "asking",
    "evalsha", "eval", "script|load", "multi", "exec", "discard",
    "get", "set", "del", "exists", "type", "pttl", "pexpire", "pexpiretime", "scan", "incr",
    "zscan", "wait",
    "zadd", "zrem", "zrange", "zrangebyscore", "zscore", "zmscore", "zcard",
    "zremrangebyscore", "zpopmin", "zrank",
    "hget", "hset", "hdel", "hexists", "hgetall", "hmget", "hlen", "hincrby", "hkeys",
    "rename",
    "sadd", "srem", "smembers", "rpush", "lrange", "ltrim",
    "xadd", "xdel", "xlen", "xrange", "xack", "xpending", "xclaim", "xautoclaim",
    "xreadgroup", "xgroup|create", "xgroup|delconsumer", "xinfo|consumers", "xinfo|groups",
    "xread", "xrevrange",
    "publish", "subscribe", "psubscribe", "unsubscribe", "punsubscribe",
    "spublish", "ssubscribe", "sunsubscribe",
)  # fmt: skip
