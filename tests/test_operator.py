"""The operator's desk: digests on cron slots (injected clock), quiet windows, the emergency lane, manual
notices and corrections, all through the one pipeline to real loopback platforms and a real broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from rig import Rig, SteppedClock, payloads, poll_all, running
from support import MessageRecorder, collect_retained
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, channels, until

from broadcaster.config import DigestConfig
from broadcaster.model import Severity
from broadcaster.operator import ManualNotice
from broadcaster.scheduler import CronSchedule

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(hour: int, minute: int) -> datetime:
    return datetime(2026, 11, 25, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def test_cron_slots_and_coalescing_with_an_injected_clock() -> None:
    schedule = CronSchedule("*/15 * * * *", SHANGHAI)
    assert schedule.next_slot(local(8, 7)) == local(8, 15)
    assert schedule.next_slot(local(8, 15)) == local(8, 30)
    # Down from 08:05 to 08:52: the three missed slots coalesce into the latest one, not a burst.
    assert schedule.latest_slot(local(8, 5), local(8, 52)) == local(8, 45)
    assert schedule.latest_slot(local(8, 45), local(8, 52)) is None
    rush = CronSchedule("*/15 7-9 * * 1-5", SHANGHAI)  # four times an hour in the morning rush
    assert rush.next_slot(local(9, 50)) == datetime(2026, 11, 26, 7, 0, tzinfo=SHANGHAI).astimezone(UTC)


def tables(server: MicroblogServer) -> list[dict[str, Any]]:
    out = channels(server)
    out[0]["digest_mode"] = "always"  # Mastodon: a heartbeat every slot
    return out  # Bluesky, Weibo, webhook: "on-change" (the default)


async def test_digests_post_every_slot_or_only_on_change_and_never_repeat(rig: Rig, server: MicroblogServer) -> None:
    digest = DigestConfig()
    async with running(rig.config(channels=tables(server))) as b:
        await poll_all(b)
        first = await b.digest(digest, local(8, 0))
        assert set(first) == {"mastodon", "bluesky", "weibo", "webhook", "mqtt"}
        second = await b.digest(digest, local(8, 15))  # nothing changed
        assert set(second) == {"mastodon", "mqtt"}
        rig.serve_rt(alert(SIGNAL))
        await poll_all(b)
        third = await b.digest(digest, local(8, 30))
        assert set(third) == {"mastodon", "bluesky", "weibo", "webhook", "mqtt"}
        assert await b.digest(digest, local(0, 30)) == []  # outside service hours (05:00-23:30)
        await until(lambda: b.pending() == 0, b)
    digests = [s.text for s in server.mastodon_statuses() if "运营快报" in s.text]
    assert len(digests) == 3
    assert len(set(digests)) == 3  # each carries its own "as of" stamp
    assert "08:15" in digests[1]
    assert "2号线列车延误" in digests[2]
    assert "信号故障" in digests[2]


async def test_a_digest_posts_with_the_template_its_config_names(
    rig: Rig, server: MicroblogServer, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    for lang, title in (("zh", "本周线网"), ("en", "This week")):
        (templates / f"weekly.{lang}.j2").write_text(
            title + " {{ as_of }}: {% for l in lines %}{{ l.name }} {{ l.status }}; {% endfor %}\n", encoding="utf-8")
    config = rig.config(channels=tables(server)[:1], templates={"directory": str(templates)},
                        digests=[{"name": "week", "template": "weekly", "channels": ["mastodon", "mqtt"]}])
    async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await poll_all(b)
        assert sorted(await b.digest(config.digests[0], local(8, 0))) == ["mastodon", "mqtt"]
        await until(lambda: b.pending() == 0, b)
        streamed = await notices.wait_for(lambda got: any(p["kind"] == "digest" for p in payloads(got)))
    [status] = server.mastodon_statuses()
    assert status.text.startswith("本周线网 08:00: 1号线"), status.text
    assert "运营快报" not in status.text  # the built-in digest template was not used
    [notice] = [p for p in payloads(streamed) if p["kind"] == "digest"]
    assert notice["text"]["en"].startswith("This week 08:00: Line 1"), notice["text"]


async def test_a_digest_whose_template_is_gone_in_service_posts_with_the_built_in_digest_template(
    rig: Rig, server: MicroblogServer, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "weekly.zh.j2").write_text("{{ no_such_variable }}\n", encoding="utf-8")  # fails; en: none at all
    config = rig.config(channels=tables(server)[:1], templates={"directory": str(templates)},
                        digests=[{"name": "week", "template": "weekly", "channels": ["mastodon", "mqtt"]}])
    async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await poll_all(b)
        await b.digest(config.digests[0], local(8, 0))
        await until(lambda: b.pending() == 0, b)
        streamed = await notices.wait_for(lambda got: any(p["kind"] == "digest" for p in payloads(got)))
    [status] = server.mastodon_statuses()
    assert status.text.startswith("【运营快报 08:00】"), status.text  # not the bare "digest (08:00)"
    [notice] = [p for p in payloads(streamed) if p["kind"] == "digest"]
    assert notice["text"]["en"].startswith("Service update 08:00"), notice["text"]


async def test_quiet_windows_hold_routine_posts_but_not_emergencies(rig: Rig, server: MicroblogServer) -> None:
    quiet = tables(server)
    quiet[0]["quiet"] = [{"start": "00:00", "end": "23:59"}]  # Mastodon is quiet all day
    async with running(rig.config(channels=quiet)) as b:
        await poll_all(b)
        assert "mastodon" not in await b.digest(DigestConfig(), local(8, 0))
        rig.serve_rt(alert(SIGNAL))  # a normal notice: waits
        await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 2, b)  # digest + alert elsewhere
        assert server.mastodon_statuses() == []
        rig.serve_rt(alert(SIGNAL), alert({"zh": "3号线全线停运", "en": "Line 3 suspended"}, alert_id="A-L3",
                                          effect="NO_SERVICE", severity="SEVERE"))
        await poll_all(b)
        await until(lambda: len(server.mastodon_statuses()) == 1, b)
    assert "全线停运" in server.mastodon_statuses()[0].text  # the emergency went; the routine one still waits


async def test_an_emergency_overtakes_a_backlog_of_routine_posts(rig: Rig, server: MicroblogServer) -> None:
    clock = SteppedClock()
    async with running(rig.config(channels=tables(server)), clock=clock) as b:
        await poll_all(b)
        server.set_down("mastodon")
        for minute in (0, 15, 30, 45):
            await b.digest(DigestConfig(), local(9, minute))
        rig.serve_rt(alert({"zh": "3号线全线停运", "en": "Line 3 suspended"}, alert_id="A-L3", effect="NO_SERVICE",
                           severity="SEVERE"))
        await poll_all(b)
        server.set_down("mastodon", False)
        clock.offset += timedelta(minutes=10)  # past every backoff
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
    statuses = server.mastodon_statuses()
    assert "全线停运" in statuses[0].text
    assert statuses[0].spoiler_text == "紧急 Urgent"
    assert all("运营快报" in s.text for s in statuses[1:])


async def test_a_manual_notice_goes_everywhere_through_the_pipeline(rig: Rig, server: MicroblogServer) -> None:
    async with running(rig.config(channels=tables(server))) as b:
        await poll_all(b)
        notice_id = await b.announce(ManualNotice(
            {"zh": "明日首班车提前至5:00", "en": "First trains run from 05:00 tomorrow"}, line_ids=("1",),
            severity=Severity.INFO, until=datetime.now(UTC) + timedelta(hours=2), author="duty-officer",
        ))
        # Acknowledged only after its commit: it is in the outbox for every channel already.
        rows = b.db.conn.execute("SELECT channel FROM outbox WHERE notice_id = ?", (notice_id,)).fetchall()
        assert {r[0] for r in rows} == {"mqtt", "mastodon", "bluesky", "weibo", "webhook"}
        await until(lambda: b.pending() == 0, b)
        retained = await collect_retained(rig.mqtt_url, rig.topic("#"))
    alert_topic = rig.topic(f"lines/1/alerts/{notice_id.removeprefix('alert-')}")
    assert orjson.loads(retained[alert_topic])["header"]["zh"] == "明日首班车提前至5:00"
    display = orjson.loads(retained[rig.topic("stations/S01/display")])
    assert display["alerts"][0]["header"]["en"] == "First trains run from 05:00 tomorrow"
    assert "明日首班车" in server.mastodon_statuses()[0].text
    audit = (rig.tmp_path / "state" / "audit.log").read_text(encoding="utf-8").splitlines()
    assert orjson.loads(audit[0])["author"] == "duty-officer"


async def test_a_correction_replies_under_every_copy_and_replaces_the_retained_state(
    rig: Rig, server: MicroblogServer
) -> None:
    wrong = {"zh": "2号线全线停运", "en": "Line 2 suspended"}
    rig.serve_rt(alert(wrong, effect="NO_SERVICE", severity="SEVERE"))
    async with running(rig.config(channels=tables(server))) as b:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        fixed = {"zh": "2号线部分列车晚点，并未停运", "en": "Line 2: some delays, not suspended"}
        await b.correct("alert-A-L2", fixed, author="duty-officer")
        await until(lambda: b.pending() == 0, b)
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/2/#"))
        assert orjson.loads(retained[rig.topic("lines/2/alerts/A-L2")])["header"] == fixed
        await poll_all(b)  # the feed still says "suspended": the correction stays, nothing new is posted
        await until(lambda: b.pending() == 0, b)
    first, correction = server.mastodon_statuses()
    assert correction.in_reply_to_id == first.id
    assert correction.text.startswith("【更正】2号线部分列车晚点")
    root, b_correction = server.bluesky_posts()
    assert b_correction.reply_parent is not None
    assert b_correction.reply_parent.uri == root.uri
    assert len(server.weibo_statuses()) == 2
    assert len({d.header("idempotency-key") for d in server.webhook_deliveries("ops")}) == 2


async def test_a_correction_of_a_digest_replies_under_it(rig: Rig, server: MicroblogServer) -> None:
    async with running(rig.config(channels=tables(server))) as b:
        await poll_all(b)
        await b.digest(DigestConfig(), local(8, 0))
        await until(lambda: b.pending() == 0, b)
        await b.correct("digest-digest", {"zh": "8:00快报有误，2号线运营正常", "en": "The 08:00 update was wrong"})
        await until(lambda: b.pending() == 0, b)
    digest, correction = server.mastodon_statuses()
    assert correction.in_reply_to_id == digest.id
    assert "快报有误" in correction.text



async def test_preview_shows_every_post_with_its_count_and_publishes_nothing(
    rig: Rig, server: MicroblogServer
) -> None:
    from support import MessageRecorder

    from broadcaster.preview import preview, render_for_people

    rig.serve_rt(alert({"zh": "2号线" + "信号故障，列车限速运行，" * 20, "en": "Line 2: signal fault"}))
    config = rig.config(channels=tables(server))
    async with MessageRecorder(rig.mqtt_url, rig.topic("#")) as recorder:
        report = await preview(config)
        assert await recorder.settle(quiet=0.3) == []
    assert server.requests() == []  # not even the Mastodon instance was asked
    assert not config.database_path.exists()  # nothing queued, nothing committed
    assert report.feeds == {"ops": "ok", "flow": "ok"}
    weibo = [p for p in report.posts if p.channel == "weibo"]
    assert len(weibo) >= 2  # the long Chinese text is a thread on Weibo
    assert all(p.count is not None and p.limit == 140 and p.count <= 140 for p in weibo)
    assert {p.channel for p in report.posts} == {"mqtt", "mastodon", "bluesky", "weibo", "webhook"}
    assert rig.topic("lines/2/status") in report.mqtt
    text = render_for_people(report)
    assert "/ 140" in text
    assert "[zh]" in text  # escaped, not taken for markup


async def test_status_reports_feeds_outbox_and_latest_posts(rig: Rig, server: MicroblogServer) -> None:
    from broadcaster.status import status_report

    rig.serve_rt(alert(SIGNAL))
    config = rig.config(channels=tables(server))
    server.expire_weibo_token()
    async with running(config) as b:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
    report = status_report(config)
    assert [(f.name, f.healthy) for f in report.feeds] == [("ops", True), ("flow", True)]
    assert report.outbox["mastodon"] == {"sent": 1}
    assert report.outbox["weibo"] == {"parked": 1}
    assert "renew the access token" in (report.parked[0].error or "")
    assert {p.channel for p in report.latest} >= {"mqtt", "mastodon", "bluesky", "webhook"}
    assert "信号故障" in report.as_text()


async def test_a_correction_can_take_the_originals_down(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert({"zh": "2号线全线停运", "en": "Line 2 suspended"}, effect="NO_SERVICE", severity="SEVERE"))
    async with running(rig.config(channels=tables(server))) as b:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        originals = server.mastodon_statuses()[0], server.bluesky_posts()[0]
        await b.correct("alert-A-L2", {"zh": "2号线运营正常，此前通告有误", "en": "Line 2 runs normally"},
                        delete_originals=True)
        await until(lambda: b.pending() == 0, b)
        depth = b.history.depth()
    mastodon_gone, bluesky_gone = server.deleted()
    assert [s.id for s in mastodon_gone] == [originals[0].id]
    assert [p.uri for p in bluesky_gone] == [originals[1].uri]
    # The corrections stay up (they answered the deleted posts first); Weibo cannot delete: reported.
    assert "【更正】" in server.mastodon_statuses()[0].text
    assert depth[("weibo", "parked")] == 1
    deliveries = [d.json() for d in server.webhook_deliveries("ops")]
    assert [d["kind"] for d in deliveries] == ["alert_new", "correction", "delete"]
