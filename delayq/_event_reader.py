"""Reading a namespace's events: ``Delayq.events()`` and ``aevents()``.

One ``EventReader`` is the protocol (which XREADs, decoding, the cursor), written once as
flows; the two iterators below only run them and wait. On one server (or through Sentinel)
every shard's stream is read by one blocking XREAD, so an event is handed out as soon as it
is written. A cluster refuses an XREAD of keys in several slots: there each round reads every
shard without blocking (one round trip, all nodes at once) and an empty round waits
``CLUSTER_IDLE_S`` before the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from delayq._calls import Batch, Flow
from delayq._events import NOW, Cursor, Entries, JobEvent, decode_event, last_event_id, read_events
from delayq._keys import Keys
from delayq._topology import cluster_enabled

if TYPE_CHECKING:
    from delayq._producer import Producer

READ_COUNT = 500  # events per shard and round
BLOCK_MS = 1000  # one blocking read at most, then the next: a closed reader stops soon
CLUSTER_IDLE_S = 0.1


class EventReader:
    def __init__(self, since: str | None, tasks: Iterable[Any] | None) -> None:
        self.since = since
        # Task objects or names: a task is known by its name either way.
        self.tasks = None if tasks is None else frozenset(getattr(t, "name", t) for t in tasks)
        self.shards: list[Keys] = []
        self.cursor: Cursor | None = None
        self.one_read = True  # every shard in one XREAD (not a cluster)

    def start(self, app: Producer) -> Flow[None]:
        layout = yield from app.store.layout()
        self.shards = list(layout.shards)
        self.one_read = len(self.shards) == 1 or not (yield cluster_enabled())
        self.cursor = Cursor(len(self.shards), self.since)
        if self.since == NOW:
            ids = yield Batch([last_event_id(k) for k in self.shards])
            self.cursor.ids = list(ids)

    def step(self, block_ms: int | None) -> Flow[list[JobEvent]]:
        """The next events in order per shard (merged by time), with positions; waits up to
        ``block_ms`` for some if there are none (on one server)."""
        assert self.cursor is not None
        streams = [k.events for k in self.shards]
        if self.one_read:
            found = yield read_events(streams, self.cursor.ids, READ_COUNT, block_ms)
        else:
            replies = yield Batch([read_events([name], [self.cursor.ids[i]], READ_COUNT, None)
                                   for i, name in enumerate(streams)])  # fmt: skip
            found = {name: got for reply in replies for name, got in reply.items()}
        return self._events(found)

    def _events(self, found: dict[str, Entries]) -> list[JobEvent]:
        assert self.cursor is not None
        order = {k.events: i for i, k in enumerate(self.shards)}
        arrived = sorted(((_id_key(eid), order[name], eid, fields)
                          for name, entries in found.items() for eid, fields in entries),
                         key=lambda item: (item[0], item[1]))  # fmt: skip
        events = []
        for _, shard, eid, fields in arrived:
            position = self.cursor.advance(shard, eid)
            event = decode_event(shard, eid, fields, position)
            if self.tasks is None or event.task in self.tasks:
                events.append(event)
        return events


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _wait_ms(reader: EventReader, follow: bool) -> int | None:
    return BLOCK_MS if follow and reader.one_read else None


def follow_sync(app: Producer, since: str | None, follow: bool,
                tasks: Iterable[Any] | None) -> Iterator[JobEvent]:  # fmt: skip
    """Starts now (so "$" means from this call), then reads as it is iterated."""
    reader = EventReader(since, tasks)
    app._run(reader.start(app))
    return _read_sync(app, reader, follow)


def _read_sync(app: Producer, reader: EventReader, follow: bool) -> Iterator[JobEvent]:
    while True:
        events = app._run(reader.step(_wait_ms(reader, follow)))
        yield from events
        if not events:
            if not follow:
                return
            if not reader.one_read:
                time.sleep(CLUSTER_IDLE_S)


async def follow_async(app: Producer, since: str | None, follow: bool,
                       tasks: Iterable[Any] | None) -> AsyncIterator[JobEvent]:  # fmt: skip
    """Starts at its first iteration (so "$" means from then)."""
    reader = EventReader(since, tasks)
    await app._arun(reader.start(app))
    while True:
        events = await app._arun(reader.step(_wait_ms(reader, follow)))
        for event in events:
            yield event
        if not events:
            if not follow:
                return
            if not reader.one_read:
                await asyncio.sleep(CLUSTER_IDLE_S)
