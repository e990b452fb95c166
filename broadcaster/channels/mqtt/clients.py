"""Building the aiomqtt clients the link connects with: TLS, MQTT 5 or 3.1.1, the Last Will (with its delay on
MQTT 5), the message expiry property shared by publishes (MQTT 5 only), and successful PUBACKs read without
paho's decoder (acks.py). Besides these, only pipelined.py and acks.py reach paho."""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broadcaster.channels.mqtt.acks import read_acks_quickly
from broadcaster.channels.mqtt.reads import read_buffered
from broadcaster.channels.mqtt.writes import write_joined
from broadcaster.config import MqttConfig

# aiomqtt warns on every publish past ten pending; a bounded window of 32 is by design, so only errors show.
_client_log = logging.getLogger("broadcaster.mqtt.client")
_client_log.setLevel(logging.ERROR)


class _PackedExpiry(Properties):
    """A publish's message expiry, packed into its wire form once.

    paho packs a publish's properties anew for every message; for this one property that is ~15 us of pure
    Python, about a tenth of a publish's CPU in a full refresh (bench/, `--profile`). Nothing sets a property on
    these objects after they are built (they are shared, see `_expiry`), so the packed bytes stay true.
    """

    def __init__(self, seconds: int) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.MessageExpiryInterval = seconds
        # paho's __setattr__ admits only property names: the cache is set past it.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def __setattr__(self, name: str, value: object) -> None:
        if "_packed" in self.__dict__:  # built: a change would never reach the wire
            raise AttributeError(f"the shared message expiry property is read-only (setting {name})")
        super().__setattr__(name, value)  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed


@functools.lru_cache(maxsize=256)
def _expiry(seconds: int) -> Properties:
    # One Properties per distinct expiry, shared by every publish (paho only reads it): building one costs
    # ~20 us, a tenth of a whole publish (bench/).
    return _PackedExpiry(max(1, seconds))


def expiry(config: MqttConfig, seconds: int | None) -> Properties | None:
    """The message expiry property of a publish, or None: no expiry asked, or MQTT 3.1.1, which has none (the
    payloads' `valid_until` tells a consumer how long they hold)."""
    if seconds is None or not config.v5:
        return None
    return _expiry(seconds)


def new_client(
    config: MqttConfig,
    url: str,
    identifier: str,
    *,
    username: str | None,
    password: str | None,
    will: aiomqtt.Will | None = None,
    clean_start: bool = True,
    properties: Properties | None = None,
) -> aiomqtt.Client:
    """A client of the broker at `url` (one of `config.brokers`), speaking `config.protocol`. `clean_start` is
    MQTT 5's clean start, or 3.1.1's clean session."""
    parts = urlsplit(url)
    tls_context = None
    if parts.scheme == "mqtts":
        tls_context = ssl.create_default_context(
            cafile=str(config.tls_ca_file) if config.tls_ca_file else None
        )
    v5 = config.v5
    client = aiomqtt.Client(
        parts.hostname or "127.0.0.1",
        parts.port or (8883 if parts.scheme == "mqtts" else 1883),
        identifier=identifier,
        logger=_client_log,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        username=username,
        password=password,
        will=will,
        clean_start=clean_start if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        clean_session=None if v5 else clean_start,
        properties=properties if v5 else None,
        keepalive=config.keepalive_seconds,
        timeout=config.publish_timeout_seconds,
        tls_context=tls_context,
        # paho's own in-flight limit is off: the link bounds what awaits a PUBACK itself (`publish_window` for a
        # retained batch, one notice at a time per drain, the status), far below paho's 65,535 message ids. With a
        # limit, paho frees a message's slot only after its PUBACK callback, so the batch's refill from that
        # callback always waited in paho's queue, and paho scanned every in-flight message on each PUBACK to find
        # it: ~10 % of the publishing CPU (docs/design.md, "Measured facts").
        max_inflight_messages=0,
        # Neither paho nor aiomqtt disables Nagle's algorithm: a publish written while an earlier one is still
        # unacknowledged by TCP then waits for the broker's delayed ACK, 40 ms on Linux. An emergency's display
        # updates queued behind its alert topic took 40 ms more for it (bench/, issue 16).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
    read_acks_quickly(client._client)
    read_buffered(client._client)
    write_joined(client._client)
    return client


def session_client(
    config: MqttConfig, url: str, status_topic: str, offline: bytes, *, username: str | None, password: str | None,
    identifier: str | None = None,
) -> aiomqtt.Client:
    """The client of a session under our own client id (`identifier`, default `mqtt.client_id`), leaving `offline`
    on `status_topic` as its Last Will."""
    identifier = identifier or config.client_id
    if not config.v5:
        # MQTT 3.1.1 has no Will Delay: the Will fires as soon as the broker notices we are gone. A clean session
        # keeps nothing we need (every session subscribes again and republishes everything), and a kept one
        # would have the broker queue our canary topics for us, without end, while we are away.
        will = aiomqtt.Will(status_topic, offline, qos=1, retain=True)
        return new_client(config, url, identifier, username=username, password=password, will=will,
                          clean_start=True)
    # MQTT 5 Will Delay: the broker says "offline" only if we stay away that long, so a quick reconnect
    # (a restart, a network blip) does not make every display flash "information unavailable". The delay
    # only holds while the session lives, hence a session expiry at least as long and no clean start.
    will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
    will_properties.WillDelayInterval = config.will_delay_seconds
    will = aiomqtt.Will(status_topic, offline, qos=1, retain=True, properties=will_properties)
    connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect_properties.SessionExpiryInterval = config.will_delay_seconds + 30
    return new_client(config, url, identifier, username=username, password=password, will=will,
                      clean_start=False, properties=connect_properties)
