"""Posting budgets: room left per window, merging a backlog, and emergencies never held back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.transit import gtfs_realtime_pb2 as pb
from rig import Rig, SteppedClock, poll_all, running
from support import LoopbackHttpServer, MosquittoBroker
from support.gtfs_rt_builders import alert_entity, selector
from support.microblog_server import MicroblogServer, mastodon_length
from test_channels import until

from broadcaster.budget import allowance, merge
from broadcaster.channels.base import Post
from broadcaster.config import BudgetLimit
from broadcaster.outbox import OutboxEntry
from broadcaster.render.length import weibo

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def test_allowance_is_the_tightest_window() -> None:
    limits = [BudgetLimit(posts=5, seconds=3600), BudgetLimit(posts=2, seconds=60)]
    sent = [T0 - timedelta(minutes=m) for m in (0.5, 0.75, 10, 20)]
    room = allowance(limits, sent, T0)
    assert room.posts == 0
    assert room.next_slot_at == T0 - timedelta(minutes=0.75) + timedelta(seconds=60)
    assert allowance(limits, sent[2:], T0).posts == 2
    assert allowance(limits, [], T0).posts == 2


def entry(i: int, text: str) -> OutboxEntry:
    post = Post(f"alert-{i}", "alert_new", text, "zh")
    return OutboxEntry(f"k{i}", f"alert-{i}", "v", "weibo", 0, 1, post.to_payload(), T0, 0, T0)


def test_merge_keeps_every_headline_within_the_length_rule() -> None:
    entries = [entry(i, f"{i}号线：设备故障，列车晚点约10分钟\n详细说明{i}" * 2) for i in range(1, 7)]
    posts = merge(entries, weibo())
    assert 1 <= len(posts) <= 2
    joined = "".join(p.text for p in posts)
    for i in range(1, 7):
        assert f"{i}号线：设备故障" in joined
    assert all(weibo().fits(p.text) for p in posts)
    assert len({p.notice_id for p in posts}) == 1


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
