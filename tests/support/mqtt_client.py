"""Test-side MQTT helpers on aiomqtt: read retained state, record a subscription, publish; waits bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType


#: The MQTT version the helpers' clients speak unless told: "5", or "3.1.1" while a test runs the contract as a
#: 3.1.1 deployment (the `rig` fixture sets it from `mqtt_protocol`), so its displays are 3.1.1 clients too.
SUBSCRIBER_PROTOCOL = "5"


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as a subscriber received it. `retain` is set for messages replayed from the retained store
    (or for every retained publish when the recorder subscribed with ``retain_as_published``)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    message_expiry_interval: int | None = None
    #: time.monotonic() when the helper received it (not part of the message: equality ignores it).
    received_at: float = field(default_factory=time.monotonic, compare=False)


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"not an mqtt:// URL: {url!r}")
    return parts.hostname, parts.port or 1883


def _client(url: str, *, prefix: str, timeout_s: float, protocol: str | None = None) -> aiomqtt.Client:
    host, port = parse_mqtt_url(url)
    v5 = (protocol or SUBSCRIBER_PROTOCOL) == "5"
    return aiomqtt.Client(
        host,
        port,
        identifier=f"{prefix}-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        timeout=timeout_s,
    )


def _convert(message: aiomqtt.Message) -> ReceivedMessage:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    elif payload is None:
        data = b""
    else:
        data = str(payload).encode()
    expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
    return ReceivedMessage(message.topic.value, data, message.qos, bool(message.retain), expiry)


# The helpers take `timeout=` (ASYNC109) on purpose: tests read better with the bound next to the call.
async def publish(
    url: str,
    topic: str,
    payload: bytes | str,
    *,
    retain: bool = False,
    qos: int = 1,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> None:
    """Publish one message on a short-lived connection and wait for the broker's acknowledgement."""
    async with asyncio.timeout(timeout), _client(url, prefix="test-pub", timeout_s=timeout) as client:
        await client.publish(topic, payload, qos=qos, retain=retain)


async def collect_retained(
    url: str,
    topic_filter: str,
    *,
    settle: float = 0.5,
    timeout: float = 5.0,  # noqa: ASYNC109
    protocol: str | None = None,
    qos: int = 1,
) -> dict[str, bytes]:
    """Subscribe to `topic_filter` (at `qos`: 0 on NATS, where a QoS 1 subscription is a JetStream consumer that
    stalls while a node is lost) and return the retained messages the broker replays, by topic.

    Collection ends once no retained message has arrived for `settle` seconds; `TimeoutError` if that quiet
    window is not reached within `timeout` seconds overall. Live (non-retained) messages are ignored.
    """
    retained: dict[str, bytes] = {}
    client = _client(url, prefix="test-retained", timeout_s=timeout, protocol=protocol)
    async with asyncio.timeout(timeout), client:
        await client.subscribe(topic_filter, qos=qos)
        messages = aiter(client.messages)
        while True:
            try:
                async with asyncio.timeout(settle):
                    message = await anext(messages)
                    while not message.retain:
                        message = await anext(messages)
            except TimeoutError:
                return retained
            retained[message.topic.value] = _convert(message).payload


async def collect_retained_until(
    url: str,
    topic_filter: str,
    done: Callable[[dict[str, bytes]], bool],
    *,
    settle: float = 0.3,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> dict[str, bytes]:
    """Read the retained state (`collect_retained`) again until `done` holds of it or `timeout` runs out; returns
    the last read either way, for the caller's assertion to show what was missing.

    A single read races a publisher that is still republishing: a message published after the subscription
    arrives live, without its retain flag, and one read ignores it. Each read here starts after the last settled.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            retained = await collect_retained(url, topic_filter, settle=settle, timeout=max(left, settle + 1.0))
        except (TimeoutError, aiomqtt.MqttError):
            retained = {}  # the broker still replaying or not yet listening: look again while time is left
        if done(retained) or time.monotonic() >= deadline:
            return retained


class MessageRecorder:
    """Records everything published under one topic filter while the context is open.

    ``async with MessageRecorder(url, "metro/v1/#") as recorder:`` subscribes before the body runs, so
    nothing published afterwards is missed. `wait_for` waits, bounded, until a predicate holds over all
    messages so far; `settle` waits until nothing more arrives for a short window (the accepted way to
    assert absence).
    """

    def __init__(
        self,
        url: str,
        topic_filter: str,
        *,
        qos: int = 1,
        retain_as_published: bool = False,
        timeout: float = 5.0,
        protocol: str | None = None,
    ) -> None:
        self.url = url
        self.protocol = protocol or SUBSCRIBER_PROTOCOL
        self.topic_filter = topic_filter
        self.qos = qos
        self.retain_as_published = retain_as_published
        self.timeout = timeout
        self._messages: list[ReceivedMessage] = []
        self._changed = asyncio.Condition()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self._error: aiomqtt.MqttError | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the messages received so far, in arrival order."""
        return list(self._messages)

    def on_topic(self, topic: str) -> list[ReceivedMessage]:
        return [message for message in self._messages if message.topic == topic]

    async def __aenter__(self) -> Self:
        client = _client(self.url, prefix="test-recorder", timeout_s=self.timeout, protocol=self.protocol)
        try:
            async with asyncio.timeout(self.timeout):
                await self._stack.enter_async_context(client)
                if self.protocol == "5":
                    options = SubscribeOptions(qos=self.qos, retainAsPublished=self.retain_as_published)
                    await client.subscribe(self.topic_filter, options=options)
                else:  # MQTT 3.1.1 has no subscription options, retain-as-published among them
                    assert not self.retain_as_published, "retain_as_published needs MQTT 5"
                    await client.subscribe(self.topic_filter, qos=self.qos)
        except BaseException:
            await self._stack.aclose()
            raise
        self._task = asyncio.create_task(self._receive(client), name=f"recorder {self.topic_filter}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._stack.aclose()

    async def _receive(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                async with self._changed:
                    self._messages.append(_convert(message))
                    self._changed.notify_all()
        except aiomqtt.MqttError as exc:
            # Wake the waiters so they report the broken connection instead of timing out.
            self._error = exc
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[Sequence[ReceivedMessage]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[ReceivedMessage]:
        """Wait until `predicate(messages)` holds and return the messages; `TimeoutError` after `timeout`."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self._alive_or_raise() and predicate(self._messages))
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout}s on {self.topic_filter!r}; received "
                f"{[(m.topic, m.payload[:80]) for m in self._messages]}"
            ) from None
        return list(self._messages)

    async def wait_for_count(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:  # noqa: ASYNC109
        """Wait until at least `count` messages have arrived."""
        return await self.wait_for(lambda messages: len(messages) >= count, timeout=timeout)

    async def settle(self, quiet: float = 0.5, timeout: float = 5.0) -> list[ReceivedMessage]:  # noqa: ASYNC109
        """Wait until no message has arrived for `quiet` seconds and return them all; bounded by `timeout`."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    async with asyncio.timeout(quiet), self._changed:
                        await self._changed.wait_for(self._more_than(len(self._messages)))
                except TimeoutError:
                    return list(self._messages)

    def _more_than(self, seen: int) -> Callable[[], bool]:
        return lambda: self._alive_or_raise() and len(self._messages) > seen

    def _alive_or_raise(self) -> bool:
        # A recorder whose connection died would otherwise make every wait look like "nothing arrived".
        if self._error is not None:
            raise RuntimeError(f"recorder on {self.topic_filter!r} stopped receiving: {self._error}") from self._error
        return True
