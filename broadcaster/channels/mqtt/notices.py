"""The MQTT notice stream: outbox notices published, not retained, on `{prefix}/v1/notices` over the link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from broadcaster.channels.base import BatchOutcome
from broadcaster.channels.mqtt.link import CHANNEL_NAME
from broadcaster.errors import TransientDeliveryError
from broadcaster.retained import Publication

if TYPE_CHECKING:
    from broadcaster.channels.base import ThreadRefs
    from broadcaster.channels.mqtt.link import MqttLink
    from broadcaster.outbox import OutboxEntry


class MqttNoticeChannel:
    """Delivers outbox notices to the non-retained `{prefix}/v1/notices` stream over the shared link."""

    name = CHANNEL_NAME

    def __init__(self, link: MqttLink) -> None:
        self.link = link

    @property
    def ready(self) -> bool:
        return self.link.connected.is_set()

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        outcome = await self.send_batch([entry])
        if not outcome.acked:
            reason = outcome.refused[0][1] if outcome.refused else outcome.stopped or "not acknowledged"
            raise TransientDeliveryError(self.name, f"publish to {self.link.topics.notices} failed: {reason}")
        return None  # MQTT has no remote id; the PUBACK was the acknowledgement

    async def send_batch(self, entries: Sequence[OutboxEntry]) -> BatchOutcome:
        """Publish the entries in order through the link's window (`MqttLink.publish_many`). A publication the
        broker refuses (an MQTT 5 reason code of 0x80 or above: an ACL, a quota) is reported refused, never taken
        as delivered: a plain `publish` would not see the reason code."""
        topic = self.link.topics.notices
        publications = [Publication(topic, entry.payload, retain=False) for entry in entries]
        entry_of = {id(pub): entry for pub, entry in zip(publications, entries, strict=True)}
        delivery = await self.link.publish_many(publications)
        return BatchOutcome(
            acked=[entry_of[id(pub)] for pub in delivery.acked],
            refused=[(entry_of[id(pub)], f"the broker refused it: {reason}") for pub, reason in delivery.refused],
            stopped=delivery.stopped,
        )
