"""A swarm of display subscribers: thousands of MQTT 3.1.1 connections in one process, a measuring instrument.

`python -m bench.swarm` reads one JSON line from standard input, the swarm's spec::

    {"endpoints": [["127.0.0.1", 1883], ...], "qos": 1, "client_prefix": "fan-1-",
     "displays": [[endpoint index, station, [topic, ...]], ...]}

opens one connection per display (a clean session, keepalive 600 s) with asyncio protocols (no streams, no
client library: the swarm must cost far less than the broker it measures), subscribes each to its topics and
waits for their retained messages. Then it prints ``READY {json}`` and obeys one command a line:

- ``ARM {"stations": [...]}``: forget what was received; the connections of these stations wait for a message
  on their display topic and on a line-status topic. Answers ``ARMED``, then ``DONE {json}`` once every armed
  connection has both (or ``--round-timeout`` passed): each one's receive times (`time.monotonic()`, the
  machine-wide CLOCK_MONOTONIC, so the publisher's process can compare them with its own).
- ``STATS``: answers ``STATS {json}`` with this process's CPU seconds (user, system) and peak RSS.
- ``QUIT`` (or end of input): disconnects everything and exits.

Receive times are taken when the event loop hands the socket's bytes to the connection (`data_received`), once
per read: a message waits for the swarm only while the loop serves other connections, which the swarm's CPU time
(reported) bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.rawmqtt import connect_packet
from bench.rss import peak_rss_mb

_CONNECTS_AT_ONCE = 64  # handshakes in flight: a burst of thousands overflows the brokers' listen backlog
_CONNECT_TIMEOUT_S = 60.0
_RETAINED_TIMEOUT_S = 120.0
_ROUND_TIMEOUT_S = 30.0
_KEEPALIVE_S = 600


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def subscribe_packet(packet_id: int, topics: list[str], qos: int) -> bytes:
    body = struct.pack("!H", packet_id)
    for topic in topics:
        encoded = topic.encode()
        body += struct.pack("!H", len(encoded)) + encoded + bytes([qos])
    return b"\x82" + _length(len(body)) + body


@dataclass(slots=True)
class Swarm:
    """What every connection shares: the armed set and the event that fires when it is complete."""

    armed: set[int] = field(default_factory=set)
    need_status: bool = True
    waiting: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    retained: int = 0
    retained_expected: int = 0
    retained_done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Payload bytes received, by kind ("display", "status") and by phase ("retained" on subscription, "change"
    #: in a round): [count, total bytes, largest].
    sizes: dict[str, list[int]] = field(default_factory=dict)

    def measure(self, key: str, size: int) -> None:
        entry = self.sizes.setdefault(key, [0, 0, 0])
        entry[0] += 1
        entry[1] += size
        entry[2] = max(entry[2], size)

    def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.complete.set()

    def retained_arrived(self) -> None:
        self.retained += 1
        if self.retained >= self.retained_expected:
            self.retained_done.set()


class Display(asyncio.Protocol):
    """One display's connection: CONNECT, SUBSCRIBE, then PUBLISHes (answered with PUBACK at QoS 1)."""

    def __init__(self, index: int, swarm: Swarm, client_id: str, topics: list[str], qos: int) -> None:
        self.index = index
        self.swarm = swarm
        self.client_id = client_id
        self.topics = topics
        self.qos = qos
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.display_at: float | None = None
        self.status_at: float | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(connect_packet(self.client_id, _KEEPALIVE_S) + subscribe_packet(1, self.topics, self.qos))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"{self.client_id}: connection lost ({exc})"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            length, multiplier, at = 0, 1, 1
            while True:
                if at >= len(buffer):
                    return  # the length itself is incomplete
                byte = buffer[at]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                at += 1
                if not byte & 0x80:
                    break
            end = at + length
            if len(buffer) < end:
                return
            kind = buffer[0]
            if kind >> 4 == 3:
                self._publish(kind, bytes(buffer[at:end]), now)
            elif kind == 0x20 and buffer[at + 1] != 0:
                self._refused(f"CONNACK {bytes(buffer[:end]).hex()}")
            elif kind == 0x90 and not self.subscribed.done():
                if 0x80 in buffer[at + 2 : end]:
                    self._refused(f"SUBACK {bytes(buffer[:end]).hex()}")
                else:
                    self.subscribed.set_result(None)
            del buffer[:end]

    def _refused(self, what: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"{self.client_id}: broker refused: {what}"))

    def _publish(self, flags: int, body: bytes, now: float) -> None:
        topic_length = struct.unpack_from("!H", body)[0]
        topic = body[2 : 2 + topic_length]
        qos = (flags >> 1) & 3
        if qos and self.transport is not None:
            self.transport.write(b"\x40\x02" + body[2 + topic_length : 4 + topic_length])
        size = len(body) - 2 - topic_length - (2 if qos else 0)
        kind = "display" if topic.endswith(b"/display") else "status"
        if flags & 1:  # retained: the state on subscription, not a change
            self.swarm.measure(f"retained {kind}", size)
            self.swarm.retained_arrived()
            return
        self.swarm.measure(f"change {kind}", size)
        if self.index not in self.swarm.armed:
            return
        if topic.endswith(b"/display"):
            if self.display_at is None:
                self.display_at = now
                if self.status_at is not None or not self.swarm.need_status:
                    self.swarm.arrived()
        elif topic.endswith(b"/status") and self.status_at is None:
            self.status_at = now
            if self.display_at is not None:
                self.swarm.arrived()


