"""The Lua scripts, read once from the package's ``lua/`` folder, each with the shared prelude.

``prelude.lua`` holds what several scripts need (the server's time, GRACE, arming a timer,
settling a delivery); it is placed after each script's first line (its ``#!lua`` flags line).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from delayq._keys import OUTCOME_HOLD_MS, SHADOW_GRACE_MS
from delayq._route import LEVELS

NAMES = (
    "schedule",
    "fire",
    "due",
    "cancel",
    "touch",
    "control",
    "heartbeat",
    "retry",
    "bury",
    "handback",
    "repair",
    "redrive",
    "watch",
    "watch_lease",
    "watch_probe",
    "watch_touch",
    "companion",
    "started",
    "outcome",
    "forget",
    "periodic",
    "tick_in_flight",
    "record_run",
    "renew",
    "ensure_group",
    "ack",
    "progress",
    "limits",
    "wake",
    "take",
    "queue_stats",
)


def _read(name: str) -> str:
    return (resources.files("delayq") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@cache
def prelude() -> str:
    return (_read("prelude").replace("@SHADOW_GRACE_MS@", str(SHADOW_GRACE_MS))
            .replace("@OUTCOME_HOLD_MS@", str(OUTCOME_HOLD_MS))
            .replace("@LEVELS@", str(LEVELS)))  # fmt: skip


class Scripts:
    """Each script's full source (prelude included) and SHA1, computed once."""

    @cache  # noqa: B019 - one module-level instance, for the life of the process
    def source(self, name: str) -> str:
        if name not in NAMES:
            raise KeyError(f"no script named {name!r}")
        own = _read(name)
        flags, newline, body = own.partition("\n")
        if not flags.startswith("#!"):
            raise ValueError(f"{name}.lua must start with its #!lua line")
        return f"{flags}{newline}{prelude()}{body}"

    @cache  # noqa: B019
    def sha(self, name: str) -> str:
        return hashlib.sha1(self.source(name).encode(), usedforsecurity=False).hexdigest()


SCRIPTS = Scripts()
