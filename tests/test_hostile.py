"""Hostile input: garbage payloads never crash a decoder or a worker; namespaces are sealed."""

from __future__ import annotations

import ast
import contextlib
import re
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from delayq import Delayq, EmbeddedServer, PayloadError
from delayq._codec import decode_payload, decode_touches, encode_payload
from tests.conftest import WorkerThread, wait_until

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_survives_arbitrary_bytes(raw: bytes) -> None:
    for decode in (decode_payload, decode_touches):
        with contextlib.suppress(PayloadError):
            decode(raw)


@settings(max_examples=400, deadline=None)
@given(msgpack_values)
def test_decoder_survives_valid_msgpack_of_any_shape(value: object) -> None:
    raw = msgpack.packb(value, use_bin_type=True)
    try:
        payload = decode_payload(raw)
    except PayloadError:
        return
    assert isinstance(payload.task, str) and isinstance(payload.kwargs, dict)


def test_two_namespaces_never_see_each_other(
    server: EmbeddedServer, start_worker: Callable[..., WorkerThread]
) -> None:
    ran: dict[str, list[str]] = {"left": [], "right": []}
    lock = threading.Lock()
    apps = {side: Delayq(server.url, namespace=f"iso-{side}") for side in ran}
    tasks = {}
    for side, app in apps.items():

        def job(tag: str, side: str = side) -> None:
            with lock:
                ran[side].append(tag)
            if tag == "fail":
                raise RuntimeError(side)

        tasks[side] = app.task(name="same.name", retries=0)(job)
    for side in apps:
        start_worker(apps[side])
    for side, task in tasks.items():
        task.schedule(f"{side}-1", delay=0.1, id="same-id")
        task.schedule("fail", delay=0.1)
    wait_until(lambda: all(len(v) == 2 for v in ran.values()), timeout=15)
    assert sorted(ran["left"]) == ["fail", "left-1"] and sorted(ran["right"]) == ["fail", "right-1"]
    for side, app in apps.items():
        wait_until(lambda app=app: len(app.dead_letters()) == 1)
        assert app.dead_letters()[0].reason.startswith(f"RuntimeError: {side}")
        app.close()


