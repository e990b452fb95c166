"""The pipeline: one broadcaster over one network, its database, its broker link and its notice channels.

Every trigger travels the same path: fetch -> state -> compose -> render -> outbox -> channels. A poll
commits its new state, feed bookkeeping and the notices it produced in one SQLite transaction, then wakes
the drain loops (notices) and publishes the retained topics that changed (state).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Protocol

import orjson

from broadcaster import __version__, desk
from broadcaster.channels.base import DELETE_KIND, NoticeChannel, Post, PostingChannel
from broadcaster.channels.mqtt import MqttLink, MqttNoticeChannel
from broadcaster.compose import (
    ComposePolicy,
    EmergencyRule,
    Notice,
    compose,
    compose_correction,
    compose_digest,
    digest_fingerprint,
)
from broadcaster.config import ChannelConfig, Config, DigestConfig, FeedConfig
from broadcaster.contract import Topics
from broadcaster.dispatcher import DeliveryPolicy, Dispatcher
from broadcaster.errors import (
    BroadcasterError,
    FeedError,
    StoreError,
    TemplateProblem,
)
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.feeds.freshness import check_freshness
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.passenger_flow import parse_passenger_flow
from broadcaster.metrics import Health, Metrics, read_health, reason_label
from broadcaster.model import (
    Alert,
    FeedSnapshot,
    LocalizedText,
    Network,
    Severity,
)
from broadcaster.operator import (
    OPERATOR_FEED,
    Correction,
    ManualNotice,
    decode_corrections,
    encode_corrections,
    has_ended,
    queued_correction_texts,
)
from broadcaster.outbox import (
    DELETION_VERSION_PREFIX,
    Outbox,
    OutgoingMessage,
)
from broadcaster.payloads import PayloadBuilder
from broadcaster.publisher import RetainedPublisher
from broadcaster.render import Renderer
from broadcaster.render.posts import FULL, posts_for
from broadcaster.retained import RetainedPlanner, SequenceClock, serialise, with_envelope
from broadcaster.state import NetworkState, StatePolicy, Transition, alert_version, apply_snapshot
from broadcaster.store import (
    Database,
    FeedRecord,
    KeyValueStore,
    StateStore,
    decode_alert,
    encode_alert,
    iso,
    load_feeds,
    load_snapshot,
    load_snapshot_digests,
    save_feed,
    save_snapshot,
)

log = logging.getLogger(__name__)


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def parse_keys(config: Config, network: Network) -> dict[str, bytes]:
    """Feed name -> a hash of everything its parse depends on besides the body: the release, the feed's kind
    and settings, the default language and the network's ids. A stored snapshot is applied again on a 304
    only under the same key (a new GTFS or config, then a restart: the next fetch is unconditional)."""
    ids = orjson.dumps([__version__, config.network.default_language, list(network.lines),
                        dict(network.stop_to_station), dict(network.trip_to_line), dict(network.trip_direction)])
    return {f.name: _digest(ids + orjson.dumps([f.kind, sorted(f.contains)])) for f in config.feeds}


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def state_policy(config: Config) -> StatePolicy:
    s = config.state
    return StatePolicy(
        resolve_after_missing=s.resolve_after_missing,
        crowding_min_dwell=timedelta(seconds=s.crowding_min_dwell_seconds),
        crowding_hysteresis_percent=s.crowding_hysteresis_percent,
        crowding_trend_window=timedelta(seconds=s.crowding_trend_window_seconds),
        delay_threshold_s=int(s.delay_threshold_seconds),
        severe_delay_threshold_s=int(s.severe_delay_threshold_seconds),
    )


def fallback_text(notice: Notice, language: str) -> str:
    """Last resort when no template renders: the facts, plainly, so the notice still goes out."""
    ctx = notice.contexts.get(language, {})
    for key in ("header", "line", "station"):
        value = ctx.get(key)
        if isinstance(value, str) and value:
            return f"{value} ({ctx.get('as_of', '')})"
    return f"{notice.kind.value} ({ctx.get('as_of', '')})"


def emergency_rule(config: Config) -> EmergencyRule:
    return EmergencyRule(Severity[config.emergency.min_severity], frozenset(config.emergency.effects))


@dataclass(frozen=True, slots=True)
class PollOutcome:
    feed: str
    ok: bool
    changes: int = 0
    notices: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One pass through the pipeline, as decided under the state lock from the state found there.

    `operator_alerts` and `corrections` are the operator's state after this step (None: unchanged); they are
    committed with the network state and take effect together, so no other step can slip in between.
    """

    snapshot: FeedSnapshot
    operator_alerts: Mapping[str, Alert] | None = None
    corrections: Mapping[str, Correction] | None = None
    corrected: frozenset[str] = frozenset()
    extra_notices: Sequence[Notice] = ()
    extra_messages: Sequence[OutgoingMessage] = ()
    #: Writes into the same transaction, given the notices committed (a desk request records its result).
    record: Callable[[sqlite3.Connection, Sequence[Notice]], None] | None = None


