"""The demo's embedded broker (amqtt) and the relay that lets the broadcaster's MQTT 5 link use it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broadcaster.demo.broker import EmbeddedBroker
from broadcaster.demo.relay import (
    Mqtt5Relay,
    Translator,
    connect_to_v311,
    decode_varint,
    encode_varint,
    packet,
    parse_properties,
)
from broadcaster.errors import ProtocolViolation


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return encode_varint(len(body)) + body


def v5_connect(client_id: str, *, will: tuple[str, bytes] | None = None, session_expiry: int = 0,
               clean_start: bool = True) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x04 | 0x08 | 0x20 if will else 0)  # will: QoS 1, retained
    connect_props = props(b"\x11" + struct.pack("!I", session_expiry), b"\x21\x00\x14")  # expiry, receive max
    body = utf8("MQTT") + bytes([5, flags]) + b"\x00\x0a" + connect_props + utf8(client_id)
    if will:
        body += props(b"\x18\x00\x00\x00\x00") + utf8(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    return body


# -- the translation, packet by packet -------------------------------------------------------------------------


def test_varints_round_trip() -> None:
    for value in (0, 1, 127, 128, 16_383, 16_384, 268_435_455):
        assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))
    with pytest.raises(ProtocolViolation):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)


def test_property_lists_are_walked_by_type() -> None:
    data = props(b"\x01\x01", b"\x02\x00\x00\x07\x08", b"\x03" + utf8("application/json"),
                 b"\x26" + utf8("k") + utf8("v"), b"\x0b\x81\x01") + b"rest"
    parsed, end = parse_properties(data, 0)
    assert parsed[0x02] == b"\x00\x00\x07\x08"
    assert parsed[0x0B] == b"\x81\x01"
    assert data[end:] == b"rest"
    with pytest.raises(ProtocolViolation, match="unknown property"):
        parse_properties(props(b"\x7f\x00"), 0)


def test_connect_drops_properties_and_keeps_the_will() -> None:
    out = connect_to_v311(v5_connect("bc", will=("metro/v1/broadcaster/status", b"offline")))
    assert out == (utf8("MQTT") + bytes([4, 0x02 | 0x04 | 0x08 | 0x20]) + b"\x00\x0a" + utf8("bc")
                   + utf8("metro/v1/broadcaster/status") + utf8("offline"))


def test_a_session_that_outlives_the_connection_is_not_made_clean() -> None:
    out = connect_to_v311(v5_connect("bc", session_expiry=3600, clean_start=False))
    assert out[7] & 0x02 == 0
    assert connect_to_v311(v5_connect("bc", clean_start=False))[7] & 0x02  # expiry 0: ends with the connection
    with pytest.raises(ProtocolViolation):
        connect_to_v311(utf8("MQTT") + bytes([4, 2]) + b"\x00\x0a" + utf8("x"))


def test_publish_loses_its_properties_on_the_way_up_and_gains_an_empty_list_on_the_way_down() -> None:
    t = Translator()
    expiry = props(b"\x02\x00\x00\x01\x2c")
    up = t.client_to_broker(0x33, utf8("a/b") + b"\x00\x07" + expiry + b"payload")  # QoS 1, retained
    assert up == packet(0x33, utf8("a/b") + b"\x00\x07" + b"payload")
    down = t.broker_to_client(0x32, utf8("a/b") + b"\x00\x09" + b"payload")
    assert down == packet(0x32, utf8("a/b") + b"\x00\x09" + b"\x00" + b"payload")
    assert t.broker_to_client(0x30, utf8("a/b") + b"x") == packet(0x30, utf8("a/b") + b"\x00x")


def test_topic_aliases_are_resolved() -> None:
    t = Translator()
    alias = props(b"\x23\x00\x05")
    assert t.client_to_broker(0x30, utf8("long/topic") + alias + b"1") == packet(0x30, utf8("long/topic") + b"1")
    assert t.client_to_broker(0x30, utf8("") + alias + b"2") == packet(0x30, utf8("long/topic") + b"2")
    with pytest.raises(ProtocolViolation, match="alias"):
        t.client_to_broker(0x30, utf8("") + props(b"\x23\x00\x06") + b"3")


def test_subscriptions_keep_only_the_qos_and_acks_gain_reason_codes() -> None:
    t = Translator()
    up = t.client_to_broker(0x82, b"\x00\x01" + props(b"\x0b\x01") + utf8("a/#") + b"\x2d")  # QoS 1 + RAP, NL
    assert up == packet(0x82, b"\x00\x01" + utf8("a/#") + b"\x01")
    assert t.broker_to_client(0x90, b"\x00\x01\x01") == packet(0x90, b"\x00\x01\x00\x01")
    assert t.client_to_broker(0xA2, b"\x00\x02" + props() + utf8("a/#") + utf8("b")) == packet(
        0xA2, b"\x00\x02" + utf8("a/#") + utf8("b"))
    assert t.broker_to_client(0xB0, b"\x00\x02") == packet(0xB0, b"\x00\x02\x00\x00\x00")


def test_acks_pings_connack_and_disconnects() -> None:
    t = Translator()
    assert t.client_to_broker(0x40, b"\x00\x07\x00\x00") == packet(0x40, b"\x00\x07")
    assert t.client_to_broker(0xC0, b"") == packet(0xC0, b"")
    assert t.broker_to_client(0xD0, b"") == packet(0xD0, b"")
    assert t.broker_to_client(0x20, b"\x00\x00") == packet(0x20, b"\x00\x00\x00")
    assert t.broker_to_client(0x20, b"\x00\x05") == packet(0x20, b"\x00\x87\x00")  # not authorised
    assert t.client_to_broker(0xE0, b"") == packet(0xE0, b"")
    assert t.client_to_broker(0xE0, b"\x00" + props()) == packet(0xE0, b"")
    assert t.client_to_broker(0xE0, b"\x04" + props()) is None  # "disconnect with Will": drop, do not say goodbye
    with pytest.raises(ProtocolViolation):
        t.client_to_broker(0xF0, b"")  # AUTH has no 3.1.1 form


# -- on a real amqtt ------------------------------------------------------------------------------------------


@pytest.fixture
async def broker_and_relay() -> AsyncIterator[tuple[EmbeddedBroker, Mqtt5Relay]]:
    broker = EmbeddedBroker()
    await broker.start()
    relay = Mqtt5Relay(broker.host, broker.tcp_port)
    await relay.start()
    try:
        yield broker, relay
    finally:
        await relay.stop()
        await broker.stop()


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


async def test_amqtt_refuses_mqtt_5_directly(broker_and_relay: tuple[EmbeddedBroker, Mqtt5Relay]) -> None:
    broker, _ = broker_and_relay
    client = aiomqtt.Client(broker.host, broker.tcp_port, identifier="v5", protocol=aiomqtt.ProtocolVersion.V5,
                            timeout=5)
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(5), client:
            pass


async def test_an_mqtt_5_client_publishes_and_subscribes_through_the_relay(
    broker_and_relay: tuple[EmbeddedBroker, Mqtt5Relay],
) -> None:
    broker, relay = broker_and_relay
    expiry = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expiry.MessageExpiryInterval = 300
    async with asyncio.timeout(10):
        async with aiomqtt.Client("127.0.0.1", relay.port, identifier="bc", protocol=aiomqtt.ProtocolVersion.V5,
                                  timeout=5) as client:
            await client.publish("metro/v1/lines/2/status", b'{"status":"delayed"}', qos=1, retain=True,
                                 properties=expiry)
            await client.subscribe("metro/v1/commands/#", qos=1)
            async with v311(broker, "operator") as operator:
                await operator.publish("metro/v1/commands/hello", b"hi", qos=1)
            message = await anext(aiter(client.messages))
            assert (message.topic.value, message.payload) == ("metro/v1/commands/hello", b"hi")
            await client.unsubscribe("metro/v1/commands/#")
        assert await retained(broker, "metro/v1/lines/+/status", 1) == {
            "metro/v1/lines/2/status": b'{"status":"delayed"}'}


async def test_a_client_that_vanishes_gets_its_will_published(
    broker_and_relay: tuple[EmbeddedBroker, Mqtt5Relay],
) -> None:
    broker, relay = broker_and_relay
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(packet(0x10, v5_connect("dies", will=("metro/v1/broadcaster/status", b"offline"))))
        await writer.drain()
        first = await reader.readexactly(5)
        assert first == b"\x20\x03\x00\x00\x00"  # an MQTT 5 CONNACK: accepted, no properties
        writer.transport.abort()  # no DISCONNECT: as if the process was killed
        assert await retained(broker, "metro/v1/broadcaster/status", 1) == {"metro/v1/broadcaster/status": b"offline"}


async def test_a_clean_disconnect_publishes_no_will(broker_and_relay: tuple[EmbeddedBroker, Mqtt5Relay]) -> None:
    broker, relay = broker_and_relay
    async with asyncio.timeout(10):
        async with v311(broker, "setup") as setup:
            await setup.publish("metro/v1/broadcaster/status", b"online", qos=1, retain=True)
        will = aiomqtt.Will("metro/v1/broadcaster/status", b"offline", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", relay.port, identifier="polite", will=will,
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=5):
            pass
        assert await retained(broker, "metro/v1/broadcaster/status", 1) == {"metro/v1/broadcaster/status": b"online"}


async def test_a_new_client_gets_only_the_retained_messages_it_subscribed_to(
    broker_and_relay: tuple[EmbeddedBroker, Mqtt5Relay],
) -> None:
    # amqtt 0.12 on its own replays every other client's subscriptions to a newcomer; the embedded broker must not.
    broker, _ = broker_and_relay
    async with asyncio.timeout(10):
        async with v311(broker, "publisher") as publisher:
            await publisher.publish("metro/v1/broadcaster/status", b"online", qos=1, retain=True)
            await publisher.publish("metro/v1/stations/a/display", b"A", qos=1, retain=True)
        async with v311(broker, "status-watcher") as watcher:
            await watcher.subscribe("metro/v1/broadcaster/status", qos=1)
            assert (await anext(aiter(watcher.messages))).payload == b"online"
            async with v311(broker, "display-a") as display:
                await display.subscribe("metro/v1/stations/a/display", qos=1)
                first = await anext(aiter(display.messages))
                assert (first.topic.value, first.payload) == ("metro/v1/stations/a/display", b"A")
                with pytest.raises(TimeoutError):  # and nothing else: the short wait is how absence is shown
                    async with asyncio.timeout(0.5):
                        await anext(aiter(display.messages))
