"""Posting budgets: room left per window, merging a backlog, and emergencies never held back."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from google.transit import gtfs_realtime_pb2 as pb
from rig import Rig, SteppedClock, poll_all, running
from support import LoopbackHttpServer, MosquittoBroker
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import MicroblogServer, mastodon_length
from support.wal_gate import WalGate
from test_channels import until
from test_no_doubled_words import alert_notice, render

from broadcaster.budget import allowance, mergeable
from broadcaster.compose import NoticeKind, Priority
from broadcaster.config import BudgetLimit, WeiboChannelConfig
from broadcaster.posts import MERGED_KIND, Post
from broadcaster.render.length import weibo
from broadcaster.render.posts import HEADLINE, merged_posts, posts_for
from broadcaster.store import Database

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_allowance_is_the_tightest_window() -> None:
    limits = [BudgetLimit(posts=5, seconds=3600), BudgetLimit(posts=2, seconds=60)]
    sent = [T0 - timedelta(minutes=m) for m in (0.5, 0.75, 10, 20)]
    room = allowance(limits, sent, T0)
    assert room.posts == 0
    assert room.next_slot_at == T0 - timedelta(minutes=0.75) + timedelta(seconds=60)
    assert allowance(limits, sent[2:], T0).posts == 2
    assert allowance(limits, [], T0).posts == 2


def post(i: int, text: str, brief: str | None = None) -> Post:
    return Post(f"alert-{i}", "alert_new", text, "zh", brief=brief)


def test_merge_keeps_every_brief_form_within_the_length_rule() -> None:
    posts = [post(i, f"{i}号线：设备故障，列车晚点约10分钟\n详细说明{i}" * 2, brief=f"{i}号线：设备故障")
             for i in range(1, 7)]
    merged = merged_posts(posts, weibo(), "merged-1")
    assert 1 <= len(merged) <= 2
    joined = "".join(p.text for p in merged)
    for i in range(1, 7):
        assert f"{i}号线：设备故障" in joined
    assert "详细说明" not in joined  # the full texts did not fit together: the brief forms were joined
    assert all(weibo().fits(p.text) for p in merged)
    assert {p.notice_id for p in merged} == {"merged-1"}
    assert {p.kind for p in merged} == {MERGED_KIND}


def test_a_post_queued_before_briefs_existed_is_read_and_merged_by_its_text() -> None:
    old = orjson.loads(post(1, "1号线：设备故障\n" + "详细说明" * 40).to_payload())
    assert "brief" not in old  # a post without a brief writes the payload as before
    queued = Post.from_payload(orjson.dumps(old))
    assert queued.brief is None
    both = merged_posts([queued, post(2, "2号线：设备故障\n详细说明" * 20, brief="2号线简报")], weibo(), "m")
    # The old post offers its first line, as merges did before briefs: an old backlog still merges into one post.
    assert [p.text for p in both] == ["1号线：设备故障\n2号线简报"]
    with_brief = Post("alert-3", "alert_new", "text", "zh", languages=("zh",), brief="brief")
    assert Post.from_payload(with_brief.to_payload()) == with_brief


def test_a_merged_post_is_tagged_with_every_language_it_holds() -> None:
    """Bluesky's `langs` and Mastodon's `language` come from the post: a merge of a Chinese post and a bilingual
    one holds both languages (before: tagged with the first post's language alone)."""
    chinese = Post("alert-1", "alert_new", "1号线：设备故障", "zh")
    bilingual = Post("alert-2", "alert_new", "2号线：设备故障 / Line 2: fault", "zh", languages=("zh", "en"))
    english = Post("alert-3", "alert_new", "Line 3: fault", "en")
    [merged] = merged_posts([chinese, bilingual, english], weibo(), "m")
    assert merged.language == "zh"
    assert merged.all_languages == ("zh", "en")


def test_only_untried_standalone_routine_posts_are_mergeable() -> None:
    assert mergeable(post(1, "x"), priority=2, tried=False)
    assert not mergeable(post(1, "x"), priority=0, tried=False)  # an emergency
    assert not mergeable(post(1, "x"), priority=2, tried=True)  # may already be on the platform
    assert not mergeable(Post("a", "alert_new", "x", "zh", parts=2), priority=2, tried=False)
    assert not mergeable(Post("a", "alert_updated", "x", "zh", reply_to_notice="a"), priority=2, tried=False)
    assert not mergeable(Post("m", MERGED_KIND, "x", "zh"), priority=2, tried=False)


def test_a_standalone_routine_post_carries_its_brief_form_rendered_from_the_templates() -> None:
    notice = alert_notice(description=True)
    weibo_channel = WeiboChannelConfig.model_validate({
        "name": "w", "kind": "weibo", "access_token": {"env": "X"}, "languages": ["zh"],
        "link": "https://m.example/s"})
    at = render(notice)
    (routine,) = posts_for(notice, weibo_channel, weibo(2000), at, "zh")
    assert routine.brief == at("zh", HEADLINE) + "\nhttps://m.example/s"  # the headline level, with the link
    assert routine.brief != routine.text
    # Posts a budget never merges carry none: an emergency's, and an update's (a reply keeps its thread).
    (emergency,) = posts_for(replace(notice, priority=Priority.EMERGENCY), weibo_channel, weibo(2000), at, "zh")
    (update,) = posts_for(replace(notice, kind=NoticeKind.ALERT_UPDATED), weibo_channel, weibo(2000), at, "zh")
    assert (emergency.brief, update.brief) == (None, None)


@pytest.fixture
def rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str,
        microblog: MicroblogServer, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setenv("T_MASTODON", microblog.mastodon_token)
    r = Rig(tmp_path, http_server, mosquitto.url, topic_prefix)
    r.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    return r


def alerts(count: int, *, start: int = 0, emergency: int | None = None) -> list[pb.FeedEntity]:
    out = []
    for i in range(start, start + count):
        severe = i == emergency
        out.append(alert_entity(
            f"A-{i}", header={"zh": f"第{i}号：{'全线停运' if severe else '电梯维修'}", "en": f"No. {i}"},
            informed=[selector(route_id=str(1 + i % 3))], effect="NO_SERVICE" if severe else "OTHER_EFFECT",
            severity="SEVERE" if severe else "INFO",
        ))
    return out


async def test_a_backlog_over_budget_is_merged_and_emergencies_are_never_held(
    rig: Rig, microblog: MicroblogServer
) -> None:
    channel = {"name": "mastodon", "kind": "mastodon", "url": microblog.url, "token": {"env": "T_MASTODON"},
               "languages": ["zh"], "budget": [{"posts": 3, "seconds": 10800}]}
    clock = SteppedClock()
    rig.serve_rt(*alerts(6, emergency=5))
    async with running(rig.config(channels=[channel]), clock=clock) as b:
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
        statuses = microblog.mastodon_statuses()
        assert "全线停运" in statuses[0].text  # the emergency went first, on its own
        assert len(statuses) == 2  # the five others were merged into one post
        for i in range(5):
            assert f"第{i}号" in statuses[1].text
        assert all(mastodon_length(s.text) <= 500 for s in statuses)

        # One post left in the budget: two new routine notices are merged into it...
        rig.serve_rt(*alerts(6, emergency=5), *alerts(2, start=6))
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
        assert len(microblog.mastodon_statuses()) == 3
        # ...and now the budget is spent: a routine notice waits, an emergency does not.
        rig.serve_rt(*alerts(6, emergency=5), *alerts(2, start=6), *alerts(2, start=8, emergency=9))
        await poll_all(b)
        await until(lambda: len(microblog.mastodon_statuses()) == 4, b)
        assert "全线停运" in microblog.mastodon_statuses()[3].text
        assert b.outbox.pending_count("mastodon") == 1
        clock.offset += timedelta(hours=3, minutes=1)
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
    assert "第8号" in microblog.mastodon_statuses()[4].text


#: An operator's alert template whose brief form (detail 0) is not the first line of its full text: a merge that
#: takes first lines of the rendered posts says "第1号：电梯维修", the template says "简报：第1号：电梯维修".
BRIEF_DIFFERS = (
    "{% if detail == 0 %}简报：{{ header }}{% else %}{{ header }}\n"
    "{{ '本次维修期间请改乘其他线路，给您带来不便敬请谅解。' * 6 }}{% endif %}\n"
)


async def test_a_merged_post_says_what_the_templates_brief_form_says(
    rig: Rig, microblog: MicroblogServer, tmp_path: Path
) -> None:
    """Merging is no second renderer: when the full texts do not fit one post together, the merged post joins
    each notice's brief form as the operator's template renders it at the headline detail, at commit."""
    templates = tmp_path / "operator-templates"
    templates.mkdir()
    (templates / "alert_new.zh.j2").write_text(BRIEF_DIFFERS, encoding="utf-8")
    channel = {"name": "mastodon", "kind": "mastodon", "url": microblog.url, "token": {"env": "T_MASTODON"},
               "languages": ["zh"], "budget": [{"posts": 1, "seconds": 10800}]}
    rig.serve_rt(*alerts(4))
    async with running(rig.config(channels=[channel], templates={"directory": str(templates)}),
                       clock=SteppedClock()) as b:
        await poll_all(b)
        await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
    statuses = microblog.mastodon_statuses()
    assert len(statuses) == 1  # four notices, one post left in the budget: merged
    for i in range(4):
        assert f"简报：第{i}号：电梯维修" in statuses[0].text
    assert "敬请谅解" not in statuses[0].text  # the full texts (four long paragraphs) did not fit together
    assert mastodon_length(statuses[0].text) <= 500


async def test_a_merged_post_is_sent_only_after_a_sync_made_after_its_merge(
    rig: Rig, microblog: MicroblogServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A merge commits new rows, which wait for the disk like any other (Dispatcher._due goes back to the barrier
    after it): a review found the merged post read, and sent, right after the merge's own commit."""
    channel = {"name": "mastodon", "kind": "mastodon", "url": microblog.url, "token": {"env": "T_MASTODON"},
               "languages": ["zh"], "budget": [{"posts": 1, "seconds": 10800}]}
    rig.serve_rt(*alerts(4))
    async with running(rig.config(channels=[channel])) as b:
        assert isinstance(b.db, Database)
        gate = WalGate()
        b.db.wal.sync_file = gate
        with caplog.at_level(logging.WARNING, logger="broadcaster.dispatcher"):
            await poll_all(b)
            await until(lambda: b.outbox.pending_count("mastodon") == 0, b)
    [merged_at] = [r.created for r in caplog.records if "merged into" in r.getMessage()]
    [post] = [r for r in microblog.requests("mastodon") if r.method == "POST" and r.path == "/api/v1/statuses"]
    assert any(merged_at < started < post.at.timestamp() for started in gate.started)