def _without_resolved(corrections: dict[str, Correction], state: NetworkState) -> dict[str, Correction]:
    """The corrections whose alert is still in `state` (the same dict when none resolved)."""
    if all(alert_id in state.alerts for alert_id in corrections):
        return corrections
    return {alert_id: c for alert_id, c in corrections.items() if alert_id in state.alerts}


#: Writes into the transaction that commits an operator's request, given its result (a notice id or a
#: correction's version): the admin API remembers its answer to an `Idempotency-Key` there.
ResultHook = Callable[[sqlite3.Connection, str], None]


def _result_record(
    request_id: int | None, on_commit: ResultHook | None, result_of: Callable[[Sequence[Notice]], str]
) -> Callable[[sqlite3.Connection, Sequence[Notice]], None] | None:
    """A `Step.record` finishing the desk request `request_id` and running `on_commit` with the request's
    result, in the transaction that commits its notice (None: neither is asked for)."""
    if request_id is None and on_commit is None:
        return None

    def record(conn: sqlite3.Connection, notices: Sequence[Notice]) -> None:
        result = result_of(notices)
        if request_id is not None:
            desk.record(conn, request_id, result=result)
        if on_commit is not None:
            on_commit(conn, result)

    return record


class Broadcaster:
    """One pipeline over one network, one database, one broker link and its notice channels."""

    def __init__(
        self,
        config: Config,
        network: Network,
        renderer: Renderer,
        db: Database,
        fetcher: FeedFetcher,
        link: MqttLink,
        *,
        posting: Sequence[PostingChannel] = (),
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self.renderer = renderer
        self.db = db
        self.fetcher = fetcher
        self.link = link
        self.clock = clock or SystemClock()
        self.policy = state_policy(config)
        self.compose_policy = ComposePolicy(config.zone, config.network.languages, emergency=emergency_rule(config))
        self.topics = Topics(config.mqtt.topic_prefix)
        self.seq = SequenceClock()
        self.store = StateStore(db)
        self.state: NetworkState = self.store.load()
        self.feeds: dict[str, FeedRecord] = load_feeds(db)
        self.outbox = Outbox(db)
        ttl = timedelta(seconds=config.mqtt.retained_ttl_seconds)
        self.planner = RetainedPlanner(ttl, config.mqtt.max_payload_bytes, self.seq)
        self.planner.load(db)
        self.builder = PayloadBuilder(network, self.topics, config.network.languages, self.policy,
                                      emergency=emergency_rule(config))
        self.posting: list[tuple[PostingChannel, ChannelConfig]] = list(
            zip(posting or (), config.channels, strict=True)
        )
        self.channels: list[NoticeChannel] = [MqttNoticeChannel(link), *(c for c, _ in self.posting)]
        # One poll per feed at a time: a poll reads the feed's record (validators, last timestamp) before its fetch
        # and writes it after, so a second poll of the same feed (the start-up round beside a scheduled job) must
        # wait, or an older answer arriving late would be applied over a newer one.
        self._poll_locks = {f.name: asyncio.Lock() for f in config.feeds}
        # feed -> hash of the body last parsed and committed; its snapshot is in memory or in the database
        self._parse_keys = parse_keys(config, network)
        self._body_digests: dict[str, bytes] = load_snapshot_digests(db, self._parse_keys)
        self._snapshots: dict[str, FeedSnapshot] = {}  # feed -> what that body said
        # The operator's state: read and replaced only inside `_advance`'s critical section (see `Step`).
        self.operator_meta = KeyValueStore(db, "operator")
        self.operator_alerts: dict[str, Alert] = {}
        self.corrections: dict[str, Correction] = {}
        self._load_operator()
        marks = self.operator_meta.get("digests")
        self.digest_marks: dict[str, str] = orjson.loads(marks) if marks else {}
        self._state_lock = asyncio.Lock()
        self.metrics = Metrics(self.health, feeds=[f.name for f in config.feeds],
                               channels=[c.name for c in self.channels])
        self.delivery_policy = DeliveryPolicy(config)
        self.dispatcher = Dispatcher(config, self.outbox, self.channels, self.posting, self.delivery_policy,
                                     self.metrics, self.clock.now)
        self.publisher = RetainedPublisher(config, network, self.topics, link, self.planner, self.builder, db,
                                           self.metrics, feeds=self.feeds, state=lambda: self.state,
                                           now=self.clock.now)
        link.watch_canaries(self.publisher.canary_topics)

    # -- fetch -> state -> compose -> render -> outbox -------------------------------------------------------

    def _parse(self, feed: FeedConfig, body: bytes) -> FeedSnapshot:
        if feed.kind == "gtfs-rt":
            return parse_gtfs_rt(
                feed.name, body, self.network,
                carries=frozenset(feed.contains), default_language=self.config.network.default_language,
            )
        return parse_passenger_flow(feed.name, body, self.network)

    def _fail(self, feed: FeedConfig, record: FeedRecord, now: datetime, reason: str) -> PollOutcome:
        failed = replace(
            record, last_error=reason, last_error_at=now, consecutive_failures=record.consecutive_failures + 1
        )
        self.feeds[feed.name] = failed
        log.warning(
            "feed %r unusable: %s; keeping the last good state (%d failure(s) in a row)",
            feed.name, reason, failed.consecutive_failures,
        )
        try:
            with self.db.transaction() as conn:
                save_feed(conn, failed)
        except StoreError as exc:
            log.error("could not record the failure of feed %r: %s", feed.name, exc)
        return PollOutcome(feed.name, False, error=reason)

    async def poll_round(self, feeds: Sequence[FeedConfig] | None = None) -> list[PollOutcome]:
        """Poll several feeds at once and publish the retained state they changed once, not once per feed
        (at start-up and in `once`: one poll per feed would publish an interchange's display several times)."""
        outcomes = await asyncio.gather(*(self.poll(f, publish=False) for f in feeds or self.config.feeds))
        await self.publish_retained()
        return list(outcomes)

    async def poll(self, feed: FeedConfig, *, publish: bool = True) -> PollOutcome:
        """Fetch one feed and carry what changed through the pipeline. Never raises for bad input.

        `publish=False` leaves the retained topics to the caller (`poll_round`).
        """
        async with self._poll_locks.setdefault(feed.name, asyncio.Lock()):
            return await self._poll(feed, publish=publish)

    async def _poll(self, feed: FeedConfig, *, publish: bool) -> PollOutcome:
        record = self.feeds.get(feed.name) or FeedRecord(feed.name)
        # A conditional fetch only when the last committed content can be applied again on a 304: its snapshot
        # is kept with the feed record (in this process's memory, or in the database for a new process).
        conditional = feed.name in self._body_digests
        started = time.perf_counter()
        try:
            result = await self.fetcher.fetch(
                feed.name, feed.url, timeout_s=feed.timeout_seconds, max_bytes=feed.max_bytes,
                etag=record.etag if conditional else None,
                last_modified=record.last_modified if conditional else None,
            )
            now = self.clock.now()
            if result.body is not None and record.feed_timestamp is not None and \
                    self._body_digests.get(feed.name) == _digest(result.body):
                # Byte for byte what we parsed last time (a server without ETag or Last-Modified): treat it as
                # not modified rather than parse and diff it again.
                result = replace(result, body=None)
            if result.body is None:
                # Not modified: still good, as long as the content we hold is not too old. The snapshot parsed
                # last time is applied again (no parsing), so this fetch counts like any good one: an alert
                # missing from it draws nearer to its all-clear, and time alone can change things (an active
                # period beginning or ending while the feed stays the same).
                if record.feed_timestamp is not None:
                    check_freshness(feed.name, record.feed_timestamp, now=now, max_age_s=feed.max_age_seconds,
                                    previous=None)
                snapshot = self._last_snapshot(feed.name)
            else:
                snapshot = self._parse(feed, result.body)
                check_freshness(
                    feed.name, snapshot.timestamp, now=now, max_age_s=feed.max_age_seconds,
                    previous=record.feed_timestamp,
                )
        except FeedError as exc:
            self.metrics.fetch(feed.name, time.perf_counter() - started, ok=False, reason=reason_label(exc))
            return self._fail(feed, record, self.clock.now(), exc.reason)
        self.metrics.fetch(feed.name, time.perf_counter() - started, ok=True)
        good = replace(
            record, etag=result.etag, last_modified=result.last_modified, last_ok_at=now,
            last_error=None, consecutive_failures=0,
        )
        if snapshot is None:
            # Not modified, and the stored snapshot is unreadable (or the server ignored that the fetch was
            # unconditional): nothing to diff, but the feed is healthy and its retained topics may be due a
            # refresh. The next fetch is unconditional (`_last_snapshot` forgot the digest).
            self.feeds[feed.name] = good
            try:
                with self.db.transaction() as conn:
                    save_feed(conn, good)
            except StoreError as exc:
                log.error("feed %r: could not record the fetch: %s", feed.name, exc)
            if publish:
                await self.publish_retained()
            return PollOutcome(feed.name, True)
        if snapshot.problems and result.body is not None:
            log.warning("feed %r: skipped %d record(s): %s", feed.name, len(snapshot.problems),
                        "; ".join(snapshot.problems))
        good = replace(good, feed_timestamp=snapshot.timestamp, problems=snapshot.problems)
        body_digest = _digest(result.body) if result.body is not None else None
        # Only a server that gave a validator can answer the next fetch with a 304; without one, a new process
        # fetches the body and parses it, so storing the snapshot would cost every tick for nothing.
        keep_snapshot = body_digest is not None and (result.etag is not None or result.last_modified is not None)

        def record_fetch(conn: sqlite3.Connection) -> None:
            save_feed(conn, good)
            if keep_snapshot and body_digest is not None:
                save_snapshot(conn, body_digest, self._parse_keys[feed.name], snapshot)

        try:
            transition, notices = await self._advance(
                lambda: self._with_corrections(snapshot), now, on_commit=record_fetch, publish=publish,
            )
        except StoreError as exc:
            # Nothing was committed: the state stays as it was and the next poll tries again.
            log.error("feed %r: could not commit this tick: %s", feed.name, exc)
            return PollOutcome(feed.name, False, error=str(exc))
        self.feeds[feed.name] = good
        if body_digest is not None:
            self._body_digests[feed.name] = body_digest
            self._snapshots[feed.name] = snapshot
        if transition.changes:
            log.info("feed %r: %d change(s), %d notice(s)", feed.name, len(transition.changes), len(notices))
        return PollOutcome(feed.name, True, len(transition.changes), len(notices))

    def _last_snapshot(self, feed: str) -> FeedSnapshot | None:
        """The snapshot of the feed's last committed body: from memory, else (a new process) from the database.

        None when there is none or it cannot be read; the digest is then forgotten, so the next fetch is
        unconditional and brings a body to parse.
        """
        snapshot = self._snapshots.get(feed)
        if snapshot is None and feed in self._body_digests:
            snapshot = load_snapshot(self.db, feed)
            if snapshot is None:
                log.warning("feed %r: the stored snapshot cannot be read; fetching the feed in full", feed)
                del self._body_digests[feed]
            else:
                self._snapshots[feed] = snapshot
        return snapshot

    async def _advance(
        self,
        step: Step | Callable[[], Step],
        now: datetime,
        *,
        on_commit: Callable[[sqlite3.Connection], None] | None = None,
        publish: bool = True,
    ) -> tuple[Transition, list[Notice]]:
        """The one path from a snapshot to the outbox: diff, compose, render, then commit the new state, the
        operator's state, the notices and whatever `on_commit` writes in one transaction; then wake the channels
        and publish state.

        A `step` that depends on the current state (the operator's alerts, the corrections) is given as a
        function: it is called under the state lock, so what it reads is still true when its result commits.

        Raises:
            StoreError: nothing was committed (and nothing changed in memory).
        """
        async with self._state_lock:
            planned = step if isinstance(step, Step) else step()
            snapshot = planned.snapshot
            transition = apply_snapshot(self.state, snapshot, network=self.network, now=now, policy=self.policy)
            notices = compose(
                transition.changes, network=self.network, now=now, policy=self.compose_policy,
                corrected=planned.corrected,
            ) + list(planned.extra_notices)
            messages = [m for n in notices for m in self._messages(n)] + list(planned.extra_messages)
            operator_alerts = self.operator_alerts if planned.operator_alerts is None else dict(planned.operator_alerts)
            corrections = _without_resolved(
                self.corrections if planned.corrections is None else dict(planned.corrections), transition.state)
            with self.db.transaction() as conn:
                self.store.save(conn, transition.state)
                Outbox.enqueue(conn, messages, now)
                if operator_alerts is not self.operator_alerts:
                    self._save_operator(conn, operator_alerts)
                if corrections is not self.corrections:
                    self._save_corrections(conn, corrections)
                if on_commit is not None:
                    on_commit(conn)
                if planned.record is not None:
                    planned.record(conn, notices)
            self.store.committed()
            self.state = transition.state
            self.operator_alerts = operator_alerts
            self.corrections = corrections
        self.metrics.changes(snapshot.feed, transition.changes)
        self.metrics.note_origins(notices, snapshot.timestamp if snapshot.feed != OPERATOR_FEED else None)
        if messages:
            self.wake()
        if publish:
            await self.publish_retained()
        return transition, notices

    # -- the operator's desk: manual notices, corrections, digests -------------------------------------------

    def _with_corrections(self, snapshot: FeedSnapshot) -> Step:
        """A feed's alerts with the operator's corrections applied, so the next poll does not undo them (called
        under the state lock).

        A correction applies only to the version of the alert it corrected. When the feed sends another version
        under that id (it updated the alert, or reused the id for a new one), the feed's own text goes out and
        the correction is dropped.
        """
        if not self.corrections or not snapshot.alerts:
            return Step(snapshot)
        corrections = dict(self.corrections)
        alerts: list[Alert] = []
        for alert in snapshot.alerts:
            correction = corrections.get(alert.id)
            if correction is None:
                alerts.append(alert)
                continue
            version = alert_version(alert)
            if correction.alert_version is None:  # saved by the previous version: it corrected what is sent now
                correction = corrections[alert.id] = replace(correction, alert_version=version)
            if correction.alert_version == version:
                alerts.append(replace(alert, header=correction.header))
            else:
                del corrections[alert.id]
                alerts.append(alert)
        unchanged = corrections == self.corrections
        return Step(replace(snapshot, alerts=tuple(alerts)), corrections=None if unchanged else corrections)

    def _operator_step(self, now: datetime, alerts: Mapping[str, Alert]) -> Step:
        """The operator feed's snapshot carrying `alerts`, which become the operator's alerts."""
        return Step(FeedSnapshot(OPERATOR_FEED, now, alerts=tuple(alerts.values())), operator_alerts=alerts)

    async def announce(
        self, notice: ManualNotice, *, request_id: int | None = None, on_commit: ResultHook | None = None
    ) -> str:
        """Publish an operator's notice through the pipeline; returns its notice id once it is committed.

        It becomes an alert of the `operator` feed: retained on its lines' alert topics and station displays,
        posted on every channel, resolved when `until` passes (or by `withdraw`). The desk request `request_id`
        is finished, and `on_commit` runs with the notice id, in the same transaction.
        """
        now = self.clock.now()
        alert = notice.as_alert(now)
        notice_id = f"alert-{alert.id}"

        def step() -> Step:
            return replace(self._operator_step(now, {**self.operator_alerts, alert.id: alert}),
                           record=_result_record(request_id, on_commit, lambda _: notice_id))

        await self._advance(step, now)
        self.audit("announce", notice.author, alert.id, dict(notice.texts))
        return notice_id

    async def expire_operator_notices(self) -> None:
        """Resolve operator notices whose `until` has passed (a scheduler job)."""
        now = self.clock.now()

        def withdrawn() -> bool:
            return any(r.feed == OPERATOR_FEED and r.alert.id not in self.operator_alerts
                       for r in self.state.alerts.values())

        def without_ended() -> Step:
            return self._operator_step(now, {k: a for k, a in self.operator_alerts.items()
                                             if a.is_active(now) or not has_ended(a, now)})

        if not withdrawn() and all(a.is_active(now) or not has_ended(a, now) for a in self.operator_alerts.values()):
            return
        # An alert that ended resolves at once; one withdrawn needs `resolve_after_missing` snapshots. Each step
        # starts from the operator's alerts as they are then: a notice announced meanwhile stays.
        for _ in range(self.policy.resolve_after_missing):
            await self._advance(without_ended, now)
            if not withdrawn():
                break

    def _deletions(self, notice_id: str, now: datetime) -> list[OutgoingMessage]:
        """One "delete" entry per posting channel, drained after the correction (same priority, later version)."""
        post = Post(notice_id, DELETE_KIND, "", self.config.network.default_language)
        return [
            OutgoingMessage(notice_id, f"{DELETION_VERSION_PREFIX}{int(now.timestamp())}", c.name, post.to_payload(), 0,
                            starts_thread=False)
            for c in self.config.channels
        ]

    async def correct(
        self, notice_id: str, texts: Mapping[str, str], *, author: str = "operator", delete_originals: bool = False,
        request_id: int | None = None, on_commit: ResultHook | None = None,
    ) -> str:
        """Correct an earlier notice everywhere it went; returns the correction's version once committed.

        For an active alert (from a feed or the operator) the alert itself is corrected: its retained MQTT
        state is replaced, and the correction is posted as a reply under the alert's first post on every
        channel; later polls keep the correction while the feed sends the version that was corrected (see
        `_with_corrections`). For any other notice the correction is posted as a reply. The desk request
        `request_id` is finished, and `on_commit` runs with the version, in the same transaction.
        """
        now = self.clock.now()
        deletions = self._deletions(notice_id, now) if delete_originals else []

        def version_of(notices: Sequence[Notice]) -> str:
            return next((n.version for n in notices if n.id == notice_id), "")

        def step() -> Step:
            return replace(self._correction_step(notice_id, texts, now, deletions),
                           record=_result_record(request_id, on_commit, version_of))

        _, notices = await self._advance(step, now)
        version = version_of(notices)
        self.audit("correct", author, notice_id, {**texts, "delete_originals": delete_originals})
        return version

    def _correction_step(
        self, notice_id: str, texts: Mapping[str, str], now: datetime, deletions: Sequence[OutgoingMessage]
    ) -> Step:
        """The step that corrects `notice_id` (called under the state lock: the alert is looked up as it is)."""
        alert_id = notice_id.removeprefix("alert-")
        record = self.state.alerts.get(alert_id) if notice_id.startswith("alert-") else None
        if record is None:
            correction = compose_correction(notice_id, texts, line_ids=self._lines_of_notice(notice_id),
                                            network=self.network, now=now, policy=self.compose_policy)
            return Step(FeedSnapshot(OPERATOR_FEED, now), extra_notices=[correction], extra_messages=deletions)
        header = LocalizedText(MappingProxyType(dict(texts)))
        corrected = replace(record.alert, header=header)
        # The version the feed sends: an alert corrected before carries that correction's header, not the feed's.
        earlier = self.corrections.get(alert_id)
        sent_version = earlier.alert_version if earlier is not None else record.version
        corrections = {**self.corrections, alert_id: Correction(header, sent_version)}
        if record.feed == OPERATOR_FEED:
            alerts = {**self.operator_alerts, alert_id: corrected}
            return replace(self._operator_step(now, alerts), corrections=corrections,
                           corrected=frozenset({alert_id}), extra_messages=deletions)
        # Re-apply the alert's feed as we last saw it, with the correction: only this alert changes. This is not
        # a fetch: alerts the feed stopped sending go in as skipped, so they keep their count towards resolving.
        records = [r for r in self.state.alerts.values() if r.feed == record.feed]
        gone = frozenset(r.alert.id for r in records if r.missing and r.alert.id != alert_id)
        snapshot = FeedSnapshot(
            record.feed, self.state.as_of or now, skipped_alert_ids=gone,
            alerts=tuple(corrected if r.alert.id == alert_id else r.alert for r in records if r.alert.id not in gone),
        )
        return Step(snapshot, corrections=corrections, corrected=frozenset({alert_id}), extra_messages=deletions)

    async def process_requests(self) -> int:
        """Carry out the operator requests queued in the database (`broadcaster announce` / `correct`)."""
        done = 0
        for request in desk.pending(self.db):
            try:
                # Each request is finished in the transaction that commits its notice: killed right after that
                # commit, the next run does not carry it out again.
                if request.action == "announce":
                    await self.announce(ManualNotice.from_request(request.body, self.network), request_id=request.id)
                elif request.action == "correct":
                    body = request.body
                    await self.correct(str(body["notice_id"]), queued_correction_texts(body),
                                       author=str(body.get("author", "operator")),
                                       delete_originals=bool(body.get("delete_originals", False)),
                                       request_id=request.id)
                else:
                    raise ValueError(f"unknown request {request.action!r}")
            except (BroadcasterError, ValueError, KeyError, TypeError) as exc:
                log.error("operator request %d (%s) failed: %s", request.id, request.action, exc)
                desk.finish(self.db, request.id, error=str(exc))  # a no-op if its notice was committed
                continue
            done += 1
        return done

    def _lines_of_notice(self, notice_id: str) -> tuple[str, ...]:
        """The lines the latest MQTT notice about `notice_id` named (none when there is none or it is unreadable)."""
        payload = self.outbox.latest_payload(MqttNoticeChannel.name, notice_id)
        if payload is None:
            return ()
        try:
            return tuple(orjson.loads(payload).get("lines", ()))
        except orjson.JSONDecodeError:
            return ()

    def _save_operator(self, conn: sqlite3.Connection, alerts: Mapping[str, Alert]) -> None:
        self.operator_meta.save(conn, "alerts", orjson.dumps([encode_alert(a) for a in alerts.values()]).decode())

    def _save_corrections(self, conn: sqlite3.Connection, corrections: Mapping[str, Correction]) -> None:
        self.operator_meta.save(conn, "corrections", encode_corrections(corrections))

    def _load_operator(self) -> None:
        alerts = [decode_alert(d) for d in orjson.loads(self.operator_meta.get("alerts") or "[]")]
        self.operator_alerts = {a.id: a for a in alerts}
        self.corrections = decode_corrections(self.operator_meta.get("corrections") or "{}")

    async def digest(self, digest: DigestConfig, slot: datetime | None = None) -> list[str]:
        """Post one digest slot on the channels it names; returns the channels it was queued for.

        Skipped outside service hours; per channel, skipped in a quiet window, and for an "on-change" channel
        when nothing changed since its last digest.
        """
        slot = slot or self.clock.now()
        if not self.config.service_hours.contains(slot.astimezone(self.config.zone).time()):
            return []
        notice = compose_digest(self.state, name=digest.name, network=self.network, slot=slot,
                                policy=self.compose_policy, top_crowded=digest.top_crowded, template=digest.template)
        fingerprint = digest_fingerprint(self.state, digest.top_crowded)
        wanted = set(digest.channels) or {c.name for c in self.config.channels} | {MqttNoticeChannel.name}
        targets: list[str] = []
        for name in sorted(wanted):
            config = next((c for c in self.config.channels if c.name == name), None)
            if config is not None:
                if self.delivery_policy.in_quiet(config, slot):
                    continue
                if config.digest_mode == "on-change" and self.digest_marks.get(f"{digest.name}:{name}") == fingerprint:
                    continue
            targets.append(name)
        if not targets:
            return []
        messages = [m for m in self._messages(notice) if m.channel in targets]
        async with self._state_lock:  # the marks are read and replaced in one step: another digest may have run
            marks = {**self.digest_marks, **{f"{digest.name}:{name}": fingerprint for name in targets}}
            with self.db.transaction() as conn:
                Outbox.enqueue(conn, messages, slot)
                self.operator_meta.save(conn, "digests", orjson.dumps(marks).decode())
            self.digest_marks = marks
        self.wake()
        return targets

    def audit(self, action: str, author: str, subject: str, detail: Mapping[str, object]) -> None:
        """One line per operator action in the state directory's audit log (who, what, when), and the log.

        Never raises: it runs after the action was committed, and an answer of failure for a committed notice
        would invite the operator to send it again. An entry the file cannot take goes whole to the service
        log at error level and is counted (`broadcaster_audit_failures_total`).
        """
        line = orjson.dumps({"at": iso(self.clock.now()), "action": action, "author": author, "subject": subject,
                             "detail": detail})
        try:
            with (self.config.state.directory / "audit.log").open("ab") as handle:
                handle.write(line + b"\n")
        except OSError as exc:
            self.metrics.audit_failed()
            log.error("could not append to the audit log (%s); the entry: %s", exc.strerror or exc, line.decode())
        log.info("operator %s by %s: %s", action, author, subject)

    def render_text(self, notice: Notice, language: str, detail: int = FULL) -> str:
        """The notice's text in one language at one detail level, falling back rather than failing."""
        context = {**notice.contexts[language], "detail": detail}
        try:
            return self.renderer.render(notice.template_base, language, context, builtin=notice.kind.value)
        except TemplateProblem as problem:
            log.error("%s; sending the plain fallback text", problem)
            return fallback_text(notice, language)

    def _messages(self, notice: Notice) -> list[OutgoingMessage]:
        """The outbox rows for one notice: the MQTT notice, and each posting channel's post(s)."""
        rendered: dict[tuple[str, int], str] = {}

        def render(language: str, detail: int) -> str:
            if (language, detail) not in rendered:
                rendered[(language, detail)] = self.render_text(notice, language, detail)
            return rendered[(language, detail)]

        texts = {lang: render(lang, FULL) for lang in notice.contexts}
        body = serialise(self.builder.notice(notice, texts))
        valid_until = notice.issued_at + timedelta(seconds=self.config.mqtt.retained_ttl_seconds)
        payload = with_envelope(body, self.seq.next(), notice.issued_at, valid_until)
        messages = [OutgoingMessage(notice.id, notice.version, MqttNoticeChannel.name, payload, int(notice.priority))]
        for channel, channel_config in self.posting:
            posts = posts_for(notice, channel_config, channel.profile, render, self.config.network.default_language)
            messages += [
                OutgoingMessage(notice.id, notice.version, channel.name, post.to_payload(), int(notice.priority),
                                part=post.part, starts_thread=post.reply_to_notice is None and post.part == 0)
                for post in posts
            ]
        return messages

    # -- retained state --------------------------------------------------------------------------------------

    @property
    def mqtt_delivering(self) -> bool:
        """Whether the canary's publishes come back (health, metrics and the tests read it here)."""
        return self.publisher.mqtt_delivering

    async def publish_retained(self, *, full: bool = False) -> int:
        return await self.publisher.publish_retained(full=full)

    async def on_connected(self) -> None:
        """A new broker session: the broker may have lost retained state, and queued notices can go now."""
        await self.publish_retained(full=True)
        try:
            self.outbox.make_due(MqttNoticeChannel.name, self.clock.now())
        except StoreError as exc:
            log.error("could not reschedule queued notices: %s", exc)
        self.wake()

    # -- outbox -> channels: the dispatcher's; these delegate for the runner and the tests --------------------

    def wake(self) -> None:
        self.dispatcher.wake()

    async def drain_due(self, channel: NoticeChannel) -> int:
        return await self.dispatcher.drain_due(channel)

    async def drain_loop(self, channel: NoticeChannel, stop: asyncio.Event) -> None:
        await self.dispatcher.drain_loop(channel, stop)

    def pending(self) -> int:
        return self.dispatcher.pending()

    def health(self) -> Health:
        """Feeds, the broker link and the outbox now (the admin API's health and status, the metrics' gauges)."""
        return read_health(self.config.feeds, self.feeds, [c.name for c in self.channels], self.outbox,
                           self.link.connected.is_set(), self.clock.now(), mqtt_delivering=self.mqtt_delivering)
