"""Many publications through one connection, the window kept full from paho's PUBACK callback (issue 16: "make
the publish path reach the floor's rate").

aiomqtt's `publish` waits for each PUBACK in a coroutine of its own: a window of 32 workers pays, per message, a
task switch, an `asyncio.Event`, a `wait_for` timer and a pending-call check. Here nothing waits per message:
paho's PUBACK callback marks the message acknowledged and hands paho the next one, and the caller waits once for
the whole batch. Publishing 1,085 retained messages of 900 bytes to Mosquitto with a window of 32, this took
57-64 ms of CPU against aiomqtt's 83-104 ms, in the same runs (docs/design.md, "Measured facts").

The callback also sees what aiomqtt drops: the PUBACK's MQTT 5 reason code. A publication the broker refuses
(0x80 and above: "not authorized" from an ACL, "quota exceeded", ...) is not acknowledged, so the caller keeps it
as not yet published instead of believing the broker holds it.

It reaches under aiomqtt, as little as it can: the paho client it wraps (`publish` and the `on_publish` callback)
and the future it resolves when the connection drops. `AckRouter` takes paho's `on_publish` and hands every
message id it was not given to aiomqtt's own handler, so the link's other publishes (notices, status) go on as
before. tests/test_mqtt_pipelined.py holds these seams to the aiomqtt and paho the project pins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broadcaster.retained import Publication


class AckRouter:
    """paho's `on_publish` for one client: the message ids a batch registered go to the batch, every other to the
    handler it replaced (aiomqtt's, which wakes that message's `publish`)."""

    def __init__(self, fallback: Callable[..., None]) -> None:
        self._fallback = fallback
        self._waiting: dict[int, Callable[[int, ReasonCode], None]] = {}

    def expect(self, mid: int, acknowledged: Callable[[int, ReasonCode], None]) -> None:
        self._waiting[mid] = acknowledged

    def forget(self, mid: int) -> None:
        """A batch that ended (timeout, cancellation) no longer waits: a late PUBACK goes to the fallback, which
        ignores ids it does not know."""
        self._waiting.pop(mid, None)

    def __call__(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                 properties: Properties | None = None) -> None:
        acknowledged = self._waiting.pop(mid, None)
        if acknowledged is None:
            self._fallback(client, userdata, mid, reason_code, properties)
        else:
            acknowledged(mid, reason_code)


def _paho(client: aiomqtt.Client) -> paho.Client:
    return client._client


def router_for(client: aiomqtt.Client) -> AckRouter:
    """The client's router, installed in place of its `on_publish` the first time (a client lives one session)."""
    inner = _paho(client)
    current = inner.on_publish
    if isinstance(current, AckRouter):
        return current
    if current is None or inner._callback_api_version is not CallbackAPIVersion.VERSION2:
        raise RuntimeError("aiomqtt's client has no paho on_publish handler (callback API 2) to route around")
    router = AckRouter(current)
    inner.on_publish = router
    return router


@dataclass
class BatchOutcome:
    """What became of a batch: which publications the broker acknowledged (a flag per publication, in order),
    which it refused, and why the batch ended early, if it did."""

    acked: list[bool]
    refused: list[tuple[Publication, str]] = field(default_factory=list)
    stopped: str | None = None


