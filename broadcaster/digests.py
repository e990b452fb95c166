"""Digests: the summary a schedule slot posts, through the pipeline's one commit path: of the whole network, or
for a channel that follows some lines or stations, of those.

Each channel's last digest fingerprint ("marks", of what its own digest says) is kept here, committed in the
transaction that queues the digest, so an "on-change" channel skips a slot that would say nothing new, even after
a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

import orjson

from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.compose import Notice, NoticeKind, compose_digest, digest_fingerprint
from broadcaster.compose.routing import Area, route_of
from broadcaster.config import ChannelConfig, Config, DigestConfig
from broadcaster.dispatcher import DeliveryPolicy
from broadcaster.model import Network, Severity
from broadcaster.pipeline import Pipeline, Step
from broadcaster.store import Connection, KeyValueStore, Store

_MARKS_KEY = "digests"


class DigestPoster:
    """Composes and queues digest slots; owns the marks of what each channel was last told."""

    def __init__(
        self, config: Config, network: Network, db: Store, pipeline: Pipeline, delivery_policy: DeliveryPolicy,
        *, now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.network = network
        self._pipeline = pipeline
        self._delivery_policy = delivery_policy
        self._now = now
        self._meta = KeyValueStore(db, "operator")
        # Read and replaced only under the pipeline's state lock (in the step and its `committed`).
        self.marks: dict[str, str]
        self.load()

    def load(self) -> None:
        """Read the marks (at start-up, and when a standby takes over: broadcaster/ha)."""
        marks = self._meta.get(_MARKS_KEY)
        self.marks = orjson.loads(marks) if marks else {}

    async def digest(self, digest: DigestConfig, slot: datetime | None = None) -> list[str]:
        """Post one digest slot on the channels it names; returns the channels it was queued for.

        Skipped outside service hours; per channel, skipped in a quiet window, and for an "on-change" channel
        when nothing changed since its last digest. A channel that follows some lines or stations gets a digest
        of those only: one digest is composed per distinct area, and goes to the channels following it.
        """
        slot = slot or self._now()
        if not self.config.service_hours.contains(slot.astimezone(self.config.zone).time()):
            return []
        targets: list[str] = []

        def step() -> Step:
            # Composed from the state as it is under the lock, with the marks as they are then: another digest
            # may have run meanwhile.
            state = self._pipeline.state
            notices: list[Notice] = []
            marks = dict(self.marks)
            for area, names in self._areas(digest, slot).items():
                lines = None if area.whole_network else area.digest_lines(self.network)
                stations = None if area.whole_network else area.digest_stations(self.network)
                fingerprint = digest_fingerprint(state, digest.top_crowded, lines=lines, stations=stations)
                due = [name for name in names if not self._told(digest, name, fingerprint)]
                if not due:
                    continue
                notice = compose_digest(state, name=digest.name, network=self.network, slot=slot,
                                        policy=self._pipeline.compose_policy, top_crowded=digest.top_crowded,
                                        template=digest.template, lines=lines, stations=stations)
                notices.append(replace(notice, audience=frozenset(due)))
                marks.update({f"{digest.name}:{name}": fingerprint for name in due})
                targets.extend(due)
            if not notices:
                return Step(None)

            def record(conn: Connection, _: Sequence[Notice]) -> None:
                self._meta.save(conn, _MARKS_KEY, orjson.dumps(marks).decode())

            def committed() -> None:
                self.marks = marks

            return Step(None, extra_notices=notices, record=record, committed=committed)

        await self._pipeline.advance(step, slot, publish=False)
        return sorted(targets)

    def _areas(self, digest: DigestConfig, slot: datetime) -> dict[Area, list[str]]:
        """The channels this slot goes to, by the area each follows: those it names (default: all), less those
        in a quiet window and those whose filter takes no digest (`min_severity` above INFO, `emergencies_only`,
        or `notices` without "digest"). The MQTT notice stream follows the whole network."""
        wanted = set(digest.channels) or {c.name for c in self.config.channels} | {MqttNoticeChannel.name}
        areas: dict[Area, list[str]] = {}
        for name in sorted(wanted):
            config = next((c for c in self.config.channels if c.name == name), None)
            if config is not None and (self._delivery_policy.in_quiet(config, slot) or not self._takes_digests(config)):
                continue
            area = Area(frozenset(config.lines), frozenset(config.stations)) if config is not None else Area()
            areas.setdefault(area, []).append(name)
        return areas

    def _takes_digests(self, config: ChannelConfig) -> bool:
        return route_of(config, self.network).admits(NoticeKind.DIGEST, Severity.INFO, emergency=False)

    def _told(self, digest: DigestConfig, name: str, fingerprint: str) -> bool:
        """Whether `name` is an "on-change" channel whose last digest of this name said this already."""
        config = next((c for c in self.config.channels if c.name == name), None)
        return (config is not None and config.digest_mode == "on-change"
                and self.marks.get(f"{digest.name}:{name}") == fingerprint)
