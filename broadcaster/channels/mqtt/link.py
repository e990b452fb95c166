"""The MQTT link: one kept connection to the broker, its reconnects, and publishing over it.

`MqttLink.run()` keeps a connection to a broker with capped exponential backoff between attempts; given several
(`mqtt.urls`), it tries them in turn, round-robin, and stays on the one it reached until it loses it. Each
session announces `online` (retained) on the status topic, with `offline` as its Last Will, and then calls
`on_connected` so the service republishes the whole retained state (a broker that crashed may have lost
whatever it saved since its last autosave). Before its first session it reads that status topic under a
throwaway client id: if another installation is online with our client id, `run` raises `IdentityConflict`
rather than take that one's session over. Publishing is QoS 1: `publish` returns after the PUBACK.
Many messages go through `publish_many`, a window of publishes awaiting their PUBACK kept full from paho's PUBACK
callback (pipelined.py): awaiting each one in turn is slow, a coroutine per message costs more CPU than the
message, and gathering thousands at once is quadratic in aiomqtt (docs/design.md, "Measured facts").

With several instances sharing one database (high availability, `ha_instance` set), the link of each instance
keeps its presence topic (presence.py) from the start, and opens the session above, under
`{client_id}-{instance}`, only while it leads: `become_leader` starts it (Last Will on the main status, the full
republish of `on_connected`), `step_down` ends it cleanly, so no Will fires and nothing more is published on the
main topics. A standby publishes nothing but its presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import aiomqtt
import orjson
from paho.mqtt.properties import Properties

from broadcaster.channels.mqtt.clients import expiry, new_client, session_client
from broadcaster.channels.mqtt.identity import conflict_in, presence_conflict_in, read_retained
from broadcaster.channels.mqtt.pipelined import publish_pipelined
from broadcaster.channels.mqtt.presence import PresenceSession
from broadcaster.config import MqttConfig
from broadcaster.contract import Topics
from broadcaster.errors import IdentityConflict, TransientDeliveryError
from broadcaster.ha.role import Leadership, Role
from broadcaster.payloads import presence_body, status_body
from broadcaster.retained import Publication, serialise

log = logging.getLogger(__name__)

CHANNEL_NAME = "mqtt"


class Delivery(NamedTuple):
    """What `publish_many` got through: the publications acknowledged, in order, those the broker refused, each
    with its reason code's name, and why the rest were not acknowledged, if any were not (None: all answered)."""

    acked: list[Publication]
    refused: list[tuple[Publication, str]]
    stopped: str | None = None


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
        ha_instance: str | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.config = config
        #: Which installation this is (fixed per state directory, or per database: every instance sharing one has
        #: the same), announced in the status payload so a second installation configured with the same client id
        #: can tell it is not us restarting.
        self.instance = instance
        #: This instance's id among those sharing a database (`[ha] instance`), or None: the only instance, and
        #: the link behaves exactly as it did before high availability (client id, topics, payloads).
        self.ha_instance = ha_instance
        #: The role source: with `ha_instance`, publishing on the main topics also needs its `may_act()`.
        self._leadership = leadership
        #: The client id of the session that publishes the main topics.
        self.client_id = config.client_id if ha_instance is None else f"{config.client_id}-{ha_instance}"
        #: LEADER: publishes the main topics. Without `ha_instance` always; with it, from `become_leader` on (or
        #: from the start when the role source already says so) until `step_down`.
        self.role = Role.LEADER if ha_instance is None or (leadership is not None and leadership.role is Role.LEADER)\
            else Role.STANDBY
        self._leading = asyncio.Event()
        self._standing_down = asyncio.Event()
        (self._leading if self.role is Role.LEADER else self._standing_down).set()
        #: Set while no main session is open (nor being opened): what `step_down` waits for.
        self._main_idle = asyncio.Event()
        self._main_idle.set()
        self._identity_checked = instance is None
        self._identity_lock = asyncio.Lock()
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
        self.topics_presence = self.topics.presence(ha_instance) if ha_instance is not None else None
        #: The instance's presence (high availability only).
        self.presence: PresenceSession | None = None
        if self.topics_presence is not None:
            self.presence = PresenceSession(config, self.topics_presence, self.role.value,
                                            client=self._presence_client, body=self._presence)

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
                                     valid_until=valid_until, leader=self.ha_instance))

    def _presence(self, role: str, since: datetime) -> bytes:
        assert self.ha_instance is not None
        return serialise(presence_body(self.ha_instance, role, since, client_id=self.client_id,
                                       installation=self.instance))

    def _presence_client(self, url: str, offline: bytes) -> aiomqtt.Client:
        assert self.topics_presence is not None
        return session_client(self.config, url, self.topics_presence, offline, username=self._username,
                              password=self._password, identifier=f"{self.client_id}-presence")

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
                              password=self._password, identifier=self.client_id)

    def _may_publish(self) -> bool:
        """Whether this instance may publish on the main topics now: always without high availability; with it,
        while it leads and its role source's lease is still valid (self-fencing, checked before every publish)."""
        if self.ha_instance is None:
            return True
        return self.role is Role.LEADER and (self._leadership is None or self._leadership.may_act())

    # -- roles (high availability) ---------------------------------------------------------------------------

    async def become_leader(self) -> None:
        """Lead from now on: the presence says `leader`, and `run` opens the leader's session (Last Will on the
        main status, `online` naming this instance, `on_connected`'s full republish, as after any reconnect).

        Returns at once: with the broker away the session comes when it answers (`wait_connected` waits for it).
        Nothing without `ha_instance`, or when already leading.
        """
        if self.ha_instance is None or self.role is Role.LEADER:
            return
        self.role = Role.LEADER
        self._standing_down.clear()
        self._leading.set()
        if self.presence is not None:
            self.presence.set_role(Role.LEADER.value)
        log.info("MQTT: instance %s leads: opening its session as %s", self.ha_instance, self.client_id)

    async def step_down(self) -> None:
        """Stop leading at once (a fenced leader, before it exits): nothing more is published on the main topics,
        the leader's session ends with a clean DISCONNECT, so its Will does not fire over the new leader's
        `online`, and nothing is said there either: the new leader speaks. The presence says `standby`.

        Waits, at most `mqtt.publish_timeout_seconds`, until that session has closed.
        """
        if self.ha_instance is None or self.role is not Role.LEADER:
            return
        self.role = Role.STANDBY
        self.connected.clear()  # publishes refuse from now on, before the session has closed
        self._leading.clear()
        self._standing_down.set()
        if self.presence is not None:
            self.presence.set_role(Role.STANDBY.value)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.publish_timeout_seconds):
                await self._main_idle.wait()
        if not self._main_idle.is_set():
            log.warning("MQTT: the leader's session of %s did not close within %g s", self.ha_instance,
                        self.config.publish_timeout_seconds)

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
        topics = [self.topics.status] + ([self.topics_presence] if self.topics_presence else [])
        async with self._new_client(probe_id) as client:
            retained, echoed = await read_retained(client, topics, probe_topic, self.config.publish_timeout_seconds)
        if not echoed:
            log.warning("could not confirm that client id %r is free: the probe on %s did not come back (does"
                        " the broker's ACL let broadcaster read what it writes?)", self.client_id,
                        probe_topic)
        refusal = conflict_in(retained.get(self.topics.status), self.config, self.instance)
        if refusal is None and self.topics_presence is not None:
            refusal = presence_conflict_in(retained.get(self.topics_presence), self.config, self.instance)
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

    async def _ensure_identity(self) -> None:
        """The identity check before a first session, once (the leader's and the presence's sessions share it)."""
        async with self._identity_lock:
            if not self._identity_checked:
                await self._check_identity()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set; then say `offline` and disconnect cleanly. With
        `ha_instance`, keep the presence meanwhile, and the main session only while leading.

        Raises:
            IdentityConflict: before the first session, another installation is online with our client id.
        """
        if self.presence is None:
            await self._run_main(stop)
            return
        tasks = [asyncio.ensure_future(self.presence.run(stop, self._ensure_identity)),
                 asyncio.ensure_future(self._run_main(stop))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # an IdentityConflict
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_to_lead(self, stop: asyncio.Event) -> None:
        """Return once leading (at once without high availability) or stopped."""
        if self._leading.is_set():
            return
        waits = [asyncio.ensure_future(self._leading.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _run_main(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            await self._wait_to_lead(stop)
            if stop.is_set():
                break
            if not self._leading.is_set():
                continue  # stepped down again before its session began
            url = self._candidate
            self._main_idle.clear()
            try:
                await self._ensure_identity()
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
                self._main_idle.set()
            if stop.is_set():
                break
            if self._standing_down.is_set():
                delay = 0.5  # stepped down: no backoff for the next time it leads
                continue
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
        if not self._may_publish():
            return  # stepped down while connecting: leave cleanly, saying nothing
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
        log.info("MQTT connected to %s as %s (MQTT %s)", url, self.client_id, self.config.protocol)
        if self._on_connected is not None:
            await self._on_connected()
        stop_task = asyncio.ensure_future(stop.wait())
        watch_task = asyncio.ensure_future(self._watch(client))
        down_task = asyncio.ensure_future(self._standing_down.wait())
        try:
            done, _ = await asyncio.wait({stop_task, watch_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
            if watch_task in done:
                watch_task.result()  # re-raises the MqttError that ended the session
        finally:
            for task in (stop_task, watch_task, down_task):
                task.cancel()
        if self._standing_down.is_set():
            return  # stepped down: a clean disconnect, no Will, not a word on the main status
        if not self._may_publish():
            return  # the lease ran out (during a stop's grace): as a step down, the new leader speaks
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
                # reaching this one through a bridge or a cluster, or (high availability) the late Will or the
                # clean stop of the instance that led before us: we are online here, so say so again.
                if self._may_publish():
                    await client.publish(self.topics.status, self._status("online", self._started), qos=1,
                                         retain=True)
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
        if not self._may_publish():
            raise TransientDeliveryError(CHANNEL_NAME, f"instance {self.ha_instance} does not lead")
        try:
            await client.publish(pub.topic, pub.payload, qos=1, retain=pub.retain,
                                 properties=expiry(self.config, pub.expiry_s))
        except aiomqtt.MqttError as exc:
            raise TransientDeliveryError(CHANNEL_NAME, f"publish to {pub.topic} failed: {exc}") from exc

    async def publish_many(self, publications: Sequence[Publication]) -> Delivery:
        """Publish through a window of `mqtt.publish_window` publications awaiting their PUBACK (pipelined.py);
        returns those the broker acknowledged, in order, and those it refused (an MQTT 5 reason code of 0x80 or
        above). One refused or not acknowledged in time is not among the acknowledged: its topic stays unpublished
        and goes out again."""
        client = self._client
        if client is None or not self.connected.is_set():
            if publications:
                log.warning("%d publications not sent: not connected to the broker", len(publications))
            return Delivery([], [], "not connected to the broker")
        outcome = await publish_pipelined(
            client, publications, window=self.config.publish_window,
            stall_seconds=self.config.publish_timeout_seconds,
            may_publish=self._may_publish, properties_for=self._properties_for, acknowledged=self.acknowledged,
        )
        if outcome.refused:
            pub, reason = outcome.refused[0]
            log.warning("the broker refused %d of %d publications (%s: %s)", len(outcome.refused),
                        len(publications), pub.topic, reason)
        missing = outcome.acked.count(False) - len(outcome.refused)
        if outcome.stopped is not None and missing:
            log.warning("%d of %d publications not acknowledged: %s", missing, len(publications), outcome.stopped)
        return Delivery([p for p, ok in zip(publications, outcome.acked, strict=True) if ok], outcome.refused,
                        outcome.stopped if missing else None)

    def _properties_for(self, pub: Publication) -> Properties | None:
        return expiry(self.config, pub.expiry_s)

    def acknowledged(self, pub: Publication) -> None:
        """Called as the broker acknowledges each publication of `publish_many` (a seam for bench/)."""
