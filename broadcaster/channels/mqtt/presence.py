"""One instance's presence, when several instances share a database (high availability, since contract v1.4).

Each instance keeps `{prefix}/v1/broadcaster/status/instances/{instance}` retained: `leader`, `standby`, or
`offline`, for operators' monitoring (displays read only the main status). It is kept by a connection of its own,
`{client_id}-{instance}-presence`, whose Last Will says `offline`: an MQTT connection carries one Will, and the
leader's goes to the main status topic, yet a leader's death must mark both. A standby has this connection only,
so it never touches a main topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiomqtt
import orjson

from broadcaster.config import MqttConfig
from broadcaster.errors import IdentityConflict

log = logging.getLogger(__name__)

#: Builds the presence connection to a broker URL, leaving the given payload (`offline`) as its Last Will.
ClientFactory = Callable[[str, bytes], aiomqtt.Client]
#: The presence payload for a role and since when.
BodyFactory = Callable[[str, datetime], bytes]


class PresenceSession:
    """Keeps the presence topic of one instance: reconnects with backoff, round-robin over the brokers, says its
    role on every session and when it changes, answers a late `offline` Will of its own, and says `offline`
    itself on a clean stop."""

    def __init__(self, config: MqttConfig, topic: str, role: str, *, client: ClientFactory,
                 body: BodyFactory) -> None:
        self.config = config
        self.topic = topic
        self.role = role
        #: When the current role began.
        self.since = datetime.now(UTC)
        self._client = client
        self._body = body
        self._changed = asyncio.Event()
        #: Set while a presence session is up.
        self.present = asyncio.Event()
        self.sessions = 0
        self.next_broker = 0

    def set_role(self, role: str) -> None:
        """Say `role` from now on: at once on the session in progress, else on the next one."""
        if role != self.role:
            self.role = role
            self.since = datetime.now(UTC)
            self._changed.set()

    async def run(self, stop: asyncio.Event, before_session: Callable[[], Awaitable[None]]) -> None:
        """Keep the presence until `stop` is set, awaiting `before_session` (the identity check) before each
        connection; then say `offline` and disconnect cleanly.

        Raises:
            IdentityConflict: from `before_session`.
        """
        delay = 0.5
        brokers = self.config.brokers
        while not stop.is_set():
            url = brokers[self.next_broker]
            try:
                await before_session()
                started = datetime.now(UTC)
                async with self._client(url, self._body("offline", started)) as client:
                    await self._serve(client, stop)
                    delay = 0.5
            except IdentityConflict:
                raise
            except aiomqtt.MqttError as exc:
                log.warning("MQTT presence session with %s ended: %s (retrying in %.1f s)", url, exc, delay)
            except Exception:
                log.exception("MQTT presence session with %s failed unexpectedly (retrying in %.1f s)", url, delay)
            finally:
                self.present.clear()
            if stop.is_set():
                break
            self.next_broker = (self.next_broker + 1) % len(brokers)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, self.config.reconnect_max_seconds)

    async def _say(self, client: aiomqtt.Client, role: str, since: datetime) -> None:
        await client.publish(self.topic, self._body(role, since), qos=1, retain=True,
                             timeout=self.config.publish_timeout_seconds)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        self._changed.clear()
        await self._say(client, self.role, self.since)
        # Our own topic: a message iterator that raises when the connection drops, and a late Will to answer.
        await client.subscribe(self.topic, qos=0)
        self.present.set()
        self.sessions += 1
        stop_task = asyncio.ensure_future(stop.wait())
        watch_task = asyncio.ensure_future(self._watch(client))
        try:
            while True:
                changed_task = asyncio.ensure_future(self._changed.wait())
                try:
                    done, _ = await asyncio.wait({stop_task, watch_task, changed_task},
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed_task.cancel()
                if watch_task in done:
                    watch_task.result()  # re-raises the MqttError that ended the session
                if stop_task in done:
                    break
                self._changed.clear()
                await self._say(client, self.role, self.since)
        finally:
            for task in (stop_task, watch_task):
                task.cancel()
        self.present.clear()
        # A clean disconnect does not fire the Last Will, so say it ourselves.
        await self._say(client, "offline", datetime.now(UTC))

    async def _watch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value == self.topic and _says_offline(message.payload):
                # Our Will from a broker we left (failed over), fired late and carried here: we are up, say so.
                await self._say(client, self.role, self.since)


def _says_offline(payload: object) -> bool:
    try:
        body = orjson.loads(payload) if isinstance(payload, bytes | bytearray) and payload else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("role") == "offline"
