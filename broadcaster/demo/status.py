"""What the operator dashboard shows, as JSON: the story's clock, feed health, outbox depth, the latest posts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broadcaster.config import Config
from broadcaster.demo.clock import ScenarioClock
from broadcaster.demo.counts import counts
from broadcaster.demo.recorder import PostLog, SentPost
from broadcaster.demo.scenario import Scenario
from broadcaster.errors import StoreError
from broadcaster.outbox import PARKED, PENDING, SENT
from broadcaster.service import Broadcaster


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def scenario_status(clock: ScenarioClock, scenario: Scenario) -> dict[str, Any]:
    now = clock.now()
    current, upcoming = scenario.milestones_around(now)
    return {
        "time": now.strftime("%H:%M:%S"),
        "speed": clock.speed,
        "paused": clock.paused,
        "now": {"at": current.at.strftime("%H:%M"), "text": current.text.as_dict()} if current else None,
        "next": {"at": upcoming.at.strftime("%H:%M"), "text": upcoming.text.as_dict()} if upcoming else None,
        "milestones": [
            {"at": m.at.strftime("%H:%M"), "text": m.text.as_dict()} for m in scenario.script.milestones
        ],
    }


def feed_status(config: Config, b: Broadcaster | None, now: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for feed in config.feeds:
        record = b.feeds.get(feed.name) if b is not None else None
        age = None
        if record is not None and record.feed_timestamp is not None:
            age = round((now - record.feed_timestamp).total_seconds())
        out.append({
            "name": feed.name,
            "kind": feed.kind,
            "url": feed.url,
            "healthy": bool(record and record.healthy),
            "last_ok_at": _iso(record.last_ok_at) if record else None,
            "age_s": age,
            "max_age_s": feed.max_age_seconds,
            "last_error": record.last_error if record else None,
            "consecutive_failures": record.consecutive_failures if record else 0,
        })
    return out


def _post(post: SentPost) -> dict[str, Any]:
    return {
        "sent_at": post.sent_at.isoformat(),
        "notice_id": post.notice_id,
        "kind": post.kind,
        "remote_id": post.remote_id,
        "texts": [
            {
                "language": language,
                "text": text,
                "counts": [
                    {"platform": c.platform, "count": c.count, "limit": c.limit, "fits": c.fits} for c in counts(text)
                ],
            }
            for language, text in post.texts.items()
        ],
    }


def channel_status(config: Config, b: Broadcaster | None, posts: PostLog) -> list[dict[str, Any]]:
    depth: dict[tuple[str, str], int] = {}
    if b is not None:
        try:
            depth = b.history.depth()
        except StoreError:
            depth = {}
    kinds = {"mqtt": "mqtt", **{c.name: c.kind for c in config.channels}}
    return [
        {
            "name": name,
            "kind": kind,
            "pending": depth.get((name, PENDING), 0),
            "sent": depth.get((name, SENT), 0),
            "parked": depth.get((name, PARKED), 0),
            "posts": [_post(p) for p in posts.latest(name)],
        }
        for name, kind in kinds.items()
    ]


def dashboard_status(
    *, config: Config, clock: ScenarioClock, scenario: Scenario, b: Broadcaster | None, posts: PostLog,
    now: datetime,
) -> dict[str, Any]:
    channels = channel_status(config, b, posts)
    return {
        "scenario": scenario_status(clock, scenario),
        "broadcaster": {
            "running": b is not None,
            "mqtt_connected": bool(b is not None and b.link.connected.is_set()),
            "mqtt_error": b.link.last_error if b is not None else None,
        },
        "feeds": feed_status(config, b, now),
        "outbox": {"pending": sum(c["pending"] for c in channels), "parked": sum(c["parked"] for c in channels)},
        "channels": channels,
    }
