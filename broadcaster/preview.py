"""`broadcaster preview`: fetch every feed once and show exactly what would be posted, and where; publish nothing.

The real pipeline runs on a throw-away copy of the committed state: nothing is committed, queued,
published or sent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from broadcaster import __version__
from broadcaster.channels.base import ThreadRefs
from broadcaster.channels.factory import default_profile
from broadcaster.channels.mqtt import MqttLink, MqttNoticeChannel
from broadcaster.channels.mqtt.link import Delivery
from broadcaster.compose.routing import require_known_places
from broadcaster.config import ChannelConfig, Config
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.network import load_network
from broadcaster.outbox import OutboxEntry
from broadcaster.posts import DELETE_KIND, Post
from broadcaster.render import Renderer
from broadcaster.render.hashtags import require_known_overrides
from broadcaster.render.length import PlatformProfile
from broadcaster.retained import Publication
from broadcaster.service import Broadcaster
from broadcaster.store import Database, Store, copy_database
from broadcaster.store.factory import open_database, refuse_newer
from broadcaster.store.transfer import copy_state

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
    #: When a quiet window or the posting budget would hold it back (ISO 8601); None: it would go now.
    held_until: str | None = None
    #: Queued before this preview (a run's backlog: a platform down, a quiet window), not by this poll.
    queued_earlier: bool = False


@dataclass
class PreviewReport:
    feeds: dict[str, str] = field(default_factory=dict)  # name -> "ok" or the reason it failed
    notices: list[str] = field(default_factory=list)
    posts: list[PreviewPost] = field(default_factory=list)
    mqtt: dict[str, Any] = field(default_factory=dict)  # topic -> payload that would be published
    #: name -> the records its fetch skipped, one line each naming the record and the reason ([] for a failed feed)
    problems: dict[str, list[str]] = field(default_factory=dict)
    #: Each notice this preview queued ("notice_id version") -> the posting channels whose filters take it, in
    #: config order; [] for a notice that reaches no posting channel (only the MQTT notice stream carries it).
    routes: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unrouted(self) -> list[str]:
        """The notices no posting channel takes."""
        return [notice for notice, channels in self.routes.items() if not channels]

    def failed_feeds(self) -> list[str]:
        return [name for name, outcome in self.feeds.items() if outcome != OK]

    def verdict(self, feed: str) -> str:
        """"ok", "ok, N record(s) skipped", or why the feed failed."""
        skipped = len(self.problems.get(feed, []))
        outcome = self.feeds[feed]
        return f"{outcome}, {skipped} record(s) skipped" if outcome == OK and skipped else outcome


class _FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


class RecordingLink(MqttLink):
    """The broker link as the pipeline sees it, always connected, recording every publication instead of
    sending it (the one seam `preview` replaces)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config.mqtt)
        self.connected.set()
        self.recorded: list[Publication] = []

    async def publish(self, pub: Publication) -> None:
        self.recorded.append(pub)

    async def publish_many(self, publications: Sequence[Publication]) -> Delivery:
        self.recorded.extend(publications)
        return Delivery(list(publications), [])


class RecordingChannel:
    """A posting channel that records each post instead of sending it, with the length rule as configured."""

    def __init__(self, config: ChannelConfig) -> None:
        self.name = config.name
        self.profile: PlatformProfile | None = default_profile(config)
        self.posts: list[tuple[OutboxEntry, Post]] = []
        self.deleted: list[str] = []

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        self.posts.append((entry, Post.from_payload(entry.payload)))
        return f"preview-{entry.key}"

    async def delete(self, remote_id: str) -> None:
        self.deleted.append(remote_id)


#: An outbox entry as (channel, notice id, version, part): what tells a run's backlog from this poll's rows.
EntryId = tuple[str, str, str, int]


def _backlog(b: Broadcaster) -> set[EntryId]:
    """The entries already queued in the copy of the state, before this preview polls."""
    never = datetime.max.replace(tzinfo=UTC)
    return {(e.channel, e.notice_id, e.version, e.part)
            for channel in b.channels for e in b.outbox.due(channel.name, never, limit=100_000)}


def _routes(b: Broadcaster, backlog: set[EntryId]) -> dict[str, list[str]]:
    """Each notice queued since `backlog` was taken, with the posting channels it was queued for: read from the
    outbox before anything drains, so a budget's merge or a quiet window does not hide where it goes."""
    never = datetime.max.replace(tzinfo=UTC)
    routes: dict[str, list[str]] = {}
    for channel in b.channels:
        for entry in b.outbox.due(channel.name, never, limit=100_000):
            if (entry.channel, entry.notice_id, entry.version, entry.part) in backlog:
                continue
            channels = routes.setdefault(f"{entry.notice_id} {entry.version}", [])
            if channel.name != MqttNoticeChannel.name and channel.name not in channels:
                channels.append(channel.name)
    return routes


def _post_row(channel: RecordingChannel, entry: OutboxEntry, backlog: set[EntryId],
              held_until: datetime | None = None) -> PreviewPost:
    post = Post.from_payload(entry.payload)
    profile = channel.profile
    return PreviewPost(
        channel.name, post.notice_id, post.kind, post.part, post.parts, post.text,
        profile.count(post.text) if profile else None, profile.limit if profile else None,
        held_until.isoformat(timespec="seconds") if held_until else None,
        (entry.channel, entry.notice_id, entry.version, entry.part) in backlog,
    )


