"""The app whose ACL rule tests/test_acl.py prints with `delayq acl`."""

from __future__ import annotations

from delayq import Delayq

app = Delayq("redis://127.0.0.1:1/0", namespace="acl")


@app.on_expire("acl-seen:*", data="acl-data:{suffix}")
def silent(key: str, suffix: str, data: bytes | None) -> None: ...
