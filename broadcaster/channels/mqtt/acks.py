"""Successful PUBACKs read without paho's decoder.

paho decodes every PUBACK into a new `ReasonCode` and a new `Properties`, each of which copies a table of names
when it is built: ~18 us of pure Python per acknowledged message, about a tenth of a cold start's CPU at k = 1
(1,133 messages) and more than the broker spends on the message (docs/design.md, "Measured facts"). Nearly every
PUBACK says only "accepted": its message id and nothing else (MQTT 3.1.1 always; MQTT 5 when the reason code is
0 and there are no properties, which MQTT 5 lets a broker leave out), or, under MQTT 5, "Success" or "No matching
subscribers" with no or empty properties. Those are read here and handed to paho's own `_do_on_publish` with a
shared reason code and one shared empty property set, which the callbacks only read. Any other PUBACK (a
refusal, a reason string, a malformed packet) and every PUBCOMP goes through paho's decoder as before; only
paho's debug line "Received PUBACK" is not logged for the quick ones (the link logs paho at error level only).

It replaces one method on each client the link makes (`_handle_pubackcomp`, on the instance), and reads paho's
private state as that method does: the packet being read, the out-message lock and table, the protocol, and
`_do_on_publish`. tests/test_mqtt_acks.py holds it to the paho the project pins: for any PUBACK, the callback sees
what paho's decoder gives, and it fails if a paho without these internals stops the quick path being installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from paho.mqtt import client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

#: The reason codes of a PUBACK that accepts the message: "Success", and "No matching subscribers", which
#: Mosquitto answers for a topic nobody subscribes to (most retained topics, between two displays' visits).
_ACCEPTED = {value: ReasonCode(PacketTypes.PUBACK, identifier=value) for value in (0x00, 0x10)}
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
#: What the quick path reads of a paho client, besides the method it replaces.
_INTERNALS = ("_in_packet", "_out_message_mutex", "_out_messages", "_do_on_publish", "_protocol")


def quick_ack(packet: bytes | bytearray, v5: bool) -> tuple[int, ReasonCode] | None:
    """The message id and reason of a PUBACK's variable header (what follows its fixed header) that says only
    that the message was accepted, else None (paho's decoder then reads it: refusals, properties and malformed
    packets alike)."""
    size = len(packet)
    if size == 2:
        return (packet[0] << 8) | packet[1], _ACCEPTED[0x00]
    if v5 and (size == 3 or (size == 4 and packet[3] == 0)):
        reason = _ACCEPTED.get(packet[2])
        if reason is not None:
            return (packet[0] << 8) | packet[1], reason
    return None


def read_acks_quickly(client: paho.Client) -> bool:
    """Read `client`'s successful PUBACKs without paho's decoder from now on; False (and paho's own reading
    stays) when this paho lacks the internals it needs."""
    original: Callable[[str], MQTTErrorCode] | None = getattr(client, "_handle_pubackcomp", None)
    if original is None or not all(hasattr(client, name) for name in _INTERNALS):
        log.warning("paho %s lacks the internals the quick PUBACK path reads: PUBACKs are decoded by paho",
                    getattr(paho, "__version__", "?"))
        return False
    v5 = client._protocol == MQTTProtocolVersion.MQTTv5

    def handle_pubackcomp(cmd: str) -> MQTTErrorCode:
        if cmd == "PUBACK":
            ack = quick_ack(client._in_packet["packet"], v5)
            if ack is not None:
                mid, reason = ack
                # As paho's own: only a message still awaiting its PUBACK is reported, once.
                with client._out_message_mutex:
                    if mid in client._out_messages:
                        return client._do_on_publish(mid, reason, _NO_PROPERTIES)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return original(cmd)

    handle_pubackcomp.quick = True  # type: ignore[attr-defined]  # how tests tell it is installed
    setattr(client, "_handle_pubackcomp", handle_pubackcomp)  # noqa: B010 (mypy: a method cannot be assigned)
    return True
