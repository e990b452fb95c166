"""Prometheus metrics and the health reading they share with the admin API (the only prometheus_client import).

Counters and histograms are updated by the service as things happen (a poll, a send, a merge); gauges about
the present (feed health and age, the broker link, the outbox depth) are read when scraped, from the
broadcaster's memory and two cheap indexed queries, so nothing keeps them up to date in between.
Every instance has its own registry: tests and several broadcasters in one process never clash.

Delivery latency is measured per acknowledged outbox entry (each part of a thread counts): from the notice's
origin to the acknowledgement (the broker's PUBACK, the platform's 2xx). The origin is the header timestamp of
the feed snapshot that produced the notice (never later than the notice's `issued_at`); for operator notices,
corrections and digests it is their `issued_at`. Origins are kept in memory for the last `ORIGINS_KEPT`
notices; for an older one, or after a restart, the outbox row's `created_at` (when the notice was committed)
stands in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broadcaster import __version__
from broadcaster.compose import Notice, NoticeKind
from broadcaster.config import FeedConfig
from broadcaster.errors import FeedError, FeedFormatError, FetchError, StaleFeedError, StoreError
from broadcaster.outbox import PARKED, PENDING, OutboxEntry
from broadcaster.outbox_history import OutboxHistory
from broadcaster.state import AlertChange, Change, CrowdingChange, LineStatusChange
from broadcaster.store import FeedRecord

# No `*_created` series: they double the exposition and Prometheus needs none of them. (A process-wide
# switch; this is the only module that uses prometheus_client.)
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The text format's media type, for the HTTP layer (which must not import prometheus_client itself).
CONTENT_TYPE = CONTENT_TYPE_LATEST

POST_OUTCOMES = ("sent", "retry", "parked", "merged")
ORIGINS_KEPT = 4096

FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def reason_label(exc: FeedError) -> str:
    """A small, fixed vocabulary for why a poll failed (the free-text reason goes to the log, not a label)."""
    if isinstance(exc, FetchError):
        return "http_status" if exc.status is not None else "transport"
    if isinstance(exc, FeedFormatError):
        return "format"
    if isinstance(exc, StaleFeedError):
        return "stale"
    return "other"


def change_kind(change: Change) -> str:
    if isinstance(change, AlertChange):
        return f"alert_{change.kind.value}"
    if isinstance(change, CrowdingChange):
        return "crowding"
    assert isinstance(change, LineStatusChange)
    return "line_status"


# ------------------------------------------------------------------------------------------------------------
# Health: what /v1/health, /v1/status and the scrape-time gauges report


@dataclass(frozen=True, slots=True)
class FeedHealth:
    name: str
    kind: str
    #: The last poll succeeded and the feed's own timestamp is within its `max_age_seconds`.
    healthy: bool
    #: Seconds since the feed's own header timestamp; None before the first good fetch.
    age_seconds: float | None
    last_ok_at: datetime | None
    consecutive_failures: int
    last_error: str | None
    #: The records the last good fetch skipped, one line each naming the record and the reason.
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutboxDepth:
    pending: int = 0
    parked: int = 0
    #: Seconds since the oldest pending entry was committed; None when nothing is pending.
    oldest_pending_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Health:
    feeds: tuple[FeedHealth, ...]
    mqtt_connected: bool
    outbox: Mapping[str, OutboxDepth] = field(default_factory=dict)  # channel -> depth
    #: False when the canary shows acknowledged publishes not arriving (a broker dropping them silently).
    mqtt_delivering: bool = True
    #: The configured brokers as scheme://host:port, and the one the link's session is with (None: none).
    mqtt_brokers: tuple[str, ...] = ()
    mqtt_broker: str | None = None
    #: Why the state database takes no more writes (a sync of its log failed: store/wal_sync.py), or None.
    database_doubt: str | None = None
    #: How long the running sync of the database's log has taken so far (0 when none runs): every channel waits
    #: for it. Not unhealthy however long: a restart does not make a slow disk faster.
    database_sync_seconds: float = 0.0
    #: Why the database did not answer the read of the outbox this health was made with (then `outbox` is empty:
    #: unknown), or None.
    database_error: str | None = None

    @property
    def database_ok(self) -> bool:
        """The database answered, and is not in doubt."""
        return self.database_doubt is None and self.database_error is None

    @property
    def healthy(self) -> bool:
        """Every feed healthy, the broker connected and delivering, and the database writable and answering. A
        backlog alone is not unhealthy: a platform that is down must not get the broadcaster restarted by its
        supervisor. A database in doubt is: only a restart makes it usable again."""
        return (self.mqtt_connected and self.mqtt_delivering and self.database_ok
                and all(f.healthy for f in self.feeds))


def feed_health(feed: FeedConfig, record: FeedRecord | None, now: datetime) -> FeedHealth:
    if record is None:
        return FeedHealth(feed.name, feed.kind, False, None, None, 0, None)
    age = (now - record.feed_timestamp).total_seconds() if record.feed_timestamp is not None else None
    healthy = record.healthy and age is not None and age <= feed.max_age_seconds
    return FeedHealth(feed.name, feed.kind, healthy, age, record.last_ok_at, record.consecutive_failures,
                      record.last_error, record.problems)


def outbox_depth(outbox: OutboxHistory, channels: Iterable[str], now: datetime) -> dict[str, OutboxDepth]:
    """Pending and parked entries per channel (`OutboxHistory.backlog`: sent rows are never counted)."""
    counts: dict[str, dict[str, tuple[int, datetime]]] = {}
    for (channel, status), count_oldest in outbox.backlog().items():
        counts.setdefault(channel, {})[status] = count_oldest
    out: dict[str, OutboxDepth] = {}
    for channel in dict.fromkeys([*channels, *counts]):
        seen = counts.get(channel, {})
        pending = seen.get(PENDING)
        out[channel] = OutboxDepth(
            pending=pending[0] if pending else 0,
            parked=seen[PARKED][0] if PARKED in seen else 0,
            oldest_pending_seconds=max(0.0, (now - pending[1]).total_seconds()) if pending else None,
        )
    return out


def read_health(
    feeds: Sequence[FeedConfig],
    records: Mapping[str, FeedRecord],
    channels: Iterable[str],
    outbox: OutboxHistory,
    mqtt_connected: bool,
    now: datetime,
    *,
    mqtt_delivering: bool = True,
    mqtt_brokers: tuple[str, ...] = (),
    mqtt_broker: str | None = None,
    database_doubt: str | None = None,
    database_sync_seconds: float = 0.0,
) -> Health:
    """The broadcaster's health now, from its feed records, its broker link and its outbox. A database that does
    not answer the outbox's read (PostgreSQL past the statement timeout, a lost connection) is part of the answer,
    not an error: a health check must answer most of all then."""
    database_error: str | None = None
    try:
        depth = outbox_depth(outbox, channels, now)
    except (StoreError, sqlite3.Error) as exc:
        depth, database_error = {}, f"the outbox could not be read: {exc}"
    return Health(
        tuple(feed_health(f, records.get(f.name), now) for f in feeds),
        mqtt_connected,
        depth,
        mqtt_delivering,
        mqtt_brokers,
        mqtt_broker,
        database_doubt,
        database_sync_seconds,
        database_error,
    )


class _HealthCollector(Collector):
    """Gauges about the present, computed at scrape time."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._health()))

    @staticmethod
    def _families(health: Health | None = None) -> Iterator[Metric]:
        info = GaugeMetricFamily("broadcaster_info", "This broadcaster's version (always 1).", labels=["version"])
        up = GaugeMetricFamily("broadcaster_feed_up",
                               "1 when the feed's last poll succeeded and its content is within max_age_seconds.",
                               labels=["feed"])
        age = GaugeMetricFamily("broadcaster_feed_age_seconds",
                                "Seconds since the feed's own header timestamp (last good fetch).", labels=["feed"])
        last_ok = GaugeMetricFamily("broadcaster_feed_last_success_timestamp_seconds",
                                    "Unix time of the feed's last successful poll.", labels=["feed"])
        failures = GaugeMetricFamily("broadcaster_feed_consecutive_failures",
                                     "Failed polls of the feed in a row.", labels=["feed"])
        mqtt = GaugeMetricFamily("broadcaster_mqtt_connected", "1 while the MQTT broker link is up.")
        canary = GaugeMetricFamily("broadcaster_mqtt_canary_ok",
                                   "0 when acknowledged publishes do not come back through the broadcaster's own"
                                   " subscription (a broker dropping them silently, e.g. by ACL).")
        broker = GaugeMetricFamily("broadcaster_mqtt_broker",
                                   "1 for the broker (of mqtt.url or mqtt.urls, as scheme://host:port) the link is"
                                   " connected to, 0 for the others.", labels=["url"])
        depth = GaugeMetricFamily("broadcaster_outbox_entries",
                                  "Outbox entries per channel that are pending (queued or backing off) or parked.",
                                  labels=["channel", "status"])
        oldest = GaugeMetricFamily("broadcaster_outbox_oldest_pending_seconds",
                                   "Seconds since the oldest pending entry of the channel was committed.",
                                   labels=["channel"])
        database = GaugeMetricFamily("broadcaster_database_ok",
                                     "0 when the state database is in doubt (a sync of its log failed: no more writes"
                                     " and nothing more sent until a restart) or did not answer the health check's"
                                     " read (see database.error in /v1/status).")
        syncing = GaugeMetricFamily("broadcaster_database_sync_running_seconds",
                                    "Seconds the running sync of the state database's log has taken so far (0 when"
                                    " none runs); every channel waits for it.")
        if health is not None:
            info.add_metric([__version__], 1)
            for feed in health.feeds:
                up.add_metric([feed.name], 1 if feed.healthy else 0)
                if feed.age_seconds is not None:
                    age.add_metric([feed.name], feed.age_seconds)
                if feed.last_ok_at is not None:
                    last_ok.add_metric([feed.name], feed.last_ok_at.timestamp())
                failures.add_metric([feed.name], feed.consecutive_failures)
            mqtt.add_metric([], 1 if health.mqtt_connected else 0)
            canary.add_metric([], 1 if health.mqtt_delivering else 0)
            for url in health.mqtt_brokers:
                broker.add_metric([url], 1 if url == health.mqtt_broker else 0)
            for channel, d in health.outbox.items():
                depth.add_metric([channel, PENDING], d.pending)
                depth.add_metric([channel, PARKED], d.parked)
                oldest.add_metric([channel], d.oldest_pending_seconds or 0.0)
            database.add_metric([], 1 if health.database_ok else 0)
            syncing.add_metric([], health.database_sync_seconds)
        yield from (info, up, age, last_ok, failures, mqtt, canary, broker, depth, oldest, database, syncing)


