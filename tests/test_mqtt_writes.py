"""paho's queued packets, written together (broadcaster/channels/mqtt/writes.py): whatever paho queues and however
little the socket takes at a time, the broker receives paho's bytes in paho's order and paho's callbacks fire as
when paho writes each packet itself; the link's clients write a burst of publishes to real Mosquitto in fewer
`send` calls than packets; a paho without the internals keeps its own writes."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import uuid
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from support import MosquittoBroker

from broadcaster.channels.mqtt import writes
from broadcaster.channels.mqtt.clients import new_client
from broadcaster.config import MqttConfig

PUBLISH, PUBACK, PINGREQ, DISCONNECT = 0x30, 0x40, 0xC0, 0xE0


def packet_bytes(command: int, body: bytes) -> bytes:
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([command]) + bytes(encoded) + body


def count_sends(client: paho.Client) -> list[int]:
    """The size of every `send` paho's socket wrapper makes from now on (the wrapper itself still sends)."""
    sends: list[int] = []
    real = client._sock_send

    def counting(data: bytes | bytearray) -> int:
        sends.append(len(data))
        return real(data)

    setattr(client, "_sock_send", counting)  # noqa: B010 (mypy: a method cannot be assigned)
    return sends


#: What paho may queue: a PUBLISH at QoS 0 or 1 (payloads up to a few KB, so a batch spans a full send buffer),
#: a PUBACK, a PINGREQ; a DISCONNECT may end the queue.
queued = st.lists(st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 1), st.integers(0, 5000)),
    st.tuples(st.just("puback")), st.tuples(st.just("pingreq")),
), min_size=1, max_size=40)


def queue_on(client: paho.Client, items: list[tuple[Any, ...]], disconnect: bool) -> None:
    for mid, item in enumerate(items, start=1):
        if item[0] == "publish":
            qos = int(item[1])
            body = struct.pack("!H", 1) + b"t" + (struct.pack("!H", mid) if qos else b"") + bytes([mid % 256]) * item[2]
            info = paho.MQTTMessageInfo(mid)
            client._packet_queue(PUBLISH | (qos << 1), packet_bytes(PUBLISH | (qos << 1), body), mid, qos, info)
        elif item[0] == "puback":
            client._packet_queue(PUBACK, packet_bytes(PUBACK, struct.pack("!H", mid)), mid, 1)
        else:
            client._packet_queue(PINGREQ, packet_bytes(PINGREQ, b""), 0, 0)
    if disconnect:
        client._packet_queue(DISCONNECT, packet_bytes(DISCONNECT, b""), 0, 0)


def drain(client: paho.Client, mine: socket.socket, broker: socket.socket, reads: list[int]) -> bytes:
    """The event loop's part: write while paho wants to and the socket is writable, and the broker reads a little
    at a time (`reads`, in turn), until paho has nothing left to write."""
    received = bytearray()
    turn = 0
    for _ in range(100_000):
        if not client.want_write() or client._sock is None:
            break
        if select.select([], [mine], [], 0)[1]:
            client.loop_write()
        if select.select([broker], [], [], 0)[0]:
            received += broker.recv(reads[turn % len(reads)])
            turn += 1
    while select.select([broker], [], [], 0.01)[0]:
        chunk = broker.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    return bytes(received)


@settings(max_examples=150, deadline=None)
# Batches far over the send buffer, each write ending partway through a packet, a QoS 0 one among them.
@example(items=[("publish", 1, 5000)] * 20 + [("publish", 0, 3000)] + [("publish", 1, 4000)] * 10, disconnect=True,
         reads=[3000, 70_000])
@given(items=queued, disconnect=st.booleans(), reads=st.lists(st.integers(1, 70_000), min_size=1, max_size=4))
def test_the_broker_receives_pahos_bytes_and_pahos_callbacks_fire(
    items: list[tuple[Any, ...]], disconnect: bool, reads: list[int],
) -> None:
    outcomes = []
    for joined in (False, True):
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="writes-test")
        published: list[int] = []
        client.on_publish = lambda _c, _u, mid, _r, _p, seen=published: seen.append(mid)
        disconnected: list[str] = []
        client.on_disconnect = lambda *_, seen=disconnected: seen.append("disconnected")
        client.on_socket_register_write = lambda *_: None  # as under aiomqtt: queue, and write when writable
        if joined:
            assert writes.write_joined(client)
        mine, broker = socket.socketpair()
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a small buffer: writes end partway
        mine.setblocking(False)
        client._sock = mine
        try:
            queue_on(client, items, disconnect)
            wire = drain(client, mine, broker, reads)
            outcomes.append((wire, published, client.want_write(), client._sock is None, disconnected))
        finally:
            mine.close()
            broker.close()
    assert outcomes[1] == outcomes[0]
    assert not outcomes[1][2]
    assert outcomes[1][3] == disconnect  # a DISCONNECT, once written, closes the socket (paho's part)


