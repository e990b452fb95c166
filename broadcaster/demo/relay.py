"""A loopback relay that lets an MQTT 5 client (the broadcaster) use an MQTT 3.1.1-only broker (amqtt).

amqtt implements MQTT 3.1.1 only and refuses protocol level 5 with CONNACK "unacceptable protocol version",
while the broadcaster's link speaks MQTT 5 (message expiry on retained state). The relay rewrites each packet
between the two versions: it drops what 3.1.1 cannot carry (properties, subscription options beyond QoS, reason
codes on acknowledgements) and adds what an MQTT 5 client expects (empty property lists, reason codes). The
one MQTT 5 feature the broadcaster uses, message expiry, has no 3.1.1 equivalent: displays go by the payload's
`valid_until`, which docs/mqtt.md makes the rule for exactly this case.

A client that vanishes without DISCONNECT makes the relay drop its broker connection without one too, so the
broker publishes the client's Last Will as it would for a direct connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass, field

from broadcaster.errors import ProtocolViolation

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# MQTT 5 property identifiers by value type (MQTT 5.0 section 2.2.2.2).
_BYTE_PROPS = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_TWO_BYTE_PROPS = frozenset({0x13, 0x21, 0x22, 0x23})
_FOUR_BYTE_PROPS = frozenset({0x02, 0x11, 0x18, 0x27})
_VARINT_PROPS = frozenset({0x0B})
_STRING_PROPS = frozenset({0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F, 0x09, 0x16})  # strings and binary data
_PAIR_PROPS = frozenset({0x26})
SESSION_EXPIRY, TOPIC_ALIAS = 0x11, 0x23

# CONNACK return codes of 3.1.1 -> reason codes of 5.
_CONNACK_REASONS = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}
_DISCONNECT_WITH_WILL = 0x04


# -- wire format -----------------------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it)."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(data):
            raise ProtocolViolation("variable byte integer runs past the packet")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolViolation("variable byte integer longer than 4 bytes")


def _field(data: bytes, pos: int) -> tuple[bytes, int]:
    """A two-byte-length-prefixed string or binary field: (its bytes including the prefix, position after)."""
    if pos + 2 > len(data):
        raise ProtocolViolation("field runs past the packet")
    (length,) = struct.unpack_from("!H", data, pos)
    end = pos + 2 + length
    if end > len(data):
        raise ProtocolViolation("field runs past the packet")
    return data[pos:end], end


def parse_properties(data: bytes, pos: int) -> tuple[dict[int, bytes], int]:
    """An MQTT 5 property list at `pos`: ({identifier: raw value}, position after the list)."""
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolViolation("property list runs past the packet")
    props: dict[int, bytes] = {}
    while pos < end:
        ident = data[pos]
        pos += 1
        if ident in _BYTE_PROPS:
            size = 1
        elif ident in _TWO_BYTE_PROPS:
            size = 2
        elif ident in _FOUR_BYTE_PROPS:
            size = 4
        elif ident in _VARINT_PROPS:
            _, after = decode_varint(data, pos)
            size = after - pos
        elif ident in _STRING_PROPS:
            _, after = _field(data, pos)
            size = after - pos
        elif ident in _PAIR_PROPS:
            _, mid = _field(data, pos)
            _, after = _field(data, mid)
            size = after - pos
        else:
            raise ProtocolViolation(f"unknown property 0x{ident:02x}")
        props[ident] = data[pos : pos + size]
        pos += size
    if pos != end:
        raise ProtocolViolation("property list length does not match its content")
    return props, end


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet; `asyncio.IncompleteReadError` at the end of the stream."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    else:
        raise ProtocolViolation("remaining length longer than 4 bytes")
    return first, await reader.readexactly(length)


# -- translation -------------------------------------------------------------------------------------------------


def connect_to_v311(body: bytes) -> bytes:
    """An MQTT 5 CONNECT body as MQTT 3.1.1."""
    name, pos = _field(body, 0)
    if name != b"\x00\x04MQTT" or pos + 4 > len(body) or body[pos] != 5:
        raise ProtocolViolation("not an MQTT 5 CONNECT")
    flags, keepalive = body[pos + 1], body[pos + 2 : pos + 4]
    props, pos = parse_properties(body, pos + 4)
    expiry = struct.unpack("!I", props[SESSION_EXPIRY])[0] if SESSION_EXPIRY in props else 0
    if expiry == 0:
        flags |= 0x02  # a v5 session that ends with the connection is a 3.1.1 clean session
    out = bytearray(b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive)
    client_id, pos = _field(body, pos)
    out += client_id
    if flags & 0x04:  # will: drop its properties, keep topic and payload
        _, pos = parse_properties(body, pos)
        topic, pos = _field(body, pos)
        payload, pos = _field(body, pos)
        out += topic + payload
    if flags & 0x80:
        username, pos = _field(body, pos)
        out += username
    if flags & 0x40:
        password, pos = _field(body, pos)
        out += password
    return bytes(out)


@dataclass
class Translator:
    """The per-connection state of the translation: topic aliases and unacknowledged unsubscribes."""

    aliases: dict[int, bytes] = field(default_factory=dict)
    unsubscribes: dict[bytes, int] = field(default_factory=dict)

    def client_to_broker(self, first: int, body: bytes) -> bytes | None:
        """An MQTT 5 packet from the client as MQTT 3.1.1 bytes; None when the broker connection must be dropped
        without a DISCONNECT (so the broker publishes the Will)."""
        kind = first >> 4
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            topic, pos = _field(body, 0)
            packet_id = b""
            if qos:
                packet_id, pos = body[pos : pos + 2], pos + 2
            props, pos = parse_properties(body, pos)
            if TOPIC_ALIAS in props:
                (alias,) = struct.unpack("!H", props[TOPIC_ALIAS])
                if len(topic) > 2:
                    self.aliases[alias] = topic
                elif alias in self.aliases:
                    topic = self.aliases[alias]
                else:
                    raise ProtocolViolation(f"unknown topic alias {alias}")
            return packet(first, topic + packet_id + body[pos:])
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            return packet(first, body[:2])  # 3.1.1 has no reason code or properties here
        if kind == SUBSCRIBE:
            _, pos = parse_properties(body, 2)
            out = bytearray(body[:2])
            while pos < len(body):
                topic, pos = _field(body, pos)
                if pos >= len(body):
                    raise ProtocolViolation("SUBSCRIBE topic without options")
                out += topic + bytes([body[pos] & 0x03])  # keep the QoS; 3.1.1 has no other options
                pos += 1
            return packet(first, bytes(out))
        if kind == UNSUBSCRIBE:
            _, pos = parse_properties(body, 2)
            count, rest = 0, pos
            while rest < len(body):
                _, rest = _field(body, rest)
                count += 1
            self.unsubscribes[body[:2]] = count
            return packet(first, body[:2] + body[pos:])
        if kind == PINGREQ:
            return packet(first, b"")
        if kind == DISCONNECT:
            if body and body[0] == _DISCONNECT_WITH_WILL:
                return None
            return packet(0xE0, b"")
        raise ProtocolViolation(f"packet type {kind} from a client cannot be relayed")

    def broker_to_client(self, first: int, body: bytes) -> bytes:
        """An MQTT 3.1.1 packet from the broker as MQTT 5 bytes."""
        kind = first >> 4
        if kind == CONNACK:
            if len(body) != 2:
                raise ProtocolViolation("CONNACK of the wrong size")
            return packet(first, bytes([body[0], _CONNACK_REASONS.get(body[1], 0x80), 0]))
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            _, pos = _field(body, 0)
            if qos:
                pos += 2
            return packet(first, body[:pos] + b"\x00" + body[pos:])
        if kind == SUBACK:
            return packet(first, body[:2] + b"\x00" + body[2:])
        if kind == UNSUBACK:
            count = self.unsubscribes.pop(body[:2], 1)
            return packet(first, body[:2] + b"\x00" + b"\x00" * count)
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, PINGRESP):
            return packet(first, body)
        raise ProtocolViolation(f"packet type {kind} from the broker cannot be relayed")


# -- the relay ---------------------------------------------------------------------------------------------------


class Mqtt5Relay:
    """Listens on `host:port` (0: any free port) and relays each MQTT 5 client to the 3.1.1 broker upstream."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._requested_port = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._connections.discard(task)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_w: asyncio.StreamWriter | None = None
        try:
            first, body = await read_packet(client_r)
            if first >> 4 != CONNECT:
                raise ProtocolViolation("the first packet is not CONNECT")
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            upstream_w.write(packet(0x10, connect_to_v311(body)))
            await upstream_w.drain()
            translator = Translator()
            up = asyncio.ensure_future(self._pump_up(client_r, upstream_w, translator))
            down = asyncio.ensure_future(self._pump_down(upstream_r, client_w, translator))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (up, down):
                    task.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, ProtocolViolation) as exc:
            log.debug("MQTT relay connection ended: %s", exc)
        finally:
            if upstream_w is not None:
                upstream_w.transport.abort()  # never a DISCONNECT we did not relay: the Will must fire
            client_w.transport.abort()

    @staticmethod
    async def _pump_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, translator: Translator) -> None:
        while True:
            first, body = await read_packet(reader)
            data = translator.client_to_broker(first, body)
            if data is None:
                return
            writer.write(data)
            await writer.drain()
            if first >> 4 == DISCONNECT:
                with contextlib.suppress(OSError):
                    writer.close()
                    await writer.wait_closed()
                return

    @staticmethod
    async def _pump_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, translator: Translator) -> None:
        while True:
            first, body = await read_packet(reader)
            writer.write(translator.broker_to_client(first, body))
            await writer.drain()
