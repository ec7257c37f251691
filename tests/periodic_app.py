"""An app with a periodic task, for the `delayq periodic list` command."""

from __future__ import annotations

from delayq import Delayq

app = Delayq("redis://127.0.0.1:1/0", namespace="unset")


@app.periodic("0 9 * * MON-FRI", tz="Europe/Paris")
def weekday_report() -> None: ...
