"""The retained publisher: the network's state on its retained MQTT topics, and the canary that checks it arrives.

It owns the publish lock (one round of publications at a time: a round plans from what the previous one
confirmed) and the canary's bookkeeping. The state it publishes is the pipeline's, read when a round starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import orjson

from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import Config
from broadcaster.contract import Topics
from broadcaster.errors import StoreError
from broadcaster.metrics import Metrics
from broadcaster.model import Network
from broadcaster.payloads import PayloadBuilder
from broadcaster.retained import Publication, RetainedPlanner
from broadcaster.state import NetworkState
from broadcaster.store import FeedRecord, Store

log = logging.getLogger(__name__)


def canary_topics(topics: Topics, network: Network) -> tuple[str, ...]:
    """The canary: the first line's status and the first station's display come back through our own
    subscription, or the broker is dropping what it acknowledges."""
    first_line = next(iter(network.lines), None)
    first_station = next(iter(network.stations), None)
    return tuple(
        t for t in (topics.line_status(first_line) if first_line else None,
                    topics.station_display(first_station) if first_station else None) if t
    )


class RetainedPublisher:
    """Publishes the retained topics that changed, and tells from the canary whether publishes arrive."""

    def __init__(
        self,
        config: Config,
        network: Network,
        topics: Topics,
        link: MqttLink,
        planner: RetainedPlanner,
        builder: PayloadBuilder,
        db: Store,
        metrics: Metrics,
        *,
        feeds: Mapping[str, FeedRecord],
        state: Callable[[], NetworkState],
        now: Callable[[], datetime],
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.link = link
        self.planner = planner
        self.builder = builder
        self.db = db
        self.metrics = metrics
        self.feeds = feeds  # the poller's records, updated in place
        self.current_state = state
        self.now = now
        #: Whether this instance may publish now (broadcaster/ha): asked right before every round's publish.
        self.may_act = may_act
        self.canary_topics = canary_topics(topics, network)
        self._canary_expected: dict[str, tuple[int, int]] = {}  # topic -> (seq published, in which round)
        self._canary_round = 0
        self.mqtt_delivering = True
        #: topic -> the reason code of the broker's refusal of its latest publication (MQTT 5), until one is acked
        self._refused: dict[str, str] = {}
        self._missing: list[str] = []  # the canary topics found missing by the last round's check
        self._publish_lock = asyncio.Lock()

    def fresh_sources(self, now: datetime) -> set[str]:
        """Feed kinds with at least one feed whose content is within its maximum age."""
        fresh: set[str] = set()
        for feed in self.config.feeds:
            record = self.feeds.get(feed.name)
            if record is None or record.feed_timestamp is None or not record.healthy:
                continue
            if (now - record.feed_timestamp).total_seconds() <= feed.max_age_seconds:
                fresh.add(feed.kind)
        return fresh

    def _check_canary(self) -> None:
        """Each canary topic published two rounds ago or more must have come back through our subscription.

        A broker denying a topic by ACL refuses the publish with a reason code under MQTT 5 (`_refused`), but under
        MQTT 3.1.1 acknowledges it and drops it: this is how such a silent loss shows, within two ticks, in health
        and metrics.
        """
        self._canary_round += 1
        self._missing = [topic for topic, (seq, published_round) in self._canary_expected.items()
                         if self._canary_round - published_round >= 2 and self.link.observed_seq.get(topic, 0) < seq]
        self._judge_delivery(self._missing)

    def _judge_delivery(self, missing: list[str]) -> None:
        delivering = not missing and not self._refused
        if missing and self.mqtt_delivering:
            log.error("MQTT publishes are acknowledged but do not arrive (%s): check the broker's ACL for this"
                      " account", ", ".join(missing))
        elif self._refused and self.mqtt_delivering:
            topic, reason = next(iter(self._refused.items()))
            log.error("the broker refuses our publications on %d topic(s) (%s: %s): check its ACL for this account",
                      len(self._refused), topic, reason)
        elif delivering and not self.mqtt_delivering:
            log.info("MQTT publishes arrive again")
        self.mqtt_delivering = delivering

    async def publish_retained(self, *, full: bool = False) -> int:
        """Publish the retained topics that changed (all of them when `full`); returns how many were acked."""
        async with self._publish_lock:
            if not self.link.connected.is_set():
                return 0  # the next session starts with a full publish
            self._check_canary()
            now = self.now()
            publications = self.planner.plan(
                self.builder.retained(self.current_state(), now), now, fresh_sources=self.fresh_sources(now), full=full
            )
            return await self._publish(publications, now)

    async def publish_around(self, lines: Iterable[str], stations: Iterable[str]) -> int:
        """Publish at once what an emergency on `lines` and `stations` changed (their lines' status and alerts,
        their stations' displays), ahead of the round that plans every topic: that scan of the whole network
        (about 1,000 topics at k = 1) would otherwise come before the first display is updated."""
        async with self._publish_lock:
            if not self.link.connected.is_set():
                return 0
            now = self.now()
            items = self.builder.retained_around(self.current_state(), now, lines, stations)
            publications = self.planner.plan(items, now, fresh_sources=self.fresh_sources(now), full=False,
                                             partial=True)
            return await self._publish(publications, now)

    async def _publish(self, publications: list[Publication], now: datetime) -> int:
        """Publish, note the canary's topics, and record what the broker acknowledged (under the publish lock)."""
        if not publications:
            return 0
        if not self.may_act():
            log.warning("not publishing %d retained topic(s): this instance no longer holds the lease",
                        len(publications))
            return 0
        # A topic's first publication is recorded before it leaves (a placeholder), so a kill before the record
        # below still leaves the database knowing that the broker may hold it (broadcaster/retained.py).
        publications = self.planner.reserve(publications, self.db)
        if not publications:
            return 0
        delivery = await self.link.publish_many(publications)
        acked = delivery.acked
        refusing = bool(self._refused)
        for publication in acked:
            self._refused.pop(publication.topic, None)
        for publication, reason in delivery.refused:
            self._refused[publication.topic] = reason
        # Planned again next round, whatever its content then: only an acknowledgement clears a refusal.
        self.planner.unsettle(p for p, _ in delivery.refused)
        if delivery.refused or refusing != bool(self._refused):
            # A refusal, or the last refused topic accepted, is known at once: no need to wait for the canary.
            self._judge_delivery(self._missing)
        for publication in acked:
            if publication.topic in self.canary_topics and publication.payload:
                seq = int(orjson.loads(publication.payload)["seq"])
                self._canary_expected[publication.topic] = (seq, self._canary_round)
        self.metrics.retained(len(acked), len(publications) - len(acked))
        try:
            # Not durable: a lost record only means a republish (a new topic has its placeholder row already),
            # and every new session republishes in full.
            with self.db.transaction(durable=False) as conn:
                self.planner.confirm(acked, now, conn)
        except StoreError as exc:
            log.error("could not record retained publications: %s", exc)
        return len(acked)
