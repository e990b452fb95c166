"""Feed problems are visible where an operator looks (issue 12, item 5): `preview`, `status` and the admin API's
`/v1/status` list every record a feed skipped with its reason, `preview` fails when a feed fails, and a fresh
install reads "never fetched". Real `broadcaster` processes, a real broker, feeds on the loopback server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson
import pytest
from rig import Rig, now_s, toml_value
from support import free_port
from support.layouts import RELEASE_66D9D1C, make_database

#: A passenger-flow document with 7 readings, 6 of them unusable: (station or record, field, reason) each.
READINGS: list[dict[str, Any]] = [
    {"station_id": "S01", "level": "STANDING_ROOM_ONLY"},
    {"station_id": "S02", "level": "BUSY"},
    {"station_id": "S99", "level": "FULL"},
    {"station_id": "S03", "level": "FULL", "percentage": 250},
    {"station_id": "S04", "level": "FULL", "line_id": "9"},
    {"station_id": "S05", "level": "FULL", "direction_id": 1},
    {"level": "FULL"},
]
#: What each skipped reading's problem line must say, so an operator can find and fix it.
EXPECTED = [
    ("stations[1].level", "'BUSY' is not an OccupancyStatus name", "S02"),
    ("stations[2].station_id", "is not a station or stop of the network", "S99"),
    ("stations[3].percentage", "250 is above 200", "S03"),
    ("stations[4].line_id", "'9' is not a line of the network", "S04"),
    ("stations[5]", "direction_id is given without line_id", "S05"),
    ("stations[6].station_id", "is required", ""),
]


def _serve_bad_flow(rig: Rig) -> None:
    document = {"schema": "broadcaster.passenger-flow/1", "timestamp": now_s(), "stations": READINGS}
    rig.server.set_route("/flow.json", orjson.dumps(document), content_type="application/json")


async def _broadcaster(*args: str, timeout: float = 60) -> tuple[int, str, str]:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _assert_every_problem_in(text: str) -> None:
    for where, reason, station in EXPECTED:
        line = next((line for line in text.splitlines() if where in line and reason in line), None)
        assert line is not None, f"{where}: {reason} not shown in:\n{text}"
        assert station in line


def _assert_problem_list(problems: list[str]) -> None:
    assert len(problems) == len(EXPECTED), problems
    _assert_every_problem_in("\n".join(problems))


def _feed(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in report["feeds"] if f["name"] == name)


async def test_status_on_a_fresh_install_says_never_fetched(rig: Rig) -> None:
    status, out, err = await _broadcaster("status", "-c", str(rig.write_config()))
    assert status == 0, err
    assert "FAILING" not in out, out
    assert "None" not in out, out
    assert [line.split()[1:3] for line in out.splitlines()[1:3]] == [["never", "fetched"], ["never", "fetched"]]


async def test_preview_lists_every_skipped_record_with_its_reason(rig: Rig) -> None:
    _serve_bad_flow(rig)
    path = str(rig.write_config())
    status, out, err = await _broadcaster("preview", "-c", path)
    assert status == 0, err  # skipped records are reported, not a failure: the rest of the feed is used
    _assert_every_problem_in(out)
    assert "6 record(s) skipped" in out
    status, out, err = await _broadcaster("preview", "-c", path, "--json")
    assert status == 0, err
    report = orjson.loads(out)
    _assert_problem_list(report["problems"]["flow"])
    assert report["problems"]["ops"] == []


async def test_preview_exits_1_when_a_feed_fails(rig: Rig) -> None:
    rig.server.set_route("/rt.pb", b"<html>gateway timeout</html>", status=504)
    status, out, err = await _broadcaster("preview", "-c", str(rig.write_config()))
    assert status == 1, out + err
    assert "HTTP 504" in out
    assert "feed 'ops'" in err


async def test_status_lists_every_skipped_record_of_the_last_poll(rig: Rig) -> None:
    _serve_bad_flow(rig)
    path = str(rig.write_config())
    status, _, err = await _broadcaster("once", "-c", path)
    assert status == 0, err
    _assert_every_problem_in(err)  # the log names all six, not three and "(+3 more)"
    status, out, err = await _broadcaster("status", "-c", path)
    assert status == 0, err
    _assert_every_problem_in(out)
    assert "6 record(s) skipped" in out
    status, out, err = await _broadcaster("status", "-c", path, "--json")
    assert status == 0, err
    report = orjson.loads(out)
    _assert_problem_list(_feed(report, "flow")["problems"])
    assert _feed(report, "ops")["problems"] == []

    # Fixed at the source: the next poll's empty list replaces the old one.
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    assert (await _broadcaster("once", "-c", path))[0] == 0
    status, out, _ = await _broadcaster("status", "-c", path, "--json")
    assert _feed(orjson.loads(out), "flow")["problems"] == []


async def test_admin_status_lists_every_skipped_record(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    token = f"admin-{uuid.uuid4().hex}"
    monkeypatch.setenv("T_ADMIN", token)
    _serve_bad_flow(rig)
    port = free_port()
    path = rig.write_config()
    admin = {"listen": f"127.0.0.1:{port}", "tokens": [{"id": "desk", "token": {"env": "T_ADMIN"}}]}
    path.write_text(path.read_text(encoding="utf-8") + "\n[admin]\n"
                    + "".join(f"{k} = {toml_value(v)}\n" for k, v in admin.items()), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "run", "-c", str(path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            async with asyncio.timeout(30):
                while True:  # until the API listens and the first poll of the flow feed is committed
                    try:
                        response = await http.get("/v1/status")
                    except httpx.TransportError:
                        response = None
                    if response is not None and _feed(response.json(), "flow")["last_ok_at"] is not None:
                        break
                    await asyncio.sleep(0.1)
            assert response.status_code == 200
            _assert_problem_list(_feed(response.json(), "flow")["problems"])
            assert _feed(response.json(), "ops")["problems"] == []
            health = (await http.get("/v1/health")).json()
            assert "problems" not in _feed(health, "flow")  # record texts only for authenticated callers
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()


async def test_a_database_of_the_previous_release_is_migrated_in_place(rig: Rig) -> None:
    """A state database made before feeds had `problems` (broadcaster 0.1.0's schema): `status` reads it, and the
    next poll stores the skipped records in the column its migration added."""
    database = rig.tmp_path / "state" / "broadcaster.db"
    make_database(database, RELEASE_66D9D1C)
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("INSERT INTO feeds VALUES ('flow', NULL, NULL, NULL, NULL, 'HTTP 503', '2026-11-25T08:00:00+00:00',"
                   " 2)")
    path = str(rig.write_config())
    status, out, err = await _broadcaster("status", "-c", path)
    assert status == 0, err
    assert "FAILING x2: HTTP 503" in out
    _serve_bad_flow(rig)
    assert (await _broadcaster("once", "-c", path))[0] == 0
    status, out, err = await _broadcaster("status", "-c", path, "--json")
    assert status == 0, err
    _assert_problem_list(_feed(orjson.loads(out), "flow")["problems"])
