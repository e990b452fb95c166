"""`broadcaster status`: feed health (with the records each feed's last good fetch skipped), outbox depth per
channel, parked posts, the latest posts and the schema version, read from the state database (safe while a
broadcaster runs: SQLite in WAL mode lets readers in; a database of an older release is migrated first, only when
no broadcaster holds the state directory)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from broadcaster.config import Config
from broadcaster.outbox import OutboxStatus
from broadcaster.outbox_history import OutboxHistory
from broadcaster.store import FeedRecord, KeyValueStore, Store, load_feeds
from broadcaster.store.factory import open_database

#: Where a running broadcaster records the broker its MQTT session is with (`Broadcaster.on_connected`).
BROKER_NAMESPACE, BROKER_KEY = "mqtt", "broker"


@dataclass
class FeedLine:
    name: str
    healthy: bool
    last_ok_at: str | None
    feed_age_s: float | None
    consecutive_failures: int
    last_error: str | None
    #: The records the last good fetch skipped, one line each naming the record and the reason.
    problems: list[str] = field(default_factory=list)
    #: Not fetched yet, well or badly (a fresh install, or a feed just added to the config).
    never_fetched: bool = False

    def verdict(self) -> str:
        if self.never_fetched:
            return "never fetched"
        if not self.healthy:
            return f"FAILING x{self.consecutive_failures}: {self.last_error}"
        return f"ok, {len(self.problems)} record(s) skipped" if self.problems else "ok"


@dataclass
class PostLine:
    channel: str
    notice_id: str
    part: int
    at: str | None
    text: str
    error: str | None = None


@dataclass
class StatusReport:
    feeds: list[FeedLine] = field(default_factory=list)
    outbox: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> status -> count
    parked: list[PostLine] = field(default_factory=list)
    latest: list[PostLine] = field(default_factory=list)
    #: The broker the latest MQTT session was with: url (scheme://host:port), protocol and since; None before
    #: the first session.
    broker: dict[str, str] | None = None
    #: The state database's schema version (docs/design.md, "How the schema evolves").
    schema_version: int | None = None
    #: This config's instance and its role now (broadcaster/ha): without `[ha]` the one instance, always
    #: "leader"; with it "leader" when the lease in the database names this instance, else "standby".
    instance: str = "sole"
    role: str = "leader"
    #: The instance holding the lease now (None: nobody; without `[ha]`, the one instance).
    leader: str | None = "sole"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        out = ["feeds:"]
        for f in self.feeds:
            age = f"{f.feed_age_s:.0f} s old" if f.feed_age_s is not None else "no data yet"
            out.append(f"  {f.name:<20} {f.verdict():<40} content {age}")
            out += [f"    skipped: {problem}" for problem in f.problems]
        out.append(f"database: schema version {self.schema_version}")
        out.append(f"instance: {self.instance}, {self.role} (leader: {self.leader or 'none, the lease is free'})")
        if self.broker is not None:
            out.append(f"broker: {self.broker.get('url')} (MQTT {self.broker.get('protocol')}), latest session since"
                       f" {self.broker.get('since')}")
        out.append(f"outbox ({' / '.join(OutboxStatus)}):")
        for channel, counts in sorted(self.outbox.items()):
            out.append(f"  {channel:<20} " + " / ".join(str(counts.get(s, 0)) for s in OutboxStatus))
        if self.parked:
            out.append("parked posts (need an operator):")
            out += [f"  {p.channel:<12} {p.notice_id} part {p.part}: {p.error}" for p in self.parked]
        out.append("latest posts:")
        out += [f"  {p.at or '':<26} {p.channel:<12} {p.notice_id}: {p.text}" for p in self.latest]
        return "\n".join(out)


def _excerpt(channel: str, payload: bytes, limit: int = 60) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    text = data.get("text", "")
    if isinstance(text, dict):  # the MQTT notice carries every language
        text = next(iter(text.values()), "")
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _broker_record(db: Store) -> dict[str, str] | None:
    raw = KeyValueStore(db, BROKER_NAMESPACE).get(BROKER_KEY)
    try:
        record = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else None


def _leader(config: Config) -> str | None:
    from broadcaster.ha.lease import connector, lease_holder

    return lease_holder(connector(config))


def status_report(config: Config, *, now: datetime | None = None, latest: int = 10) -> StatusReport:
    """What an operator needs to know at a glance, from the committed state."""
    now = now or datetime.now(UTC)
    db = open_database(config)
    try:
        report = StatusReport(schema_version=db.schema_version)
        if config.ha is not None:
            report.instance, report.leader = config.ha.instance, _leader(config)
            report.role = "leader" if report.leader == config.ha.instance else "standby"
        feeds = load_feeds(db)
        for feed in config.feeds:
            record = feeds.get(feed.name) or FeedRecord(feed.name)
            report.feeds.append(FeedLine(
                feed.name, record.healthy,
                record.last_ok_at.isoformat() if record.last_ok_at else None,
                (now - record.feed_timestamp).total_seconds() if record.feed_timestamp else None,
                record.consecutive_failures, record.last_error, list(record.problems), record.never_fetched,
            ))
        report.broker = _broker_record(db)
        outbox = OutboxHistory(db)
        for (channel, status), count in outbox.depth().items():
            report.outbox.setdefault(channel, {})[status] = count
        for r in outbox.parked(limit=20):
            report.parked.append(
                PostLine(r.channel, r.notice_id, r.part, None, _excerpt(r.channel, r.payload), r.error))
        for r in outbox.latest_sent(limit=latest):
            sent_at = r.sent_at.isoformat(timespec="seconds") if r.sent_at else None
            report.latest.append(PostLine(r.channel, r.notice_id, r.part, sent_at, _excerpt(r.channel, r.payload)))
        return report
    finally:
        db.close()