# ------------------------------------------------------------------------------------------------------------
# The metrics the service updates


class Metrics:
    """The broadcaster's metrics. The service calls the verbs; `render()` is the scrape.

    Labelled children are looked up once and cached, so an update on the hot path is a dict lookup and an
    add under prometheus_client's lock.
    """

    def __init__(
        self,
        health: Callable[[], Health],
        *,
        feeds: Iterable[str] = (),
        channels: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._fetch_seconds = Histogram(
            "broadcaster_feed_fetch_seconds", "Time to fetch, parse and check one feed, per poll.", ["feed"],
            registry=r, buckets=FETCH_BUCKETS,
        )
        self._fetches = Counter(
            "broadcaster_feed_fetches", "Polls per feed by result: ok, or why the feed was unusable "
            "(http_status, transport, format, stale, other).", ["feed", "result"], registry=r,
        )
        self._changes = Counter(
            "broadcaster_changes", "Changes detected, per feed and kind (alert_new, alert_updated, alert_resolved, "
            "crowding, line_status).", ["feed", "kind"], registry=r,
        )
        self._posts = Counter(
            "broadcaster_posts", "Outbox entries per channel by outcome: sent (acknowledged), retry (a transient "
            "failure), parked (a permanent one), merged (folded into a merged post by the posting budget).",
            ["channel", "outcome"], registry=r,
        )
        self._latency = Histogram(
            "broadcaster_delivery_latency_seconds", "From a notice's origin (the feed's own timestamp, or when an "
            "operator notice, correction or digest was issued) to the broker's PUBACK or the platform's 2xx.",
            ["channel"], registry=r, buckets=LATENCY_BUCKETS,
        )
        self._retained = Counter(
            "broadcaster_retained_publications", "Retained MQTT publications by outcome (acked, unacked).",
            ["outcome"], registry=r,
        )
        self._audit_failures = Counter(
            "broadcaster_audit_failures", "Operator actions committed whose audit line could not be appended to "
            "state/audit.log (the entry went to the service log instead).", registry=r,
        )
        self._loop_errors = Counter(
            "broadcaster_loop_errors", "Unexpected failures of a long-running loop, which then retries: loop is "
            "drain:<channel>, poll:<feed>, digest:<name>, job:<name> or mqtt.", ["loop"], registry=r,
        )
        r.register(_HealthCollector(health))
        self._children: dict[tuple[object, ...], Counter | Histogram] = {}
        self._origins: dict[tuple[str, str], datetime] = {}
        for feed in feeds:
            self._child(self._fetches, feed, "ok")
            self._child(self._fetch_seconds, feed)
        for channel in channels:
            for outcome in POST_OUTCOMES:
                self._child(self._posts, channel, outcome)
            self._child(self._latency, channel)
        for outcome in ("acked", "unacked"):
            self._child(self._retained, outcome)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Counter | Histogram:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _inc(self, metric: Counter, *labels: str, amount: float = 1) -> None:
        child = self._child(metric, *labels)
        assert isinstance(child, Counter)
        child.inc(amount)

    def _observe(self, metric: Histogram, value: float, *labels: str) -> None:
        child = self._child(metric, *labels)
        assert isinstance(child, Histogram)
        child.observe(value)

    # -- the service's hooks ---------------------------------------------------------------------------------

    def fetch(self, feed: str, seconds: float, *, ok: bool, reason: str = "other") -> None:
        """One poll of `feed` took `seconds` and was usable (`ok`) or not, for `reason` (see `reason_label`)."""
        self._observe(self._fetch_seconds, seconds, feed)
        self._inc(self._fetches, feed, "ok" if ok else reason)

    def changes(self, feed: str, changes: Iterable[Change]) -> None:
        for change in changes:
            self._inc(self._changes, feed, change_kind(change))

    def post(self, channel: str, outcome: str, count: int = 1) -> None:
        """`count` outbox entries of `channel` had `outcome` (one of POST_OUTCOMES)."""
        self._inc(self._posts, channel, outcome, amount=count)

    def loop_error(self, loop: str) -> None:
        """The loop `loop` (see broadcaster_loop_errors) failed unexpectedly and will try again."""
        self._inc(self._loop_errors, loop)

    def delivery_latency(self, channel: str, seconds: float) -> None:
        self._observe(self._latency, max(0.0, seconds), channel)

    def retained(self, acked: int, unacked: int = 0) -> None:
        if acked:
            self._inc(self._retained, "acked", amount=acked)
        if unacked:
            self._inc(self._retained, "unacked", amount=unacked)

    def audit_failed(self) -> None:
        self._audit_failures.inc()

    def note_origins(self, notices: Iterable[Notice], source_timestamp: datetime | None) -> None:
        """Remember where each committed notice's latency starts: `source_timestamp` is the header timestamp of
        the feed snapshot that produced them (None for the operator's own snapshots)."""
        for notice in notices:
            origin = notice.issued_at
            if source_timestamp is not None and notice.kind not in (NoticeKind.CORRECTION, NoticeKind.DIGEST):
                origin = min(origin, source_timestamp)
            self._remember(notice.id, notice.version, origin)

    def _remember(self, notice_id: str, version: str, origin: datetime) -> None:
        origins = self._origins
        if len(origins) >= ORIGINS_KEPT:
            for key in list(origins)[: ORIGINS_KEPT // 8]:  # the oldest eighth, so this runs rarely
                del origins[key]
        origins[(notice_id, version)] = origin

    def origin_of(self, entry: OutboxEntry) -> datetime:
        return self._origins.get((entry.notice_id, entry.version), entry.created_at)

    def sent(self, channel: str, entry: OutboxEntry, acked_at: datetime) -> None:
        """`entry` was acknowledged on `channel` at `acked_at`."""
        self._inc(self._posts, channel, "sent")
        self.delivery_latency(channel, (acked_at - self.origin_of(entry)).total_seconds())

    def merged(self, channel: str, entries: Sequence[OutboxEntry], into: Iterable[tuple[str, str]]) -> None:
        """`entries` were folded into the posts `into` ((notice id, version) each), which inherit the earliest
        origin among them."""
        self.post(channel, "merged", len(entries))
        if entries:
            origin = min(self.origin_of(e) for e in entries)
            for notice_id, version in into:
                self._remember(notice_id, version, origin)

    # -- the scrape ------------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
