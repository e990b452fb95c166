"""The demo's embedded broker (amqtt, MQTT 3.1.1 only) and the broadcaster's link speaking 3.1.1 to it directly."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import MqttConfig
from broadcaster.demo.broker import EmbeddedBroker
from broadcaster.retained import Publication

STATUS = "metro/v1/broadcaster/status"


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    embedded = EmbeddedBroker()
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


def v311(broker: EmbeddedBroker, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.tcp_port, identifier=identifier,
                          protocol=aiomqtt.ProtocolVersion.V311, timeout=5)


async def retained(broker: EmbeddedBroker, topic_filter: str, count: int) -> dict[str, bytes]:
    """The first `count` retained messages a fresh 3.1.1 subscriber gets, by topic (bounded wait)."""
    out: dict[str, bytes] = {}
    async with asyncio.timeout(5), v311(broker, "reader") as client:
        await client.subscribe(topic_filter, qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            out[message.topic.value] = message.payload
            if len(out) >= count:
                return out
    raise AssertionError("unreachable")


async def all_retained(broker: EmbeddedBroker, topic_filter: str) -> dict[str, bytes]:
    """Every retained message a fresh 3.1.1 subscriber gets, by topic: until none came for half a second."""
    out: dict[str, bytes] = {}
    async with asyncio.timeout(10), v311(broker, "settled-reader") as client:
        await client.subscribe(topic_filter, qos=1)
        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(0.5):
                    message = await anext(messages)
            except TimeoutError:
                return out
            assert isinstance(message.payload, bytes)
            out[message.topic.value] = message.payload


def utf8(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def connect_with_will(client_id: str, topic: str, will: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a retained QoS 1 Will, as raw bytes (a client we can make vanish)."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    body = utf8(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + utf8(client_id.encode())
    body += utf8(topic.encode()) + utf8(will)
    return bytes([0x10, len(body)]) + body


async def test_amqtt_refuses_mqtt_5(broker: EmbeddedBroker) -> None:
    client = aiomqtt.Client(broker.host, broker.tcp_port, identifier="v5", protocol=aiomqtt.ProtocolVersion.V5,
                            timeout=5)
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(5), client:
            pass


async def test_the_links_3_1_1_session_works_on_amqtt(broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    """What the demo relies on, with no relay: the identity probe comes back, retained state (its expiry dropped)
    and clears reach displays, and a clean stop says `offline`."""
    caplog.set_level(logging.WARNING, logger="broadcaster.channels.mqtt.link")
    config = MqttConfig(url=broker.tcp_url, protocol="3.1.1", client_id="bc-demo", publish_timeout_seconds=3)
    link = MqttLink(config, instance="demo-instance")
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        async with asyncio.timeout(10):
            await link.wait_connected()
        assert "could not confirm" not in caplog.text  # the probe echoed on amqtt
        await link.publish(Publication("metro/v1/lines/2/status", b'{"status":"delayed"}', True, expiry_s=300))
        await link.publish(Publication("metro/v1/lines/2/alerts/A", b'{"alert_id":"A"}', True, expiry_s=300))
        await link.publish(Publication("metro/v1/lines/2/alerts/A", b"", True))  # a clear
        got = await all_retained(broker, "metro/v1/lines/2/#")
        assert got == {"metro/v1/lines/2/status": b'{"status":"delayed"}'}
        assert b'"online"' in (await retained(broker, STATUS, 1))[STATUS]
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert b'"offline"' in (await retained(broker, STATUS, 1))[STATUS]


async def test_a_client_that_vanishes_gets_its_will_published(broker: EmbeddedBroker) -> None:
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(broker.host, broker.tcp_port)
        writer.write(connect_with_will("dies", STATUS, b"offline"))
        await writer.drain()
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK: accepted
        writer.transport.abort()  # no DISCONNECT: as if the process was killed
        assert await retained(broker, STATUS, 1) == {STATUS: b"offline"}


async def test_a_new_client_gets_only_the_retained_messages_it_subscribed_to(broker: EmbeddedBroker) -> None:
    # amqtt 0.12 on its own replays every other client's subscriptions to a newcomer; the embedded broker must not.
    async with asyncio.timeout(10):
        async with v311(broker, "publisher") as publisher:
            await publisher.publish(STATUS, b"online", qos=1, retain=True)
            await publisher.publish("metro/v1/stations/a/display", b"A", qos=1, retain=True)
        async with v311(broker, "status-watcher") as watcher:
            await watcher.subscribe(STATUS, qos=1)
            assert (await anext(aiter(watcher.messages))).payload == b"online"
            async with v311(broker, "display-a") as display:
                await display.subscribe("metro/v1/stations/a/display", qos=1)
                first = await anext(aiter(display.messages))
                assert (first.topic.value, first.payload) == ("metro/v1/stations/a/display", b"A")
                with pytest.raises(TimeoutError):  # and nothing else: the short wait is how absence is shown
                    async with asyncio.timeout(0.5):
                        await anext(aiter(display.messages))
