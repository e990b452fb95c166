"""The composition of one broadcaster: its parts, wired over one network, database, broker link and channels.

Every trigger travels the same path: fetch -> state -> compose -> render -> outbox -> channels.

- `FeedPoller` (poller.py): fetch, parse, freshness, the 304 path; owns the feed records.
- `Pipeline` (pipeline.py): the one commit path; owns the network state and the operator's alerts and
  corrections, under one lock.
- `MessageRenderer` (messages.py): a notice into its outbox rows, rendered once, at commit.
- `OperatorDesk` (operator_desk.py): announce, correct, expire, queued requests, the audit log.
- `DigestPoster` (digests.py): digest slots; owns each channel's digest marks.
- `Dispatcher` (dispatcher.py): outbox -> channels, threads, quiet windows and budgets.
- `RetainedPublisher` (publisher.py): the retained MQTT topics and the canary.

`Broadcaster` builds them and forwards the handful of calls the runner, the admin API and the CLI make.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import orjson

from broadcaster.channels.base import NoticeChannel, PostingChannel, SessionKeepingChannel
from broadcaster.channels.mqtt import MqttLink, MqttNoticeChannel
from broadcaster.compose import ComposePolicy, EmergencyRule
from broadcaster.config import ChannelConfig, Config, DigestConfig, FeedConfig, broker_label
from broadcaster.contract import Topics
from broadcaster.digests import DigestPoster
from broadcaster.dispatcher import DeliveryPolicy, Dispatcher
from broadcaster.errors import StoreError
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.ha.role import Leadership, SoleInstance
from broadcaster.messages import MessageRenderer
from broadcaster.metrics import Health, Metrics, read_health
from broadcaster.model import Alert, Network, Severity
from broadcaster.operator import ManualNotice
from broadcaster.operator_desk import OperatorDesk
from broadcaster.outbox import Outbox
from broadcaster.outbox_history import OutboxHistory
from broadcaster.payloads import PayloadBuilder
from broadcaster.pipeline import Pipeline, ResultHook
from broadcaster.poller import FeedPoller, PollOutcome
from broadcaster.publisher import RetainedPublisher
from broadcaster.render import Renderer
from broadcaster.render.hashtags import hashtags_of
from broadcaster.retained import RetainedPlanner, SequenceClock
from broadcaster.state import NetworkState, StatePolicy
from broadcaster.status import BROKER_KEY, BROKER_NAMESPACE
from broadcaster.store import FeedRecord, KeyValueStore, Store

__all__ = ["Broadcaster", "Clock", "PollOutcome", "SystemClock", "emergency_rule", "state_policy"]

log = logging.getLogger(__name__)


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


def emergency_rule(config: Config) -> EmergencyRule:
    return EmergencyRule(Severity[config.emergency.min_severity], frozenset(config.emergency.effects))


class Broadcaster:
    """One network's parts, wired; the calls the runner, the admin API and the CLI make go to the part that
    does the job."""

    def __init__(
        self,
        config: Config,
        network: Network,
        renderer: Renderer,
        db: Store,
        fetcher: FeedFetcher,
        link: MqttLink,
        *,
        posting: Sequence[PostingChannel] = (),
        clock: Clock | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.config = config
        #: Who leads (broadcaster/ha): nothing is sent or published unless `leadership.may_act()`.
        self.leadership: Leadership = leadership or SoleInstance()
        self.network = network
        self.db = db
        self.link = link
        self.clock = clock or SystemClock()
        now = self.clock.now
        policy = state_policy(config)
        topics = Topics(config.mqtt.topic_prefix)
        seq = SequenceClock()
        self.outbox = Outbox(db)
        self.history = OutboxHistory(db)
        self._health_read_error: str | None = None  # the last health check's failed read, logged once
        self.planner = RetainedPlanner(timedelta(seconds=config.mqtt.retained_ttl_seconds),
                                       config.mqtt.max_payload_bytes, seq)
        self.planner.load(db)
        builder = PayloadBuilder(network, topics, config.network.languages, policy, emergency=emergency_rule(config))
        self.posting: list[tuple[PostingChannel, ChannelConfig]] = list(zip(posting, config.channels, strict=True))
        self.channels: list[NoticeChannel] = [MqttNoticeChannel(link), *(c for c, _ in self.posting)]
        self.metrics = Metrics(self.health, feeds=[f.name for f in config.feeds],
                               channels=[c.name for c in self.channels])
        self.messages = MessageRenderer(config, renderer, builder, seq, self.posting,
                                        hashtags=hashtags_of(config, network),
                                        followed=functools.partial(self.history.followed,
                                                                   stream=MqttNoticeChannel.name))
        delivery_policy = DeliveryPolicy(config)
        self.dispatcher = Dispatcher(config, self.outbox, self.history, self.channels, self.posting, delivery_policy,
                                     self.metrics, now, may_act=self.leadership.may_act)
        self.pipeline = Pipeline(
            network, db, self.messages, self.metrics, policy=policy,
            compose_policy=ComposePolicy(config.zone, config.network.languages, emergency=emergency_rule(config)),
            wake=self.dispatcher.wake, publish=self._publish_changes, publish_around=self._publish_around,
        )
        self.poller = FeedPoller(config, network, db, fetcher, self.pipeline, self.metrics, now=now,
                                 publish=self._publish_changes)
        self.desk = OperatorDesk(config, network, db, self.history, self.pipeline, self.metrics, now=now)
        self.digests = DigestPoster(config, network, db, self.pipeline, delivery_policy, now=now)
        self.publisher = RetainedPublisher(config, network, topics, link, self.planner, builder, db, self.metrics,
                                           feeds=self.poller.records, state=lambda: self.pipeline.state, now=now,
                                           may_act=self.leadership.may_act)
        link.watch_canaries(self.publisher.canary_topics)

    def load_state(self) -> None:
        """Read the state again from the database: a standby taking over finds what the former leader committed
        since this instance started (the network state, operator notices, feed records, retained topics, the
        digest marks, the channels' login sessions)."""
        self.pipeline.load()
        self.poller.load()
        self.planner.load(self.db)
        self.digests.load()
        for channel, _ in self.posting:
            if isinstance(channel, SessionKeepingChannel):
                channel.reload_session()

    # -- what the parts hold, read by the admin API, the status page and the tests ----------------------------

    @property
    def state(self) -> NetworkState:
        return self.pipeline.state

    @property
    def operator_alerts(self) -> Mapping[str, Alert]:
        return self.pipeline.operator_alerts

    @property
    def feeds(self) -> Mapping[str, FeedRecord]:
        return self.poller.records

    def _publish_changes(self) -> Awaitable[int]:
        # The publisher is built after the parts that call this (it reads their state): looked up when called.
        return self.publisher.publish_retained()

    def _publish_around(self, lines: Iterable[str], stations: Iterable[str]) -> Awaitable[int]:
        return self.publisher.publish_around(lines, stations)

    # -- triggers ---------------------------------------------------------------------------------------------

    async def poll_round(self, feeds: Sequence[FeedConfig] | None = None) -> list[PollOutcome]:
        return await self.poller.poll_round(feeds)

    async def poll(self, feed: FeedConfig, *, publish: bool = True) -> PollOutcome:
        return await self.poller.poll(feed, publish=publish)

    async def announce(
        self, notice: ManualNotice, *, request_id: int | None = None, on_commit: ResultHook | None = None
    ) -> str:
        return await self.desk.announce(notice, request_id=request_id, on_commit=on_commit)

    async def correct(
        self, notice_id: str, texts: Mapping[str, str], *, author: str = "operator", delete_originals: bool = False,
        request_id: int | None = None, on_commit: ResultHook | None = None,
    ) -> str:
        return await self.desk.correct(notice_id, texts, author=author, delete_originals=delete_originals,
                                       request_id=request_id, on_commit=on_commit)

    async def expire_operator_notices(self) -> None:
        await self.desk.expire_operator_notices()

    async def process_requests(self) -> int:
        return await self.desk.process_requests()

    async def digest(self, digest: DigestConfig, slot: datetime | None = None) -> list[str]:
        return await self.digests.digest(digest, slot)

    # -- retained state and delivery ----------------------------------------------------------------------------

    async def on_connected(self) -> None:
        """A new broker session: the broker may have lost retained state (or be another broker of mqtt.urls),
        and queued notices can go now."""
        self._record_broker()
        await self.publisher.publish_retained(full=True)
        try:
            self.outbox.make_due(MqttNoticeChannel.name, self.clock.now())
        except StoreError as exc:
            log.error("could not reschedule queued notices: %s", exc)
        self.dispatcher.wake()

    def _record_broker(self) -> None:
        """Which broker this session is with, for `broadcaster status` (another process): bookkeeping, as a lost
        record is written again by the next session."""
        if self.link.broker is None:
            return
        record = {"url": broker_label(self.link.broker), "protocol": self.config.mqtt.protocol,
                  "since": self.clock.now().isoformat(timespec="seconds")}
        try:
            with self.db.transaction(durable=False) as conn:
                KeyValueStore(self.db, BROKER_NAMESPACE).save(conn, BROKER_KEY, orjson.dumps(record).decode())
        except StoreError as exc:
            log.error("could not record the broker in use: %s", exc)

    async def drain_due(self, channel: NoticeChannel) -> int:
        return await self.dispatcher.drain_due(channel)

    async def drain_loop(self, channel: NoticeChannel, stop: asyncio.Event) -> None:
        await self.dispatcher.drain_loop(channel, stop)

    def pending(self) -> int:
        return self.dispatcher.pending()

    def ready_to_lead(self) -> bool:
        """A standby's readiness (`/v1/health`, which also asks that the database answered its read): its broker
        presence session is up (always true without `[ha]`, where there is no presence session)."""
        presence = self.link.presence
        return presence is None or presence.present.is_set()

    def health(self) -> Health:
        """Feeds, the broker link and the outbox now (the admin API's health and status, the metrics' gauges). A
        database that stops answering its read is logged when it stops and when it answers again, not on every
        probe."""
        health = read_health(self.config.feeds, self.poller.records, [c.name for c in self.channels], self.history,
                             self.link.connected.is_set(), self.clock.now(),
                             mqtt_delivering=self.publisher.mqtt_delivering,
                             mqtt_brokers=tuple(broker_label(url) for url in self.config.mqtt.brokers),
                             mqtt_broker=broker_label(self.link.broker) if self.link.broker else None,
                             database_doubt=self.db.doubt(), database_sync_seconds=self.db.sync_running_seconds())
        if health.database_error is not None and self._health_read_error is None:
            log.warning("health check: %s; the health answers 503 until it can read it again", health.database_error)
        elif health.database_error is None and self._health_read_error is not None:
            log.info("health check: the outbox can be read again")
        self._health_read_error = health.database_error
        return health
