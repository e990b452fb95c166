"""The micro-blog channels end to end: feeds -> broadcaster -> a loopback server speaking each platform's API."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from google.transit import gtfs_realtime_pb2 as pb
from rig import Rig, SteppedClock, poll_all, running
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import (
    MicroblogServer,
    Platform,
    grapheme_count,
    mastodon_length,
    sign_webhook,
    weibo_length,
)

from broadcaster.service import Broadcaster

PLATFORMS: tuple[Platform, ...] = ("mastodon", "bluesky", "weibo", "webhook")


def channels(server: MicroblogServer, languages: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    langs = {"mastodon": ["zh", "en"], "bluesky": ["en"], "weibo": ["zh"], "webhook": ["zh", "en"]}
    langs.update(languages or {})
    return [
        {"name": "mastodon", "kind": "mastodon", "url": server.url, "token": {"env": "T_MASTODON"},
         "languages": langs["mastodon"], "emergency_spoiler_text": "紧急 Urgent", "timeout_seconds": 2},
        {"name": "bluesky", "kind": "bluesky", "url": server.url, "identifier": server.bluesky_identifier,
         "password": {"env": "T_BLUESKY"}, "languages": langs["bluesky"], "timeout_seconds": 2},
        {"name": "weibo", "kind": "weibo", "url": server.url, "access_token": {"env": "T_WEIBO"},
         "languages": langs["weibo"], "timeout_seconds": 2},
        {"name": "webhook", "kind": "webhook", "url": server.webhook_url("ops"), "secret": {"env": "T_HOOK"},
         "languages": langs["webhook"], "timeout_seconds": 2},
    ]


def alert(header: dict[str, str], *, alert_id: str = "A-L2", description: dict[str, str] | None = None,
          effect: str = "SIGNIFICANT_DELAYS", severity: str = "WARNING") -> pb.FeedEntity:
    return alert_entity(alert_id, header=header, description=description, informed=[selector(route_id="2")],
                        cause="TECHNICAL_PROBLEM", effect=effect, severity=severity)


SIGNAL = {"zh": "信号故障，列车晚点", "en": "Signal fault, trains delayed"}


def counts(server: MicroblogServer) -> dict[str, int]:
    return {
        "mastodon": len(server.mastodon_statuses()),
        "bluesky": len(server.bluesky_posts()),
        "weibo": len(server.weibo_statuses()),
        "webhook": len({d.header("idempotency-key") for d in server.webhook_deliveries("ops")}),
    }


async def until(condition: Callable[[], bool], b: Broadcaster, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Drain every channel until `condition` holds (bounded); the drain loops also run, this just nudges them."""
    async with asyncio.timeout(timeout):
        while not condition():
            b.dispatcher.wake()
            for channel in b.channels:
                await b.drain_due(channel)
            if not condition():
                await asyncio.sleep(0.05)  # let the drain loops and the server thread run; bounded above


