"""The network between the broadcaster and a real broker fails: a black hole that outlasts the keepalive and
two reconnection attempts, a lost PUBACK."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import orjson
import pytest
from conftest import MosquittoFactory
from rig import Rig, both_protocols, linked_only, payloads, poll_all, running
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker, collect_retained
from support.fault_proxy import FaultProxy
from support.gtfs_rt_builders import alert_entity, selector
from support.mosquitto_passwd import write_password_file

from broadcaster.channels.mqtt.pipelined import publish_pipelined
from broadcaster.config import Config
from broadcaster.contract import Topics
from broadcaster.errors import IdentityConflict
from broadcaster.retained import Publication
from broadcaster.runner import open_broadcaster, serve
from broadcaster.service import Broadcaster


def proxied(rig: Rig, proxy: FaultProxy) -> Config:
    return rig.config(mqtt={"url": proxy.url, "keepalive_seconds": 5, "publish_timeout_seconds": 3})


@pytest.mark.timeout(90)
async def test_a_black_holed_broker_link_heals_and_everything_queued_arrives(rig: Rig) -> None:
    async with FaultProxy("127.0.0.1", int(rig.mqtt_url.rsplit(":", 1)[1])) as proxy:
        config = proxied(rig, proxy)
        async with open_broadcaster(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("#")) as seen:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(b.link.run(stop))]
            tasks += [asyncio.create_task(b.drain_loop(ch, stop)) for ch in b.channels]
            try:
                async with asyncio.timeout(10):
                    await b.link.connected.wait()
                await poll_all(b)
                proxy.blackhole()
                rig.serve_rt(alert_entity("A-BH", header={"en": "Line 3 suspended"}, informed=[selector(route_id="3")],
                                          effect="NO_SERVICE", severity="SEVERE"))
                async with asyncio.timeout(15):  # nothing waits longer than its own timeout
                    outcome = await b.poll(b.config.feeds[0])
                assert outcome.ok  # committed to the outbox although the broker is out of reach
                # The fault lasts until the keepalive (5 s) has noticed and two reconnection attempts have got
                # nowhere (each waits out its connect timeout): the link is down and retrying, not just slow.
                async with asyncio.timeout(60):
                    await proxy.wait_for_held_attempts(2)
                assert not b.link.connected.is_set()  # the keepalive noticed
                assert not any(b"A-BH" in m.payload for m in seen.messages)
                proxy.heal()
                healed = time.monotonic()
                # Delivered within 30 s of the link healing.
                await seen.wait_for(lambda ms: any(m.topic.endswith("/notices") and b"A-BH" in m.payload
                                                   for m in ms), timeout=30)
                print(f"queued notice delivered {time.monotonic() - healed:.1f} s after the link healed")
            finally:
                stop.set()
                async with asyncio.timeout(15):
                    await asyncio.gather(*tasks)
        retained = await collect_retained(rig.mqtt_url, rig.topic("lines/3/#"))
    assert orjson.loads(retained[rig.topic("lines/3/status")])["status"] == "suspended"
    assert rig.topic("lines/3/alerts/A-BH") in retained


async def test_a_lost_puback_is_sent_again_with_the_same_identity(rig: Rig) -> None:
    async with (
        FaultProxy("127.0.0.1", int(rig.mqtt_url.rsplit(":", 1)[1])) as proxy,
        linked_only(proxied(rig, proxy)) as b,
        MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices,
    ):
        await poll_all(b)
        rig.serve_rt(alert_entity("A-PA", header={"en": "Line 1 slow"}, informed=[selector(route_id="1")]))
        await b.poll(b.config.feeds[0])  # state published; the notice waits in the outbox
        mqtt = b.channels[0]
        proxy.drop_pubacks = 1
        assert await b.drain_due(mqtt) == 0  # published, but the acknowledgement never came
        assert proxy.dropped_pubacks == 1
        assert b.pending() == 1  # so it is still owed
        b.outbox.make_due(mqtt.name, b.clock.now())
        assert await b.drain_due(mqtt) == 1
        assert b.pending() == 0
        got = payloads(await notices.wait_for_count(2))
    # The broker delivered it twice; both copies carry the same identity, so consumers deduplicate (docs/mqtt.md).
    assert len(got) == 2
    assert len({(n["notice_id"], n["version"], n["seq"]) for n in got}) == 1


@both_protocols
async def test_a_broker_that_refuses_or_drops_publishes_is_noticed(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory, topic_prefix: str,
    monkeypatch: pytest.MonkeyPatch, speak_protocol: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # An ACL mistake: the broadcaster account may read its line topics but not write them. Under MQTT 5 Mosquitto
    # refuses each publish there (PUBACK reason code 0x87, "not authorized"); under MQTT 3.1.1 it acknowledges
    # it and drops it, and only the canary notices, within two ticks.
    acl = tmp_path / "acl"
    acl.write_text(f"user broadcaster\ntopic readwrite {topic_prefix}/v1/broadcaster/#\n"
                   f"topic readwrite {topic_prefix}/v1/stations/#\ntopic readwrite {topic_prefix}/v1/notices\n"
                   f"topic read {topic_prefix}/v1/lines/#\n", encoding="utf-8")
    passwd = write_password_file(tmp_path / "passwd", {"broadcaster": "canary-test-password"})
    broker = mosquitto_factory(extra_config=f"password_file {passwd}\nacl_file {acl}\n")
    monkeypatch.setenv("T_MQTT_USER", "broadcaster")
    monkeypatch.setenv("T_MQTT_PASSWORD", "canary-test-password")
    rig = Rig(tmp_path, http_server, broker.url, topic_prefix, protocol=speak_protocol)
    rig.serve_rt()
    rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
    config = rig.config(mqtt={"username": {"env": "T_MQTT_USER"}, "password": {"env": "T_MQTT_PASSWORD"}})
    line_status = Topics(topic_prefix).line_status("1")
    async with running(config) as b:
        await poll_all(b)  # tick 1: line statuses published
        if speak_protocol == "5":
            # Refused at once: only its placeholder is recorded (it goes out again), and health says so now.
            assert b.planner.published[line_status].at is None
            stations = [t for t in b.planner.published if t.startswith(f"{topic_prefix}/v1/stations/")]
            assert stations
            assert all(b.planner.published[t].at is not None for t in stations)
            assert not b.publisher.mqtt_delivering
            assert "refuses our publications" in caplog.text
            assert "Not authorized" in caplog.text
        else:
            assert b.planner.published[line_status].at is not None  # acknowledged, and dropped
            assert b.publisher.mqtt_delivering
        for _ in range(2):  # ticks 2 and 3
            await b.poll(b.config.feeds[0])
        assert not b.publisher.mqtt_delivering
        assert not b.health().healthy
        assert "broadcaster_mqtt_canary_ok 0.0" in b.metrics.render().decode()
        if speak_protocol == "5":
            # The operator fixes the ACL: the refused topics go out again, are accepted, and health recovers
            # with that round (the canary's own topics arrived all along).
            acl.write_text(f"user broadcaster\ntopic readwrite {topic_prefix}/v1/#\n", encoding="utf-8")
            broker.reload()
            await accepted_again(broker, f"{topic_prefix}/v1/lines/probe/status")
            await b.poll(b.config.feeds[0])
            assert b.planner.published[line_status].at is not None
            assert b.publisher.mqtt_delivering
            assert b.health().healthy


@dataclass
class NoticeAcl:
    """A broker whose ACL lets the broadcaster account publish its retained topics but not its notices (read only):
    under MQTT 5 Mosquitto refuses each notice with 0x87. Anonymous clients (the test's subscribers, as commuters'
    apps) may read everything."""

    acl: Path
    broker: MosquittoBroker
    rig: Rig
    config: Config

    @property
    def reader(self) -> str:
        return f"topic read {self.rig.prefix}/v1/#\n"  # before any `user` line: what anonymous clients may do

    def allow_notices(self) -> None:
        self.acl.write_text(f"{self.reader}user broadcaster\ntopic readwrite {self.rig.prefix}/v1/#\n",
                            encoding="utf-8")
        self.broker.reload()


@pytest.fixture
def notice_acl(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto_factory: MosquittoFactory,
               topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> NoticeAcl:
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {topic_prefix}/v1/#\nuser broadcaster\n"
                   f"topic readwrite {topic_prefix}/v1/broadcaster/#\ntopic readwrite {topic_prefix}/v1/stations/#\n"
                   f"topic readwrite {topic_prefix}/v1/lines/#\ntopic read {topic_prefix}/v1/notices\n",
                   encoding="utf-8")
    passwd = write_password_file(tmp_path / "passwd", {"broadcaster": "canary-test-password"})
    broker = mosquitto_factory(extra_config=f"password_file {passwd}\nacl_file {acl}\n")
    monkeypatch.setenv("T_MQTT_USER", "broadcaster")
    monkeypatch.setenv("T_MQTT_PASSWORD", "canary-test-password")
    rig = Rig(tmp_path, http_server, broker.url, topic_prefix, protocol="5")
    config = rig.config(mqtt={"username": {"env": "T_MQTT_USER"}, "password": {"env": "T_MQTT_PASSWORD"}})
    return NoticeAcl(acl, broker, rig, config)


async def test_a_notice_the_broker_refuses_stays_queued_and_goes_out_once_it_is_accepted(
    notice_acl: NoticeAcl, caplog: pytest.LogCaptureFixture,
) -> None:
    """aiomqtt's `publish` drops the reason code, so a refused notice was marked sent and lost; now it stays
    queued, backs off, and goes out once the operator fixes the ACL."""
    rig, broker = notice_acl.rig, notice_acl.broker
    rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 suspended"}, informed=[selector(route_id="1")],
                              effect="NO_SERVICE"))
    rig.serve_flow({})
    config = notice_acl.config

    def notice_rows(b: Broadcaster) -> list[tuple[str, int, str | None]]:
        return [(status, attempts, error) for status, attempts, error in b.db.conn.execute(
            "SELECT status, attempts, error FROM outbox WHERE channel = 'mqtt' ORDER BY created_at, part")]

    async with running(config) as b, MessageRecorder(broker.url, rig.topic("notices")) as notices:
        channel = next(c for c in b.channels if c.name == "mqtt")
        await poll_all(b)
        await b.drain_due(channel)  # after the drain loop's own attempt, if it came first (one drain at a time)
        rows = notice_rows(b)
        assert rows
        assert all(status == "pending" and attempts >= 1 for status, attempts, _ in rows), rows
        assert all(error is not None and "Not authorized" in error for _, _, error in rows), rows
        assert "broker refused" in caplog.text

        notice_acl.allow_notices()
        await accepted_again(broker, rig.topic("notices"))
        b.outbox.make_due(channel.name, b.clock.now())  # its backoff would otherwise wait seconds
        assert await b.drain_due(channel) == len(rows)
        assert [status for status, _, _ in notice_rows(b)] == ["sent"] * len(rows)
        # The probe's own `{}` came first: the notices are what follows it.
        received = await notices.wait_for(lambda ms: len([m for m in ms if m.payload != b"{}"]) >= len(rows))
        got = payloads([m for m in received if m.payload != b"{}"])
        assert [n["kind"] for n in got][:1] == ["alert_new"]


async def test_notices_refused_together_come_due_together_so_an_emergency_is_not_overtaken(
    notice_acl: NoticeAcl,
) -> None:
    """Notices the broker refuses in one batch retry at one time, the soonest any of them would, and the queue
    waits until then. Each used to take its own backoff: an emergency refused a few times already came due after
    fresh routine notices refused beside it, which then went out first."""
    rig = notice_acl.rig
    rig.serve_rt(*[alert_entity(f"A-{i}", header={"en": f"Line {i} suspended"}, informed=[selector(route_id=str(i))],
                                effect="NO_SERVICE") for i in (1, 2, 3)])
    rig.serve_flow({})
    async with running(notice_acl.config) as b:
        channel = next(c for c in b.channels if c.name == "mqtt")
        await poll_all(b)
        await b.drain_due(channel)  # all refused (after the drain loop's own attempt, if it came first)
        rows = b.db.conn.execute("SELECT key FROM outbox WHERE channel = 'mqtt' ORDER BY created_at, part").fetchall()
        assert len(rows) >= 3
        emergency = rows[0][0]
        with b.db.transaction() as conn:  # one that has failed more often (its backoff is longer), and the rest routine
            conn.execute("UPDATE outbox SET priority = 0, attempts = 6 WHERE key = ?", (emergency,))
            conn.execute("UPDATE outbox SET priority = 2 WHERE channel = 'mqtt' AND key != ?", (emergency,))
        b.outbox.make_due(channel.name, b.clock.now())
        await b.drain_due(channel)  # refused again, together
        due = dict(b.db.conn.execute(
            "SELECT key, next_attempt_at FROM outbox WHERE channel = 'mqtt' AND status = 'pending'").fetchall())
        assert len(due) == len(rows)
        assert len(set(due.values())) == 1, due  # one retry time for the whole batch: the emergency's is no later


async def accepted_again(broker: MosquittoBroker, topic: str) -> None:
    """Wait (10 s at most) until the broker, having reloaded its ACL, accepts the broadcaster account's publish
    on `topic` (Mosquitto gives no sign of a reload but its answers)."""
    async with asyncio.timeout(10), aiomqtt.Client(
        broker.host, broker.port, identifier=f"probe-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5,
        username="broadcaster", password="canary-test-password",
    ) as client:
        probe = [Publication(topic, b"{}", retain=False)]
        while True:
            outcome = await publish_pipelined(client, probe, window=1, stall_seconds=5, may_publish=lambda: True,
                                              properties_for=lambda pub: None)
            if not outcome.refused:
                return
            await asyncio.sleep(0.05)  # the reload has no event to wait on: ask again, briefly


@both_protocols
async def test_the_canary_stays_quiet_when_publishes_arrive(rig: Rig) -> None:
    async with running(rig.config()) as b:
        for _ in range(4):
            await poll_all(b)
        assert b.link.observed_seq  # its own publications came back
        assert b.publisher.mqtt_delivering


async def test_a_clash_found_only_when_the_broker_comes_back_stops_the_second_installation(rig: Rig) -> None:
    """The start-up check cannot run while the broker is away; the first connection makes it, and stops us."""
    first_config = rig.config(state={"directory": str(rig.tmp_path / "state-first")})
    async with running(first_config) as first, FaultProxy("127.0.0.1", int(rig.mqtt_url.rsplit(":", 1)[1])) as proxy:
        proxy.blackhole()
        second_config = rig.config(
            state={"directory": str(rig.tmp_path / "state-second")},
            mqtt={"url": proxy.url, "connect_timeout_seconds": 1, "publish_timeout_seconds": 1},
        )
        async with open_broadcaster(second_config) as second:
            started = asyncio.Event()
            serving = asyncio.create_task(serve(second, asyncio.Event(), on_started=started.set))
            try:
                async with asyncio.timeout(10):
                    await started.wait()  # without the broker it still starts: micro-blogs must not wait for it
                proxy.heal()
                with pytest.raises(IdentityConflict) as refused:
                    async with asyncio.timeout(15):
                        await serving
            finally:
                serving.cancel()
        assert refused.value.instance == first.link.instance
        assert first.link.sessions == 1  # never taken over
        assert first.link.connected.is_set()
