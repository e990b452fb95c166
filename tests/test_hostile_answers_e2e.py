"""A real `broadcaster run` against platforms that answer with rate-limit headers nobody foresaw.

Once, `429` with `Retry-After: 99999999999999` ended the whole service with an OverflowError (and a restart met the
same answer); `Retry-After: ²` raised ValueError and a zone-less `X-RateLimit-Reset` raised TypeError. Now each wait
is read strictly and clamped, the service stays up, the other platforms and MQTT deliver, the refused post waits
at most MAX_SERVER_WAIT_S, and an emergency waits at most EMERGENCY_MAX_WAIT_S whatever the platform asked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from crash_harness import channel_tables, environment
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker
from support.microblog_server import LoggedRequest, MicroblogServer
from support.mqtt_client import MessageRecorder
from test_channels import alert

from broadcaster.outbox import EMERGENCY_MAX_WAIT_S, MAX_SERVER_WAIT_S

ROUTINE = {"zh": "2号线信号故障，列车晚点", "en": "Line 2 signal fault, trains delayed"}
EMERGENCY = {"zh": "2号线全线停运", "en": "Line 2 suspended"}
STATUSES = "/api/v1/statuses"


@pytest.fixture
def e2e_rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str) -> Rig:
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix)
    r.serve_rt()
    r.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    return r


def quick_polls(config: Path) -> None:
    """Poll every second (the rig's default is 30 s), so a new alert is seen at once."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('kind = "gtfs-rt"\n', 'kind = "gtfs-rt"\npoll_seconds = 1\n'), encoding="utf-8")


def outbox_rows(db: Path, channel: str) -> list[tuple[str, str, int, str]]:
    """(status, next_attempt_at, priority, text) of each row of `channel`."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, next_attempt_at, priority, payload FROM outbox WHERE channel = ?",
                            (channel,)).fetchall()
    return [(s, at, p, orjson.loads(payload).get("text", "")) for s, at, p, payload in rows]


def start_run(config: Path, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """`broadcaster run`, its log in a file (a pipe nobody reads would fill and stop it)."""
    with stderr.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "broadcaster", "run", "-c", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)


def assert_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        stderr = log.read_text(encoding="utf-8", errors="replace")
        pytest.fail(f"broadcaster run exited with status {process.returncode}: {stderr[-3000:]}")


def made(requests: list[LoggedRequest]) -> list[LoggedRequest]:
    return [r for r in requests if r.path == STATUSES and r.status == 200]


async def test_rate_limit_headers_at_and_past_their_extremes_never_stop_the_service(
    e2e_rig: Rig, microblog: MicroblogServer, mosquitto: MosquittoBroker
) -> None:
    server = microblog
    for platform in ("mastodon", "bluesky", "weibo", "webhook"):
        server.set_rate_limit(platform, None)
    # The first post on each platform meets one of the answers that used to end the service.
    server.push_fault("mastodon", 429, {"Retry-After": "99999999999999"}, path=STATUSES)  # OverflowError
    server.push_fault("bluesky", 429, {"Retry-After": "²"}, path="/xrpc/com.atproto.repo.createRecord")  # ValueError
    server.push_fault("weibo", 429, {"Retry-After": "inf"}, path="/2/statuses/share.json")
    server.push_fault("webhook", 429, {"X-RateLimit-Reset": "2026-12-03T10:00:30"}, path="/hooks/ops")  # TypeError
    e2e_rig.serve_rt(alert(ROUTINE, alert_id="A-R"))
    config = e2e_rig.write_config(channels=channel_tables(server))
    quick_polls(config)
    db = e2e_rig.tmp_path / "state" / "broadcaster.db"
    async with MessageRecorder(mosquitto.url, e2e_rig.topic("notices")) as notices:
        stderr = e2e_rig.tmp_path / "stderr.log"
        process = start_run(config, environment(server), stderr)
        try:
            # The platforms that asked for an unreadable wait are retried after our own backoff and get the post.
            try:
                await asyncio.to_thread(server.wait_for, lambda log: all(
                    any(r.platform == p and r.status in (200, 204) and r.fault is None and r.method == "POST"
                        and "createSession" not in r.path for r in log) for p in ("bluesky", "weibo", "webhook")),
                    30)
            finally:
                assert_alive(process, stderr)
            await notices.wait_for(lambda messages: len(messages) >= 1)
            # Mastodon asked for three million years: the post waits, pending, for the ceiling only.
            [(status, next_at, _, _)] = outbox_rows(db, "mastodon")
            wait = (datetime.fromisoformat(next_at) - datetime.now(UTC)).total_seconds()
            assert status == "pending"
            assert MAX_SERVER_WAIT_S - 120 < wait <= MAX_SERVER_WAIT_S
            assert made(server.requests("mastodon")) == []

            # An emergency meets a legal but long wait (50 minutes): it is retried within EMERGENCY_MAX_WAIT_S.
            server.push_fault("mastodon", 429, {"Retry-After": "3000"}, path=STATUSES)
            e2e_rig.serve_rt(alert(ROUTINE, alert_id="A-R"),
                             alert(EMERGENCY, alert_id="A-E", effect="NO_SERVICE", severity="SEVERE"))
            log = await asyncio.to_thread(server.wait_for, lambda log: len(made(log)) >= 1,
                                          EMERGENCY_MAX_WAIT_S + 20)
            refused = [r for r in log if r.platform == "mastodon" and r.path == STATUSES and r.status == 429]
            [posted] = made(log)
            assert ["停运" in status.text for status in server.mastodon_statuses()] == [True]
            assert posted.monotonic - refused[-1].monotonic <= EMERGENCY_MAX_WAIT_S + 2.0
            assert_alive(process, stderr)
            routine = [row for row in outbox_rows(db, "mastodon") if row[2] > 0]
            assert [row[0] for row in routine] == ["pending"]  # the routine post still honours its own wait
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