async def _open(spec: dict[str, Any], swarm: Swarm) -> tuple[list[Display], float]:
    loop = asyncio.get_running_loop()
    endpoints = [(str(host), int(port)) for host, port in spec["endpoints"]]
    gate = asyncio.Semaphore(_CONNECTS_AT_ONCE)
    displays: list[Display] = []
    for index, (_endpoint, _station, topics) in enumerate(spec["displays"]):
        displays.append(Display(index, swarm, f"{spec['client_prefix']}{index}", list(topics), int(spec["qos"])))
    swarm.retained_expected = sum(len(d.topics) for d in displays)

    async def connect(display: Display, endpoint: tuple[str, int]) -> None:
        async with gate:
            await loop.create_connection(lambda: display, *endpoint)
            await display.subscribed

    started = time.monotonic()
    async with asyncio.timeout(_CONNECT_TIMEOUT_S + len(displays) / 50):
        await asyncio.gather(*(connect(d, endpoints[int(spec["displays"][d.index][0])]) for d in displays))
    return displays, time.monotonic() - started


def _stats() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": usage.ru_utime, "system_s": usage.ru_stime, "peak_rss_mb": peak_rss_mb()}


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main() -> None:
    reader = await _commands()
    spec = json.loads(await reader.readline())
    swarm = Swarm()
    displays, connect_s = await _open(spec, swarm)
    retained_complete = True
    try:
        async with asyncio.timeout(_RETAINED_TIMEOUT_S):
            await swarm.retained_done.wait()
    except TimeoutError:
        retained_complete = False
    by_station: dict[str, list[int]] = {}
    for index, (_, station, _) in enumerate(spec["displays"]):
        by_station.setdefault(str(station), []).append(index)
    _say("READY " + json.dumps({"connections": len(displays), "connect_s": connect_s, "retained": swarm.retained,
                                "retained_expected": swarm.retained_expected,
                                "retained_complete": retained_complete, "sizes": swarm.sizes, **_stats()}))
    try:
        while line := (await reader.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "ARM":
                order = json.loads(argument)
                stations = order["stations"]
                swarm.need_status = bool(order.get("status", True))
                armed = [i for s in stations for i in by_station.get(s, [])]
                for display in displays:
                    display.display_at = display.status_at = None
                swarm.armed = set(armed)
                swarm.waiting = len(armed)
                swarm.complete = asyncio.Event()
                if not armed:
                    swarm.complete.set()
                _say("ARMED")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ROUND_TIMEOUT_S):
                        await swarm.complete.wait()
                _say("DONE " + json.dumps({
                    "display_at": [displays[i].display_at for i in armed],
                    "status_at": [displays[i].status_at for i in armed],
                    "lost": sum(d.lost for d in displays), "sizes": swarm.sizes,
                }))
            elif command == "STATS":
                _say("STATS " + json.dumps({**_stats(), "sizes": swarm.sizes}))
            elif command == "QUIT":
                break
    finally:
        for display in displays:
            if display.transport is not None and not display.lost:
                display.transport.write(b"\xe0\x00")
                display.transport.close()


if __name__ == "__main__":
    asyncio.run(main())
