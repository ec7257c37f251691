"""The ``delayq`` command: worker, embedded server, dead letters."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.connection import parse_url
from redis.exceptions import RedisError

from delayq._app import Delayq
from delayq._cluster_server import LocalCluster
from delayq._connection import redact_url, tls_failure
from delayq._defaults import set_default_app
from delayq._errors import ConfigurationError, DelayqError, TimerPaused
from delayq._layout import Layout
from delayq._queues import describe as describe_queue
from delayq._route import parse_queues
from delayq._schedules import load_zone
from delayq._sentinel import is_sentinel_url, parse_target
from delayq._sentinel_server import LocalSentinel
from delayq._server import EmbeddedServer
from delayq._store import try_decode
from delayq._timer import Timer
from delayq.worker import Worker, WorkerSettings

cli = typer.Typer(
    help="delayq: timers and delayed tasks on Redis/Valkey.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # errors are reported in one line by main()
)
dead_cli = typer.Typer(help="Inspect and re-drive dead letters.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead")
periodic_cli = typer.Typer(help="Inspect periodic tasks.", no_args_is_help=True)
cli.add_typer(periodic_cli, name="periodic")
timers_cli = typer.Typer(help="Inspect and change pending timers.", no_args_is_help=True)
cli.add_typer(timers_cli, name="timers")

_APP = typer.Option(
    "--app", "-A", help="module:attribute of your Delayq app, or a module with `app`"
)
AppOption = Annotated[str | None, _APP]
RequiredAppOption = Annotated[str, _APP]
# No envvar= here: DELAYQ_URL / DELAYQ_NAMESPACE are read by Delayq() itself, so that a worker
# and the producers resolve them the same way (an explicit URL in the code wins).
UrlOption = Annotated[
    str | None, typer.Option("--url", help="redis:// or rediss:// URL (overrides the app's)")
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", help="key namespace (overrides the app's)")
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


# The URL of the app the running command resolved, for main()'s error messages.
_resolved_url: str | None = None


def resolve_app(spec: str | None, url: str | None, namespace: str | None) -> Delayq:
    global _resolved_url
    app = load_app(spec) if spec else Delayq(url, namespace=namespace)
    app.override(url=url, namespace=namespace)
    _resolved_url = app.url
    return app


# The worker options' defaults and help are the settings' own: declared once, in WorkerSettings.
_WORKER = WorkerSettings()


def _setting(name: str) -> Any:
    return typer.Option(help=WorkerSettings.help(name))


@cli.command()
def worker(
    app_spec: RequiredAppOption,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    concurrency: Annotated[int, _setting("concurrency")] = _WORKER.concurrency,
    visibility_timeout: Annotated[
        float, _setting("visibility_timeout")
    ] = _WORKER.visibility_timeout,
    shutdown_timeout: Annotated[float, _setting("shutdown_timeout")] = _WORKER.shutdown_timeout,
    max_deliveries: Annotated[int, _setting("max_deliveries")] = _WORKER.max_deliveries,
    watch_lease: Annotated[float, _setting("watch_lease")] = _WORKER.watch_lease,
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help=WorkerSettings.help("queues"))
    ] = None,
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
            watch_lease=watch_lease,
            queues=None if queues is None else parse_queues(queues),
        )
        runner = Worker(app, settings)
        runner.run()
    except DelayqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except RedisError as exc:
        message = (
            tls_failure(exc, app.url) or f"cannot use the server at {redact_url(app.url)}: {exc}"
        )
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
    if runner.abandoned_threads:
        # A blocking handler ignored the shutdown; its job was handed back, so exit now
        # instead of waiting for the thread.
        logging.shutdown()
        os._exit(0)


@cli.command()
def server(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (a cluster's first node)")] = 6379,
    data_dir: Annotated[Path, typer.Option("--dir", help="data directory (AOF)")] = Path(
        ".delayq-data"
    ),
    cluster: Annotated[
        int, typer.Option("--cluster", min=0, help="run a cluster of this many primaries")
    ] = 0,
    replicas: Annotated[
        int | None,
        typer.Option(min=0, help="replicas per primary, with --cluster or --sentinel [default: 1]"),
    ] = None,
    sentinel: Annotated[
        bool,
        typer.Option("--sentinel", help="run a primary, its replicas and 3 sentinels (free ports)"),
    ] = False,
) -> None:
    """Run the bundled Valkey server with notifications and AOF on, until Ctrl-C."""
    if replicas is not None and not (cluster or sentinel):
        raise typer.BadParameter(
            "--replicas needs --cluster or --sentinel", param_hint="--replicas"
        )
    if cluster and sentinel:
        raise typer.BadParameter("choose --cluster or --sentinel", param_hint="--sentinel")
    done = threading.Event()
    # Handlers go in before the server answers, so a Ctrl-C as soon as it is up stops it cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    if cluster:
        _serve_cluster(cluster, 1 if replicas is None else replicas, port, data_dir, done)
        return
    if sentinel:
        _serve_sentinel(1 if replicas is None else replicas, data_dir, done)
        return
    embedded = EmbeddedServer(port=port, data_dir=data_dir)
    try:
        embedded.start()
        typer.echo(f"valkey listening on {embedded.url} (data in {data_dir}); Ctrl-C to stop")
        done.wait()
    finally:
        embedded.stop()


def _serve_cluster(
    primaries: int, replicas: int, port: int, data_dir: Path, done: threading.Event
) -> None:
    # One directory per first port: two clusters on other ports never share node state.
    where = data_dir / f"cluster-{port}"
    local = LocalCluster(primaries, replicas, data_dir=where, base_port=port)
    try:
        local.start()
        for node in local.nodes:
            typer.echo(f"node {node.url} {node.role} (pid {node.pid})")
        typer.echo(f"cluster of {primaries} primaries and {primaries * replicas} replicas ready "
                   f"(data in {where}); connect a cluster client to {local.url} (any node "
                   "works); Ctrl-C to stop")  # fmt: skip
        done.wait()
    finally:
        local.stop()


def _serve_sentinel(replicas: int, data_dir: Path, done: threading.Event) -> None:
    where = data_dir / "sentinel"
    local = LocalSentinel(replicas, 3, data_dir=where)
    try:
        local.start()
        for i, node in enumerate(local.servers):
            typer.echo(f"{'replica' if i else 'primary'} {node.url} (pid {node.pid})")
        for watcher in local.sentinels:
            typer.echo(f"sentinel 127.0.0.1:{watcher.port} (pid {watcher.pid})")
        typer.echo(f"primary, {replicas} replica(s) and 3 sentinels ready (data in {where}); "
                   f"connect to {local.url}; Ctrl-C to stop")  # fmt: skip
        done.wait()
    finally:
        local.stop()


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
        typer.echo(f"{letter.ref}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  "
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
        named = letter.ref in wanted or letter.entry_id in wanted
        if (not wanted or named) and app.retry_dead(letter):
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


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 time (UTC when no offset is given) or a delay from now: 90s, 15m, 2h, 3d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        instant = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO 8601 time nor a delay like 90s, 15m, 2h, 3d"
        ) from None
    return instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC)


def describe(timer: Timer) -> str:
    payload = try_decode(timer.raw_payload)
    task = payload.task if payload else "(undecodable payload)"
    if timer.paused:
        when = f"paused, {timer.paused_left_ms / 1000:.3f}s left"  # type: ignore[operator]
    else:
        when = f"{timer.due_at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"
    return f"{timer.id!r}  {task}  {when}"


@timers_cli.command("list")
def timers_list(
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    task: Annotated[str | None, typer.Option(help="only timers of this task")] = None,
    due_before: Annotated[
        str | None, typer.Option(help="only timers due before this (ISO time, or 15m, 2h...)")
    ] = None,
    limit: Annotated[int, typer.Option(help="look at this many timers at most")] = 100,
) -> None:
    """List pending timers, earliest first (paused ones last)."""
    app = resolve_app(app_spec, url, namespace)
    before = parse_instant(due_before) if due_before else None
    timers = app.timers(limit=limit, task=task, due_before=before)
    for timer in timers:
        typer.echo(describe(timer))
    paused = app._run(app.store.paused_count())
    typer.echo(f"{len(timers)} timer(s) shown; {app.pending_count()} pending and "
               f"{paused} paused in all")  # fmt: skip


def _one_timer(app: Delayq, timer_id: str) -> Timer:
    timer = app.timer(timer_id)
    if timer is None:
        typer.echo(f"no pending timer {timer_id!r}", err=True)
        raise typer.Exit(1)
    return timer


@timers_cli.command("show")
def timers_show(
    timer_id: Annotated[str, typer.Argument(help="the timer id")],
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Show one timer: deadline, time left and payload."""
    app = resolve_app(app_spec, url, namespace)
    timer = _one_timer(app, timer_id)
    typer.echo(describe(timer))
    typer.echo(f"remaining: {timer.remaining()}")
    payload = try_decode(timer.raw_payload)
    if payload is not None:
        typer.echo(f"args: {payload.args!r}")
        typer.echo(f"kwargs: {payload.kwargs!r}")
        typer.echo(
            f"attempt: {payload.attempt}  created: {payload.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )


@timers_cli.command("cancel")
def timers_cancel(
    timer_id: Annotated[str, typer.Argument(help="the timer id")],
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Cancel a pending timer: it will never fire."""
    app = resolve_app(app_spec, url, namespace)
    if not app.cancel(timer_id):
        typer.echo(f"no pending timer {timer_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"cancelled {timer_id!r}")


@timers_cli.command("restart")
def timers_restart(
    timer_id: Annotated[str, typer.Argument(help="the timer id")],
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Arm a pending timer again for its whole duration, from now."""
    app = resolve_app(app_spec, url, namespace)
    timer = _one_timer(app, timer_id)
    try:
        restarted = timer.restart()
    except TimerPaused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if not restarted:
        typer.echo(f"no pending timer {timer_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"restarted {describe(timer)}")


def _when(ms: str | None, zone: str) -> str:
    if not ms:
        return "-"
    instant = dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC)
    shown = instant.astimezone(load_zone(zone)) if zone != "-" else instant
    return f"{shown:%Y-%m-%d %H:%M:%S %Z}"


@periodic_cli.command("list")
def periodic_list(
    app_spec: RequiredAppOption,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Each periodic task with its schedule, zone, next run and last run."""
    app = resolve_app(app_spec, url, namespace)
    for name, task in sorted(app.periodics.items()):
        schedule, zone = task.periodic.schedule.describe()
        state = app._run(app.store.periodic_state(name))
        typer.echo(
            f"{name}  [{schedule}]  zone={zone}  next={_when(state.get('armed'), zone)}  "
            f"last={_when(state.get('last_run_at'), zone)}"
        )
    typer.echo(f"{len(app.periodics)} periodic task(s)")


@cli.command()
def queues(
    app_spec: AppOption = None,
    url: UrlOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Each queue's jobs waiting and in flight, and how long its oldest waiting job has waited."""
    app = resolve_app(app_spec, url, namespace)
    named = sorted({t.options.route.queue for t in app.tasks})
    rows = [describe_queue(info) for info in app.queues(*named)]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in rows[0]}
    typer.echo("  ".join(c.ljust(w) for c, w in widths.items()).rstrip())
    for row in rows:
        typer.echo("  ".join(str(row[c]).ljust(w) for c, w in widths.items()).rstrip())


@cli.command()
def acl(
    app_spec: RequiredAppOption,
    user: Annotated[str, typer.Option(help="the ACL user name")] = "delayq",
    url: UrlOption = None,
    namespace: NamespaceOption = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="the namespace's shard count (default: the app's shards=, else "
            "read from the server)"
        ),
    ] = None,
) -> None:
    """Print the ACL SETUSER command for a user with only what delayq needs (add >password;
    on a cluster, run it on every node)."""
    app = resolve_app(app_spec, url, namespace)
    watch = tuple((w.spec.pattern, w.spec.data) for w in app.watchers.values())
    if is_sentinel_url(app.url):
        db = parse_target(app.url, app.redis_options).db
    else:
        db = int(parse_url(app.url).get("db", 0) or 0)  # type: ignore[no-untyped-call]
    count = shards if shards is not None else app.shards or _shard_count(app)
    rules = Layout.of(app.namespace, count).acl_rules(db, watch)
    typer.echo(" ".join(["ACL", "SETUSER", user, "on", *rules]))


def _shard_count(app: Delayq) -> int:
    """The namespace's count as stored on the server, else what a first call would store."""
    try:
        return app._run(app.store.count())
    except RedisError as exc:
        raise ConfigurationError(
            f"cannot read the shard count of namespace {app.namespace!r} from "
            f"{redact_url(app.url)} ({type(exc).__name__}: {exc}); pass --shards to print the "
            "rules without asking the server"
        ) from None
    finally:
        app.close()


# Commands of their own modules, which use the options above.
from delayq import _cli_events  # noqa: E402, F401


def main() -> None:
    try:
        cli()
    except DelayqError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except RedisError as exc:
        # Connection errors name host and port, never the password.
        tls = tls_failure(exc, _resolved_url) if _resolved_url else None
        typer.echo(f"error: {tls or f'the server failed: {type(exc).__name__}: {exc}'}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
