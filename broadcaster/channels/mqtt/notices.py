"""The MQTT notice stream: outbox notices published, not retained, on `{prefix}/v1/notices` over the link."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broadcaster.channels.mqtt.link import CHANNEL_NAME
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
        await self.link.publish(Publication(self.link.topics.notices, entry.payload, retain=False))
        return None  # MQTT has no remote id; the PUBACK was the acknowledgement