def test_passwords_never_reach_logs_or_reprs(
    server: EmbeddedServer,
    start_worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import redis

    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("secretive", enabled=True, passwords=["+Sw0rdf1sh"], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    url = server.url.replace("redis://", "redis://secretive:Sw0rdf1sh@")
    app = Delayq(url, namespace="secretive")
    done = threading.Event()

    @app.task
    def job() -> None:
        done.set()

    with caplog.at_level(logging.DEBUG, logger="delayq"):
        start_worker(app).stop()
    assert "Sw0rdf1sh" not in caplog.text and "secretive:***@" in caplog.text
    assert "Sw0rdf1sh" not in repr(app)
    app.close()
    admin.acl_deluser("secretive")
    admin.close()


# -- hostile payloads written straight into the server --------------------------------------------

VICTIM = "hostile.victim"


def _pack(*items: object) -> bytes:
    packed: bytes = msgpack.packb(list(items), use_bin_type=True)
    return packed


def _nested(depth: int) -> object:
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


VALID = _pack(1, VICTIM, ["x"], {}, 0, 0)
# (name, raw payload, what the dead letter's reason must say)
HOSTILE_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("not-msgpack", b"\xc1\xc1garbage", "a byte that starts no msgpack value"),
    ("empty", b"", "truncated"),
    ("array-claims-2**32-1", b"\xdd\xff\xff\xff\xff" + b"\xc0" * 8, "longer than the data can"),
    ("map-claims-2**32-1", b"\xdf\xff\xff\xff\xff" + b"\xc0" * 8, "longer than the data can"),
    ("str-claims-2**32-1", b"\x96\x01\xdb\xff\xff\xff\xff" + b"a" * 8, "truncated|longer than"),
    ("array-5M", msgpack.packb([None] * 5_000_000), "over the limit of 524288 bytes"),
    ("array-500k", msgpack.packb([None] * 500_000), "got a list of 500000 items"),
    ("map-60k", msgpack.packb({f"{i:x}": 0 for i in range(60_000)}), "got a map"),
    ("nested-10000", b"\x91" * 10_000 + b"\xc0", "nested too deeply"),
    ("nested-100-in-args", _pack(1, VICTIM, [_nested(100)], {}, 0, 0), "nested deeper than 64"),
    ("ext-99", _pack(1, VICTIM, [msgpack.ExtType(99, b"x")], {}, 0, 0), "extension type 99"),
    ("ext-minus-100", b"\x96\x01\xaehostile.victim\x91\xd4\x9c\x00\x80\x00\x00", "type -100"),
    ("ext-timestamp", b"\x96\x01\xaehostile.victim\x91\xd6\xff\x00\x00\x00\x00\x80\x00\x00",
     "msgpack timestamp"),
    ("ext-bad-date", _pack(1, VICTIM, [msgpack.ExtType(1, b"not a date")], {}, 0, 0),
     "bad extension value of type 1"),
    ("ext-zone-path", _pack(1, VICTIM, [msgpack.ExtType(5, b"2020-01-01T00:00|../../etc/passwd")],
                            {}, 0, 0), "not a time zone name"),
    ("truncated", VALID[:-1], "truncated"),
    ("trailing-garbage", VALID + b"garbage", r"7 byte\(s\) of trailing data"),
    ("map-not-list", msgpack.packb({"task": VICTIM, "args": ["x"]}), "got a map"),
    ("five-items", _pack(1, VICTIM, ["x"], {}, 0), "got a list of 5 items"),
    ("version-3", _pack(3, VICTIM, ["x"], {}, 0, 0), "format version 3"),
    ("version-2-bad-route", _pack(2, VICTIM, ["x"], {}, 0, 0), "payload route"),
    ("version-2-no-route", _pack(2, VICTIM), "format 2 has no queue"),
    ("version-2-bad-level", _pack(2, VICTIM, "q", 10, [], {}, 0, 0), "priority must be"),
    ("args-not-list", _pack(1, VICTIM, "x", {}, 0, 0), "arguments are not a list"),
    ("task-not-str", _pack(1, 42, ["x"], {}, 0, 0), "task name is not a string"),
    ("kwargs-int-keys", msgpack.packb([1, VICTIM, [], {1: 2}, 0, 0]), "map key"),
    ("bad-utf8", b"\x96\x01\xa2\xff\xfe\x90\x80\x00\x00", "not valid UTF-8"),
    ("negative-attempt", _pack(1, VICTIM, ["x"], {}, -1, 0), "attempt"),
    ("created-year-5e8", _pack(1, VICTIM, ["x"], {}, 0, 2**64 - 1), "creation time"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "raw", "reason"), HOSTILE_PAYLOADS, ids=[case[0] for case in HOSTILE_PAYLOADS]
)
def test_hostile_payload_decodes_in_bounded_time_and_memory(
    name: str, raw: bytes, reason: str
) -> None:
    """What a worker does with each payload: refuse it quickly, allocating little."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(PayloadError) as refused:
            decode_payload(raw, max_bytes=512 * 1024)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.search(reason, str(refused.value)), (name, str(refused.value))
    assert elapsed < 1.0, (name, elapsed)
    assert peak < 40 * 2**20, (name, peak)  # the 500k-element list itself is about 4 MB


def test_decoder_limits_are_tied_to_the_payload_limit() -> None:
    # msgpack's Unpacker limits come from max_bytes: a header may not claim more than fits.
    claim = b"\x96\x01\xaehostile.victim\xdc\x40\x00" + b"\xc0" * 10  # args: 16,384 elements
    with pytest.raises(PayloadError, match="max_array_len"):
        decode_payload(claim + b"\x80\x00\x00", max_bytes=10_000)
    with pytest.raises(PayloadError, match="over the limit of 100 bytes"):
        decode_payload(VALID + b"\x00" * 100, max_bytes=100)
    assert decode_payload(VALID, max_bytes=len(VALID)).args == ("x",)


def test_hostile_payloads_are_dead_lettered_and_never_run(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    ran: list[object] = []
    after = threading.Event()

    @app.task(name=VICTIM, retries=0)
    def victim(*args: object, **kwargs: object) -> None:
        ran.append((args, kwargs))

    @app.task(retries=0)
    def later() -> None:
        after.set()

    runner = start_worker(app)
    for name, raw, _reason in HOSTILE_PAYLOADS:
        timer = victim.schedule("placeholder", delay=60, id=f"hostile:{name}")
        rclient.hset(app.keys.data(timer.id), timer.id, raw)
        assert timer.reschedule(delay=0.05)
    wait_until(lambda: len(app.dead_letters()) == len(HOSTILE_PAYLOADS), timeout=30)
    later.schedule(delay=0.1)  # the worker is alive and keeps firing
    assert after.wait(10)
    assert ran == [] and runner.thread.is_alive()
    reasons = {letter.timer_id: letter.reason for letter in app.dead_letters()}
    for name, _raw, reason in HOSTILE_PAYLOADS:
        got = reasons[f"hostile:{name}"]
        assert got.startswith("undecodable payload: ") and re.search(reason, got), (name, got)


def test_odd_entries_in_the_ready_stream_never_stop_a_worker(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    """Entries written into the ready stream by something else: a garbled deadline, no fields
    delayq knows, an unknown task. Each is run or dead-lettered; the entries around them are
    read and run, and the worker keeps firing."""
    ran: list[str] = []

    @app.task(name=VICTIM, retries=0)
    def victim(tag: str) -> None:
        ran.append(tag)

    start_worker(app)
    good = encode_payload(VICTIM, ("good",), {}, attempt=0, created_ms=0, max_bytes=1 << 20)
    odd = encode_payload(VICTIM, ("odd-due",), {}, attempt=0, created_ms=0, max_bytes=1 << 20)
    for fields in (
        {"i": "x1", "p": odd, "d": "soon"},
        {"i": "x2", "p": odd.replace(b"odd-due", b"nan-due"), "d": "nan"},
        {"i": "x3", "p": odd.replace(b"odd-due", b"inf-due"), "d": "1e999"},
        {"zz": "no field delayq knows"},
        {"i": "x4", "p": good},
    ):
        rclient.xadd(app.keys.ready, fields)  # type: ignore[arg-type]
    wait_until(lambda: len(ran) == 4 and len(app.dead_letters()) == 1, timeout=15)
    assert sorted(ran) == ["good", "inf-due", "nan-due", "odd-due"]
    assert app.dead_letters()[0].reason.startswith("undecodable payload")
    victim.schedule("after", delay=0.05)
    wait_until(lambda: "after" in ran, timeout=10)


HOSTILE_TOUCHES: list[tuple[str, list[bytes], str]] = [
    ("truncated", [b"\x93\x91\xa1x"], "truncated"),
    ("array-claims-2**32-1", [b"\xdd\xff\xff\xff\xff\xc0"], "longer than the data can"),
    ("not-a-touch", [b"\x05"], "not a \\[args, kwargs, time\\] list"),
    ("timestamp", [b"\x93\x91\xd6\xff\x00\x00\x00\x00\x80\x00"], "msgpack timestamp"),
    ("nested-10000", [b"\x91" * 10_000 + b"\xc0"], "nested too deeply"),
    ("kwargs-int-keys", [msgpack.packb([[], {1: 2}, 0])], "map key"),
    ("time-not-int", [msgpack.packb([[], {}, "soon"])], "time that is not an integer"),
    ("second-truncated", [msgpack.packb([["a"], {}, 1]), b"\x93\x91"], "truncated"),
]


def test_hostile_touches_are_dead_lettered_and_never_run(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    from delayq import Touch

    ran: list[list[Touch]] = []

    @app.debounced(seconds=60, key="{0}", payload="all", retries=0)
    def digest(touches: list[Touch]) -> None:
        ran.append(touches)

    start_worker(app)
    for name, items, _reason in HOSTILE_TOUCHES:
        timer = digest.touch(f"touch:{name}")
        rclient.delete(app.keys.items(timer.id))
        rclient.rpush(app.keys.items(timer.id), *items)
        assert timer.reschedule(delay=0.05)
    wait_until(lambda: len(app.dead_letters()) == len(HOSTILE_TOUCHES), timeout=15)
    digest.touch("fine")
    assert app.reschedule("fine", delay=0.05)
    wait_until(lambda: len(ran) == 1)
    assert [t.args for t in ran[0]] == [("fine",)]
    reasons = {letter.timer_id: letter.reason for letter in app.dead_letters()}
    for name, _items, reason in HOSTILE_TOUCHES:
        got = reasons[f"touch:{name}"]
        assert got.startswith("undecodable touches: ") and re.search(reason, got), (name, got)


# -- hostile names, ids and keys ------------------------------------------------------------------

# Strings that could break key names (the hash tag `dq:{ns}:`), SCAN patterns, lines of output or
# the server's memory. Each either works end to end or is refused with a clear error.
HOSTILE_STRINGS = {
    "space": "with space",
    "newlines": "line\nbreak\r\n",
    "open-brace": "{",
    "close-brace": "}",
    "braces": "a}b{c}",
    "hash-tag": "{other-namespace}",
    "star": "*",
    "question": "?",
    "brackets": "[a-z]",
    "backslash": "\\*",
    "unicode": "日本語 🎉 é",
    "nul": "nul\x00byte",
    "10kb": "x" * 10_240,
    "empty": "",
    "surrogate": "\ud800",
}
# Which of them are refused, and what the error says (as timer ids, and as task names).
_REFUSED = {"empty": "must not be empty", "surrogate": "not valid unicode"}
ID_REFUSED = {**_REFUSED, "10kb": "10240 bytes in UTF-8, longer than the limit of 1024 bytes"}
NAME_REFUSED = {**_REFUSED, "10kb": "10240 bytes in UTF-8, longer than the limit of 512 bytes"}


def test_hostile_timer_ids_work_or_are_refused_and_never_touch_a_neighbour(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    from typer.testing import CliRunner

    from delayq import InvalidTimerId
    from delayq.cli import cli

    ran: list[str] = []
    lock = threading.Lock()

    @app.task(retries=0)
    def note(tag: str) -> None:
        with lock:
            ran.append(tag)

    neighbour = note.schedule("neighbour", delay=1.5, id="neighbour")
    accepted = []
    for label, text in HOSTILE_STRINGS.items():
        try:
            timer = note.schedule(text, delay=60, id=text)
        except InvalidTimerId as exc:
            assert label in ID_REFUSED and ID_REFUSED[label] in str(exc), (label, exc)
            continue
        assert label not in ID_REFUSED, label
        accepted.append(text)
        assert timer.created and timer.id == text
    with pytest.raises(InvalidTimerId, match="reserved"):
        note.schedule("x", id="~tilde")
    assert app.pending_count() == len(accepted) + 1
    # `}` or `{other}` in an id never moves a key out of the namespace's slot: the hash tag is
    # the first `{...}` of the name, `{namespace}`, which comes before the id.
    slot = key_slot(app.keys.index.encode())
    k = app.keys
    for text in accepted:
        names = (k.shadow(text), k.data(text), k.items(text), k.watch_barrier(text))
        assert {key_slot(name.encode()) for name in names} == {slot}, text
    for text in accepted:  # each id finds its own timer, and no other
        found = app.timer(text)
        assert found is not None and found.payload.args == (text,)
        again = note.schedule("other", delay=1, id=text)  # idempotent: the same timer
        assert not again.created and again.payload.args == (text,)
    args = ["--url", app.url, "--namespace", app.namespace]
    for text in ("*", "{", "[a-z]", "with space", "日本語 🎉 é"):
        shown = CliRunner().invoke(cli, ["timers", "show", *args, "--", text])
        assert shown.exit_code == 0 and f"args: ({text!r},)" in shown.output, shown.output
    # Cancelling a glob-like id cancels that id only.
    assert app.cancel("*") and app.cancel("[a-z]") and app.timer("*") is None
    assert all(app.timer(text) is not None for text in accepted if text not in ("*", "[a-z]"))
    note.schedule("*", delay=60, id="*")
    note.schedule("[a-z]", delay=60, id="[a-z]")
    # Due soon, then lose their index entries: the sweeper's scan of data keys must find each
    # hostile id from its key name and re-index it (the shadow key keeps its deadline).
    for text in accepted:
        assert app.reschedule(text, delay=0.5)
    rclient.zrem(app.keys.index, *accepted)
    start_worker(app)
    wait_until(lambda: len(ran) == len(accepted) + 1, timeout=20)
    time.sleep(0.5)  # nothing fires twice
    assert sorted(ran) == sorted([*accepted, "neighbour"])
    assert neighbour.payload.args == ("neighbour",) and app.dead_letters() == []
    assert app.pending_count() == 0 and all(app.timer(text) is None for text in accepted)
    assert app.stats().get("repaired_data") == len(accepted)


def test_hostile_task_names_work_or_are_refused(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    from delayq import ConfigurationError

    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def recorder(name: str) -> Callable[[str], None]:
        def run(tag: str) -> None:
            with lock:
                ran.append((name, tag))

        return run

    neighbour = app.task(name="neighbour", retries=0)(recorder("neighbour"))
    neighbour.schedule("n", delay=0.3)
    tasks = []
    for label, text in HOSTILE_STRINGS.items():
        try:
            tasks.append(app.task(name=text, retries=0)(recorder(text)))
        except ConfigurationError as exc:
            assert label in NAME_REFUSED and NAME_REFUSED[label] in str(exc), (label, exc)
            continue
        assert label not in NAME_REFUSED, label
    with pytest.raises(ConfigurationError, match="must be a str, not int"):
        app.task(name=42)(recorder("42"))  # type: ignore[call-overload]
    # A debounced task without key= uses its name as its timer id.
    with pytest.raises(ConfigurationError, match=r"its name is its timer id.*reserved"):
        app.debounced(seconds=1, name="~internal-looking")(recorder("~"))
    odd = app.debounced(seconds=0.2, name="{odd} * name\n", retries=0)(recorder("debounced"))
    for task in tasks:
        task.schedule(task.name, delay=0.2)
    odd.touch("touched")
    start_worker(app)
    wait_until(lambda: len(ran) == len(tasks) + 2, timeout=15)
    time.sleep(0.3)
    expected = [(t.name, t.name) for t in tasks] + [("neighbour", "n"), ("debounced", "touched")]
    assert sorted(ran) == sorted(expected) and app.dead_letters() == []


def test_hostile_debounce_keys_work_or_are_refused(
    app: Delayq, start_worker: Callable[..., WorkerThread]
) -> None:
    from delayq import InvalidTimerId

    ran: list[str] = []
    lock = threading.Lock()

    @app.debounced(seconds=0.3, key=lambda value: value, retries=0)
    def raw_key(value: str) -> None:
        with lock:
            ran.append(value)

    @app.debounced(seconds=0.3, key="k:{value}", retries=0)
    def formatted(value: str) -> None:
        with lock:
            ran.append("formatted:" + value)

    @app.task(retries=0)
    def plain(tag: str) -> None:
        with lock:
            ran.append(tag)

    plain.schedule("neighbour", delay=0.5, id="neighbour")
    start_worker(app)
    expected = ["neighbour"]
    for label, text in HOSTILE_STRINGS.items():
        for _ in range(2):  # the second touch joins the first one's cycle
            try:
                raw_key.touch(text)
            except InvalidTimerId as exc:
                assert ID_REFUSED[label] in str(exc), (label, exc)
        if label not in ID_REFUSED:
            expected.append(text)
        if label == "10kb":
            with pytest.raises(InvalidTimerId, match="longer than the limit of 1024"):
                formatted.touch(text)
        elif label != "surrogate":
            formatted.touch(text)
            expected.append("formatted:" + text)
    with pytest.raises(InvalidTimerId, match="reserved"):
        raw_key.touch("~looks-internal")
    wait_until(lambda: len(ran) == len(expected), timeout=15)
    time.sleep(0.5)  # and only once each
    assert sorted(ran) == sorted(expected) and app.dead_letters() == []


def test_hostile_watch_patterns_work_or_are_refused(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    from delayq import ConfigurationError

    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def handler(key: str, suffix: str, data: bytes | None) -> None:
        with lock:
            seen.append((key, suffix))

    ns = app.namespace
    globs = ("star", "question", "brackets", "backslash", "surrogate")
    heads = {
        label: f"{ns}:{text}:" for label, text in HOSTILE_STRINGS.items() if label not in globs
    }
    for i, head in enumerate(heads.values()):
        app.on_expire(head + "*", name=f"watch-{i}", retries=0)(handler)
    for pattern in (f"{ns}:?*", f"{ns}:[a]*", f"{ns}:\\*", f"{ns}:**"):
        with pytest.raises(ConfigurationError, match="exactly one"):
            app.on_expire(pattern)(handler)
    with pytest.raises(ConfigurationError, match="not valid unicode"):
        app.on_expire(f"{ns}:\ud800*")(handler)
    with pytest.raises(ConfigurationError, match="not valid unicode"):
        app.on_expire(f"{ns}:*", data="\ud800{suffix}")(handler)
    # Patterns that can match delayq's own keys would watch its shadow keys and fired markers.
    for pattern in ("*", "d*", "dq:*", "dq:{*", f"dq:{{{ns}}}:s:*", "dq:{other}:*"):
        with pytest.raises(ConfigurationError, match="delayq's own keys"):
            app.on_expire(pattern)(handler)
    app.on_expire("dq-not-delayq:*", name="fine", retries=0)(handler)

    @app.task(retries=0)
    def plain(tag: str) -> None:
        with lock:
            seen.append(("plain", tag))

    plain.schedule("neighbour", delay=0.3)
    start_worker(app)
    for head in heads.values():
        rclient.set(head + "1", "v", px=300)
    wait_until(lambda: len(seen) == len(heads) + 1, timeout=15)
    time.sleep(0.3)
    assert sorted(seen) == sorted(
        [(h + "1", "1") for h in heads.values()] + [("plain", "neighbour")]
    )
    assert app.dead_letters() == []


# -- no code from the server: no pickle, no eval, no import by name --------------------------------


def test_unregistered_task_names_are_dead_lettered_and_import_nothing(
    app: Delayq, start_worker: Callable[..., WorkerThread], rclient: redis.Redis
) -> None:
    import sys

    from delayq._codec import encode_payload

    names = ["os.system", "subprocess.run", "builtins.eval", "__import__", "antigravity",
             "this.s", "tests.worker_app.app", "tests.hostile_no_such_module.fn",
             "delayq.cli.load_app"]  # fmt: skip
    modules = ["antigravity", "this", "tests.worker_app", "tests.hostile_no_such_module"]
    imported_before = {m for m in modules if m in sys.modules}

    @app.task
    def fine(x: str) -> None: ...

    start_worker(app)
    for i, name in enumerate(names):
        payload = encode_payload(name, ("echo pwned",), {}, attempt=0, created_ms=0,
                                 max_bytes=1 << 20)  # fmt: skip
        timer = fine.schedule("placeholder", delay=60, id=f"named:{i}")
        rclient.hset(app.keys.data(timer.id), timer.id, payload)
        assert timer.reschedule(delay=0.05)
    wait_until(lambda: len(app.dead_letters()) == len(names))
    reasons = {letter.timer_id: (letter.task, letter.reason) for letter in app.dead_letters()}
    for i, name in enumerate(names):
        assert reasons[f"named:{i}"] == (name, f"unknown task {name!r}")
    assert {m for m in modules if m in sys.modules} == imported_before


BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "jsonpickle"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
LUA_CODE_LOADERS = re.compile(r"\b(loadstring|load|loadfile|dofile|require)\s*\(")


def _banned(module: str) -> bool:
    if module.startswith("importlib."):
        return module != "importlib.resources"  # import_module is looked for as a call
    return module.split(".")[0] in BANNED_MODULES


def _python_findings(tree: ast.Module, where: str) -> tuple[list[str], list[str]]:
    """(banned imports and calls, the functions that import a module by name) of one file."""
    found: list[str] = []
    by_name: list[str] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(f"{node.module}.{n}" for n in names)]
            found += [f"{where}:{node.lineno} imports {name}" for name in names if _banned(name)]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in BANNED_CALLS:
                found.append(f"{where}:{node.lineno} calls {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr in ("import_module", "__import__"):
                owner = [f.name for f in functions
                         if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]  # fmt: skip
                by_name.append(f"{where}:{'.'.join(owner)}")
    return found, by_name


def test_sources_hold_no_pickle_eval_or_dynamic_import() -> None:
    root = Path(__file__).resolve().parent.parent / "delayq"
    found: list[str] = []
    import_module_uses: list[str] = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent).as_posix()
        banned, by_name = _python_findings(ast.parse(path.read_text(), str(path)), where)
        found += banned
        import_module_uses += by_name
    lua = sorted((root / "lua").glob("*.lua"))
    assert len(lua) >= 10
    for path in lua:
        where = path.relative_to(root.parent).as_posix()
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if LUA_CODE_LOADERS.search(line.split("--", 1)[0]):  # code, not comments
                found.append(f"{where}:{lineno}: {line.strip()}")
    assert found == []
    # The only import by name: `delayq worker -A module:app`, the app the operator names.
    assert import_module_uses == ["delayq/cli.py:load_app"]
