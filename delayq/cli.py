"""The ``delayq`` command: worker, embedded server, dead letters."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from redis.exceptions import RedisError

from delayq._app import Delayq, redact_url
from delayq._defaults import set_default_app
from delayq._errors import DelayqError
from delayq._server import EmbeddedServer
from delayq.worker import Worker, WorkerSettings

cli = typer.Typer(help="delayq: timers and delayed tasks on Redis/Valkey.", no_args_is_help=True)
dead_cli = typer.Typer(help="Inspect and re-drive dead letters.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead")

AppOption = Annotated[
    str | None,
    typer.Option("--app", "-A", help="module:attribute of your Delayq app, or a module with `app`"),
]
UrlOption = Annotated[
    str | None, typer.Option("--url", envvar="DELAYQ_URL", help="redis:// or rediss:// URL")
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", envvar="DELAYQ_NAMESPACE", help="key namespace")
]


def load_app(spec: str) -> Delayq:
    """Import ``module:attr`` (or ``module``, taking its ``app``, else its only Delayq)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    if attr:
        app = getattr(module, attr, None)
    else:
        app = getattr(module, "app", None)
        if not isinstance(app, Delayq):
            found = [v for v in vars(module).values() if isinstance(v, Delayq)]
            app = found[0] if len(found) == 1 else None
    if not isinstance(app, Delayq):
        where = f"{module_name}:{attr}" if attr else f"{module_name} (as `app`)"
        raise typer.BadParameter(f"no Delayq app found at {where}")
    return app


def resolve_app(spec: str | None, url: str | None, namespace: str | None) -> Delayq:
    app = load_app(spec) if spec else Delayq(url, namespace=namespace)
    app.override(url=url, namespace=namespace)
    return app


@cli.command()
def worker(
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    concurrency: Annotated[int, typer.Option(help="jobs run at once")] = 10,
    visibility_timeout: Annotated[
        float, typer.Option(help="seconds before a silent worker's jobs run elsewhere")
    ] = 60.0,
    shutdown_timeout: Annotated[
        float, typer.Option(help="seconds to let jobs finish on SIGTERM")
    ] = 30.0,
    max_deliveries: Annotated[
        int, typer.Option(help="dead-letter a job whose worker died this many times")
    ] = 5,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Fire timers on time and run their jobs, until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = resolve_app(app_spec, url, namespace)
    set_default_app(app)
    try:
        settings = WorkerSettings(
            concurrency=concurrency,
            visibility_timeout=visibility_timeout,
            shutdown_timeout=shutdown_timeout,
            max_deliveries=max_deliveries,
        )
        runner = Worker(app, settings)
        runner.run()
    except DelayqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except RedisError as exc:
        typer.echo(f"error: cannot use the server at {redact_url(app.url)}: {exc}", err=True)
        raise typer.Exit(2) from None
    if runner.abandoned_threads:
        # A blocking handler ignored the shutdown; its job was handed back, so exit now
        # instead of waiting for the thread.
        logging.shutdown()
        os._exit(0)


@cli.command()
def server(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 6379,
    data_dir: Annotated[Path, typer.Option("--dir", help="data directory (AOF)")] = Path(
        ".delayq-data"
    ),
) -> None:
    """Run the bundled Valkey server with notifications and AOF on, until Ctrl-C."""
    embedded = EmbeddedServer(port=port, data_dir=data_dir)
    embedded.start()
    typer.echo(f"valkey listening on {embedded.url} (data in {data_dir}); Ctrl-C to stop")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        done.wait()
    finally:
        embedded.stop()


@dead_cli.command("list")
def dead_list(
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    count: Annotated[int, typer.Option(help="at most this many")] = 100,
    traceback: Annotated[bool, typer.Option(help="print tracebacks")] = False,
) -> None:
    """List dead letters, oldest first."""
    app = resolve_app(app_spec, url, namespace)
    letters = app.dead_letters(count)
    for letter in letters:
        typer.echo(f"{letter.entry_id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  "
                   f"{letter.task or '?'}  id={letter.timer_id}  {letter.reason}")  # fmt: skip
        if traceback and letter.traceback:
            typer.echo(letter.traceback)
    typer.echo(f"{len(letters)} dead letter(s) in namespace {app.namespace!r}")


@dead_cli.command("retry")
def dead_retry(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="entry ids; none: all")] = None,
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Arm dead letters again, due now, with their attempts reset."""
    app = resolve_app(app_spec, url, namespace)
    letters = app.dead_letters(1_000_000)
    wanted = set(entry_ids or [])
    retried = 0
    for letter in letters:
        if (not wanted or letter.entry_id in wanted) and app.retry_dead(letter):
            retried += 1
    typer.echo(f"re-armed {retried} dead letter(s)")


@dead_cli.command("purge")
def dead_purge(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="entry ids; none: all")] = None,
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Delete dead letters for good."""
    app = resolve_app(app_spec, url, namespace)
    removed = app.purge_dead(entry_ids or None)
    typer.echo(f"purged {removed} dead letter(s) from {redact_url(app.url)}")


def main() -> None:
    cli()
