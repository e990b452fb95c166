"""`broadcaster announce` and `correct` validate like the admin API: the same request model, the same messages,
exit status 2 and nothing published for a usage error, and before any broker connection.

Real processes throughout; the property test feeds the same field values through the command line (argv) and
the admin API (JSON) of one running broadcaster and wants the same decision and the same message text."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import Rig, running
from support import MessageRecorder, free_port
from test_admin import admin_config, bearer

from broadcaster.admin import AdminServer
from broadcaster.config import Config
from broadcaster.service import Broadcaster

EFFECTS = ["NO_SERVICE", "REDUCED_SERVICE", "SIGNIFICANT_DELAYS", "DETOUR", "OTHER_EFFECT", "STOP_MOVED"]


def broadcaster(*args: str) -> list[str]:
    return [sys.executable, "-m", "broadcaster", *args]


def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    """Exit status, stdout, stderr and the wall time of one `broadcaster` process."""
    started = time.monotonic()
    done = subprocess.run(broadcaster(*args), capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


# The admin tokens' environment (T_ADMIN, T_ADMIN_OTHER) for every test here; the `rig` is conftest's.
pytestmark = pytest.mark.usefixtures("admin_tokens")


def no_broker(rig: Rig, url: str | None = None) -> Path:
    """A config whose broker is not there: nothing listens on its port (or, given `url`, a `SilentBroker`)."""
    return rig.write_config(mqtt={"url": url or f"mqtt://127.0.0.1:{free_port()}", "connect_timeout_seconds": 1})


class SilentBroker:
    """A port that accepts TCP connections, never answers and counts them: a command that must give up before any
    broker connection is caught connecting, however fast or slow the machine (a time bound was: a loaded runner
    took 2.55 s for a check that never connected)."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> SilentBroker:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up: no CONNACK ever comes
        writer.close()


def nothing_queued(rig: Rig) -> bool:
    path = rig.tmp_path / "state" / "broadcaster.db"
    if not path.exists():
        return True
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM requests)").fetchone()
        return bool(row[0] == 0)
    finally:
        db.close()


async def test_an_unknown_effect_exits_2_and_publishes_nothing(rig: Rig) -> None:
    path = rig.write_config()
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        status, out, err, _ = await asyncio.to_thread(
            run_cli, "announce", "-c", str(path), "--line", "2", "--effect", "NO_SERVCE", "--text-en", "x")
        assert status == 2, (out, err)
        assert "--effect" in err  # says which field ...
        assert "NO_SERVICE" in err  # ... and what it may be
        assert "Traceback" not in err
        assert out == ""
        assert await recorder.settle(quiet=0.5) == []
    assert nothing_queued(rig)


async def test_correcting_a_notice_never_issued_exits_2_before_connecting(rig: Rig) -> None:
    async with SilentBroker() as broker:
        status, out, err, _ = await asyncio.to_thread(
            run_cli, "correct", "-c", str(no_broker(rig, broker.url)), "alert-nope", "--text-en", "x")
    assert status == 2, (out, err)
    assert err.strip().splitlines() == ["broadcaster: correct: no notice 'alert-nope' was ever issued"]
    assert broker.connections == 0  # refused before any broker connection (it used to retry the broker first)
    assert nothing_queued(rig)


async def test_an_unknown_line_exits_2_at_once_without_a_broker(rig: Rig) -> None:
    async with SilentBroker() as broker:
        status, out, err, _ = await asyncio.to_thread(
            run_cli, "announce", "-c", str(no_broker(rig, broker.url)), "--line", "9", "--text-en", "x")
    assert status == 2, (out, err)
    assert err.strip().splitlines() == ["broadcaster: announce: --line: unknown line '9' (known: 1, 2, 3)"]
    assert "MQTT" not in err
    # No broker connection at all (before: 11 s of broker retries, then exit 1).
    assert broker.connections == 0
    assert nothing_queued(rig)


@pytest.mark.parametrize(("until", "complaint"), [
    ("25:99", "'25:99' is not a time of day (HH:MM, 00:00 to 23:59)"),
    ("tomorrow", "'tomorrow' is not a time with an offset (RFC 3339"),
])
async def test_a_bad_until_is_explained_once_on_one_line(rig: Rig, until: str, complaint: str) -> None:
    path = no_broker(rig)
    status, out, err, _ = await asyncio.to_thread(
        run_cli, "announce", "-c", str(path), "--line", "2", "--until", until, "--text-en", "x")
    assert status == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("broadcaster: announce: --until: "), lines
    assert complaint in lines[0]
    assert lines[0].count(until) == 1
    assert nothing_queued(rig)


# -- the same decision through both doors --------------------------------------------------------------------

#: Characters an argv can carry (no NUL, no lone surrogates), controls, bidi overrides and markup included.
ARGV_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
NASTY = st.sampled_from(["\x0b", "\u202e", " ", "<b></b>", "@metro_ops", "Exit B closed", "<script>x</script>"])
TEXTS = st.dictionaries(st.sampled_from(["zh", "en"]), NASTY | ARGV_TEXT, max_size=2)
LINES = st.lists(st.sampled_from(["1", "2", "3", "9", "", "x" * 200]) | ARGV_TEXT, max_size=2)
STATIONS = st.lists(st.sampled_from(["S01", "S04", "S404"]) | ARGV_TEXT, max_size=2)
SEVERITY = st.sampled_from(["INFO", "WARNING", "SEVERE", "info", "severe", "APOCALYPTIC", ""]) | ARGV_TEXT
EFFECT = st.sampled_from([*EFFECTS, "NO_SERVCE", "no_service", ""]) | ARGV_TEXT