class _Batch:
    """One `publish_pipelined` call's state. Its methods run on the event loop's thread only: from the caller, and
    from paho's callback inside aiomqtt's socket reader."""

    def __init__(
        self, client: aiomqtt.Client, publications: Sequence[Publication], *,
        may_publish: Callable[[], bool], properties_for: Callable[[Publication], Properties | None],
        acknowledged: Callable[[Publication], None],
    ) -> None:
        self.paho = _paho(client)
        self.router = router_for(client)
        self.publications = publications
        self.may_publish = may_publish
        self.properties_for = properties_for
        self.on_acknowledged = acknowledged
        self.outcome = BatchOutcome([False] * len(publications))
        self.in_flight: dict[int, int] = {}  # message id -> index of its publication
        self.next_index = 0
        self.answers = 0  # PUBACKs received: the caller's timeout counts from the last one
        self.error: BaseException | None = None
        self.settled = asyncio.get_running_loop().create_future()

    def send_next(self) -> None:
        if self.outcome.stopped is not None or self.next_index >= len(self.publications):
            return
        index = self.next_index
        self.next_index += 1
        if not self.may_publish():
            self.stop("this instance may not publish now (it does not lead)")
            return
        pub = self.publications[index]
        try:
            info = self.paho.publish(pub.topic, pub.payload, 1, pub.retain, self.properties_for(pub))
        except Exception as exc:  # a bad topic or payload: raised to the caller, as aiomqtt's publish would
            self.error = exc
            self.stop(f"publish to {pub.topic} failed: {exc}")
            return
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stop(f"publish to {pub.topic} failed: {paho.error_string(info.rc)}")
            return
        self.in_flight[info.mid] = index
        self.router.expect(info.mid, self.acknowledged)

    def acknowledged(self, mid: int, reason_code: ReasonCode) -> None:
        index = self.in_flight.pop(mid)
        self.answers += 1
        pub = self.publications[index]
        if reason_code.is_failure:
            self.outcome.refused.append((pub, str(reason_code)))
        else:
            self.outcome.acked[index] = True
            self.on_acknowledged(pub)
        self.send_next()
        self.settle_if_done()

    def stop(self, reason: str) -> None:
        if self.outcome.stopped is None:
            self.outcome.stopped = reason
        self.settle_if_done()

    def settle_if_done(self) -> None:
        finished = self.outcome.stopped is not None or self.next_index >= len(self.publications)
        if finished and not self.in_flight and not self.settled.done():
            self.settled.set_result(None)

    def abandon(self) -> None:
        """The caller stops waiting: PUBACKs still to come are not ours any more."""
        for mid in self.in_flight:
            self.router.forget(mid)
        self.in_flight.clear()


async def publish_pipelined(
    client: aiomqtt.Client,
    publications: Sequence[Publication],
    *,
    window: int,
    stall_seconds: float,
    may_publish: Callable[[], bool],
    properties_for: Callable[[Publication], Properties | None],
    acknowledged: Callable[[Publication], None] = lambda pub: None,
) -> BatchOutcome:
    """Publish each publication at QoS 1, in order, with at most `window` awaiting their PUBACK.

    Args:
        client: a connected aiomqtt client.
        window: how many publications may await their PUBACK at once.
        stall_seconds: how long without any PUBACK, while some are awaited, before the batch gives up on the rest.
        may_publish: asked before each publication; False stops the batch (a fenced leader).
        properties_for: a publication's MQTT 5 properties (None for none).
        acknowledged: called with each publication as the broker acknowledges it (a seam for measurements).

    Returns:
        The outcome; a connection lost, a timeout or a refusal to go on ends the batch early, never raises.

    Raises:
        ValueError: what paho raises for a topic or payload it cannot send (a bug upstream, as with `publish`).
    """
    if not publications:
        return BatchOutcome([])
    batch = _Batch(client, publications, may_publish=may_publish, properties_for=properties_for,
                   acknowledged=acknowledged)
    disconnected: asyncio.Future[None] = client._disconnected
    try:
        for _ in range(min(window, len(publications))):
            batch.send_next()
        batch.settle_if_done()  # nothing was sent (stopped at once): settled already
        while not batch.settled.done():
            answers = batch.answers
            await asyncio.wait({batch.settled, disconnected}, timeout=stall_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
            if batch.settled.done():
                break
            if disconnected.done():
                if not disconnected.cancelled():
                    disconnected.exception()  # seen (the session's own watch raises it): not "never retrieved"
                batch.stop("the connection to the broker was lost")
                break
            if batch.answers == answers:
                batch.stop(f"the broker acknowledged nothing for {stall_seconds:g} s")
                break
    finally:
        batch.abandon()
    if batch.error is not None:
        raise batch.error
    return batch.outcome
