"""The demo's embedded MQTT broker: amqtt in this process, with a TCP and a WebSocket listener.

The only module that imports amqtt. amqtt speaks MQTT 3.1.1 only: the broadcaster connects to it with
`mqtt.protocol = "3.1.1"`, as displays and `mosquitto_sub` do.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from amqtt.broker import Broker

log = logging.getLogger(__name__)


class _Broker(Broker):  # type: ignore[misc]  # amqtt has no type information
    """amqtt's broker with one fix.

    On every new connection amqtt 0.12 replays the retained messages matching *every* client's subscriptions to
    the newcomer ("publish any topic retained messages" over `self._subscriptions`, all sessions' filters), so a
    display subscribed to its own station also receives whatever other clients subscribed to. Retained messages
    go only to a session's own subscriptions here, as MQTT 3.1.1 section 3.3.1.3 says.
    """

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        topic_filter = subscription[0]
        if any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, ())):
            await super()._publish_retained_messages_for_subscription(subscription, session)


def free_port(host: str) -> int:
    """A port nothing listens on right now (amqtt binds by number, so it cannot be handed a socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """amqtt with anonymous access on `host`: MQTT over TCP on `tcp_port`, MQTT over WebSocket on `ws_port`
    (0: a free port each)."""

    def __init__(self, host: str = "127.0.0.1", *, tcp_port: int = 0, ws_port: int = 0) -> None:
        self.host = host
        self.tcp_port = tcp_port or free_port(host)
        self.ws_port = ws_port or free_port(host)
        self._broker: Any = None

    @property
    def tcp_url(self) -> str:
        return f"mqtt://{self.host}:{self.tcp_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.tcp_port}"},
                "websocket": {"type": "ws", "bind": f"{self.host}:{self.ws_port}"},
            },
            # Only anonymous access: no $SYS statistics, no packet logging.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def start(self) -> None:
        self._broker = _Broker(self._config())
        await self._broker.start()
        log.info("MQTT broker (amqtt) listening on %s and %s", self.tcp_url, self.ws_url)

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()