async def test_a_new_alert_is_posted_once_on_every_channel_and_never_again(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    config = rig.config(channels=channels(server))
    async with running(config) as b:
        await poll_all(b)
        await until(lambda: counts(server) == dict.fromkeys(PLATFORMS, 1), b)
        await poll_all(b)  # nothing changed
    async with running(config) as b:  # a restart
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
    assert counts(server) == dict.fromkeys(PLATFORMS, 1)
    status = server.mastodon_statuses()[0]
    assert "信号故障" in status.text
    assert "Signal fault" in status.text
    assert status.language == "zh"
    assert status.idempotency_key is not None
    assert server.bluesky_posts()[0].langs == ("en",)
    assert "信号故障" in server.weibo_statuses()[0].text
    delivery = server.webhook_deliveries("ops")[0]
    assert delivery.signature_valid is True
    body = delivery.json()
    assert body["kind"] == "alert_new"
    assert body["key"] == delivery.header("idempotency-key")
    assert server.bluesky_login_count == 1  # one session, opened when first needed


async def test_updates_and_all_clears_thread_under_the_first_post(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        await until(lambda: len(server.mastodon_statuses()) == 1 and len(server.bluesky_posts()) == 1, b)
        rig.serve_rt(alert({"zh": "信号故障，预计晚点15分钟", "en": "Signal fault, 15 min delays"}))
        await poll_all(b)
        rig.serve_rt()
        for _ in range(2):  # resolve_after_missing = 2
            await poll_all(b)
        await until(lambda: len(server.mastodon_statuses()) == 3 and len(server.bluesky_posts()) == 3, b)
    first, update, clear = server.mastodon_statuses()
    assert first.in_reply_to_id is None
    assert update.in_reply_to_id == first.id
    assert clear.in_reply_to_id == first.id
    assert "15" in update.text
    root, b_update, b_clear = server.bluesky_posts()
    assert root.reply_root is None
    for reply in (b_update, b_clear):
        assert reply.reply_root is not None
        assert reply.reply_parent is not None
        assert reply.reply_root.uri == root.uri
        assert reply.reply_parent.uri == root.uri
    assert "RESOLVED" in b_clear.text


LONG_ZH = (
    "受信号设备故障影响，2号线体育中心至滨江大道区段列车限速运行，行车间隔延长，各站客流较大。"
    "请乘客合理安排出行时间，可选择地面公交或其他线路绕行。工作人员正在全力抢修，预计恢复时间另行通知。"
)


async def test_long_chinese_and_mixed_notices_fit_every_platform_exactly(rig: Rig, server: MicroblogServer) -> None:
    header = {"zh": "2号线" + LONG_ZH * 2, "en": "Line 2: signal fault between Sports Centre and Riverside Avenue. "
              "Trains are running slowly and intervals are longer; stations are busy. Please allow extra time, "
              "or use buses and other lines. Engineers are working on it; https://metro.example/status/2 "
              "has the latest. #Line2"}
    rig.serve_rt(alert(header, description={"zh": LONG_ZH * 6, "en": "Details follow. " * 60}))
    async with running(rig.config(channels=channels(server, {"bluesky": ["zh", "en"]}))) as b:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b, timeout=20)
        parked = b.history.depth()
    assert not any(status == "parked" for _, status in parked), parked
    weibo = server.weibo_statuses()
    assert len(weibo) >= 2, "a 300-unit headline cannot fit Weibo's 140 in one post"
    assert all(weibo_length(s.text) <= 140 for s in weibo)
    assert [s.text.endswith(f"({i}/{len(weibo)})") for i, s in enumerate(weibo, 1)] == [True] * len(weibo)
    assert len(weibo) <= 3  # about 300 units of headline: two or three parts, not one per sentence
    posts = server.bluesky_posts()
    assert all(grapheme_count(p.text) <= 300 and len(p.text.encode()) <= 3000 for p in posts)
    for earlier, later in itertools.pairwise(posts):  # a split notice is a thread
        assert later.reply_parent is not None
        assert later.reply_parent.uri == earlier.uri
    link = [f for p in posts for f in p.facets if f["features"][0]["$type"].endswith("#link")]
    assert link, "the URL in the English text carries a link facet"
    tags = [f["features"][0]["tag"] for p in posts for f in p.facets if f["features"][0]["$type"].endswith("#tag")]
    assert tags == ["Line2"]
    statuses = server.mastodon_statuses()
    assert all(mastodon_length(s.text, s.spoiler_text) <= 500 for s in statuses)
    assert "https://metro.example/status/2" in "".join(s.text for s in statuses)


async def test_a_429_storm_is_waited_out_with_the_same_key(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        server.push_fault("mastodon", 429, headers={"Retry-After": "1"}, count=2)
        server.push_fault("bluesky", 429, headers={"ratelimit-reset": str(int(server.now().timestamp()) + 1)})
        await poll_all(b)
        await until(lambda: counts(server) == dict.fromkeys(PLATFORMS, 1), b, timeout=15)
    posts = [r for r in server.requests("mastodon") if r.path == "/api/v1/statuses"]
    assert [r.status for r in posts] == [429, 429, 200]
    assert len({r.header("idempotency-key") for r in posts}) == 1
    gaps = [later.monotonic - earlier.monotonic for earlier, later in itertools.pairwise(posts)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # never before Retry-After


async def test_one_channel_down_for_an_hour_does_not_hold_up_the_others(rig: Rig, server: MicroblogServer) -> None:
    server.set_down("mastodon")
    clock = SteppedClock()
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server)), clock=clock) as b:
        await poll_all(b)
        await until(lambda: {k: v for k, v in counts(server).items() if k != "mastodon"}
                    == {"bluesky": 1, "weibo": 1, "webhook": 1}, b)
        for _ in range(12):  # an hour of five-minute steps: every retry fails, nothing is posted twice
            clock.offset += timedelta(minutes=5)
            b.dispatcher.wake()
            await b.drain_due(b.channels[1])
        assert counts(server)["mastodon"] == 0
        server.set_down("mastodon", False)
        clock.offset += timedelta(minutes=5)
        await until(lambda: counts(server)["mastodon"] == 1, b)
    assert counts(server) == dict.fromkeys(PLATFORMS, 1)


