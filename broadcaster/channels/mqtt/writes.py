"""paho's queued packets, written together: one `send` for what is queued, not one per packet.

Under aiomqtt, paho queues each packet and writes the queue when the event loop finds the socket writable: a
`send` per packet, ~1,100 system calls for a full refresh at k = 1 (a publish window refilled from each batch
of PUBACKs queues several packets at a time), and 35 for an emergency's alert and displays. Here the packets at
the head of the queue that need nothing done once they are written (a QoS 1 or 2 PUBLISH, an acknowledgement, a
subscription, a ping) go out in one `send` of their bytes joined, up to `BATCH_BYTES`; what was written of them
is taken off the queue as paho would. From the first packet paho must see written (a QoS 0 PUBLISH, whose
callback fires then, and a DISCONNECT, which closes the socket) paho writes the queue itself, one packet per
`send` as before: the link publishes nothing at QoS 0.

It replaces one method on each client the link makes (`_packet_write`, on the instance, as acks.py does) and reads
paho's private queue as that method does; it logs a failed write through paho's logger, in paho's words.
tests/test_mqtt_writes.py holds it to the paho the project pins: the bytes on the wire and the callbacks are paho's
own, whatever the socket accepts at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from paho.mqtt import client as paho
from paho.mqtt.enums import MessageType, MQTTErrorCode

log = logging.getLogger(__name__)

#: Bytes joined into one `send`: packets are added while the batch is smaller (a socket's send buffer takes a few
#: hundred KB on loopback).
BATCH_BYTES = 65536
#: What the joined write reads of a paho client, besides the method it replaces.
_INTERNALS = ("_out_packet", "_sock_send", "_easy_log")


def _plain(packet: Any) -> bool:
    """Whether paho does nothing but take `packet` off its queue once it is written."""
    kind = packet["command"] & 0xF0
    return kind != MessageType.DISCONNECT and not (kind == MessageType.PUBLISH and packet["qos"] == 0)


def write_joined(client: paho.Client) -> bool:
    """Write `client`'s queued packets joined from now on; False (paho writes each itself) when this paho lacks
    the internals it needs."""
    original: Callable[[], MQTTErrorCode] | None = getattr(client, "_packet_write", None)
    if original is None or not all(hasattr(client, name) for name in _INTERNALS):
        log.warning("paho %s lacks the internals joined writes read: paho writes each packet itself",
                    getattr(paho, "__version__", "?"))
        return False

    def packet_write() -> MQTTErrorCode:
        queue = client._out_packet
        while len(queue) > 1 and _plain(queue[0]) and _plain(queue[1]):
            batch = []
            size = 0
            for packet in queue:
                if size >= BATCH_BYTES or not _plain(packet):
                    break
                batch.append(packet)
                size += packet["to_process"]
            data = b"".join(memoryview(p["packet"])[p["pos"]:] if p["pos"] else p["packet"] for p in batch)
            # As paho's own write: its wrapper's errors, and what each means to the caller.
            try:
                written = client._sock_send(data)
            except (AttributeError, ValueError):
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                client._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)  # paho's words
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if written <= 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            # paho's keepalive clock (`_last_msg_out`) is not moved: paho's own write does not move it either.
            for packet in batch:
                taken = min(written, packet["to_process"])
                packet["to_process"] -= taken
                packet["pos"] += taken
                written -= taken
                if packet["to_process"]:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS  # the socket is full: the rest when it is writable
                queue.popleft()
        return original()

    packet_write.joined = True  # type: ignore[attr-defined]  # how tests tell it is installed
    setattr(client, "_packet_write", packet_write)  # noqa: B010 (mypy: a method cannot be assigned)
    return True
