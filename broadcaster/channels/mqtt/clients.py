"""Building the aiomqtt clients the link connects with: TLS, MQTT 5, the Last Will with its delay, and the
message expiry property shared by publishes. The package's only paho import is here."""

from __future__ import annotations

import functools
import logging
import socket
import ssl

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broadcaster.config import MqttConfig

# aiomqtt warns on every publish past ten pending; a bounded window of 32 is by design, so only errors show.
_client_log = logging.getLogger("broadcaster.mqtt.client")
_client_log.setLevel(logging.ERROR)


@functools.lru_cache(maxsize=256)
def expiry(seconds: int | None) -> Properties | None:
    # One Properties per distinct expiry, shared by every publish (paho only reads it): building one costs
    # ~20 us, a tenth of a whole publish (bench/).
    if seconds is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, seconds)
    return props


def new_client(
    config: MqttConfig,
    identifier: str,
    *,
    username: str | None,
    password: str | None,
    will: aiomqtt.Will | None = None,
    clean_start: bool = True,
    properties: Properties | None = None,
) -> aiomqtt.Client:
    tls_context = None
    if config.tls:
        tls_context = ssl.create_default_context(
            cafile=str(config.tls_ca_file) if config.tls_ca_file else None
        )
    return aiomqtt.Client(
        config.host,
        config.port,
        identifier=identifier,
        logger=_client_log,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=username,
        password=password,
        will=will,
        clean_start=clean_start,
        properties=properties,
        keepalive=config.keepalive_seconds,
        timeout=config.publish_timeout_seconds,
        tls_context=tls_context,
        # paho's message ids wrap at 65,535 in-flight QoS 1 messages; we never come near with the window.
        max_inflight_messages=max(20, config.publish_window),
        # Neither paho nor aiomqtt disables Nagle's algorithm: a publish written while an earlier one is still
        # unacknowledged by TCP then waits for the broker's delayed ACK, 40 ms on Linux. An emergency's display
        # updates queued behind its alert topic took 40 ms more for it (bench/, issue 16).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )


def session_client(
    config: MqttConfig, status_topic: str, offline: bytes, *, username: str | None, password: str | None
) -> aiomqtt.Client:
    """The client of a session under our own client id, leaving `offline` on `status_topic` as its Last Will."""
    # MQTT 5 Will Delay: the broker says "offline" only if we stay away that long, so a quick reconnect
    # (a restart, a network blip) does not make every display flash "information unavailable". The delay
    # only holds while the session lives, hence a session expiry at least as long and no clean start.
    will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
    will_properties.WillDelayInterval = config.will_delay_seconds
    will = aiomqtt.Will(status_topic, offline, qos=1, retain=True, properties=will_properties)
    connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect_properties.SessionExpiryInterval = config.will_delay_seconds + 30
    return new_client(config, config.client_id, username=username, password=password, will=will,
                      clean_start=False, properties=connect_properties)
