"""What waiting for a replica (``wait_replicas=1``) costs a producer; prints one table.

A primary and one replica from the bundled binary, on this machine. For each setting (the
default, no waiting; then ``wait_replicas=1``), it measures:

- ``schedule()`` one call at a time (each call then waits for the replica in its round trip);
- ``aschedule()`` from 200 concurrent asyncio tasks (their calls share writes, and one WAIT);
- ``schedule_many()`` of 20,000 prepared requests (one WAIT per round trip of 1,000 timers).

Run from the repository root (about a minute; ``--timers`` for other sizes):

    .venv/bin/python benchmarks/bench_replicas.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from bench_table import Row, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from delayq import Delayq  # noqa: E402
from delayq._server import EmbeddedServer  # noqa: E402
from delayq.testing import describe_host  # noqa: E402

CONCURRENT = 200


def _app(url: str, wait: int) -> tuple[Delayq, Any]:
    app = Delayq(url, namespace="r" + uuid.uuid4().hex[:8], wait_replicas=wait)

    @app.task(name="bench.noop")
    def noop() -> None:
        pass

    return app, noop


def _single(url: str, wait: int, count: int) -> float:
    app, noop = _app(url, wait)
    noop.schedule(delay=3600)  # connects
    started = time.perf_counter()
    for _ in range(count):
        noop.schedule(delay=3600)
    rate = count / (time.perf_counter() - started)
    app.close()
    return rate


def _concurrent(url: str, wait: int, count: int) -> float:
    app, noop = _app(url, wait)

    async def main() -> float:
        async with app:
            await noop.aschedule(delay=3600)
            per_task = count // CONCURRENT

            async def one() -> None:
                for _ in range(per_task):
                    await noop.aschedule(delay=3600)

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(CONCURRENT)))
            return per_task * CONCURRENT / (time.perf_counter() - started)

    return asyncio.run(main())


def _batched(url: str, wait: int, count: int) -> float:
    app, noop = _app(url, wait)
    requests = [noop.request((), {}, delay=3600) for _ in range(count)]
    app.schedule_many(requests[:1])
    started = time.perf_counter()
    app.schedule_many(requests[1:])
    rate = (count - 1) / (time.perf_counter() - started)
    app.close()
    return rate


def measure(url: str, timers: int) -> Iterator[Row]:
    ways = [("schedule(), one call at a time", _single, timers // 4),
            (f"aschedule(), {CONCURRENT} concurrent tasks", _concurrent, timers),
            ("schedule_many(), prepared", _batched, timers * 2)]  # fmt: skip
    for name, way, count in ways:
        plain = way(url, 0, count)
        waited = way(url, 1, count)
        yield Row(f"{name}: default (no waiting)", f"{plain:,.0f} /s")
        yield Row("  wait_replicas=1", f"{waited:,.0f} /s ({waited / plain:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timers", type=int, default=10_000)
    args = parser.parse_args()

    def run(url: str, workdir: Path) -> Iterator[Row]:
        with redis.Redis.from_url(url) as client:
            print(describe_host(client), flush=True)
            port = url.rsplit(":", 1)[1].split("/")[0]
            replica = EmbeddedServer(data_dir=workdir / "replica", extra_args=(
                "--replicaof", "127.0.0.1", port, "--repl-diskless-sync-delay", "0"))  # fmt: skip
            replica.start()
            try:
                with redis.Redis.from_url(replica.url) as seen:
                    deadline = time.monotonic() + 30
                    while seen.info("replication")["master_link_status"] != "up":
                        if time.monotonic() > deadline:
                            raise RuntimeError("the replica did not connect")
                        time.sleep(0.05)
                yield from measure(url, args.timers)
            finally:
                replica.stop()

    return report("bench-replicas-", run)


if __name__ == "__main__":
    raise SystemExit(main())
