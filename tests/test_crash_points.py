"""SIGKILL at each named point of a notice's life, on purpose rather than by chance: before its commit, after its
commit but before it is sent, and mid-request with the platform holding its answer. After a restart every
platform holds the post exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from crash_harness import PLATFORMS, channel_tables, environment
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import MicroblogServer

POST_PATHS = {"mastodon": "/api/v1/statuses", "bluesky": "com.atproto.repo.createRecord",
              "weibo": "/2/statuses/share.json", "webhook": "/hooks/ops"}


@pytest.fixture
def crash_rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str) -> Rig:
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix)
    r.serve_rt()
    r.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    return r


#: Each request's timeout, shorter than the crash loop's 2 s: a restart after a kill mid-attempt waits for that
#: attempt's deadline (Bluesky's is six timeouts and a second, `Dispatcher._attempt_deadline_s`), 7 s rather than 13.
TIMEOUT_S = 1


def channels(server: MicroblogServer) -> list[dict[str, object]]:
    return [dict(table, timeout_seconds=TIMEOUT_S) for table in channel_tables(server)]


def serve_signal_fault(rig: Rig) -> None:
    rig.serve_rt(alert_entity("A-X", header={"zh": "2号线信号故障", "en": "Line 2 signal fault"},
                              informed=[selector(route_id="2")]))


def start(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "broadcaster", "run", "-c", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def finish(config: Path, env: dict[str, str]) -> None:
    """The restart: an uninterrupted run that delivers whatever is owed."""
    done = subprocess.run([sys.executable, "-m", "broadcaster", "once", "-c", str(config)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def posts(server: MicroblogServer) -> dict[str, int]:
    return {
        "mastodon": len(server.mastodon_statuses()), "bluesky": len(server.bluesky_posts()),
        "weibo": len(server.weibo_statuses()),
        "webhook": len({d.header("idempotency-key") for d in server.webhook_deliveries("ops")}),
    }


def test_killed_mid_request_with_the_answer_held(crash_rig: Rig, microblog: MicroblogServer) -> None:
    config = crash_rig.write_config(channels=channels(microblog))
    env = environment(microblog)
    finish(config, env)  # the quiet state first: sessions opened, nothing to say
    for platform in PLATFORMS:
        microblog.hang(platform, 30, commit=True)  # the post is made; the answer never comes in time
    serve_signal_fault(crash_rig)
    process = start(config, env)
    try:
        for platform in PLATFORMS:
            microblog.wait_for_requests(platform, 1, timeout_s=30)
    finally:
        kill(process)
    for platform in PLATFORMS:
        microblog.clear_faults(platform)
    finish(config, env)
    assert posts(microblog) == dict.fromkeys(PLATFORMS, 1)


def test_killed_after_the_commit_before_anything_was_sent(crash_rig: Rig, microblog: MicroblogServer) -> None:
    config = crash_rig.write_config(channels=channels(microblog))
    env = environment(microblog)
    finish(config, env)
    for platform in PLATFORMS:
        microblog.set_down(platform)  # committed and tried, but nothing was posted
    serve_signal_fault(crash_rig)
    process = start(config, env)
    try:
        for platform in PLATFORMS:
            microblog.wait_for_requests(platform, len(microblog.requests(platform)) + 1, timeout_s=30)
    finally:
        kill(process)
    assert posts(microblog) == dict.fromkeys(PLATFORMS, 0)
    for platform in PLATFORMS:
        microblog.set_down(platform, False)
    finish(config, env)
    assert posts(microblog) == dict.fromkeys(PLATFORMS, 1)


def test_killed_before_the_commit(crash_rig: Rig, microblog: MicroblogServer) -> None:
    config = crash_rig.write_config(channels=channels(microblog))
    env = environment(microblog)
    finish(config, env)
    database = crash_rig.tmp_path / "state" / "broadcaster.db"
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the tick can fetch, parse, diff and render, but not commit
    try:
        serve_signal_fault(crash_rig)
        fetched = len(crash_rig.server.requests_for("/rt.pb"))
        process = start(config, env)
        try:
            # Fetched: it parses, diffs and renders in milliseconds, then waits up to 5 s for the database.
            crash_rig.server.wait_for_requests("/rt.pb", fetched + 1, timeout_s=30)
        finally:
            kill(process)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    rows = sqlite3.connect(database).execute("SELECT COUNT(*) FROM outbox WHERE notice_id = 'alert-A-X'").fetchone()
    assert rows[0] == 0  # nothing half-written
    assert posts(microblog) == dict.fromkeys(PLATFORMS, 0)
    finish(config, env)
    assert posts(microblog) == dict.fromkeys(PLATFORMS, 1)
