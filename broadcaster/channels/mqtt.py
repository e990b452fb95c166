"""The MQTT link (the only module that imports aiomqtt and paho): one kept connection, reconnects, publishing.

`MqttLink.run()` keeps a connection to the broker with capped exponential backoff between attempts. Each
session announces `online` (retained) on the status topic, with `offline` as its Last Will, and then calls
`on_connected` so the service republishes the whole retained state (a broker that crashed may have lost
whatever it saved since its last autosave). Publishing is QoS 1: `publish` returns after the PUBACK.
Many messages go through `publish_many`, a bounded window of concurrent publishes: awaiting each one in turn
is slow, and gathering thousands at once is quadratic in aiomqtt (DESIGN.md section 5).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broadcaster.channels.base import ThreadRefs
from broadcaster.config import MqttConfig
from broadcaster.contract import Topics
from broadcaster.errors import TransientDeliveryError
from broadcaster.outbox import OutboxEntry
from broadcaster.payloads import status_body
from broadcaster.retained import Publication, serialise

log = logging.getLogger(__name__)
# aiomqtt warns on every publish past ten pending; a bounded window of 32 is by design, so only errors show.
_client_log = logging.getLogger("broadcaster.mqtt.client")
_client_log.setLevel(logging.ERROR)

CHANNEL_NAME = "mqtt"


@functools.lru_cache(maxsize=256)
def _expiry(seconds: int | None) -> Properties | None:
    # One Properties per distinct expiry, shared by every publish (paho only reads it): building one costs
    # ~20 us, a tenth of a whole publish (bench/).
    if seconds is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, seconds)
    return props


class MqttLink:
    """A kept, self-healing connection to one broker."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        username: str | None = None,
        password: str | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix)
        self._username = username
        self._password = password
        self._on_connected = on_connected
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.sessions = 0  # how many times we have connected, for status and tests
        #: Retained topics the link also subscribes to, to see its own publications come back (the canary:
        #: a broker that drops publishes silently, such as an ACL denying a topic, acknowledges them anyway).
        self.canary_topics: tuple[str, ...] = ()
        self.observed_seq: dict[str, int] = {}
        self._session_started = asyncio.Condition()
        self.last_error: str | None = None
        self._started = datetime.now(UTC)

    # -- connection ------------------------------------------------------------------------------------------

    def _client_for_session(self) -> aiomqtt.Client:
        # MQTT 5 Will Delay: the broker says "offline" only if we stay away that long, so a quick reconnect
        # (a restart, a network blip) does not make every display flash "information unavailable". The delay
        # only holds while the session lives, hence a session expiry at least as long and no clean start.
        will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
        will_properties.WillDelayInterval = self.config.will_delay_seconds
        will = aiomqtt.Will(
            self.topics.status,
            serialise(status_body("offline", self.config.client_id, self._started)),
            qos=1,
            retain=True,
            properties=will_properties,
        )
        connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_properties.SessionExpiryInterval = self.config.will_delay_seconds + 30
        tls_context = None
        if self.config.tls:
            tls_context = ssl.create_default_context(
                cafile=str(self.config.tls_ca_file) if self.config.tls_ca_file else None
            )
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id,
            logger=_client_log,
            protocol=aiomqtt.ProtocolVersion.V5,
            username=self._username,
            password=self._password,
            will=will,
            clean_start=False,
            properties=connect_properties,
            keepalive=self.config.keepalive_seconds,
            timeout=self.config.publish_timeout_seconds,
            tls_context=tls_context,
            # paho's message ids wrap at 65,535 in-flight QoS 1 messages; we never come near with the window.
            max_inflight_messages=max(20, self.config.publish_window),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set; then say `offline` and disconnect cleanly."""
        delay = 0.5
        while not stop.is_set():
            try:
                async with self._client_for_session() as client:
                    self._client = client
                    await self._serve(client, stop)
                    delay = 0.5
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                if self.connected.is_set():
                    log.warning("MQTT connection to %s lost: %s", self.config.url, exc)
                else:
                    log.warning("MQTT connection to %s failed: %s (retrying in %.1f s)", self.config.url, exc, delay)
            finally:
                self._client = None
                self.connected.clear()
            if stop.is_set():
                break
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self.config.reconnect_max_seconds)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        self._started = datetime.now(UTC)
        await client.publish(
            self.topics.status,
            serialise(status_body("online", self.config.client_id, self._started)),
            qos=1,
            retain=True,
        )
        # Subscribing to our own status topic gives a message iterator that raises when the link drops.
        await client.subscribe(self.topics.status, qos=1)
        for topic in self.canary_topics:
            await client.subscribe(topic, qos=1)
        self.last_error = None
        self.connected.set()
        async with self._session_started:
            self.sessions += 1
            self._session_started.notify_all()
        log.info("MQTT connected to %s as %s", self.config.url, self.config.client_id)
        if self._on_connected is not None:
            await self._on_connected()
        stop_task = asyncio.ensure_future(stop.wait())
        watch_task = asyncio.ensure_future(self._watch(client))
        try:
            done, _ = await asyncio.wait({stop_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if watch_task in done:
                watch_task.result()  # re-raises the MqttError that ended the session
        finally:
            for task in (stop_task, watch_task):
                task.cancel()
        if stop.is_set():
            # A clean disconnect does not fire the Last Will, so say it ourselves.
            self.connected.clear()
            await client.publish(
                self.topics.status,
                serialise(status_body("offline", self.config.client_id, datetime.now(UTC))),
                qos=1,
                retain=True,
                timeout=self.config.publish_timeout_seconds,
            )

    async def wait_for_session(self, number: int) -> None:
        """Wait until the `number`-th session has been established (1 = the first connection)."""
        async with self._session_started:
            await self._session_started.wait_for(lambda: self.sessions >= number)

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            if topic in self.canary_topics and isinstance(message.payload, bytes | bytearray) and message.payload:
                try:
                    seq = int(orjson.loads(message.payload).get("seq", 0))
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    continue
                self.observed_seq[topic] = max(seq, self.observed_seq.get(topic, 0))

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, pub: Publication) -> None:
        """Publish one message at QoS 1 and wait for its PUBACK.

        Raises:
            TransientDeliveryError: not connected, or the broker did not acknowledge in time.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise TransientDeliveryError(CHANNEL_NAME, "not connected to the broker")
        try:
            await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain, properties=_expiry(pub.expiry_s))
        except aiomqtt.MqttError as exc:
            raise TransientDeliveryError(CHANNEL_NAME, f"publish to {pub.topic} failed: {exc}") from exc

    async def publish_many(self, publications: Sequence[Publication]) -> list[Publication]:
        """Publish through a bounded window of concurrent publishes; returns those acknowledged, in order."""
        acked = [False] * len(publications)
        pending = iter(range(len(publications)))
        failures: list[TransientDeliveryError] = []

        async def worker() -> None:
            for i in pending:  # one shared iterator: each index is taken by exactly one worker
                if failures:
                    return  # the link is down; the next session republishes everything anyway
                try:
                    await self.publish(publications[i])
                    acked[i] = True
                except TransientDeliveryError as exc:
                    failures.append(exc)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.config.publish_window, len(publications))):
                tg.create_task(worker())
        if failures:
            log.warning("%d of %d retained publications not acknowledged: %s",
                        acked.count(False), len(publications), failures[0].reason)
        return [p for p, ok in zip(publications, acked, strict=True) if ok]


class MqttNoticeChannel:
    """Delivers outbox notices to the non-retained `{prefix}/v1/notices` stream over the shared link."""

    name = CHANNEL_NAME

    def __init__(self, link: MqttLink) -> None:
        self.link = link

    @property
    def ready(self) -> bool:
        return self.link.connected.is_set()

    async def send(self, entry: OutboxEntry, thread: ThreadRefs) -> str | None:
        await self.link.publish(Publication(self.link.topics.notices, entry.payload, retain=False))
        return None  # MQTT has no remote id; the PUBACK was the acknowledgement
