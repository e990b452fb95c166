"""MQTT: the link (the only package that imports aiomqtt and paho) and the notice stream that uses it.

- `link`: `MqttLink`, one kept connection: reconnects with backoff, the status topic, the canary
  subscriptions, QoS 1 publishing through a bounded window;
- `clients`: the aiomqtt clients it connects with (TLS, the Last Will with its delay, message expiry);
- `identity`: whether our client id is free, read under a throwaway client id before the first session;
- `presence`: with several instances sharing a database, one instance's retained role on its own connection;
- `notices`: `MqttNoticeChannel`, the outbox's channel for the non-retained notice stream.
"""

from broadcaster.channels.mqtt.link import CHANNEL_NAME, MqttLink
from broadcaster.channels.mqtt.notices import MqttNoticeChannel

__all__ = ["CHANNEL_NAME", "MqttLink", "MqttNoticeChannel"]
