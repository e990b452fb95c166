"""A correction belongs to the version of the alert it corrected (GTFS-RT feeds reuse entity ids).

End to end: a feed on the loopback server, the admin API, a real Mosquitto and a loopback Mastodon.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from rig import Rig, poll_all, running
from support import collect_retained
from support.microblog_server import MicroblogServer
from test_admin import OTHER, SENTINEL, admin_config, api, bearer
from test_channels import SIGNAL, alert, channels, until

from broadcaster.service import Broadcaster

FIXED = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}
LIFT = {"zh": "人民广场站电梯停用", "en": "Lift out of service at People's Square"}


def mastodon_only(server: MicroblogServer) -> list[dict[str, Any]]:
    return [c for c in channels(server) if c["name"] == "mastodon"]


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_ADMIN", SENTINEL)
    monkeypatch.setenv("T_ADMIN_OTHER", OTHER)


async def resolve_alert_7(rig: Rig, b: Broadcaster) -> None:
    """The feed stops carrying alert 7 for `resolve_after_missing` (2) good fetches: it resolves."""
    rig.serve_rt()
    await poll_all(b)
    rig.serve_rt(alert({"zh": "无关", "en": "Unrelated"}, alert_id="other"))
    await poll_all(b)
    assert "7" not in b.state.alerts


def stored_corrections(b: Broadcaster) -> Any:
    row = b.db.conn.execute("SELECT value FROM meta WHERE key = 'operator:corrections'").fetchone()
    return orjson.loads(row[0]) if row else None


async def test_a_recycled_alert_id_gets_its_own_headline_not_an_old_correction(
    rig: Rig, server: MicroblogServer, tokens: None
) -> None:
    rig.serve_rt(alert(SIGNAL, alert_id="7"))
    async with api(admin_config(rig, channels=mastodon_only(server))) as (b, http):
        await poll_all(b)
        answer = await http.post("/v1/notices/alert-7/corrections", json={"texts": FIXED}, headers=bearer())
        assert answer.status_code == 201, answer.text
        assert b.state.alerts["7"].alert.header.texts == FIXED
        await resolve_alert_7(rig, b)
        rig.serve_rt(alert(LIFT, alert_id="7", effect="ACCESSIBILITY_ISSUE"))  # another alert, the same id
        await poll_all(b)
        assert b.state.alerts["7"].alert.header.texts == LIFT
        await until(lambda: b.pending() == 0, b)
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/alerts/#"))
    assert orjson.loads(retained[rig.topic("lines/2/alerts/7")])["header"] == LIFT
    last = server.mastodon_statuses()[-1].text
    assert "电梯停用" in last
    assert "并未停运" not in last


async def test_a_correction_applies_while_the_feed_sends_that_version_and_goes_when_it_changes(
    rig: Rig, server: MicroblogServer, tokens: None
) -> None:
    rig.serve_rt(alert(SIGNAL, alert_id="7"))
    async with api(admin_config(rig, channels=mastodon_only(server))) as (b, http):
        await poll_all(b)
        assert (await http.post("/v1/notices/alert-7/corrections", json={"texts": FIXED},
                                headers=bearer())).status_code == 201
        for _ in range(3):  # the feed keeps sending the version that was corrected: the correction stays
            rig.serve_rt(alert(SIGNAL, alert_id="7"))
            await poll_all(b)
            assert b.state.alerts["7"].alert.header.texts == FIXED
        await until(lambda: b.pending() == 0, b)
        posted = len(server.mastodon_statuses())
        # The feed updates the alert itself: its update is published as sent, the correction was for the old one.
        updated = {"zh": "2号线信号故障已排除，列车逐步恢复", "en": "Line 2 signal fixed, service recovering"}
        rig.serve_rt(alert(updated, alert_id="7"))
        await poll_all(b)
        assert b.state.alerts["7"].alert.header.texts == updated
        await until(lambda: len(server.mastodon_statuses()) == posted + 1, b)
        await resolve_alert_7(rig, b)
        await until(lambda: b.pending() == 0, b)
        assert "7" not in (stored_corrections(b) or {}).get("corrections", {})  # pruned
    assert "信号故障已排除" in server.mastodon_statuses()[posted].text


async def test_corrections_saved_by_the_previous_version_are_read_and_still_expire(
    rig: Rig, server: MicroblogServer, tokens: None
) -> None:
    rig.serve_rt(alert(SIGNAL, alert_id="7"))
    config = admin_config(rig, channels=mastodon_only(server))
    async with api(config) as (b, http):
        await poll_all(b)
        assert (await http.post("/v1/notices/alert-7/corrections", json={"texts": FIXED},
                                headers=bearer())).status_code == 201
        await until(lambda: b.pending() == 0, b)
        # What the previous version wrote: alert id -> corrected header, nothing else.
        with b.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('operator:corrections', ?)",
                         (orjson.dumps({"7": FIXED}).decode(),))
        posted = len(server.mastodon_statuses())
    async with running(config) as b:
        await poll_all(b)  # the same alert 7: still corrected, nothing new to say
        assert b.state.alerts["7"].alert.header.texts == FIXED
        await until(lambda: b.pending() == 0, b)
        assert len(server.mastodon_statuses()) == posted
        await resolve_alert_7(rig, b)
        rig.serve_rt(alert(LIFT, alert_id="7"))
        await poll_all(b)
        assert b.state.alerts["7"].alert.header.texts == LIFT
        await until(lambda: b.pending() == 0, b)
    assert "电梯停用" in server.mastodon_statuses()[-1].text


async def test_a_correction_does_not_hold_back_another_alert_s_all_clear(rig: Rig) -> None:
    """A correction re-applies its alert's feed as last seen; that is not a fetch, so an alert the feed has
    stopped sending keeps counting towards its all-clear (`resolve_after_missing` = 2 here)."""
    lift = alert(LIFT, alert_id="B", effect="ACCESSIBILITY_ISSUE")
    rig.serve_rt(alert(SIGNAL), lift)
    async with running(rig.config()) as b:
        await poll_all(b)
        rig.serve_rt(alert(SIGNAL))  # B is gone: one good fetch without it
        await poll_all(b)
        assert b.state.alerts["B"].missing == 1
        await b.correct("alert-A-L2", FIXED)
        assert b.state.alerts["B"].missing == 1
        rig.serve_rt(alert(SIGNAL))
        await poll_all(b)  # the second good fetch without it
        assert "B" not in b.state.alerts
        assert b.state.alerts["A-L2"].alert.header.texts == FIXED
        kinds = [orjson.loads(bytes(r[0]))["kind"] for r in b.db.conn.execute(
            "SELECT payload FROM outbox WHERE channel = 'mqtt' AND notice_id = 'alert-B' ORDER BY created_at")]
    assert kinds == ["alert_new", "alert_resolved"]


async def test_correcting_an_alert_the_feed_stopped_sending_keeps_its_count_towards_the_all_clear(
    rig: Rig, server: MicroblogServer
) -> None:
    """The feed stopped sending alert 7 (one fetch of the two that resolve it) when the operator corrected it. The
    correction re-applies the feed as last seen, not a fetch: the alert keeps its count, so the next fetch without
    it resolves it (before: the count started again, and the corrected alert outlived the feed's by a fetch)."""
    rig.serve_rt(alert(SIGNAL, alert_id="7"))
    async with running(rig.config(channels=mastodon_only(server))) as b:
        await poll_all(b)
        rig.serve_rt()
        await poll_all(b)
        assert b.state.alerts["7"].missing == 1
        await b.correct("alert-7", FIXED)
        assert b.state.alerts["7"].alert.header.texts == FIXED
        assert b.state.alerts["7"].missing == 1
        await poll_all(b)
        assert "7" not in b.state.alerts
