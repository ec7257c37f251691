"""The model of tests/test_watch_state_machine.py: each watched key's lives, and the writes of
the other program that make and end them.

A write runs in a MULTI after an ``EXISTS`` of the key (``queue_write``), so the model learns
whether the key's previous life was still there: a life with a time-to-live that is gone has
expired. A life's deadline lies within the write's ``[t0, t1]`` plus its time-to-live (the server
and the test share this machine's clock). A life touched in a *gap* (no leader listening) may fire
once or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EPS_MS = 3.0  # ms truncation of the server's TIME, rounding of the recorded times
TTL_OPS = ["set_px", "pexpire", "rename_in", "copy_in", "restore_in"]
REMOVALS = ["del", "unlink", "getdel", "move", "rename_away", "rename_onto"]
OPS = [*TTL_OPS, "set_keep", "persist", *REMOVALS]


@dataclass
class Life:
    """One life of a watched key: from the write that gave it a value to its end."""

    lo: float  # its deadline lies in [lo, hi] (local = server ms); inf: no time-to-live
    hi: float
    maybe: bool  # touched in a gap: it may fire once or not at all
    end: str | None = None  # None (the key's current life), "expired" or "removed"

    def fires_at_most(self, now: float) -> int:
        if self.end == "expired" or self.maybe:
            return 1
        return int(self.end is None and now >= self.lo - EPS_MS)


@dataclass
class Key:
    name: str
    lives: list[Life] = field(default_factory=list)
    firings: list[float] = field(default_factory=list)  # fired ms (server), one per delivery
    deliveries: set[str] = field(default_factory=set)

    @property
    def current(self) -> Life | None:
        life = self.lives[-1] if self.lives else None
        return life if life is not None and life.end is None else None


@dataclass(frozen=True)
class Write:
    """One write of the other program: ``op`` on ``full``; ``other`` is the watched key that
    ``rename_onto`` renames onto; ``tmp`` a key nobody watches."""

    op: str
    full: str
    other: str
    tmp: str
    value: str
    ttl: int

    def queue(self, pipe: Any, dump: bytes) -> None:
        full, other, tmp, value, ttl = self.full, self.other, self.tmp, self.value, self.ttl
        commands: dict[str, Callable[[], Any]] = {
            "set_px": lambda: pipe.set(full, value, px=ttl),
            "pexpire": lambda: pipe.pexpire(full, ttl),
            "rename_in": lambda: (pipe.set(tmp, value, px=ttl), pipe.rename(tmp, full)),
            "copy_in": lambda: (pipe.set(tmp, value, px=ttl),
                                pipe.copy(tmp, full, replace=True), pipe.delete(tmp)),
            "restore_in": lambda: pipe.restore(full, ttl, dump, replace=True),
            "set_keep": lambda: pipe.set(full, value),
            "persist": lambda: pipe.persist(full),
            "del": lambda: pipe.delete(full),
            "unlink": lambda: pipe.unlink(full),
            "getdel": lambda: pipe.getdel(full),
            "move": lambda: pipe.move(full, 1),
            "rename_away": lambda: (pipe.rename(full, tmp), pipe.delete(tmp)),
            "rename_onto": lambda: pipe.rename(full, other),
        }  # fmt: skip
        commands[self.op]()


class Lives:
    """The keys' lives and the gaps; ``note`` logs, ``expect`` fails the test when false."""

    def __init__(self, names: list[str], t_zero: float, note: Callable[[str], None],
                 expect: Callable[[bool, str], None]) -> None:  # fmt: skip
        self.keys = {name: Key(name) for name in names}
        self.gaps: list[list[float]] = []  # [start, end]; end is inf while open
        self.t_zero = t_zero
        self.note = note
        self.expect = expect

    @property
    def in_gap(self) -> bool:
        return bool(self.gaps) and math.isinf(self.gaps[-1][1])

    def touches_gap(self, lo: float, hi: float) -> bool:
        return any(lo <= end + 50 and hi >= start - 50 for start, end in self.gaps)

    def show(self, lives: list[Life]) -> list[str]:
        def ms(t: float) -> str:
            return "inf" if math.isinf(t) else f"{t - self.t_zero:.0f}"

        return [f"[{ms(x.lo)},{ms(x.hi)}]{x.end or 'open'}{'?' if x.maybe else ''}"
                for x in lives]  # fmt: skip

    def resolve_by_time(self, key: Key, now: float) -> None:
        """A life whose whole deadline window has passed has expired, whatever comes next."""
        life = key.current
        if life is not None and now > life.hi + EPS_MS:
            self.end(key, life, "expired")

    def learn(self, key: Key, existed: bool, t0: float, t1: float, op: str) -> None:
        """What the ``EXISTS`` before the write says of the key's previous life."""
        life = key.current
        if life is None:
            self.expect(not existed, f"{op}: the key exists, but the model has no life for it")
        elif existed:
            self.expect(t0 <= life.hi + EPS_MS, f"{op}: the key outlived its deadline")
        else:
            self.expect(t1 >= life.lo - EPS_MS, f"{op}: the key was gone before its deadline")
            self.end(key, life, "expired")

    def end(self, key: Key, life: Life, how: str) -> None:
        life.end = how
        if how == "expired" and self.touches_gap(life.lo, life.hi):
            life.maybe = True
        self.note(f"{key.name}: life {self.show([life])[0]}")

    def begin(self, key: Key, lo: float, hi: float, gap: bool) -> None:
        key.lives.append(Life(lo, hi, gap))
        self.note(f"{key.name}: new life {self.show([key.lives[-1]])[0]}")

    def retime(self, key: Key, lo: float, hi: float, gap: bool) -> None:
        """The current life goes on with another deadline (a refresh, or none at all)."""
        life = key.current
        assert life is not None
        if gap:  # a lost refresh may look like an expiry followed by a new life
            life.maybe = True
            self.end(key, life, "removed")
            self.begin(key, lo, hi, gap)
        else:
            life.lo, life.hi = lo, hi

    def arm(self, key: Key, existed: bool, lo: float, hi: float, gap: bool) -> None:
        if existed:
            self.retime(key, lo, hi, gap)
        else:
            self.begin(key, lo, hi, gap)

    def apply(self, key: Key, other: Key, write: Write, existed: bool, t0: float, t1: float,
              gap: bool) -> None:  # fmt: skip
        """Fold a write's effect in, once ``learn`` has judged the life before it."""
        op = write.op
        if op in TTL_OPS and (existed or op != "pexpire"):
            self.arm(key, existed, t0 + write.ttl, t1 + write.ttl, gap)
        elif op == "set_keep" or (op == "persist" and existed):
            self.arm(key, existed, math.inf, math.inf, gap)
        elif existed and op in REMOVALS:
            life = key.current
            assert life is not None
            if op == "rename_onto":
                self.move_life(life, other, gap)
            life.maybe = life.maybe or gap
            self.end(key, life, "removed")

    def move_life(self, life: Life, other: Key, gap: bool) -> None:
        """RENAME onto another watched key: that key's life (if any) is replaced, and it takes
        on the renamed key's deadline."""
        replaced = other.current
        if replaced is not None:
            replaced.maybe = replaced.maybe or gap
            self.end(other, replaced, "removed")
        self.begin(other, life.lo, life.hi, gap)
