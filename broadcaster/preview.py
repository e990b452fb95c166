"""`broadcaster preview`: fetch every feed once and show exactly what would be posted, and where; publish nothing.

The feeds go through the same parse, diff, compose and render steps as in service, against the committed
state, but nothing is committed, queued, published or sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from broadcaster import __version__
from broadcaster.channels.factory import default_profile
from broadcaster.compose import ComposePolicy, Notice, compose
from broadcaster.config import Config
from broadcaster.contract import Topics
from broadcaster.errors import FeedError, TemplateProblem
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.freshness import check_freshness
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.feeds.passenger_flow import parse_passenger_flow
from broadcaster.model import FeedSnapshot
from broadcaster.payloads import PayloadBuilder
from broadcaster.render import Renderer
from broadcaster.render.posts import FULL, posts_for
from broadcaster.retained import RetainedPlanner, SequenceClock
from broadcaster.service import emergency_rule, fallback_text, state_policy
from broadcaster.state import Change, NetworkState, apply_snapshot
from broadcaster.store import Database, StateStore

OK = "ok"


@dataclass
class PreviewPost:
    channel: str
    notice_id: str
    kind: str
    part: int
    parts: int
    text: str
    count: int | None  # in the platform's own unit; None for channels without a length rule
    limit: int | None


@dataclass
class PreviewReport:
    feeds: dict[str, str] = field(default_factory=dict)  # name -> "ok" or the reason it failed
    notices: list[str] = field(default_factory=list)
    posts: list[PreviewPost] = field(default_factory=list)
    mqtt: dict[str, Any] = field(default_factory=dict)  # topic -> payload body that would be published
    #: name -> the records its fetch skipped, one line each naming the record and the reason ([] for a failed feed)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failed_feeds(self) -> list[str]:
        return [name for name, outcome in self.feeds.items() if outcome != OK]

    def verdict(self, feed: str) -> str:
        """"ok", "ok, N record(s) skipped", or why the feed failed."""
        skipped = len(self.problems.get(feed, []))
        outcome = self.feeds[feed]
        return f"{outcome}, {skipped} record(s) skipped" if outcome == OK and skipped else outcome


def _render(renderer: Renderer, notice: Notice, language: str, detail: int) -> str:
    try:
        return renderer.render(notice.kind.value, language, {**notice.contexts[language], "detail": detail})
    except TemplateProblem:
        return fallback_text(notice, language)


async def preview(config: Config, *, now: datetime | None = None) -> PreviewReport:
    """What the next poll of every feed would post and publish, without doing any of it."""
    now = now or datetime.now(UTC)
    network = load_network(config.network.gtfs, config.network.default_language)
    renderer = Renderer(config.templates.directory)
    policy = state_policy(config)
    report = PreviewReport()
    state = NetworkState()
    planner = RetainedPlanner(timedelta(seconds=config.mqtt.retained_ttl_seconds), config.mqtt.max_payload_bytes,
                              SequenceClock())
    if config.database_path.exists():
        db = Database(config.database_path)
        try:
            state = StateStore(db).load()
            planner.load(db)
        finally:
            db.close()
    changes: list[Change] = []
    async with FeedFetcher(user_agent=f"broadcaster/{__version__} (preview)") as fetcher:
        for feed in config.feeds:
            try:
                result = await fetcher.fetch(feed.name, feed.url, timeout_s=feed.timeout_seconds,
                                             max_bytes=feed.max_bytes)
                body = result.body or b""
                snapshot: FeedSnapshot = (
                    parse_gtfs_rt(feed.name, body, network, carries=frozenset(feed.contains),
                                  default_language=config.network.default_language)
                    if feed.kind == "gtfs-rt" else parse_passenger_flow(feed.name, body, network)
                )
                check_freshness(feed.name, snapshot.timestamp, now=now, max_age_s=feed.max_age_seconds, previous=None)
            except FeedError as exc:
                report.feeds[feed.name] = exc.reason
                report.problems[feed.name] = []
                continue
            report.feeds[feed.name] = OK
            report.problems[feed.name] = list(snapshot.problems)
            transition = apply_snapshot(state, snapshot, network=network, now=now, policy=policy)
            changes += transition.changes
            state = transition.state
    compose_policy = ComposePolicy(config.zone, config.network.languages, emergency=emergency_rule(config))
    notices = compose(changes, network=network, now=now, policy=compose_policy)
    builder = PayloadBuilder(network, Topics(config.mqtt.topic_prefix), config.network.languages, policy,
                             emergency=emergency_rule(config))
    for notice in notices:
        report.notices.append(f"{notice.id} {notice.version}")
        texts = {lang: _render(renderer, notice, lang, FULL) for lang in notice.contexts}
        report.mqtt[f"{builder.topics.notices} ({notice.id})"] = builder.notice(notice, texts)
        report.posts += [PreviewPost("mqtt", notice.id, notice.kind.value, 0, 1, f"[{lang}] {text}", None, None)
                         for lang, text in texts.items()]

        def render(language: str, detail: int, notice: Notice = notice) -> str:
            return _render(renderer, notice, language, detail)

        for channel in config.channels:
            profile = default_profile(channel)
            for post in posts_for(notice, channel, profile, render, config.network.default_language):
                report.posts.append(PreviewPost(
                    channel.name, notice.id, notice.kind.value, post.part, post.parts, post.text,
                    profile.count(post.text) if profile else None, profile.limit if profile else None,
                ))
    for publication in planner.plan(builder.retained(state, now), now,
                                    fresh_sources={"gtfs-rt", "passenger-flow"}, full=False):
        report.mqtt[publication.topic] = orjson.loads(publication.payload) if publication.payload else None
    return report


def render_for_people(report: PreviewReport) -> str:
    """A terminal layout: feeds, then each post per channel with its count against the limit."""
    from io import StringIO

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    buffer = StringIO()
    console = Console(file=buffer, width=120, force_terminal=False)
    feeds = Table(title="feeds", show_lines=False)
    feeds.add_column("feed")
    feeds.add_column("result")
    for name in report.feeds:
        feeds.add_row(escape(name), escape(report.verdict(name)))
    console.print(feeds)
    skipped = [(name, problem) for name, problems in report.problems.items() for problem in problems]
    if skipped:
        table = Table(title="skipped records (the rest of each feed is used)", show_lines=False)
        table.add_column("feed")
        table.add_column("record: reason", overflow="fold")
        for name, problem in skipped:
            table.add_row(escape(name), escape(problem))
        console.print(table)
    posts = Table(title=f"{len(report.notices)} notice(s): posts per channel (nothing is sent)", show_lines=True)
    for column in ("channel", "notice", "part", "count / limit", "text"):
        posts.add_column(column, overflow="fold")
    for p in report.posts:
        part = f"{p.part + 1}/{p.parts}"
        count = f"{p.count} / {p.limit}" if p.limit else "-"
        posts.add_row(escape(p.channel), escape(p.notice_id), part, count, escape(p.text))
    console.print(posts)
    console.print(f"MQTT: {len(report.mqtt)} message(s) would be published; --json shows them")
    for topic in list(report.mqtt)[:20]:
        console.print(f"  {escape(topic)}")
    return buffer.getvalue()


def as_json(report: PreviewReport) -> str:
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()