async def test_mastodon_uncertain_post_older_than_55_minutes_is_parked_not_duplicated(
    rig: Rig, server: MicroblogServer
) -> None:
    clock = SteppedClock()
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server)), clock=clock) as b:
        server.hang("mastodon", 3, commit=True)  # the status is created, the answer never arrives in time
        await poll_all(b)
        await until(lambda: len([r for r in server.requests("mastodon") if r.path == "/api/v1/statuses"]) >= 1, b)
        clock.offset += timedelta(minutes=56)
        await until(lambda: ("mastodon", "parked") in b.history.depth(), b)
    assert len(server.mastodon_statuses()) == 1


async def test_mastodon_uncertain_post_retried_within_the_hour_is_deduplicated(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        server.hang("mastodon", 3, commit=True)
        await poll_all(b)
        await until(lambda: ("mastodon", "sent") in b.history.depth(), b, timeout=20)
    assert len(server.mastodon_statuses()) == 1
    posts = [r for r in server.requests("mastodon") if r.path == "/api/v1/statuses"]
    assert len(posts) >= 2
    assert len({r.header("idempotency-key") for r in posts}) == 1


async def test_bluesky_timeout_after_commit_is_found_not_reposted(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 1, b)  # the session is open now
        server.hang("bluesky", 3, commit=True)  # the record is written, the answer comes too late
        rig.serve_rt(alert({"zh": "信号故障，预计晚点15分钟", "en": "Signal fault, 15 min delays"}))
        await poll_all(b)
        await until(lambda: b.pending() == 0, b, timeout=20)
        server.expire_bluesky_tokens()
        rig.serve_rt()
        for _ in range(2):
            await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 3, b)
    assert len(server.bluesky_posts()) == 3
    assert server.bluesky_login_count == 1  # the expired access token was refreshed, not a new login
    lookups = [r for r in server.requests("bluesky") if r.path.endswith("com.atproto.repo.getRecord")]
    assert lookups, "after the uncertain attempt the channel looked the record up"
    writes = [r for r in server.requests("bluesky") if r.path.endswith("com.atproto.repo.createRecord")]
    # Three posts, one write each (the uncertain one was not repeated), plus one refused for the expired token.
    assert len([r for r in writes if r.status != 400]) == 3


async def test_weibo_repeat_content_after_an_uncertain_attempt_counts_as_delivered(
    rig: Rig, server: MicroblogServer
) -> None:
    server.hang("weibo", 3, commit=True)
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        await until(lambda: ("weibo", "sent") in b.history.depth(), b, timeout=20)
    assert len(server.weibo_statuses()) == 1
    # The retry was refused (20019, repeat content), which proved the first attempt had landed.
    assert [r.status for r in server.requests("weibo")][-1] == 400
    assert len(server.requests("weibo")) == 2


async def test_a_post_queued_behind_a_doubtful_weibo_post_waits_for_its_retry(
    rig: Rig, server: MicroblogServer
) -> None:
    # Weibo recognises a repeat only of the account's latest status: if a newer post went out between a doubtful
    # attempt (it landed, the answer never came) and its retry, the retry would post the same text again.
    server.hang("weibo", 3, commit=True)
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        def first_attempt_failed() -> bool:
            return bool(b.db.conn.execute("SELECT MAX(attempts) FROM outbox WHERE channel = 'weibo'").fetchone()[0])

        await until(first_attempt_failed, b, timeout=20)  # its retry now waits out a backoff
        rig.serve_rt(alert(SIGNAL), alert({"zh": "2号线：晚点", "en": "Line 2: late"}, alert_id="A-BEHIND"))
        await poll_all(b)  # a new notice while the first one's retry waits
        await until(lambda: b.history.depth().get(("weibo", "sent")) == 2, b, timeout=30)
    texts = [s.text for s in server.weibo_statuses()]
    assert len(texts) == 2
    assert len(set(texts)) == 2
    # The doubtful post's retry went first and was refused as a repeat (20019), proving it had landed.
    statuses = [r.status for r in server.requests("weibo")]
    assert statuses[1:] == [400, 200]  # the first answer never reached the client


