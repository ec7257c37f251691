"""The delayq command line, run as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from delayq import Delayq, EmbeddedServer
from delayq._server import free_port
from delayq.cli import cli, load_app
from tests.conftest import ROOT, WorkerProcess, WorkerThread, wait_until

runner = CliRunner()


def test_load_app_forms() -> None:
    from tests import worker_app

    assert load_app("tests.worker_app:app") is worker_app.app
    assert load_app("tests.worker_app") is worker_app.app
    with pytest.raises(Exception, match="no Delayq app found"):
        load_app("tests.worker_app:nothing")
    with pytest.raises(Exception, match="cannot import"):
        load_app("tests.no_such_module")


def test_worker_runs_jobs_and_exits_0_on_sigterm(
    server: EmbeddedServer,
    namespace: str,
    rclient: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    from tests.worker_app import record

    app = Delayq(server.url, namespace=namespace)
    record._app_ref = lambda: app
    proc = worker_process(server.url, namespace, "--concurrency", "4", "--log-level", "DEBUG")
    record.schedule("cli", delay=0.2)
    wait_until(lambda: rclient.llen(f"test:{namespace}:ran") == 1, timeout=20)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    out = proc.output()
    assert "ready" in out and "stopped" in out
    app.close()


def test_worker_reports_bad_url_password_hidden(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "from delayq.cli import main; main()", "worker",
         "-A", "tests.worker_app:app", "--url", f"redis://u:hunter2@127.0.0.1:{port}/0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "hunter2" not in result.stdout + result.stderr
    assert f"cannot use the server at redis://u:***@127.0.0.1:{port}/0" in result.stderr


def test_worker_reports_wrong_password(server: EmbeddedServer) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("cliuser", enabled=True, passwords=["+right"], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    url = server.url.replace("redis://", "redis://cliuser:wrong@")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "from delayq.cli import main; main()", "worker",
         "-A", "tests.worker_app:app", "--url", url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    admin.acl_deluser("cliuser")
    admin.close()
    assert result.returncode == 2
    assert "wrong" not in result.stdout + result.stderr.replace("cliuser:***", "")
    assert "invalid username-password pair" in result.stderr.lower()


def test_dead_letter_commands(
    app: Delayq, start_worker: Callable[..., WorkerThread], server: EmbeddedServer
) -> None:
    ran: list[int] = []

    @app.task(retries=0)
    def broken(x: int) -> None:
        if x < 10:
            raise RuntimeError(f"broken {x}")
        ran.append(x)

    start_worker(app)
    for x in (1, 2, 3):
        broken.delay(x)
    wait_until(lambda: len(app.dead_letters()) == 3)
    args = ["--url", server.url, "--namespace", app.namespace]
    listed = runner.invoke(cli, ["dead", "list", *args, "--traceback"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("RuntimeError: broken") >= 3 and "3 dead letter(s)" in listed.output
    first = app.dead_letters()[0].entry_id
    purged = runner.invoke(cli, ["dead", "purge", first, *args])
    assert purged.exit_code == 0 and "purged 1" in purged.output
    retried = runner.invoke(cli, ["dead", "retry", *args])
    assert retried.exit_code == 0 and "re-armed 2" in retried.output
    wait_until(lambda: len(app.dead_letters()) == 2)  # they fail again, as they should
    emptied = runner.invoke(cli, ["dead", "purge", *args])
    assert "purged 2" in emptied.output


def test_server_command_runs_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from delayq.cli import main; main()", "server",
         "--port", str(port), "--dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        flags = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert "E" in flags and "x" in flags
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()
        proc.wait()


def test_timers_commands(app: Delayq, server: EmbeddedServer) -> None:
    @app.task
    def remind(who: str) -> None: ...

    @app.task
    def other() -> None: ...

    remind.schedule("ann", delay=60, id="r:ann")
    remind.schedule("bob", delay=3600, id="r:bob")
    other.schedule(delay=120, id="o:1")
    paused = remind.schedule("cat", delay=600, id="r:cat")
    paused.pause()
    args = ["--url", server.url, "--namespace", app.namespace]

    listed = runner.invoke(cli, ["timers", "list", *args])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["'r:ann'", "'o:1'", "'r:bob'", "'r:cat'"]
    assert "paused" in lines[3] and "4 timer(s) shown" in listed.output

    only = runner.invoke(
        cli, ["timers", "list", *args, "--task", remind.name, "--due-before", "30m"]
    )
    assert only.exit_code == 0 and only.output.count("remind") == 1 and "'r:ann'" in only.output
    bad = runner.invoke(cli, ["timers", "list", *args, "--due-before", "soon"])
    assert bad.exit_code != 0 and "neither an ISO 8601 time" in bad.output

    shown = runner.invoke(cli, ["timers", "show", "r:ann", *args])
    assert shown.exit_code == 0 and "args: ('ann',)" in shown.output

    before = app.timer("r:ann")
    assert before is not None
    restarted = runner.invoke(cli, ["timers", "restart", "r:ann", *args])
    assert restarted.exit_code == 0, restarted.output
    after = app.timer("r:ann")
    assert after is not None and after.due_ms >= before.due_ms
    assert runner.invoke(cli, ["timers", "restart", "r:cat", *args]).exit_code == 1  # paused

    cancelled = runner.invoke(cli, ["timers", "cancel", "r:bob", *args])
    assert cancelled.exit_code == 0 and app.timer("r:bob") is None
    missing = runner.invoke(cli, ["timers", "cancel", "r:bob", *args])
    assert missing.exit_code == 1 and "no pending timer" in missing.output


def test_worker_needs_an_app() -> None:
    result = runner.invoke(cli, ["worker", "--url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2 and "--app" in result.output


def test_worker_options_are_the_settings_own() -> None:
    """Each worker option's default and help come from WorkerSettings, declared once there."""
    import dataclasses

    import typer.main

    from delayq.worker import WorkerSettings

    command = typer.main.get_command(cli)
    worker = command.commands["worker"]  # type: ignore[attr-defined]
    defaults = WorkerSettings()
    fields = {field.name for field in dataclasses.fields(WorkerSettings)}
    shared = [param for param in worker.params if param.name in fields]
    assert {param.name for param in shared} >= {
        "concurrency",
        "visibility_timeout",
        "shutdown_timeout",
        "max_deliveries",
        "watch_lease",
    }
    for param in shared:
        assert param.default == getattr(defaults, param.name), param.name
        assert param.help == WorkerSettings.help(param.name), param.name
    for name in fields:
        assert WorkerSettings.help(name).strip(), f"{name} has no meaning declared"
