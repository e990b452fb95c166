"""The limit: a minimal MQTT 3.1.1 QoS 1 publisher on a raw socket, a measuring instrument, not a client.

Packets are built before the clock starts and written straight to the socket, as many in flight as message ids
allow; PUBACKs are only counted. What it measures is what the broker and the loopback can take from one
connection, with nothing of a client library in the way.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time

from bench.messages import Message

_MAX_IN_FLIGHT = 65_000  # message ids are 16 bits; never reuse one that is still in flight
_CHUNK = 256 * 1024


def _length(n: int) -> bytes:
    """MQTT's variable-length "remaining length"."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _string(client_id.encode())
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int, *, retain: bool = True) -> bytes:
    body = _string(topic.encode()) + struct.pack("!H", packet_id) + payload
    return bytes([0x32 | (0x01 if retain else 0)]) + _length(len(body)) + body


class RawPublisher:
    """One connection; `publish_all` returns the seconds from the first byte written to the last PUBACK."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        connack = self._recv_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the connection: CONNACK {connack.hex()}")

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def publish_all(self, messages: list[Message]) -> float:
        packets = [publish_packet(m.topic, m.payload, i % 65535 + 1) for i, m in enumerate(messages)]
        total = len(packets)
        sock = self.sock
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        writing = True
        next_packet = 0
        acked = 0
        received = bytearray()
        pending = memoryview(b"")
        started = time.perf_counter()
        while acked < total:
            ready = selector.select(timeout=30)
            if not ready:
                raise TimeoutError(f"no progress for 30 s after {acked} of {total} PUBACKs")
            for _, events in ready:
                if events & selectors.EVENT_WRITE:
                    if not pending:
                        batch: list[bytes] = []
                        size = 0
                        while next_packet < total and next_packet - acked < _MAX_IN_FLIGHT and size < _CHUNK:
                            batch.append(packets[next_packet])
                            size += len(packets[next_packet])
                            next_packet += 1
                        pending = memoryview(b"".join(batch))
                    if pending:
                        pending = pending[sock.send(pending) :]
                if events & selectors.EVENT_READ:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("broker closed the connection")
                    received += chunk
                    whole = len(received) // 4 * 4
                    if any(received[i] != 0x40 for i in range(0, whole, 4)):
                        raise RuntimeError("expected only PUBACKs from the broker")
                    acked += whole // 4
                    del received[:whole]
            want_write = bool(pending) or (next_packet < total and next_packet - acked < _MAX_IN_FLIGHT)
            if want_write != writing:
                writing = want_write
                selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0))
        elapsed = time.perf_counter() - started
        selector.close()
        sock.setblocking(True)
        return elapsed

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()