def joined_client(*, joined: bool) -> tuple[paho.Client, socket.socket, socket.socket, list[str]]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="writes-test")
    client.on_socket_register_write = lambda *_: None
    seen: list[str] = []
    client.on_disconnect = lambda *_: seen.append("disconnected")
    if joined:
        assert writes.write_joined(client)
    mine, broker = socket.socketpair()
    mine.setblocking(False)
    client._sock = mine
    return client, mine, broker, seen


@pytest.mark.parametrize("joined", [False, True])
def test_a_socket_the_broker_closed_is_a_lost_connection_and_said_so(
    joined: bool, caplog: pytest.LogCaptureFixture
) -> None:
    client, mine, broker, seen = joined_client(joined=joined)
    client.enable_logger()
    broker.close()
    queue_on(client, [("publish", 1, 10), ("publish", 1, 10)], disconnect=False)
    try:
        assert client.loop_write() == MQTTErrorCode.MQTT_ERR_CONN_LOST
        assert client._sock is None
        assert seen == ["disconnected"]
        assert "failed to receive on socket" in caplog.text  # paho's words, through paho's logger
    finally:
        mine.close()


def test_a_batch_stays_near_its_bound() -> None:
    """Sends of at most `BATCH_BYTES` plus the one packet that crossed it."""
    client, mine, broker, _ = joined_client(joined=True)
    sends = count_sends(client)
    try:
        queue_on(client, [("publish", 1, 3000)] * 60, disconnect=False)
        received = drain(client, mine, broker, [1 << 20])
        assert len(received) == 60 * 3008
        assert len(sends) > 1
        assert max(sends) <= writes.BATCH_BYTES + 3008
    finally:
        mine.close()
        broker.close()


def test_a_batch_ends_at_a_packet_paho_must_see_written() -> None:
    """Two QoS 1 publishes, a QoS 0 one (its callback fires once it is written), two more: all go, in order; the
    first two joined, and paho writes the rest itself (the link publishes nothing at QoS 0)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="writes-test")
    client.on_socket_register_write = lambda *_: None
    published: list[int] = []
    client.on_publish = lambda _c, _u, mid, _r, _p: published.append(mid)
    assert writes.write_joined(client)
    mine, broker = socket.socketpair()
    mine.setblocking(False)
    client._sock = mine
    sends = count_sends(client)
    try:
        queue_on(client, [("publish", 1, 10), ("publish", 1, 10), ("publish", 0, 10), ("publish", 1, 10),
                          ("publish", 1, 10)], disconnect=False)
        assert client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert not client.want_write()
        assert published == [3]
        assert sends == [34, 15, 17, 17]
        wire = broker.recv(1 << 16)
        assert [wire[i] for i in (0, 17, 34, 49, 66)] == [0x32, 0x32, 0x30, 0x32, 0x32]
    finally:
        mine.close()
        broker.close()


def test_a_paho_without_the_internals_keeps_its_own_writes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="writes-test")
    monkeypatch.delattr(paho.Client, "_sock_send")
    assert not writes.write_joined(client)
    assert not getattr(client._packet_write, "joined", False)
    assert "paho writes each packet itself" in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_links_clients_write_a_burst_of_publishes_in_fewer_sends(
    mosquitto: MosquittoBroker, topic_prefix: str, protocol: str,
) -> None:
    config = MqttConfig(url=mosquitto.url, protocol=protocol)  # type: ignore[arg-type]
    client = new_client(config, mosquitto.url, f"writes-{uuid.uuid4().hex[:8]}", username=None, password=None)
    inner = client._client
    assert getattr(inner._packet_write, "joined", False)
    async with client:
        sends = count_sends(inner)
        try:
            async with asyncio.timeout(20):
                await asyncio.gather(*(client.publish(f"{topic_prefix}/writes/{i}", b"x", qos=1) for i in range(100)))
        finally:
            del inner._sock_send
    assert sends, "nothing was written"
    assert len(sends) < 100
