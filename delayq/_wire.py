"""Calls as the bytes the server reads (RESP), built without I/O.

A batch is packed by hiredis's C packer in one pass: redis-py's own packer encodes every
argument in Python, which costs more than the server takes to run a ``schedule`` script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hiredis import pack_command

from delayq._calls import Call
from delayq._scripts import SCRIPTS


def wire(call: Call[Any]) -> tuple[Any, ...]:
    """The command's words: EVALSHA, the script's SHA1 and key count for a script."""
    if call.script is None:
        return call.args
    return ("EVALSHA", SCRIPTS.sha(call.script), call.numkeys, *call.args)


def packed(calls: Sequence[Call[Any]]) -> list[bytes]:
    """``calls`` as one write (a one-item list: what a connection's send_packed_command takes)."""
    return [b"".join([pack_command(wire(call)) for call in calls])]
