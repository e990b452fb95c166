"""The pipelined batch publisher (broadcaster/channels/mqtt/pipelined.py) against a real Mosquitto: every
publication goes out once, in order, never more than the window awaiting a PUBACK; refusals, lost PUBACKs, a
dropped connection, a fenced leader and a cancelled caller end a batch without raising, and the client's other
publishes (aiomqtt's own) go on beside it. These also hold the seams it takes from aiomqtt and paho."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from conftest import MosquittoFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import MosquittoBroker, collect_retained
from support.fault_proxy import FaultProxy
from support.mosquitto_passwd import write_password_file

from broadcaster.channels.mqtt.pipelined import AckRouter, BatchOutcome, publish_pipelined, router_for
from broadcaster.retained import Publication


@asynccontextmanager
async def connected(host: str, port: int, *, username: str | None = None, password: str | None = None,
                    window: int = 8) -> AsyncIterator[aiomqtt.Client]:
    """A client with paho's in-flight limit at the window (at least paho's 20), the link's own before it turned
    the limit off: a refill from the PUBACK callback then waits in paho's queue, which must work too. The link's
    own client (no limit) is what the broker-fault and pipeline tests publish through."""
    client = aiomqtt.Client(host, port, identifier=f"pipelined-{uuid.uuid4().hex[:8]}",
                            protocol=aiomqtt.ProtocolVersion.V5, username=username, password=password,
                            max_inflight_messages=max(20, window), timeout=10)
    async with client:
        yield client


def publications(prefix: str, count: int, *, retain: bool = True) -> list[Publication]:
    return [Publication(f"{prefix}/m{i}", f'{{"i":{i}}}'.encode(), retain=retain) for i in range(count)]


async def batch(client: aiomqtt.Client, pubs: Sequence[Publication], *, window: int = 8, stall: float = 10,
                may_publish: object = None, acknowledged: object = None) -> BatchOutcome:
    return await publish_pipelined(
        client, pubs, window=window, stall_seconds=stall,
        may_publish=may_publish if callable(may_publish) else (lambda: True),
        properties_for=lambda pub: None,
        acknowledged=acknowledged if callable(acknowledged) else (lambda pub: None),
    )


async def test_every_publication_arrives_once_in_order_and_is_acknowledged(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    pubs = publications(topic_prefix, 300)
    seen: list[str] = []
    async with connected(mosquitto.host, mosquitto.port, window=32) as client:
        outcome = await batch(client, pubs, window=32, acknowledged=lambda pub: seen.append(pub.topic))
    assert outcome == BatchOutcome([True] * 300)
    assert seen == [p.topic for p in pubs]  # one connection: the broker acknowledges in the order sent
    held = await collect_retained(mosquitto.url, f"{topic_prefix}/#", settle=0.3)
    assert held == {p.topic: p.payload for p in pubs}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, 60), window=st.integers(1, 40))
def test_the_window_bounds_what_awaits_a_puback(mosquitto: MosquittoBroker, count: int, window: int) -> None:
    in_flight = peak = 0

    def may_publish() -> bool:  # asked right before each publication leaves
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        return True

    def acknowledged(pub: Publication) -> None:
        nonlocal in_flight
        in_flight -= 1

    async def run() -> BatchOutcome:
        async with connected(mosquitto.host, mosquitto.port, window=window) as client:
            return await batch(client, publications(f"pipelined/{uuid.uuid4().hex}", count), window=window,
                               may_publish=may_publish, acknowledged=acknowledged)

    outcome = asyncio.run(run())
    assert outcome.acked == [True] * count
    assert outcome.stopped is None
    assert peak == min(window, count)
    assert in_flight == 0


async def test_aiomqtt_publishes_beside_a_batch_are_still_acknowledged(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    async with connected(mosquitto.host, mosquitto.port) as client:
        router = router_for(client)
        assert router_for(client) is router  # installed once per client
        side = [client.publish(f"{topic_prefix}/side/{i}", b"x", qos=1) for i in range(20)]
        outcome, *_ = await asyncio.gather(batch(client, publications(topic_prefix, 200)), *side)
        assert all(outcome.acked)
        async with asyncio.timeout(5):
            await client.publish(f"{topic_prefix}/after", b"y", qos=1)


async def test_a_refused_publication_is_reported_and_the_rest_go_on(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, topic_prefix: str,
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"user writer\ntopic readwrite {topic_prefix}/open/#\ntopic read {topic_prefix}/closed/#\n",
                   encoding="utf-8")
    passwd = write_password_file(tmp_path / "passwd", {"writer": "pipelined-test-password"})
    broker = mosquitto_factory(extra_config=f"password_file {passwd}\nacl_file {acl}\n")
    pubs = [*publications(f"{topic_prefix}/open", 3), *publications(f"{topic_prefix}/closed", 2),
            *publications(f"{topic_prefix}/open/more", 3)]
    async with connected(broker.host, broker.port, username="writer", password="pipelined-test-password") as client:
        outcome = await batch(client, pubs, window=4)
    assert outcome.acked == [True, True, True, False, False, True, True, True]
    assert [(pub.topic, reason) for pub, reason in outcome.refused] == [
        (pubs[3].topic, "Not authorized"), (pubs[4].topic, "Not authorized")]
    assert outcome.stopped is None


async def test_a_lost_puback_ends_the_batch_after_the_stall_and_a_late_one_is_harmless(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    async with FaultProxy(mosquitto.host, mosquitto.port) as proxy, \
            connected(proxy.host, proxy.port) as client:
        proxy.drop_pubacks = 1
        outcome = await batch(client, publications(topic_prefix, 10), window=3, stall=0.5)
        assert outcome.acked == [False] + [True] * 9
        assert outcome.stopped == "the broker acknowledged nothing for 0.5 s"
        assert not router_for(client)._waiting  # nothing left waiting for the lost one
        async with asyncio.timeout(5):  # the client goes on
            await client.publish(f"{topic_prefix}/after", b"y", qos=1)
            assert all((await batch(client, publications(f"{topic_prefix}/again", 5))).acked)


async def test_a_dropped_connection_ends_the_batch_at_once(
    mosquitto_factory: MosquittoFactory, topic_prefix: str,
) -> None:
    broker = mosquitto_factory()
    async with FaultProxy(broker.host, broker.port) as proxy, connected(proxy.host, proxy.port) as client:
        proxy.drop_pubacks = 1_000_000  # nothing is ever acknowledged
        running = asyncio.create_task(batch(client, publications(topic_prefix, 50), stall=60))
        await proxy.wait_forwarded(3)
        broker.kill()
        async with asyncio.timeout(10):  # well before the 60 s stall
            outcome = await running
        assert outcome.stopped == "the connection to the broker was lost"
        assert not any(outcome.acked)


async def test_a_fenced_leader_stops_sending_at_once(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    allowed = iter([True] * 5)
    pubs = publications(topic_prefix, 20)
    async with connected(mosquitto.host, mosquitto.port) as client:
        outcome = await batch(client, pubs, window=2, may_publish=lambda: next(allowed, False))
    assert outcome.acked == [True] * 5 + [False] * 15
    assert outcome.stopped == "this instance may not publish now (it does not lead)"
    held = await collect_retained(mosquitto.url, f"{topic_prefix}/#", settle=0.3)
    assert set(held) == {p.topic for p in pubs[:5]}


async def test_a_cancelled_caller_leaves_nothing_waiting(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    async with FaultProxy(mosquitto.host, mosquitto.port) as proxy, \
            connected(proxy.host, proxy.port) as client:
        proxy.drop_pubacks = 1_000_000
        running = asyncio.create_task(batch(client, publications(topic_prefix, 20), window=4, stall=60))
        await proxy.wait_forwarded(4)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        router = router_for(client)
        assert isinstance(router, AckRouter)
        assert not router._waiting


async def test_an_unsendable_publication_raises_as_aiomqtt_would(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    pubs = [*publications(topic_prefix, 2), Publication(f"{topic_prefix}/bad/#", b"x", retain=True)]
    async with connected(mosquitto.host, mosquitto.port) as client:
        with pytest.raises(ValueError, match="wildcard"):
            await batch(client, pubs, window=1)
        assert not router_for(client)._waiting
