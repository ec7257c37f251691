"""The Lua scripts, read once from the package's ``lua/`` folder and registered per client."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
import redis.asyncio as aredis
from redis.commands.core import AsyncScript, Script

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
    "forget",
    "periodic",
    "tick_in_flight",
    "record_run",
    "renew",
    "ensure_group",
)


@cache
def source(name: str) -> str:
    return (resources.files("delayq") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Script objects bound to one synchronous client; each loads itself on first NOSCRIPT."""

    def __init__(self, client: redis.Redis) -> None:
        self._by_name = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> Script:
        return self._by_name[name]


class AsyncScripts:
    """The same scripts bound to one asyncio client."""

    def __init__(self, client: aredis.Redis) -> None:
        self._by_name = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> AsyncScript:
        return self._by_name[name]
