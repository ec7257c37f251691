"""Batches of many script calls (schedule_many, touch_many): every item armed once, whatever
the server did meanwhile, and a refusal midway counts exactly what it stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from delayq import Delayq, EmbeddedServer, ServerOutOfMemory


def test_a_batch_after_the_scripts_were_flushed_arms_every_timer_once(
    app: Delayq, rclient: redis.Redis
) -> None:
    @app.task(name="batches.job")
    def job(n: int) -> None: ...

    @app.debounced(seconds=60, key="k:{n}")
    def quiet(n: int) -> None: ...

    job.schedule(-1, delay=60)  # the scripts are loaded
    rclient.script_flush()
    reqs = [job.prepare(n, delay=60, id=f"j{n}") for n in range(2_500)]
    armed = app.schedule_many(reqs, chunk=300)
    assert [t.id for t in armed] == [r.timer_id for r in reqs] and all(t.created for t in armed)
    rclient.script_flush()
    touched = app.touch_many([quiet.prepare_touch(n) for n in range(1_200)], chunk=250)
    assert all(t.created for t in touched)
    assert app.pending_count() == 1 + 2_500 + 1_200


def test_a_batch_refused_midway_counts_what_it_stored(tmp_path: Path) -> None:
    limits = ["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]
    with EmbeddedServer(data_dir=tmp_path / "valkey", extra_args=limits) as server:
        app = Delayq(server.url, namespace="batches")
        client = redis.Redis.from_url(server.url)

        @app.task(name="batches.bulky")
        def bulky(n: int, blob: str) -> None: ...

        reqs = [bulky.prepare(n, "x" * 2000, delay=60) for n in range(20_000)]
        with pytest.raises(ServerOutOfMemory) as full:
            app.schedule_many(reqs, chunk=500)
        completed = full.value.completed
        assert 0 < completed < len(reqs)
        stored = {m.decode() for m in client.zrange(app.keys.index, 0, -1)}
        # What completed is what was stored, in order: the first `completed` requests.
        assert stored == {r.timer_id for r in reqs[:completed]}
        app.close()
        client.close()
