"""Two instances on one PostgreSQL database, the leader SIGKILLed at random moments 20 times: every notice on every
platform exactly once, the MQTT stream and retained state right, every takeover within the lease plus a poll.

The lease here is 2 s (renew 0.5 s, margin 0.5 s) instead of the default 15 s, so the 20 takeovers cost about
a minute: the code is the same, only the waits are shorter. `python tests/ha_soak.py --kills 100` runs a longer
soak (docs/ha.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ha_soak import POLL_SECONDS, SOAK_LEASE, record, soak
from support import LoopbackHttpServer, MosquittoBroker
from support.microblog_server import PLATFORMS, MicroblogServer
from support.postgres import PostgresServer

KILLS = 20


@pytest.mark.timeout(240)
async def test_twenty_leader_kills_lose_nothing_post_nothing_twice_and_take_over_within_the_lease(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, microblog: MicroblogServer,
    postgres: PostgresServer, postgres_database: str,
) -> None:
    report = await soak(tmp_path, http_server, mosquitto, microblog, postgres, postgres_database, kills=KILLS,
                        seed=20261203)
    path = record(report)
    print(report.line(), f"(recorded in {path})")
    assert report.kills == KILLS
    assert report.killed_with_work_pending >= KILLS // 4, "the kills should land while posts are still queued"
    assert report.notices >= 3 * KILLS
    for channel in PLATFORMS:
        assert report.posts["queued"][channel] >= 3 * KILLS, channel
    assert report.duplicates == 0, report.posts
    assert report.losses == 0, (report.posts, report.mqtt_missing, report.channels_disagree)
    assert report.mqtt_notices >= report.notices
    assert report.mqtt_phantoms == [], "notices published on MQTT that no leader committed"
    assert report.mqtt_conflicting == [], "one notice published with two payloads"
    assert report.retained_wrong == []
    assert report.unexpected_exits == {}
    # Within the lease plus a renew period, a poll and slack for a loaded 2-core machine; never before the lease
    # could have expired (renewed at most a renew period before the kill, a stalled renew loses the margin).
    lease = SOAK_LEASE
    for takeover in report.takeovers:
        earliest = lease.lease_seconds - lease.renew_seconds - lease.margin_seconds
        assert earliest <= takeover["seconds"], takeover
        assert takeover["seconds"] <= lease.lease_seconds + lease.renew_seconds + POLL_SECONDS + 3.0, takeover
        # ...and the new leader said so on MQTT: `online` naming it, on its session's first publish.
        assert takeover["first_publish_seconds"] is not None, takeover
