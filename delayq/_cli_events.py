"""``delayq events``: print a namespace's lifecycle events, and follow them live."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from delayq._events import JobEvent

# delayq.cli imports this module at its end, once these are defined.
from delayq.cli import AppOption, NamespaceOption, UrlOption, cli, resolve_app


def describe_event(event: JobEvent) -> str:
    """One line: when, what, which job, the kind's own details, and the position to resume."""
    when = f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:-3]
    details = []
    if event.due_at is not None and event.kind in ("scheduled", "rescheduled", "retried",
                                                   "throttled"):  # fmt: skip
        details.append(f"due {event.due_at:%H:%M:%S.%f}"[:-3])
    if event.worker:
        details.append(f"on {event.worker}")
    if event.fraction is not None:
        details.append(f"{event.fraction:.0%}" + (f" {event.message}" if event.message else ""))
    elif event.message:  # throttled: the limit it waits for
        details.append(event.message)
    if event.error_type or event.error:
        details.append(f"{event.error_type or 'error'}: {event.error or ''}".rstrip(": "))
    extra = f"  {'; '.join(details)}" if details else ""
    return (f"{when}  {event.kind:<11}  {event.task}  {event.timer_id!r}  attempt "
            f"{event.attempt}{extra}  @{event.position}")  # fmt: skip


_SINCE = (
    "an event's position (printed after its @) to go on after it, or '$' for new "
    "events only; by default every event still kept"
)


_SINCE = (
    "an event's position (printed after its @) to go on after it, or '$' for new "
    "events only; by default every event still kept"
)


@cli.command()
def events(
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    follow: Annotated[bool, typer.Option(help="keep printing new events as they come")] = False,
    task: Annotated[
        list[str] | None, typer.Option(help="only this task's events (may be repeated)")
    ] = None,
    since: Annotated[str | None, typer.Option(help=_SINCE)] = None,
) -> None:
    """Print lifecycle events (scheduled, fired, started, succeeded...), oldest first. Jobs
    tell them when their app or task has events=True."""
    app = resolve_app(app_spec, url, namespace)
    try:
        for event in app.events(since=since, follow=follow, tasks=task or None):
            typer.echo(describe_event(event))
            if follow:  # each line as it comes, also into a pipe
                sys.stdout.flush()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