def _report_mqtt(report: PreviewReport, b: Broadcaster, publications: Sequence[Publication],
                 backlog: set[EntryId]) -> None:
    notices_topic = b.publisher.builder.topics.notices
    for publication in publications:
        body = orjson.loads(publication.payload) if publication.payload else None
        if publication.topic != notices_topic or body is None:
            report.mqtt[publication.topic] = body
            continue
        earlier = (MqttNoticeChannel.name, body["notice_id"], body["version"], 0) in backlog
        report.mqtt[f"{notices_topic} ({body['notice_id']})"] = body
        if not earlier:
            report.notices.append(f"{body['notice_id']} {body['version']}")
        report.posts += [PreviewPost("mqtt", body["notice_id"], body["kind"], 0, 1, f"[{lang}] {text}", None, None,
                                     queued_earlier=earlier)
                         for lang, text in body["text"].items()]


async def _run(config: Config, db: Store, now: datetime, report: PreviewReport) -> None:
    network = load_network(config.network.gtfs, config.network.default_language)
    require_known_places(config, network)
    require_known_overrides(config, network)
    link = RecordingLink(config)
    channels = [RecordingChannel(c) for c in config.channels]
    async with FeedFetcher(user_agent=f"broadcaster/{__version__} (preview)") as fetcher:
        b = Broadcaster(config, network, Renderer(config.templates.directory), db, fetcher, link,
                        posting=channels, clock=_FixedClock(now))
        backlog = _backlog(b)
        # What `run` does at its first ticks besides polling: operator notices whose `until` has passed end, and
        # requests the command line queued for the service are carried out.
        await b.expire_operator_notices()
        await b.process_requests()
        outcomes = await b.poll_round()
    report.routes = _routes(b, backlog)
    for outcome in outcomes:
        report.feeds[outcome.feed] = OK if outcome.ok else str(outcome.error)
        record = b.feeds.get(outcome.feed)
        report.problems[outcome.feed] = list(record.problems) if outcome.ok and record is not None else []
    for channel in b.channels:
        await b.drain_due(channel)
    _report_mqtt(report, b, link.recorded, backlog)
    for recording in channels:
        report.posts += [_post_row(recording, entry, backlog) for entry, post in recording.posts
                         if post.kind != DELETE_KIND]
        for entry in b.outbox.due(recording.name, datetime.max.replace(tzinfo=UTC), limit=100_000):
            report.posts.append(_post_row(recording, entry, backlog, entry.next_attempt_at))


async def preview(config: Config, *, now: datetime | None = None) -> PreviewReport:
    """What the next poll of every feed would post and publish, without doing any of it.

    The real pipeline runs (poll, state, compose, render, outbox, dispatch) against a throw-away copy of the
    state database, so corrections, operator notices, quiet windows and what is already on the broker count as
    they would in `run`; the broker link and the posting channels record instead of sending.
    """
    report = PreviewReport()
    with tempfile.TemporaryDirectory(prefix="broadcaster-preview-") as scratch:
        # The whole state directory is the scratch one, not only the database: whatever the parts write there
        # (the audit log of a queued request carried out) stays in the throw-away copy.
        throwaway = config.model_copy(update={"state": config.state.model_copy(update={"directory": Path(scratch)})})
        refuse_newer(config)  # named by its own path, not the throw-away copy's
        if config.storage is None and config.database_path.exists():
            copy_database(config.database_path, throwaway.database_path)
        db = Database(throwaway.database_path, keep_copy=False)  # an older one migrates, like `run` would
        try:
            if config.storage is not None:  # PostgreSQL: its rows into the throw-away file, read only
                _copy_from(open_database(config), db)
            await _run(throwaway, db, now or datetime.now(UTC), report)
        finally:
            db.close()
    return report


def _copy_from(source: Store, copy: Database) -> None:
    try:
        with copy.transaction() as conn:
            copy_state(source, conn)
    finally:
        source.close()


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
    for column in ("channel", "notice", "part", "count / limit", "goes", "text"):
        posts.add_column(column, overflow="fold")
    for p in report.posts:
        part = f"{p.part + 1}/{p.parts}"
        count = f"{p.count} / {p.limit}" if p.limit else "-"
        goes = f"held until {p.held_until}" if p.held_until else "now"
        if p.queued_earlier:
            goes += " (queued earlier)"
        posts.add_row(escape(p.channel), escape(p.notice_id), part, count, goes, escape(p.text))
    console.print(posts)
    for line in _route_lines(report) if report.routes else []:
        console.print(escape(line))
    console.print(f"MQTT: {len(report.mqtt)} message(s) would be published; --json shows them")
    for topic in list(report.mqtt)[:20]:
        console.print(f"  {escape(topic)}")
    return buffer.getvalue()


def _route_lines(report: PreviewReport) -> list[str]:
    """Where each notice goes: its posting channels, or a plain line that none takes it."""
    out = ["where each notice goes (the channels' filters: notices, lines, stations, severity):"]
    for notice, channels in report.routes.items():
        goes = ", ".join(channels) if channels else "NO CHANNEL takes it; only the MQTT notice stream carries it"
        out.append(f"  {notice} -> {goes}")
    return out


def as_json(report: PreviewReport) -> str:
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode()
