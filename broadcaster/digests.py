"""Digests: the network-wide summary a schedule slot posts, through the pipeline's one commit path.

Each channel's last digest fingerprint ("marks") is kept here, committed in the transaction that queues the
digest, so an "on-change" channel skips a slot that would say nothing new, even after a restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

import orjson

from broadcaster.channels.mqtt import MqttNoticeChannel
from broadcaster.compose import Notice, compose_digest, digest_fingerprint
from broadcaster.config import Config, DigestConfig
from broadcaster.dispatcher import DeliveryPolicy
from broadcaster.model import Network
from broadcaster.pipeline import Pipeline, Step
from broadcaster.store import Database, KeyValueStore

_MARKS_KEY = "digests"


class DigestPoster:
    """Composes and queues digest slots; owns the marks of what each channel was last told."""

    def __init__(
        self, config: Config, network: Network, db: Database, pipeline: Pipeline, delivery_policy: DeliveryPolicy,
        *, now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.network = network
        self._pipeline = pipeline
        self._delivery_policy = delivery_policy
        self._now = now
        self._meta = KeyValueStore(db, "operator")
        marks = self._meta.get(_MARKS_KEY)
        # Read and replaced only under the pipeline's state lock (in the step and its `committed`).
        self.marks: dict[str, str] = orjson.loads(marks) if marks else {}

    async def digest(self, digest: DigestConfig, slot: datetime | None = None) -> list[str]:
        """Post one digest slot on the channels it names; returns the channels it was queued for.

        Skipped outside service hours; per channel, skipped in a quiet window, and for an "on-change" channel
        when nothing changed since its last digest.
        """
        slot = slot or self._now()
        if not self.config.service_hours.contains(slot.astimezone(self.config.zone).time()):
            return []
        targets: list[str] = []

        def step() -> Step:
            # Composed from the state as it is under the lock, with the marks as they are then: another digest
            # may have run meanwhile.
            state = self._pipeline.state
            fingerprint = digest_fingerprint(state, digest.top_crowded)
            targets.extend(self._targets(digest, slot, fingerprint))
            if not targets:
                return Step(None)
            notice = compose_digest(state, name=digest.name, network=self.network, slot=slot,
                                    policy=self._pipeline.compose_policy, top_crowded=digest.top_crowded,
                                    template=digest.template)
            marks = {**self.marks, **{f"{digest.name}:{name}": fingerprint for name in targets}}

            def record(conn: sqlite3.Connection, _: Sequence[Notice]) -> None:
                self._meta.save(conn, _MARKS_KEY, orjson.dumps(marks).decode())

            def committed() -> None:
                self.marks = marks

            return Step(None, extra_notices=[replace(notice, audience=frozenset(targets))], record=record,
                        committed=committed)

        await self._pipeline.advance(step, slot, publish=False)
        return targets

    def _targets(self, digest: DigestConfig, slot: datetime, fingerprint: str) -> list[str]:
        """The channels this slot goes to: those it names (default: all), less those in a quiet window and
        the "on-change" ones already told this."""
        wanted = set(digest.channels) or {c.name for c in self.config.channels} | {MqttNoticeChannel.name}
        targets: list[str] = []
        for name in sorted(wanted):
            config = next((c for c in self.config.channels if c.name == name), None)
            if config is not None:
                if self._delivery_policy.in_quiet(config, slot):
                    continue
                if config.digest_mode == "on-change" and self.marks.get(f"{digest.name}:{name}") == fingerprint:
                    continue
            targets.append(name)
        return targets
