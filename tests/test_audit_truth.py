"""The answer tells the truth about what was committed, even when the audit log cannot be written.

The audit line is appended after the commit; if that append fails, the notice is still queued, so the API
must answer success (with the notice id) and never invite the client to send it again.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from rig import Rig, poll_all, running
from support import MessageRecorder
from support.fault_proxy import FaultProxy
from test_admin import NOTICE, OTHER, SENTINEL, admin_config, api, bearer, parse_metrics
from test_channels import SIGNAL, alert, until

from broadcaster import desk
from broadcaster.service import Broadcaster
from broadcaster.store import Database

FIXED = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}


def break_audit_log(rig: Rig) -> None:
    """A directory where the audit file goes: every append fails, even for root (chmod would not stop it)."""
    audit = rig.tmp_path / "state" / "audit.log"
    audit.unlink(missing_ok=True)
    audit.mkdir(parents=True)


def queued(b: Broadcaster, notice_id: str) -> int:
    return int(b.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE channel = 'mqtt' AND notice_id = ?",
                                 (notice_id,)).fetchone()[0])


async def test_a_notice_committed_while_the_audit_log_fails_is_answered_201_and_queued_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("T_ADMIN", SENTINEL)
    monkeypatch.setenv("T_ADMIN_OTHER", OTHER)
    rig.serve_rt(alert(SIGNAL))
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        break_audit_log(rig)
        answer = await http.post("/v1/notices", json=NOTICE, headers=bearer())
        assert answer.status_code == 201, answer.text
        notice_id = answer.json()["notice_id"]
        assert queued(b, notice_id) == 1
        fixed = await http.post("/v1/notices/alert-A-L2/corrections", json={"texts": FIXED}, headers=bearer())
        assert fixed.status_code == 201, fixed.text
        assert b.state.alerts["A-L2"].alert.header.texts == FIXED
        refused = await http.post("/v1/notices", json={"texts": {}}, headers=bearer())
        assert refused.status_code == 422  # a refusal is still a refusal
        await until(lambda: b.pending() == 0, b)
        assert queued(b, notice_id) == 1
        metrics = parse_metrics((await http.get("/metrics")).text)
    assert metrics["broadcaster_audit_failures_total"] == 3
    # The entry is not lost: the service log carries it whole.
    lost = [r.getMessage() for r in caplog.records if "audit log" in r.getMessage()]
    assert any(notice_id.removeprefix("alert-") in m and '"announce"' in m for m in lost), lost


async def test_a_desk_request_committed_while_the_audit_log_fails_is_done_once(rig: Rig) -> None:
    """`broadcaster announce`: the request is marked done with its notice id, so it is never carried out again."""
    async with running(rig.config()) as b:
        await poll_all(b)
        break_audit_log(rig)
        request_id = desk.submit(b.db, "announce", {"texts": {"en": "Lifts back in service"}, "line_ids": ["1"]})
        assert await b.process_requests() == 1
        status, result = b.db.conn.execute("SELECT status, result FROM requests WHERE id = ?",
                                           (request_id,)).fetchone()
        assert status == desk.DONE
        assert await b.process_requests() == 0
        assert queued(b, result) == 1
        bodies = [orjson.loads(bytes(r[0])) for r in b.db.conn.execute("SELECT payload FROM outbox"
                                                                        " WHERE channel = 'mqtt'")]
        assert [x["notice_id"] for x in bodies].count(result) == 1


def operator_notices(database: Path) -> list[str]:
    """The operator notices committed for the MQTT stream (read by another process, as an operator would)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT DISTINCT notice_id FROM outbox WHERE channel = 'mqtt'"
                            " AND notice_id LIKE 'alert-manual-%'").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


async def test_a_desk_request_killed_after_its_commit_is_not_carried_out_again(rig: Rig) -> None:
    """`broadcaster run` takes a queued request and commits its notice, then hangs publishing (the broker's
    route black-holed); SIGKILL there. The request's result was committed with the notice, so the next run
    does not make a second notice."""
    async with FaultProxy("127.0.0.1", int(rig.mqtt_url.rsplit(":", 1)[1])) as proxy, \
            MessageRecorder(rig.mqtt_url, rig.topic("#")) as published:
        path = rig.write_config(mqtt={"url": proxy.url, "publish_timeout_seconds": 10})
        database = rig.tmp_path / "state" / "broadcaster.db"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broadcaster", "run", "-c", str(path),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            # Retained state arrived: the link is up and the first round is done.
            await published.wait_for(lambda ms: any("/lines/" in m.topic for m in ms), timeout=20)
            proxy.blackhole()
            db = Database(database)
            try:
                request_id = desk.submit(db, "announce", {"texts": {"en": "Exit B closed"}, "station_ids": ["S04"]})
            finally:
                db.close()
            async with asyncio.timeout(15):
                while True:  # another process commits; the database is all we share
                    if operator_notices(database):
                        break
                    await asyncio.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        proxy.heal()
        first = operator_notices(database)
        assert len(first) == 1
        once = await asyncio.create_subprocess_exec(sys.executable, "-m", "broadcaster", "once", "-c", str(path),
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with asyncio.timeout(60):
            await once.wait()
    assert operator_notices(database) == first  # not a second notice
    db = Database(database)
    try:
        row = db.conn.execute("SELECT status, result FROM requests WHERE id = ?", (request_id,)).fetchone()
    finally:
        db.close()
    assert tuple(row) == (desk.DONE, first[0])
