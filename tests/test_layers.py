"""The layering the code promises: one place does I/O, one place builds keys and ids, and the
Lua scripts share code through one prelude instead of copies."""

from __future__ import annotations

import ast
import inspect
import re
from importlib import resources
from pathlib import Path

import delayq
from delayq import Delayq, Task, Timer
from delayq._debounce import Debounced
from delayq._scripts import NAMES, SCRIPTS, prelude

PACKAGE = Path(delayq.__file__).parent
# The runners: a single server's, and a cluster's (one single-server runner per node).
RUNNERS = {"_runners.py", "_cluster.py", "_sentinel_runners.py"}
# It hands redis clients to users' job handlers (their own commands, not delayq's): it may build
# clients, and sends its own commands through a runner like everyone else.
CLIENT_FOR_USERS = "testing.py"
# Modules of redis-py that hold clients, pipelines and pub/sub; the others (exceptions, URL
# parsing) hold no connection.
CLIENT_MODULES = {"redis", "redis.asyncio", "redis.client", "redis.asyncio.client",
                  "redis.cluster", "redis.asyncio.cluster", "redis.commands"}  # fmt: skip
CLIENT_ATTRIBUTES = {"execute_command", "pipeline", "pubsub", "register_script", "client",
                     "connection_pool"}  # fmt: skip


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in RUNNERS)


def _client_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            if name in CLIENT_MODULES and path.name != CLIENT_FOR_USERS:
                found.append(f"line {node.lineno}: imports {name}")
        if isinstance(node, ast.Attribute) and node.attr in CLIENT_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_only_the_runners_talk_to_the_server() -> None:
    offenders = {str(p.relative_to(PACKAGE)): uses for p in _modules() if (uses := _client_uses(p))}
    assert offenders == {}


def test_the_layer_check_sees_a_client_call(tmp_path: Path) -> None:
    """The check above finds what it is meant to find."""
    sample = tmp_path / "sample.py"
    sample.write_text("import redis.asyncio as r\n\nasync def f(x):\n    await x.client.zadd()\n")
    assert _client_uses(sample) == ["line 1: imports redis.asyncio", "line 4: .client"]


def _code_lines(text: str) -> list[str]:
    """The script's code, comments and blank lines dropped, whitespace normalized."""
    lines = []
    for raw in text.splitlines():
        line = " ".join(raw.split("--", 1)[0].split())
        if line and line not in ("end", "else", "return", "end)", "}"):
            lines.append(line)
    return lines


def _own(name: str) -> str:
    return (resources.files("delayq") / "lua" / f"{name}.lua").read_text()


def test_scripts_do_not_repeat_the_prelude() -> None:
    shared = set(_code_lines(prelude()))
    for name in NAMES:
        repeated = shared.intersection(_code_lines(_own(name)))
        assert not repeated, f"{name}.lua repeats the prelude: {sorted(repeated)}"
        source = SCRIPTS.source(name)
        assert source.startswith("#!lua") and prelude() in source


def test_scripts_do_not_repeat_each_other() -> None:
    """No run of three code lines appears in two scripts: shared code goes in the prelude."""
    seen: dict[tuple[str, ...], str] = {}
    for name in NAMES:
        lines = _code_lines(_own(name).partition("\n")[2])
        for i in range(len(lines) - 2):
            run = tuple(lines[i : i + 3])
            other = seen.setdefault(run, name)
            assert other == name, f"{name}.lua and {other}.lua share {run}"


def test_the_grace_is_declared_once() -> None:
    from delayq._keys import SHADOW_GRACE_MS

    assert re.search(rf"^local GRACE = {SHADOW_GRACE_MS}$", prelude(), re.M)
    assert all("local GRACE" not in _own(name) for name in NAMES)


def test_every_producer_call_has_an_awaitable_twin() -> None:
    """Same name with an ``a`` prefix, same parameters."""
    pairs = {
        Delayq: ["arm", "schedule_many", "touch", "touch_many", "timer", "cancel", "reschedule",
                 "timers", "pending_count", "stats", "dead_letters", "retry_dead", "purge_dead",
                 "connect", "close", "server_time_ms"],
        Task: ["schedule", "delay"],
        Debounced: ["touch"],
        Timer: ["reschedule", "restart", "extend", "pause", "resume", "cancel", "remaining"],
    }  # fmt: skip
    for cls, names in pairs.items():
        for name in names:
            sync, twin = getattr(cls, name), getattr(cls, "a" + name)
            assert inspect.iscoroutinefunction(twin), f"{cls.__name__}.a{name}"
            assert not inspect.iscoroutinefunction(sync), f"{cls.__name__}.{name}"
            assert inspect.signature(sync).parameters.keys() == \
                inspect.signature(twin).parameters.keys(), f"{cls.__name__}.a{name}"  # fmt: skip
