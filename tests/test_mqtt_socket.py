"""The broker link's socket disables Nagle's algorithm (issue 16).

Neither paho nor aiomqtt sets TCP_NODELAY. Without it a publish written while an earlier one is still
unacknowledged by TCP waits for the broker's delayed ACK, 40 ms on Linux: an emergency's station displays,
published right behind its alert topic, arrived 40 ms late (bench/, emergency scenario: last display p50
89 ms -> 40 ms). The test finds the link's connection among this process's sockets by its peer, the broker.
"""

from __future__ import annotations

import asyncio
import os
import socket

from support import MosquittoBroker

from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import MqttConfig


def sockets_to(host: str, port: int) -> list[socket.socket]:
    """This process's TCP sockets connected to (host, port), as duplicates (closed by the caller)."""
    found: list[socket.socket] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        try:
            if candidate.type == socket.SOCK_STREAM and candidate.getpeername()[:2] == (host, port):
                found.append(candidate)
                continue
        except OSError:
            pass  # a listening or unconnected socket
        candidate.close()
    return found


async def test_the_links_connection_sends_each_publish_at_once(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    config = MqttConfig(url=mosquitto.url, topic_prefix=topic_prefix, client_id=f"nodelay-{topic_prefix[-8:]}",
                        will_delay_seconds=0)
    link = MqttLink(config)
    stop = asyncio.Event()
    run = asyncio.create_task(link.run(stop))
    try:
        async with asyncio.timeout(10):
            await link.connected.wait()
        connections = sockets_to(mosquitto.host, mosquitto.port)
        try:
            assert connections, "the link's connection to the broker was not found"
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in connections)
        finally:
            for s in connections:
                s.close()
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await run
