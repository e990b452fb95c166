"""paho's socket reads, buffered: one `recv` per readable socket, not three per packet.

paho reads each packet with a `recv` for its first byte, one per byte of its remaining length, and one for the
rest. A PUBACK is four bytes, so acknowledging a full refresh at k = 1 (1,085 messages) made ~3,300 system calls,
each through paho's wrapper. Here the client's `_sock_recv` takes what the socket holds (up to `CHUNK` bytes) in
one call and hands paho its bytes from memory; paho's parsing is unchanged.

Bytes in this buffer are invisible to the event loop, which calls `loop_read` only when the socket is readable.
paho's `loop_read` reads at most as many packets as messages are in flight, so it can return with whole packets
still buffered (a PINGRESP behind the last PUBACK): they would wait for the broker's next bytes, a keepalive
away. So `loop_read` is wrapped too and goes on while the buffer holds bytes; it ends when the buffer is empty
(a partial packet is taken into paho's own packet state, and paho then finds the socket empty).

It replaces two methods on each client the link makes (on the instance, as acks.py does) and reads paho's
`_sock` (to drop what was buffered from a socket that is gone). tests/test_mqtt_reads.py holds it to the paho
the project pins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from paho.mqtt import client as paho
from paho.mqtt.enums import MQTTErrorCode

log = logging.getLogger(__name__)

#: Bytes taken from the socket at most per `recv`: many acknowledgements, one system call.
CHUNK = 65536


class _Buffer:
    __slots__ = ("data", "pos", "sock")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0
        self.sock: object = None


def read_buffered(client: paho.Client) -> bool:
    """Buffer `client`'s socket reads from now on; False (paho reads as before) when this paho lacks what it
    replaces."""
    recv: Callable[[int], bytes] | None = getattr(client, "_sock_recv", None)
    loop_read: Callable[[int], MQTTErrorCode] | None = getattr(client, "loop_read", None)
    if recv is None or loop_read is None or not hasattr(client, "_sock"):
        log.warning("paho %s lacks the internals buffered reads replace: paho reads the socket itself",
                    getattr(paho, "__version__", "?"))
        return False
    buffer = _Buffer()

    def sock_recv(bufsize: int) -> bytes:
        if buffer.pos < len(buffer.data):
            if buffer.sock is client._sock:
                start, buffer.pos = buffer.pos, buffer.pos + bufsize
                return buffer.data[start:buffer.pos]
            buffer.data, buffer.pos = b"", 0  # bytes of a socket that is gone: never parsed as the new one's
        # paho's own call: its errors (BlockingIOError when the socket is empty, a closed socket) are paho's.
        data = recv(CHUNK)
        if len(data) <= bufsize:
            return data
        buffer.data, buffer.pos, buffer.sock = data, bufsize, client._sock
        return data[:bufsize]

    def buffered_loop_read(max_packets: int = 1) -> MQTTErrorCode:
        rc = loop_read(max_packets)
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and buffer.pos < len(buffer.data)
               and buffer.sock is client._sock):
            rc = loop_read(max_packets)
        return rc

    buffered_loop_read.buffered = True  # type: ignore[attr-defined]  # how tests tell it is installed
    setattr(client, "_sock_recv", sock_recv)  # noqa: B010 (mypy: a method cannot be assigned)
    setattr(client, "loop_read", buffered_loop_read)  # noqa: B010
    return True
