"""paho's reads, buffered (broadcaster/channels/mqtt/reads.py): whatever way the broker's bytes are cut into
segments, a client reads the same packets, in the same order, as paho reading the socket itself, and none waits in
the buffer for the broker's next bytes; the link's clients read real Mosquitto's acknowledgements in fewer system
calls than three per packet; a paho without the internals keeps its own reads."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from support import MosquittoBroker

from broadcaster.channels.mqtt import reads
from broadcaster.channels.mqtt.acks import read_acks_quickly
from broadcaster.channels.mqtt.clients import new_client
from broadcaster.config import MqttConfig


def reading_client(
    v5: bool, awaited: list[int], *, buffered: bool
) -> tuple[paho.Client, socket.socket, socket.socket, list[tuple[Any, ...]]]:
    """A paho client whose socket is one end of a socket pair (returned, then the other end, which plays the
    broker), awaiting the PUBACKs of `awaited`, its acknowledgements recorded."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="reads-test",
                         protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    seen: list[tuple[Any, ...]] = []

    def on_publish(_c: paho.Client, _u: object, mid: int, reason: Any, properties: Any) -> None:
        seen.append((mid, reason.value, properties.json() if properties is not None else None))

    client.on_publish = on_publish
    read_acks_quickly(client)  # as the link's clients: both replacements together
    if buffered:
        assert reads.read_buffered(client)
    for mid in awaited:
        message = paho.MQTTMessage(mid=mid, topic=b"t")
        message.qos = 1
        client._out_messages[mid] = message
    mine, broker = socket.socketpair()
    mine.setblocking(False)
    client._sock = mine
    return client, mine, broker, seen


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def puback(mid: int, form: str) -> bytes:
    body = struct.pack("!H", mid) + {
        "id": b"", "accepted": b"\x00", "no subscribers": b"\x10\x00",
        "reason string": b"\x10\x05\x1f\x00\x02ok", "refused": b"\x87",
    }[form]
    return bytes([0x40, len(body)]) + body


packets = st.lists(st.one_of(
    st.tuples(st.just("puback"), st.integers(1, 40), st.sampled_from(
        ["id", "accepted", "no subscribers", "reason string", "refused"])),
    st.tuples(st.just("pingresp")),
), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(v5=st.booleans(), stream=packets, awaited=st.sets(st.integers(1, 40), max_size=10), data=st.data())
def test_any_cut_of_the_brokers_bytes_reads_as_paho_reads_it(
    v5: bool, stream: list[tuple[Any, ...]], awaited: set[int], data: st.DataObject,
) -> None:
    """Each segment arrives, and the socket is read while it is readable (as the event loop does): the buffered
    client must have read every packet by then, or one waits for bytes that may never come."""
    wire = b"".join(puback(p[1], p[2]) if p[0] == "puback" else b"\xd0\x00" for p in stream)
    if not v5:
        wire = b"".join(puback(p[1], "id") if p[0] == "puback" else b"\xd0\x00" for p in stream)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=8), label="cuts")) if len(wire) > 1 else []
    segments = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    outcomes = []
    for buffered in (False, True):
        client, mine, broker, seen = reading_client(v5, sorted(awaited), buffered=buffered)
        try:
            after_each: list[tuple[int, ...]] = []
            for segment in segments:
                broker.sendall(segment)
                while readable(mine):
                    client.loop_read()
                after_each.append(tuple(sorted(client._out_messages)))
            outcomes.append((seen, after_each, client._in_packet["command"]))
        finally:
            mine.close()
            broker.close()
    assert outcomes[1] == outcomes[0]


def test_packets_beyond_pahos_count_are_read_before_the_socket_is_empty() -> None:
    """One message in flight: paho's `loop_read` reads one packet per call. A late PUBACK and the awaited one
    arrive in one segment: the awaited one must not wait in the buffer for the broker's next bytes."""
    client, mine, broker, seen = reading_client(True, [7], buffered=True)
    try:
        broker.sendall(puback(3, "accepted") + puback(7, "accepted"))
        while readable(mine):
            client.loop_read()
        assert [mid for mid, *_ in seen] == [7]
        assert 7 not in client._out_messages
    finally:
        mine.close()
        broker.close()


def test_bytes_of_a_socket_that_is_gone_are_never_read_as_the_new_ones() -> None:
    client, mine, broker, seen = reading_client(True, [1, 2], buffered=True)
    other, other_broker = socket.socketpair()
    other.setblocking(False)
    try:
        broker.sendall(puback(9, "accepted") + puback(1, "accepted"))
        client._sock_recv(1)  # paho begins a packet: the rest of the segment waits in the buffer
        client._in_packet["command"] = 0  # the connection is lost, and paho starts afresh on a new one
        client._sock = other
        other_broker.sendall(puback(2, "accepted"))
        while readable(other):
            client.loop_read()
        assert [mid for mid, *_ in seen] == [2]  # not 1, which the old connection carried
    finally:
        for each in (mine, other, broker, other_broker):
            each.close()


def test_a_paho_without_the_internals_keeps_its_own_reads(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="reads-test")
    monkeypatch.delattr(paho.Client, "_sock_recv")
    assert not reads.read_buffered(client)
    assert not getattr(client.loop_read, "buffered", False)
    assert "paho reads the socket itself" in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_links_clients_read_mosquittos_acknowledgements_in_fewer_calls(
    mosquitto: MosquittoBroker, topic_prefix: str, protocol: str,
) -> None:
    """100 publishes at once: paho alone makes three `recv` calls per PUBACK (300); buffered, at most two per
    PUBACK even when each arrives alone (its bytes, then an empty socket), fewer when they arrive together."""
    config = MqttConfig(url=mosquitto.url, protocol=protocol)  # type: ignore[arg-type]
    client = new_client(config, mosquitto.url, f"reads-{uuid.uuid4().hex[:8]}", username=None, password=None)
    inner = client._client
    assert getattr(inner.loop_read, "buffered", False)
    calls: list[int] = []
    async with client:
        found = inner._sock
        assert isinstance(found, socket.socket)
        sock: socket.socket = found

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(sock, name)

            def recv(self, size: int) -> bytes:
                calls.append(size)
                return bytes(sock.recv(size))

        inner._sock = Counting()
        try:
            async with asyncio.timeout(20):
                await asyncio.gather(*(client.publish(f"{topic_prefix}/reads/{i}", b"x", qos=1) for i in range(100)))
        finally:
            inner._sock = sock
    assert calls, "nothing was read"
    assert set(calls) == {reads.CHUNK}
    assert len(calls) < 200