async def test_permanent_errors_are_parked_and_reported(
    rig: Rig, server: MicroblogServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.expire_weibo_token()
    server.push_fault("webhook", 403, body={"error": "forbidden"})
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        await until(lambda: b.pending() == 0, b)
        depth = b.history.depth()
    assert depth[("weibo", "parked")] == 1
    assert depth[("webhook", "parked")] == 1
    assert depth[("mastodon", "sent")] == 1
    assert "renew the access token" in caplog.text
    assert "HTTP 403" in caplog.text


def test_webhook_signature_matches_what_a_receiver_computes() -> None:
    from broadcaster.channels.webhook import signature

    assert signature("s3cret", "1795651606", b'{"a":1}') == sign_webhook("s3cret", b'{"a":1}', "1795651606")


def test_config_with_a_missing_secret_is_a_config_error(
    rig: Rig, server: MicroblogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broadcaster.cli import main

    monkeypatch.delenv("T_WEIBO")
    path = rig.write_config(channels=channels(server))
    assert main(["once", "-c", str(path)]) == 2



async def test_weibo_posts_carry_the_safe_domain_link_and_still_fit(rig: Rig, server: MicroblogServer) -> None:
    server.weibo_safe_domain = "metro.example"  # like the real API: a status without such a link is refused
    tables = channels(server)
    tables[2]["link"] = "https://metro.example/notices"
    rig.serve_rt(alert({"zh": "2号线" + LONG_ZH * 2, "en": "x"}))
    async with running(rig.config(channels=tables)) as b:
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("weibo") == 0, b)
        assert ("weibo", "parked") not in b.history.depth()
    statuses = server.weibo_statuses()
    assert len(statuses) >= 2  # the long headline was split, and every part carries the link
    assert all(s.text.endswith("\nhttps://metro.example/notices") for s in statuses)
    assert all(weibo_length(s.text) <= 140 for s in statuses)


async def test_mastodon_limit_is_read_from_the_instance(rig: Rig, server: MicroblogServer) -> None:
    server.mastodon_max_characters = 120
    rig.serve_rt(alert({"zh": "2号线" + LONG_ZH, "en": "Line 2: signal fault, trains running slowly"}))
    async with running(rig.config(channels=channels(server))) as b:
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
        assert ("mastodon", "parked") not in b.history.depth()
    statuses = server.mastodon_statuses()
    assert len(statuses) >= 2  # 120 characters cannot hold it: a thread, each part within the instance's limit
    assert all(mastodon_length(s.text, s.spoiler_text) <= 120 for s in statuses)
    assert all(later.in_reply_to_id == earlier.id for earlier, later in itertools.pairwise(statuses))


async def test_weibo_repeat_content_without_an_earlier_attempt_is_parked(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        server.push_fault("weibo", 400, body={"error": "repeat content!", "error_code": 20019,
                                              "request": "/2/statuses/share.json"})
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("weibo") == 0, b)
        assert b.history.depth()[("weibo", "parked")] == 1
    assert server.weibo_statuses() == []


async def test_a_restart_reuses_the_bluesky_session(rig: Rig, server: MicroblogServer) -> None:
    config = rig.config(channels=channels(server))
    rig.serve_rt(alert(SIGNAL))
    async with running(config) as b:
        await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 1, b)
    server.expire_bluesky_tokens()  # the saved access token has expired meanwhile: refresh, do not log in
    rig.serve_rt(alert({"zh": "信号故障，预计晚点15分钟", "en": "Signal fault, 15 min delays"}))
    async with running(config) as b:
        await poll_all(b)
        await until(lambda: len(server.bluesky_posts()) == 2, b)
    assert server.bluesky_login_count == 1  # createSession is limited to 30 per 5 minutes per account
    assert (config.database_path.stat().st_mode & 0o777) == 0o600  # it holds the session


async def test_connections_reset_mid_request_are_retried_without_duplicates(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=channels(server))) as b:
        for platform in PLATFORMS:
            server.reset_connections(platform, 2)  # read the request, then drop the connection: twice
        await poll_all(b)
        await until(lambda: b.pending() == 0, b, timeout=20)
        assert not any(status == "parked" for _, status in b.history.depth())
    assert counts(server) == dict.fromkeys(PLATFORMS, 1)
