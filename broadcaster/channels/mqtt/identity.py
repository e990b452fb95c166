"""Whether our client id is free: the retained status read under a throwaway client id, and what it says.

Connecting with our own client id to find out would take the other installation's session over, so the link
reads the status topic with a probe client first (`read_status`) and refuses to start when it says another
installation is online with our client id (`conflict_in`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson

from broadcaster.errors import IdentityConflict

if TYPE_CHECKING:
    import aiomqtt

    from broadcaster.config import MqttConfig


async def read_status(
    client: aiomqtt.Client, status_topic: str, probe_topic: str, wait_seconds: float
) -> tuple[bytes | None, bool]:
    """The retained status on `status_topic` (None if there is none), and whether our probe came back.

    The broker sends a subscription's retained messages before it handles anything we publish after the
    SUBACK, so our own probe coming back means the retained status, if any, has arrived.
    """
    status: bytes | None = None
    echoed = False
    # QoS 0 subscriptions, as the link's own (link.py `_serve`): no broker-side consumer to create or delete.
    await client.subscribe(status_topic, qos=0)
    await client.subscribe(probe_topic, qos=0)
    await client.publish(probe_topic, b"", qos=1)
    try:
        async with asyncio.timeout(wait_seconds):
            async for message in client.messages:
                if message.topic.value == probe_topic:
                    echoed = True
                    break
                if isinstance(message.payload, bytes | bytearray):
                    status = bytes(message.payload)
    except TimeoutError:
        pass
    return status, echoed


def conflict_in(status: bytes | None, config: MqttConfig, instance: str | None) -> IdentityConflict | None:
    """The conflict when `status` says `online`, with our client id and another instance; else None.

    A retained `online` from our own instance is a restart within the Will Delay (after a crash), which is fine.
    """
    try:
        current = orjson.loads(status) if status else None
    except orjson.JSONDecodeError:
        current = None
    other = current.get("instance") if isinstance(current, dict) and current.get("status") == "online" else None
    if (isinstance(current, dict) and current.get("client_id") == config.client_id
            and isinstance(other, str) and other != instance):
        return IdentityConflict(config.client_id, other, str(current.get("since")), config.will_delay_seconds)
    return None
