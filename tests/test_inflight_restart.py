"""A SIGKILL mid-request and an immediate restart, against a server that stores Idempotency-Key only once the status is
made (older Mastodon and other Mastodon-API servers; current Mastodon holds a lock instead).

The restarted process used to resend at once, while the first request was still being processed: two statuses,
one key. Now the attempt's deadline is durable (`Outbox.begin_attempt`), and the entry is retried, with the same
key, only once that deadline has passed; the server then knows the key and answers with the first status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from crash_harness import channel_tables, environment
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import LoggedRequest, MicroblogServer

from broadcaster.dispatcher import REQUESTS_PER_ATTEMPT

#: The status takes this long to be made (and its key to be stored).
CREATE_S = 2.5
#: The channel's per-request timeout: longer than the create, so an undisturbed attempt succeeds.
TIMEOUT_S = 3.0
#: How long one attempt may be in flight (`Dispatcher._attempt_deadline_s`).
ATTEMPT_DEADLINE_S = TIMEOUT_S * REQUESTS_PER_ATTEMPT["mastodon"] + 1.0
STATUSES = "/api/v1/statuses"


@pytest.fixture
def restart_rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str) -> Rig:
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix)
    r.serve_rt(alert_entity("A-X", header={"zh": "2号线信号故障", "en": "Line 2 signal fault"},
                            informed=[selector(route_id="2")]))
    r.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    return r


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "broadcaster", "run", "-c", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)


def status_posts(log: list[LoggedRequest]) -> list[LoggedRequest]:
    return [r for r in log if r.method == "POST" and r.path == STATUSES]


def test_a_restart_after_a_kill_mid_request_waits_for_the_attempts_deadline_and_posts_once(
    restart_rig: Rig, microblog: MicroblogServer
) -> None:
    server = microblog
    server.mastodon_key_after_create_s = CREATE_S
    mastodon = [dict(table, timeout_seconds=TIMEOUT_S) for table in channel_tables(server)
                if table["name"] == "mastodon"]
    config = restart_rig.write_config(channels=mastodon)
    env = environment(server)
    log = restart_rig.tmp_path / "stderr.log"
    first = start(config, env, log)
    try:
        # The request has arrived and the server is making the status: kill now, then restart at once.
        server.wait_for(lambda seen: any(r.fault == "slow_create" for r in status_posts(seen)), timeout_s=30)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    second = start(config, env, log)
    try:
        seen = server.wait_for(lambda seen: len(status_posts(seen)) >= 2 and status_posts(seen)[1].status is not None,
                               timeout_s=ATTEMPT_DEADLINE_S + 30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    attempt, retry = status_posts(seen)[:2]
    assert len(server.mastodon_statuses()) == 1, log.read_text(errors="replace")[-3000:]
    assert retry.header("idempotency-key") == attempt.header("idempotency-key")
    assert retry.status == 200
    # Not before the first attempt's deadline (which began a moment before its request arrived).
    assert retry.monotonic - attempt.monotonic >= ATTEMPT_DEADLINE_S - 0.5
    assert len(status_posts(server.requests())) == 2  # and retried once, not in a loop
