"""The public façade is a contract: its names are pinned here."""

from __future__ import annotations

import delayq


def test_all_is_pinned() -> None:
    assert sorted(delayq.__all__) == sorted(
        [
            "ConfigurationError",
            "DeadLetter",
            "Debounced",
            "Delayq",
            "DelayqError",
            "EmbeddedServer",
            "InvalidTimerId",
            "JobContext",
            "JobEvent",
            "JobFailed",
            "JobTimeout",
            "NotReplicated",
            "Outcome",
            "Payload",
            "PayloadError",
            "Progress",
            "QueueInfo",
            "ResultUnavailable",
            "RetryPolicy",
            "ScheduleError",
            "ScheduleRequest",
            "ServerOutOfMemory",
            "Task",
            "Timer",
            "TimerCancelled",
            "TimerPaused",
            "Touch",
            "Worker",
            "WorkerSettings",
            "__version__",
            "configure",
            "current_job",
            "default_app",
            "delayed",
            "set_default_app",
            "task",
        ]
    )
    for name in delayq.__all__:
        assert hasattr(delayq, name), name


def test_constructors_do_no_io() -> None:
    # Nothing listens on port 1: any connection attempt would fail.
    app = delayq.Delayq("redis://127.0.0.1:1/0", namespace="noio")

    @app.task
    def job() -> None: ...

    delayq.Worker(app, delayq.WorkerSettings())
    delayq.EmbeddedServer()
    assert job.name.endswith("job")


def test_lua_scripts_are_registered_and_share_the_grace() -> None:
    import re
    from importlib import resources

    from delayq._keys import SHADOW_GRACE_MS
    from delayq._scripts import NAMES

    files = {
        p.name[:-4]: p.read_text() for p in resources.files("delayq").joinpath("lua").iterdir()
    }
    files.pop("prelude")
    assert sorted(files) == sorted(NAMES)
    refused_when_full = set()
    for name, text in files.items():
        # Line 1 declares the script's flags: only scripts that add work are refused whole
        # when the server's memory is full; the rest must run there so that workers drain it.
        shebang, _, text = text.partition("\n")
        assert shebang in ("#!lua", "#!lua flags=allow-oom", "#!lua flags=no-writes",
                           "#!lua flags=allow-oom,allow-cross-slot-keys"), name  # fmt: skip
        if shebang == "#!lua":
            refused_when_full.add(name)
        assert text.startswith(f"-- {name}.lua:"), f"{name}.lua must open with its header"
        assert "KEYS[1]" in text.split("\n\n")[0] or "ARGV" in text, name
        for value in re.findall(r"local GRACE = (\d+)", text):
            assert int(value) == SHADOW_GRACE_MS, name
    assert refused_when_full == {"schedule", "touch", "control", "redrive"}
