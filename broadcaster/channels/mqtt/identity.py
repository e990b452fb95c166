"""Whether our client id is free: the retained status read under a throwaway client id, and what it says.

Connecting with our own client id to find out would take the other installation's session over, so the link
reads the status topic with a probe client first (`read_retained`) and refuses to start when it says another
installation is online with our client id (`conflict_in`).

Several instances of one installation (high availability: they share one database, hence one installation id)
are expected: the status their leader keeps names our installation, so it is no conflict. Each instance also
reads its own presence topic: another installation running an instance of the same id with our client id would
take its sessions over (`presence_conflict_in`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from broadcaster.errors import IdentityConflict

if TYPE_CHECKING:
    import aiomqtt

    from broadcaster.config import MqttConfig


async def read_retained(
    client: aiomqtt.Client, topics: Sequence[str], probe_topic: str, wait_seconds: float
) -> tuple[dict[str, bytes], bool]:
    """The retained messages on `topics` (a topic with none is left out), and whether our probe came back.

    The broker sends a subscription's retained messages before it handles anything we publish after the
    SUBACK, so our own probe coming back means the retained messages, if any, have arrived.
    """
    retained: dict[str, bytes] = {}
    echoed = False
    # QoS 0 subscriptions, as the link's own (link.py `_serve`): no broker-side consumer to create or delete.
    for topic in topics:
        await client.subscribe(topic, qos=0)
    await client.subscribe(probe_topic, qos=0)
    await client.publish(probe_topic, b"", qos=1)
    try:
        async with asyncio.timeout(wait_seconds):
            async for message in client.messages:
                if message.topic.value == probe_topic:
                    echoed = True
                    break
                if isinstance(message.payload, bytes | bytearray) and message.payload:
                    retained[message.topic.value] = bytes(message.payload)
    except TimeoutError:
        pass
    return retained, echoed


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


def presence_conflict_in(
    presence: bytes | None, config: MqttConfig, installation: str | None
) -> IdentityConflict | None:
    """The conflict when our own instance's presence says it is up (leader or standby) for another installation;
    else None. Our installation's own presence up is our restart within the Will Delay, as in `conflict_in`."""
    try:
        current = orjson.loads(presence) if presence else None
    except orjson.JSONDecodeError:
        current = None
    if not isinstance(current, dict) or current.get("role") not in ("leader", "standby"):
        return None
    other = current.get("installation")
    if isinstance(other, str) and other != installation:
        return IdentityConflict(config.client_id, other, str(current.get("since")), config.will_delay_seconds)
    return None
