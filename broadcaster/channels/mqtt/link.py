"""The MQTT link: one kept connection to the broker, its reconnects, and publishing over it.

`MqttLink.run()` keeps a connection to a broker with capped exponential backoff between attempts; given several
(`mqtt.urls`), it tries them in turn, round-robin, and stays on the one it reached until it loses it. Each
session announces `online` (retained) on the status topic, with `offline` as its Last Will, and then calls
`on_connected` so the service republishes the whole retained state (a broker that crashed may have lost
whatever it saved since its last autosave). Before its first session it reads that status topic under a
throwaway client id: if another installation is online with our client id, `run` raises `IdentityConflict`
rather than take that one's session over. Publishing is QoS 1: `publish` returns after the PUBACK.
Many messages go through `publish_many`, a bounded window of concurrent publishes: awaiting each one in turn
is slow, and gathering thousands at once is quadratic in aiomqtt (docs/design.md, "Measured facts").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson

from broadcaster.channels.mqtt.clients import expiry, new_client, session_client
from broadcaster.channels.mqtt.identity import conflict_in, read_status
from broadcaster.config import MqttConfig
from broadcaster.contract import Topics
from broadcaster.errors import IdentityConflict, TransientDeliveryError
from broadcaster.payloads import status_body
from broadcaster.retained import Publication, serialise

log = logging.getLogger(__name__)

CHANNEL_NAME = "mqtt"


class MqttLink:
    """A kept, self-healing connection to one broker at a time, of those configured."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        username: str | None = None,
        password: str | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        instance: str | None = None,
    ) -> None:
        self.config = config
        #: Which installation this is (fixed per state directory), announced in the status payload so a second
        #: installation configured with the same client id can tell it is not us restarting.
        self.instance = instance
        self._identity_checked = instance is None
        #: Set when `run` refused to start because another installation holds our client id.
        self.refusal: IdentityConflict | None = None
        self._refused = asyncio.Event()
        self.topics = Topics(config.topic_prefix)
        self._username = username
        self._password = password
        self._on_connected = on_connected
        self._client: aiomqtt.Client | None = None
        #: Which of `config.brokers` the next connection attempt goes to.
        self._next_broker = 0
        #: The broker URL of the session in progress (None between sessions), for status and metrics.
        self.broker: str | None = None
        self.connected = asyncio.Event()
        self.sessions = 0  # how many times we have connected, for status and tests
        #: Retained topics the link also subscribes to, to see its own publications come back (the canary:
        #: a broker that drops publishes silently, such as an ACL denying a topic, acknowledges them anyway).
        self.canary_topics: tuple[str, ...] = ()
        self.observed_seq: dict[str, int] = {}
        self._session_started = asyncio.Condition()
        self.last_error: str | None = None
        #: Called when a session fails with something other than a broker error (the service counts it).
        self.on_loop_error: Callable[[], None] | None = None
        self._started = datetime.now(UTC)
        #: A one-shot run (`once`): its status says mode "batch", and its clean end leaves `online` until the
        #: state it published expires instead of `offline`, so displays do not go blank between cron runs.
        self.batch = False

    def when_connected(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback` at the start of every session, before the session is served (set by whoever wires
        the link to the part that republishes on a new session, once both exist; it replaces an earlier one)."""
        self._on_connected = callback

    def watch_canaries(self, topics: tuple[str, ...]) -> None:
        """Subscribe, from the next session on, to these retained topics of ours (set once, by whoever builds
        the retained publisher that chose them)."""
        self.canary_topics = topics

    # -- connection ------------------------------------------------------------------------------------------

    @property
    def _candidate(self) -> str:
        """The broker the next connection attempt goes to."""
        return self.config.brokers[self._next_broker]

    def _new_client(self, identifier: str, url: str | None = None) -> aiomqtt.Client:
        return new_client(self.config, url or self._candidate, identifier, username=self._username,
                          password=self._password)

    def _status(self, status: str, since: datetime, valid_until: datetime | None = None) -> bytes:
        mode = "batch" if self.batch else "service"
        return serialise(status_body(status, self.config.client_id, since, self.instance, mode=mode,
                                     valid_until=valid_until))

    def _farewell(self) -> tuple[bytes, int | None]:
        """What a clean end leaves on the status topic: `offline` for a service; for a batch run, `online` until
        the retained state it published expires (and the message expires with it), with that expiry in seconds."""
        now = datetime.now(UTC)
        if not self.batch:
            return self._status("offline", now), None
        ttl = self.config.retained_ttl_seconds
        return self._status("online", now, valid_until=now + timedelta(seconds=ttl)), ttl

    def _client_for_session(self) -> aiomqtt.Client:
        return session_client(self.config, self._candidate, self.topics.status,
                              self._status("offline", self._started), username=self._username,
                              password=self._password)

    async def _check_identity(self) -> None:
        """Read the retained status under a throwaway client id; raise if another installation holds ours
        (`identity.py` says why and how). The outcome is kept: checked once, or the refusal that
        `wait_connected` raises too.

        Raises:
            IdentityConflict: the status says `online`, with our client id and another instance.
            aiomqtt.MqttError: the broker cannot be reached (`run` retries).
        """
        probe_id = f"{self.config.client_id[:40]}-check-{secrets.token_hex(4)}"
        probe_topic = self.topics.probe(probe_id)
        async with self._new_client(probe_id) as client:
            status, echoed = await read_status(client, self.topics.status, probe_topic,
                                               self.config.publish_timeout_seconds)
        if not echoed:
            log.warning("could not confirm that client id %r is free: the probe on %s did not come back (does"
                        " the broker's ACL let broadcaster read what it writes?)", self.config.client_id,
                        probe_topic)
        refusal = conflict_in(status, self.config, self.instance)
        if refusal is not None:
            self.refusal = refusal
            self._refused.set()
            raise self.refusal
        self._identity_checked = True  # later sessions find our own `online`

    async def probe_connection(self, url: str | None = None) -> None:
        """Connect to `url` (default: the first broker) and disconnect under a throwaway client id, publishing and
        subscribing nothing (`broadcaster check`): our own client id would take a running broadcaster's session
        over, and `_check_identity` publishes its probe.

        Raises:
            TransientDeliveryError: the broker refused (credentials, ACL), cannot be reached, or is too slow.
        """
        try:
            client = self._new_client(f"{self.config.client_id[:40]}-verify-{secrets.token_hex(4)}",
                                      url or self.config.brokers[0])
            async with asyncio.timeout(self.config.connect_timeout_seconds), client:
                pass
        except TimeoutError:
            raise TransientDeliveryError(
                CHANNEL_NAME, f"no answer within {self.config.connect_timeout_seconds:g} s") from None
        except aiomqtt.MqttError as exc:
            raise TransientDeliveryError(CHANNEL_NAME, str(exc) or type(exc).__name__) from None
        except OSError as exc:  # the TLS CA file cannot be read, a TLS handshake failed
            ca = f" (mqtt.tls_ca_file {self.config.tls_ca_file})" if self.config.tls_ca_file else ""
            raise TransientDeliveryError(CHANNEL_NAME, f"TLS: {exc.strerror or exc}{ca}") from None

    async def check_identity(self) -> None:
        """The start-up check, before anything is polled or posted: refuse if our client id is taken.

        A broker that cannot be reached now is not a reason to hold back posts to the micro-blogs; `run` then
        makes the check before its first session, and raises there.

        Raises:
            IdentityConflict: another installation is online with our client id.
        """
        if self._identity_checked:
            return
        # Each broker of mqtt.urls in turn: the other installation may be online on the second while the first is
        # down, and `run` would find it only after the first posts. The first session goes to the one that answered.
        for _ in self.config.brokers:
            try:
                async with asyncio.timeout(self.config.connect_timeout_seconds):
                    await self._check_identity()
                return
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning("MQTT broker %s not reachable at start-up (%s); client id %r is checked when it is",
                            self._candidate, exc or "timed out", self.config.client_id)
                self._next_broker = (self._next_broker + 1) % len(self.config.brokers)

    async def wait_connected(self) -> None:
        """Wait until connected.

        Raises:
            IdentityConflict: `run` refused to start instead.
        """
        waits = [asyncio.ensure_future(self.connected.wait()), asyncio.ensure_future(self._refused.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if self.refusal is not None:
            raise self.refusal

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set; then say `offline` and disconnect cleanly.

        Raises:
            IdentityConflict: before the first session, another installation is online with our client id.
        """
        delay = 0.5
        while not stop.is_set():
            url = self._candidate
            try:
                if not self._identity_checked:
                    await self._check_identity()
                async with self._client_for_session() as client:
                    self._client = client
                    await self._serve(client, stop, url)
                    delay = 0.5
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                if self.connected.is_set():
                    log.warning("MQTT connection to %s lost: %s", url, exc)
                    if datetime.now(UTC) - self._started >= timedelta(seconds=self.config.reconnect_max_seconds):
                        # A session that outlived the longest wait ended: a new outage, not the one the backoff
                        # grew over. One dropped at once (an ACL, a client id taken over) keeps backing off.
                        delay = 0.5
                else:
                    log.warning("MQTT connection to %s failed: %s (retrying in %.1f s)", url, exc, delay)
            except IdentityConflict:
                raise
            except Exception as exc:
                # Anything else (a bug in a session's work, e.g. on_connected) ends this session, not the link:
                # it reconnects after the backoff, and the drain loops and polls go on meanwhile.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("MQTT session with %s failed unexpectedly (reconnecting in %.1f s)", url, delay)
                if self.on_loop_error is not None:
                    self.on_loop_error()
            finally:
                self._client = None
                self.broker = None
                self.connected.clear()
            if stop.is_set():
                break
            # The next attempt goes to the next broker (round-robin): the one just lost or refused is the least
            # likely to answer now, and a broker that comes back is not returned to while the next one serves.
            self._next_broker = (self._next_broker + 1) % len(self.config.brokers)
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self.config.reconnect_max_seconds)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event, url: str) -> None:
        self._started = datetime.now(UTC)
        await client.publish(self.topics.status, self._status("online", self._started), qos=1, retain=True)
        # Subscribing to our own status topic gives a message iterator that raises when the link drops.
        # QoS 0: on a live connection the echo arrives all the same, and a clustered broker (NATS) keeps no
        # per-subscription consumer for it, whose creation and deletion stall a reconnect after a node loss
        # (docs/mqtt.md "NATS cluster").
        await client.subscribe(self.topics.status, qos=0)
        for topic in self.canary_topics:
            await client.subscribe(topic, qos=0)
        self.last_error = None
        self.broker = url
        self.connected.set()
        async with self._session_started:
            self.sessions += 1
            self._session_started.notify_all()
        log.info("MQTT connected to %s as %s (MQTT %s)", url, self.config.client_id, self.config.protocol)
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
            farewell, expiry_s = self._farewell()
            await client.publish(
                self.topics.status,
                farewell,
                qos=1,
                retain=True,
                properties=expiry(self.config, expiry_s),
                timeout=self.config.publish_timeout_seconds,
            )

    async def wait_for_session(self, number: int) -> None:
        """Wait until the `number`-th session has been established (1 = the first connection)."""
        async with self._session_started:
            await self._session_started.wait_for(lambda: self.sessions >= number)

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            if topic == self.topics.status and self._not_online(message.payload):
                # Our Last Will from a broker we left (its keepalive and Will Delay ran out after we failed over),
                # reaching this one through a bridge or a cluster: we are online here, so say so again.
                await client.publish(self.topics.status, self._status("online", self._started), qos=1, retain=True)
                continue
            if topic in self.canary_topics and isinstance(message.payload, bytes | bytearray) and message.payload:
                try:
                    seq = int(orjson.loads(message.payload).get("seq", 0))
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    continue
                self.observed_seq[topic] = max(seq, self.observed_seq.get(topic, 0))

    def _not_online(self, payload: object) -> bool:
        """Whether a message on our status topic is our own `offline` (a Will a broker we left published late)."""
        try:
            body = orjson.loads(payload) if isinstance(payload, bytes | bytearray) and payload else None
        except orjson.JSONDecodeError:
            return False
        return (isinstance(body, dict) and body.get("client_id") == self.config.client_id
                and body.get("instance") == self.instance and body.get("status") == "offline")

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
            await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain,
                                 properties=expiry(self.config, pub.expiry_s))
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
