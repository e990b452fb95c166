"""A TCP fault proxy between the broadcaster and a real broker: pass traffic, black-hole it, or drop one PUBACK.
With ``mqtt=False`` it forwards any TCP stream as it comes (a PostgreSQL connection, HTTP).

It runs in the test's event loop on a free loopback port. Black-holing keeps every connection open but
forwards nothing in either direction (and accepts new connections that get nowhere), as a dead route or a
firewall dropping packets does; healing forwards again and closes the held connections, as a route that
comes back after the TCP sessions timed out. Dropping a PUBACK parses the broker-to-client MQTT stream
packet by packet and swallows the next PUBACK, so the client never learns its QoS 1 message arrived. Holding an
acknowledgement keeps the broker's PUBACK of the next PUBLISH on a topic, and everything the broker sends after it
(PUBACKs go back in order), until the test releases it: that message stays in flight as long as the test needs.

Everything the client sends that reaches the target is logged with its `time.monotonic()` (`forwarded`): whole
packets in MQTT mode, chunks as read otherwise. The clock is the machine's, so other processes' times compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Self

from .ports import free_port

PUBACK = 0x40
PUBLISH = 0x30


@dataclass(frozen=True)
class Forwarded:
    """Bytes the client sent that the proxy passed on to the target, and when (`time.monotonic()`)."""

    at: float
    data: bytes  # one MQTT control packet in MQTT mode, else a chunk as it was read

    @property
    def publish_topic(self) -> str | None:
        """The topic of an MQTT PUBLISH packet, None for any other packet."""
        if not self.data or self.data[0] & 0xF0 != PUBLISH:
            return None
        at = 1
        while self.data[at] & 0x80:  # the remaining length's continuation bytes
            at += 1
        length = int.from_bytes(self.data[at + 1:at + 3], "big")
        return self.data[at + 3:at + 3 + length].decode()

    @property
    def packet_id(self) -> int | None:
        """The packet identifier of a QoS 1 or 2 PUBLISH packet, None for any other packet."""
        if not self.data or self.data[0] & 0xF0 != PUBLISH or not self.data[0] & 0x06:
            return None
        at = 1
        while self.data[at] & 0x80:
            at += 1
        start = at + 3 + int.from_bytes(self.data[at + 1:at + 3], "big")
        return int.from_bytes(self.data[start:start + 2], "big")


class FaultProxy:
    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, mqtt: bool = True) -> None:
        """`mqtt=False`: any TCP protocol (PostgreSQL's), forwarded as bytes; no PUBACK can then be dropped."""
        self.target = (target_host, target_port)
        self.mqtt = mqtt
        self.port = free_port(self.host)
        self._server: asyncio.Server | None = None
        self._blackholed = False
        self._healed = asyncio.Event()
        self._healed.set()
        self.drop_pubacks = 0  # how many PUBACKs still to swallow
        self.dropped_pubacks = 0
        self._hold_topic: str | None = None  # the topic whose next PUBLISH's PUBACK is held (`hold_ack_of`)
        self._held_ids: set[int] = set()
        self._acks_released = asyncio.Event()
        self._acks_released.set()
        self.held_attempts = 0  # connections accepted during an outage: the client is trying to reconnect
        self._attempted = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.forwarded: list[Forwarded] = []
        self._forwarding = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def blackhole(self) -> None:
        self._blackholed = True
        self._healed.clear()

    def heal(self) -> None:
        """Forward again. Connections held during the outage are closed: their TCP state is long gone."""
        self._blackholed = False
        for writer in list(self._writers):
            writer.close()
        self._healed.set()

    def hold_ack_of(self, topic: str) -> None:
        """Hold the broker's PUBACK of the next message the client publishes on `topic`, and whatever the broker
        sends after it, until `release_acks()`."""
        assert self.mqtt, "only an MQTT proxy reads packets"
        assert self._acks_released.is_set(), "one hold at a time: release_acks() first"
        self._hold_topic = topic
        self._acks_released.clear()

    def release_acks(self) -> None:
        self._hold_topic = None
        self._held_ids.clear()
        self._acks_released.set()

    def published_on(self, topic: str) -> list[Forwarded]:
        """The PUBLISH packets on `topic` passed on so far, in order."""
        return [f for f in self.forwarded if f.publish_topic == topic]

    async def wait_published_on(self, topic: str, count: int) -> Forwarded:
        """Wait until `count` messages on `topic` have been passed on; returns the last of them."""
        async with self._forwarding:
            await self._forwarding.wait_for(lambda: len(self.published_on(topic)) >= count)
        return self.published_on(topic)[count - 1]

    async def wait_forwarded(self, publishes: int) -> None:
        """Wait until the proxy has passed on `publishes` PUBLISH packets from the client in all."""
        async with self._forwarding:
            await self._forwarding.wait_for(
                lambda: sum(1 for f in self.forwarded if f.publish_topic is not None) >= publishes)

    async def wait_for_held_attempts(self, count: int) -> None:
        """Wait until `count` connections have been attempted (and held) during outages."""
        async with self._attempted:
            await self._attempted.wait_for(lambda: self.held_attempts >= count)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        if self._blackholed:
            async with self._attempted:
                self.held_attempts += 1
                self._attempted.notify_all()
        try:
            await self._healed.wait()  # a connection attempt during the outage gets no answer
            broker_reader, broker_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers.add(broker_writer)
        upstream = asyncio.create_task(self._pipe(client_reader, broker_writer, upstream=True))
        downstream = asyncio.create_task(self._pipe(broker_reader, client_writer, upstream=False))
        self._tasks |= {upstream, downstream}
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_writer, broker_writer):
            writer.close()
        self._writers -= {client_writer, broker_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        parse = self.mqtt  # whole MQTT packets: upstream to log PUBLISHes, downstream to drop a PUBACK
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
            while True:
                packet = await _read_packet(reader) if parse else await reader.read(65536)
                if not packet:
                    return
                if self._blackholed:
                    await self._healed.wait()
                    return  # healing closes held connections; nothing of the outage is delivered late
                if not upstream and parse and packet[0] & 0xF0 == PUBACK and self.drop_pubacks > 0:
                    self.drop_pubacks -= 1
                    self.dropped_pubacks += 1
                    continue
                if upstream and self._hold_topic is not None and not self._held_ids:
                    forwarded = Forwarded(0.0, packet)
                    if forwarded.publish_topic == self._hold_topic and forwarded.packet_id is not None:
                        self._held_ids.add(forwarded.packet_id)
                if (not upstream and parse and packet[0] & 0xF0 == PUBACK and self._held_ids
                        and _puback_id(packet) in self._held_ids):
                    await self._acks_released.wait()  # this PUBACK and everything after it wait
                writer.write(packet)
                await writer.drain()
                if upstream:
                    self.forwarded.append(Forwarded(time.monotonic(), packet))
                    async with self._forwarding:
                        self._forwarding.notify_all()


def _puback_id(packet: bytes) -> int:
    at = 1
    while packet[at] & 0x80:
        at += 1
    return int.from_bytes(packet[at + 1:at + 3], "big")


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT control packet: fixed header, remaining length (variable byte integer), body."""
    first = await reader.readexactly(1)
    length_bytes = b""
    multiplier, remaining = 1, 0
    while True:
        byte = await reader.readexactly(1)
        length_bytes += byte
        remaining += (byte[0] & 0x7F) * multiplier
        if not byte[0] & 0x80:
            break
        multiplier *= 128
    return first + length_bytes + await reader.readexactly(remaining)
