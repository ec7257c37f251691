"""Another program's heartbeats on watched keys, with the expiries it caused counted exactly.

Each write runs in a MULTI after an ``EXISTS`` of the key: a key the writer left with a
time-to-live that is gone at its next write has expired, so the writer knows how many times each
device's key expired, and that is how many times ``chaos.offline`` must fire for it. Lives also
end refreshed (``SET … PX``), removed (``DEL``, ``MOVE``, ``RENAME`` away) or without a
time-to-live (``SET``, ``PERSIST``); none of those fires.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import redis

from tests.chaos.watch_app import WATCH_PREFIX

# (operation, weight): heartbeats are most of the traffic
OPERATIONS = [("set_px", 70), ("del", 8), ("move", 7), ("set_keep", 5), ("persist", 5),
              ("rename_away", 5)]  # fmt: skip
TTL_MS = (100, 700)


class Churn:
    """Writes to ``devices`` watched keys from a thread; ``expiries`` counts what must fire."""

    def __init__(self, url: str, devices: int = 20, pace: float = 0.01, seed: int = 5) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.other_db = redis.Redis.from_url(url.removesuffix("/0") + "/1", socket_timeout=10)
        self.devices = [f"dev{i}" for i in range(devices)]
        self.state = dict.fromkeys(self.devices, "absent")  # absent | ttl | persist
        self.expiries: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.pace = pace
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the churn writer is stuck"

    def _run(self) -> None:
        ops, weights = zip(*OPERATIONS, strict=True)
        while not self._stop.wait(self.pace):
            device = self.rng.choice(self.devices)
            self.write(device, self.rng.choices(ops, weights)[0])

    def write(self, device: str, op: str) -> None:
        key, tmp = WATCH_PREFIX + device, f"chaos-tmp:{device}"
        if op == "move":
            self.other_db.delete(key)  # MOVE refuses a key that exists in the target
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(key)
        ttl = self.rng.randint(*TTL_MS)
        commands = {
            "set_px": lambda: pipe.set(key, "1", px=ttl),
            "set_keep": lambda: pipe.set(key, "1"),
            "persist": lambda: pipe.persist(key),
            "del": lambda: pipe.delete(key),
            "move": lambda: pipe.move(key, 1),
            "rename_away": lambda: (pipe.rename(key, tmp), pipe.delete(tmp)),
        }
        commands[op]()
        existed = bool(pipe.execute(raise_on_error=False)[0])
        self.writes[op] += 1
        if self.state[device] == "ttl" and not existed:
            self.expiries[device] += 1
        if not existed:
            self.state[device] = "absent"
        if op == "set_px":
            self.state[device] = "ttl"
        elif op == "set_keep" or (op == "persist" and existed):
            self.state[device] = "persist"
        elif op in ("del", "move", "rename_away"):
            self.state[device] = "absent"

    def finish(self) -> None:
        """Remove the keys without a time-to-live, let the others expire, and count them."""
        for device, state in self.state.items():
            if state == "persist":
                self.write(device, "del")
        time.sleep(TTL_MS[1] / 1000 + 0.05)
        for device, state in self.state.items():
            if state == "ttl":
                gone = not self.client.exists(WATCH_PREFIX + device)
                assert gone, f"{device} outlived its time-to-live"
                self.expiries[device] += 1
                self.state[device] = "absent"

    def close(self) -> None:
        self.other_db.flushdb()
        self.client.close()
        self.other_db.close()
