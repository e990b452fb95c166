"""Successful PUBACKs read without paho's decoder (broadcaster/channels/mqtt/acks.py): for any PUBACK, what the
`on_publish` callback sees and what paho keeps are what paho's own decoder gives; the link's clients read real
Mosquitto's acknowledgements the quick way; a paho without the internals keeps its own reading."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from support import MosquittoBroker

from broadcaster.channels.mqtt import acks
from broadcaster.channels.mqtt.clients import new_client
from broadcaster.config import MqttConfig


def bare_client(v5: bool, *, quick: bool) -> tuple[paho.Client, list[tuple[Any, ...]]]:
    """A paho client that never connects, awaiting the PUBACK of message ids 1-65535 (QoS 1), its callbacks
    recorded."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="acks-test",
                         protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    seen: list[tuple[Any, ...]] = []

    def on_publish(_c: paho.Client, _u: object, mid: int, reason: Any, properties: Any) -> None:
        seen.append((mid, reason.value, str(reason), reason.is_failure,
                     properties.json() if properties is not None else None))

    client.on_publish = on_publish
    if quick:
        assert acks.read_acks_quickly(client)
    return client, seen


def receive(client: paho.Client, mid: int, packet: bytes) -> tuple[str, Any]:
    """Hand `client` a PUBACK's variable header as its read loop would; what came of it (a result or an error)
    and whether the message still awaits its PUBACK."""
    message = paho.MQTTMessage(mid=mid, topic=b"t")
    message.qos = 1
    client._out_messages[mid] = message
    client._inflight_messages = 1
    client._in_packet["command"] = 0x40
    client._in_packet["packet"] = bytearray(packet)
    try:
        outcome: Any = int(client._handle_pubackcomp("PUBACK"))
    except Exception as exc:
        outcome = type(exc).__name__
    return outcome, (mid in client._out_messages, message.info.is_published(), client._inflight_messages)


# The variable headers a PUBACK may carry: the id alone; a reason code; a reason code with an empty or a real
# property set (a reason string); and bytes a broker should never send.
REASONS = st.sampled_from([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99, 0x01, 0xFF])
pubacks = st.one_of(
    st.tuples(st.just("id")),
    st.tuples(st.just("reason"), REASONS),
    st.tuples(st.just("empty properties"), REASONS),
    st.tuples(st.just("reason string"), REASONS, st.text(max_size=20)),
    st.tuples(st.just("bytes"), st.binary(max_size=8)),
)


def variable_header(mid: int, form: tuple[Any, ...]) -> bytes:
    head = struct.pack("!H", mid)
    if form[0] == "id":
        return head
    if form[0] == "reason":
        return head + bytes([form[1]])
    if form[0] == "empty properties":
        return head + bytes([form[1], 0])
    if form[0] == "reason string":
        text = str(form[2]).encode()
        prop = bytes([0x1F]) + struct.pack("!H", len(text)) + text
        return head + bytes([form[1], len(prop)]) + prop
    raw: bytes = form[1]
    return raw


@settings(max_examples=300, deadline=None)
@given(v5=st.booleans(), mid=st.integers(1, 65535), form=pubacks, awaited=st.booleans())
def test_any_puback_comes_out_as_paho_decodes_it(v5: bool, mid: int, form: tuple[Any, ...], awaited: bool) -> None:
    packet = variable_header(mid, form)
    results = []
    for quick in (False, True):
        client, seen = bare_client(v5, quick=quick)
        outcome: Any
        kept: Any = None
        if awaited:
            outcome, kept = receive(client, mid, packet)
        else:  # a late or unknown PUBACK: nothing awaits it
            client._in_packet["command"] = 0x40
            client._in_packet["packet"] = bytearray(packet)
            try:
                outcome = int(client._handle_pubackcomp("PUBACK"))
            except Exception as exc:
                outcome = type(exc).__name__
        results.append((outcome, kept, seen))
    assert results[1] == results[0]


def test_only_a_plain_acceptance_takes_the_quick_path() -> None:
    def read(packet: bytes, v5: bool) -> tuple[int, int] | None:
        ack = acks.quick_ack(packet, v5)
        return None if ack is None else (ack[0], ack[1].value)

    assert read(b"\x12\x34", v5=False) == (0x1234, 0)
    assert read(b"\x12\x34", v5=True) == (0x1234, 0)
    assert read(b"\x12\x34\x00", v5=True) == (0x1234, 0)
    assert read(b"\x12\x34\x10\x00", v5=True) == (0x1234, 0x10)  # no matching subscribers
    assert read(b"\x12\x34\x00", v5=False) is None  # malformed under 3.1.1: paho says so
    assert read(b"\x12\x34\x87", v5=True) is None  # a refusal
    assert read(b"\x12\x34\x00\x03\x1f\x00\x00", v5=True) is None  # properties
    assert read(b"\x12", v5=True) is None


def test_a_paho_without_the_internals_keeps_its_own_reading(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = bare_client(True, quick=False)
    del client._out_message_mutex
    assert not acks.read_acks_quickly(client)
    assert not getattr(client._handle_pubackcomp, "quick", False)
    assert "PUBACKs are decoded by paho" in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_links_clients_read_mosquittos_acknowledgements_the_quick_way(
    mosquitto: MosquittoBroker, topic_prefix: str, protocol: str,
) -> None:
    """The forms Mosquitto answers a QoS 1 publish with (MQTT 5: "No matching subscribers" here, nobody
    subscribing) are ones the quick path reads: every PUBACK of 50 publishes goes through it, none through paho's
    decoder."""
    config = MqttConfig(url=mosquitto.url, protocol=protocol)  # type: ignore[arg-type]
    client = new_client(config, mosquitto.url, f"acks-{uuid.uuid4().hex[:8]}", username=None, password=None)
    inner = client._client
    assert getattr(inner._handle_pubackcomp, "quick", False)
    decoded: list[bytes] = []
    quick: list[int] = []
    original = acks.quick_ack

    def counting(packet: bytes | bytearray, v5: bool) -> Any:
        ack = original(packet, v5)
        if ack is None:
            decoded.append(bytes(packet))
        else:
            quick.append(ack[0])
        return ack

    acks.quick_ack = counting
    try:
        async with client:
            for i in range(50):
                await client.publish(f"{topic_prefix}/acks/{i}", b"x", qos=1)
    finally:
        acks.quick_ack = original
    assert decoded == []
    assert len(quick) == 50  # and every one of them went through the quick path