def _is_local_time(value: str) -> bool:
    """What the command line reads in the operator's zone (HH:MM, or an ISO time without an offset)."""
    if re.fullmatch(r"\s*\d{1,2}:\d{1,2}(:\d{1,2})?\s*", value):
        return True
    try:
        return datetime.fromisoformat(value).tzinfo is None
    except ValueError:
        return False


UNTIL = st.sampled_from([
    (datetime.now(UTC) + timedelta(hours=3)).isoformat(), "2020-01-01T00:00:00+00:00", "2099-13-01T00:00:00+00:00",
    "tomorrow", "",
]) | ARGV_TEXT.filter(lambda v: not _is_local_time(v))


@st.composite
def notice_requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"texts": draw(TEXTS)}
    for field, strategy in (("line_ids", LINES), ("station_ids", STATIONS), ("severity", SEVERITY),
                            ("effect", EFFECT), ("until", UNTIL)):
        if draw(st.booleans()):
            body[field] = draw(strategy)
    return body


def as_argv(body: Mapping[str, Any]) -> list[str]:
    """The command line that says what `body` says (always `--flag=value`, so a value may start with '-')."""
    argv: list[str] = []
    for language, text in body["texts"].items():
        argv.append(f"--text-{language}={text}")
    argv += [f"--line={line}" for line in body.get("line_ids", ())]
    argv += [f"--station={station}" for station in body.get("station_ids", ())]
    for field in ("severity", "effect", "until"):
        if field in body:
            argv.append(f"--{field}={body[field]}")
    return argv


@contextlib.asynccontextmanager
async def desk_and_api(config: Config) -> AsyncIterator[tuple[Broadcaster, str]]:
    """A running broadcaster carrying out command-line requests (as `run` does) and serving its admin API."""
    assert config.admin is not None
    async with running(config) as b, AdminServer(b, config.admin) as server:
        stop = asyncio.Event()

        async def carry_out_requests() -> None:
            while not stop.is_set():  # what `run` schedules every second
                await b.process_requests()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await stop.wait()

        task = asyncio.create_task(carry_out_requests())
        try:
            yield b, server.url
        finally:
            stop.set()
            await task


def _messages(answer: httpx.Response) -> list[str]:
    body = answer.json()
    return [e["message"] for e in body.get("errors", [])] or [body.get("message", "")]


@pytest.mark.timeout(240)
async def test_the_command_line_and_the_api_decide_alike(rig: Rig) -> None:
    config = admin_config(rig)
    async with desk_and_api(config) as (_, url):
        first = await asyncio.to_thread(httpx.post, f"{url}/v1/notices", json={"texts": {"en": "Exit B closed"}},
                                        headers=bearer(), timeout=10)
        known = first.json()["notice_id"]

        def compare(api_path: str, body: Mapping[str, Any], argv: Sequence[str]) -> None:
            answer = httpx.post(f"{url}{api_path}", json=dict(body), headers=bearer(), timeout=10)
            status, out, err, _ = run_cli(*argv, "-c", str(rig.config_path))
            assert "Traceback" not in err, err
            assert answer.status_code in (201, 404, 422), answer.text
            if answer.status_code == 201:
                assert status == 0, (body, err)
                assert out.strip() or api_path.endswith("/corrections")  # a correction changing nothing: ""
            else:
                assert status == 2, (body, answer.text, out, err)
                assert out == ""
                for message in _messages(answer):
                    assert message in err, (body, message, err)

        @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(notice_requests())
        def announce_alike(body: dict[str, Any]) -> None:
            compare("/v1/notices", body, ["announce", *as_argv(body)])

        @settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(st.sampled_from([known, "alert-nope", "alert-", "manual-x"]),
               TEXTS)
        def correct_alike(notice_id: str, texts: dict[str, str]) -> None:
            argv = ["correct", notice_id, *as_argv({"texts": texts})]
            compare(f"/v1/notices/{notice_id}/corrections", {"texts": texts}, argv)

        await asyncio.to_thread(announce_alike)
        await asyncio.to_thread(correct_alike)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | ARGV_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ARGV_TEXT, inner, max_size=3), max_leaves=8)
FIELDS = st.sampled_from(["texts", "line_ids", "station_ids", "severity", "effect", "until", "author", "x"])


@pytest.mark.timeout(120)
async def test_any_json_body_gets_a_4xx_or_201_never_a_500(rig: Rig) -> None:
    """Any JSON value in any field, through the API: a named refusal or a notice, never a server error."""
    config = admin_config(rig)
    async with desk_and_api(config) as (b, url):

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(st.dictionaries(FIELDS, JSON, max_size=4) | JSON, st.sampled_from(["", "/corrections"]))
        def answers(body: Any, corrections: str) -> None:
            path = "/v1/notices/alert-nope/corrections" if corrections else "/v1/notices"
            answer = httpx.post(f"{url}{path}", content=orjson.dumps(body), timeout=10,
                                headers={**bearer(), "Content-Type": "application/json"})
            assert answer.status_code in (201, 404, 422), (body, answer.text)
            if answer.status_code == 422:
                assert all(e["field"] and e["message"] for e in answer.json()["errors"])

        await asyncio.to_thread(answers)
        assert b.link.connected.is_set()
