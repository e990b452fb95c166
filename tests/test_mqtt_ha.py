"""MQTT with several instances of one installation (high availability, docs/mqtt.md "Several instances"), on a
real Mosquitto: only the leader speaks on the main topics; each instance keeps its presence; Wills cover each
instance's own death; a new leader republishes everything; a leader that steps down leaves no Will behind.

Instances that must die unannounced run their link in a process of their own (support/ha_link_process.py) and are
SIGKILLed: their sockets close without a DISCONNECT, as a crashed machine's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import MosquittoFactory
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rig import both_protocols
from support import MessageRecorder, MosquittoBroker, ReceivedMessage, collect_retained

from broadcaster.channels.mqtt import MqttLink, MqttNoticeChannel
from broadcaster.config import MqttConfig
from broadcaster.contract import BroadcasterInstancePayload, BroadcasterStatusPayload, Topics
from broadcaster.errors import IdentityConflict, TransientDeliveryError
from broadcaster.ha.role import Fence, Role
from broadcaster.payloads import presence_body, status_body
from broadcaster.retained import Publication

LINK_PROCESS = Path(__file__).resolve().parent / "support" / "ha_link_process.py"
INSTALLATION = "inst-shared"
INSTANCE_ID = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)


def mqtt_config(url: str | list[str], prefix: str, protocol: str, *, will_delay: int = 0) -> MqttConfig:
    brokers = {"urls": url} if isinstance(url, list) else {"url": url}
    return MqttConfig.model_validate({
        **brokers, "topic_prefix": prefix, "client_id": f"bc-{prefix[-8:]}", "protocol": protocol,
        "will_delay_seconds": will_delay, "reconnect_max_seconds": 1, "publish_timeout_seconds": 3,
    })


def body(message: ReceivedMessage) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(message.payload) if message.payload else {}
    return parsed


def says(topic: str, **fields: Any) -> Any:
    """A `wait_for` predicate: the latest message on `topic` has these fields."""
    def holds(messages: Sequence[ReceivedMessage]) -> bool:
        on_topic = [m for m in messages if m.topic == topic]
        return bool(on_topic) and all(body(on_topic[-1]).get(k) == v for k, v in fields.items())
    return holds


def republishing(link: MqttLink) -> None:
    """The service's part, reduced to one retained topic: every leader session republishes it, naming the
    instance."""
    async def republish() -> None:
        payload = orjson.dumps({"instance": link.ha_instance, "session": link.sessions})
        await link.publish(Publication(link.topics.line_status("L1"), payload, retain=True))
    link.when_connected(republish)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    """The link's `run` in this event loop, its presence up."""
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        assert link.presence is not None
        async with asyncio.timeout(10):
            await link.presence.present.wait()
        yield link
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


class LinkProcess:
    """support/ha_link_process.py: one instance's link in a child process, driven through stdin and stdout."""

    def __init__(self, config: MqttConfig, ha_instance: str) -> None:
        self.spec = {"mqtt": config.model_dump(mode="json"), "ha_instance": ha_instance,
                     "installation": INSTALLATION}
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> LinkProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(LINK_PROCESS), orjson.dumps(self.spec).decode(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await self.expect("present")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.kill()
        if self.process is not None:
            await self.process.wait()

    async def send(self, command: str) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def expect(self, prefix: str, timeout: float = 15) -> str:  # noqa: ASYNC109
        assert self.process is not None
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while line := (await self.process.stdout.readline()).decode().strip():
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"the link process ended before saying {prefix!r}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)


@both_protocols
async def test_only_the_leader_publishes_state_and_notices_and_each_instance_keeps_its_presence(
    mosquitto: MosquittoBroker, topic_prefix: str, speak_protocol: str,
) -> None:
    config = mqtt_config(mosquitto.url, topic_prefix, speak_protocol)
    topics = Topics(topic_prefix)
    a = MqttLink(config, instance=INSTALLATION, ha_instance="a")
    b = MqttLink(config, instance=INSTALLATION, ha_instance="b")
    for link in (a, b):
        republishing(link)
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/v1/#") as seen, running(a), running(b):
        await a.become_leader()
        async with asyncio.timeout(10):
            await a.wait_connected()
        await a.publish(Publication(topics.notices, b'{"from":"a"}', retain=False))
        # The standby has no session on the main topics: whatever asks it to publish is refused.
        assert not b.connected.is_set()
        assert not MqttNoticeChannel(b).ready
        with pytest.raises(TransientDeliveryError):
            await b.publish(Publication(topics.notices, b'{"from":"b"}', retain=False))
        with pytest.raises(TransientDeliveryError):
            await b.publish(Publication(topics.line_status("L1"), b'{"from":"b"}', retain=True))
        await seen.wait_for(says(topics.presence("b"), role="standby"))
        await seen.wait_for(lambda ms: any(m.topic == topics.notices for m in ms))
        messages = await seen.settle(quiet=0.5)
    main = [m for m in messages if "/broadcaster/status/instances/" not in m.topic and "/probe/" not in m.topic]
    assert {m.topic for m in main} == {topics.status, topics.line_status("L1"), topics.notices}
    assert [body(m)["from"] for m in main if m.topic == topics.notices] == ["a"]
    assert [body(m)["instance"] for m in main if m.topic == topics.line_status("L1")] == ["a"]
    online = [body(m) for m in main if m.topic == topics.status and body(m)["status"] == "online"]
    assert online
    assert {(s["leader"], s["client_id"], s["instance"]) for s in online} == {("a", config.client_id, INSTALLATION)}
    for status in online:
        BroadcasterStatusPayload.model_validate(status)
    presence = {m.topic: body(m) for m in messages if "/broadcaster/status/instances/" in m.topic}
    assert presence[topics.presence("a")]["role"] == "leader"
    assert presence[topics.presence("b")]["role"] == "standby"
    for instance, record in (("a", presence[topics.presence("a")]), ("b", presence[topics.presence("b")])):
        BroadcasterInstancePayload.model_validate(record)
        assert (record["instance"], record["installation"]) == (instance, INSTALLATION)
        assert record["client_id"] == f"{config.client_id}-{instance}"
    # Each instance is known to the broker by its own client ids; the standby never opened a main session.
    log = mosquitto.log_text()
    assert re.search(rf" as {re.escape(config.client_id)}-a \(", log)
    assert re.search(rf" as {re.escape(config.client_id)}-a-presence \(", log)
    assert re.search(rf" as {re.escape(config.client_id)}-b-presence \(", log)
    assert not re.search(rf" as {re.escape(config.client_id)}-b \(", log)


@both_protocols
async def test_a_killed_standby_marks_only_its_presence_and_a_killed_leader_its_presence_and_the_main_status(
    mosquitto: MosquittoBroker, topic_prefix: str, speak_protocol: str,
) -> None:
    config = mqtt_config(mosquitto.url, topic_prefix, speak_protocol)  # Will Delay 0: the Wills fire at once
    topics = Topics(topic_prefix)
    async with (MessageRecorder(mosquitto.url, f"{topic_prefix}/v1/broadcaster/#") as seen,
                LinkProcess(config, "a") as a, LinkProcess(config, "b") as b):
        await a.send("lead")
        await a.expect("session 1")
        await seen.wait_for(says(topics.status, status="online", leader="a"))
        await seen.wait_for(says(topics.presence("b"), role="standby"))
        before = len(seen.messages)
        b.kill()
        await seen.wait_for(says(topics.presence("b"), role="offline"), timeout=10)
        after_standby = (await seen.settle(quiet=0.5))[before:]
        assert [(m.topic, body(m)["role"]) for m in after_standby] == [(topics.presence("b"), "offline")]
        a.kill()
        await seen.wait_for(says(topics.status, status="offline", leader="a"), timeout=10)
        await seen.wait_for(says(topics.presence("a"), role="offline"), timeout=10)
    retained = await collect_retained(mosquitto.url, f"{topic_prefix}/v1/#", protocol=speak_protocol)
    assert orjson.loads(retained[topics.status])["status"] == "offline"
    assert {orjson.loads(retained[topics.presence(i)])["role"] for i in "ab"} == {"offline"}
    assert orjson.loads(retained[topics.line_status("L1")])["instance"] == "a"


@both_protocols
async def test_a_new_leader_republishes_everything_and_answers_the_dead_leaders_late_will(
    mosquitto: MosquittoBroker, topic_prefix: str, speak_protocol: str,
) -> None:
    """MQTT 5: the dead leader's Will comes after the Will Delay (2 s), when the new leader is already online: it
    answers at once. MQTT 3.1.1: the Will comes at once, and the new leader's online replaces it."""
    config = mqtt_config(mosquitto.url, topic_prefix, speak_protocol, will_delay=2)
    topics = Topics(topic_prefix)
    b = MqttLink(config, instance=INSTALLATION, ha_instance="b")
    republishing(b)
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/v1/#") as seen, LinkProcess(config, "a") as a, \
            running(b):
        await a.send("lead")
        await a.expect("session 1")
        await seen.wait_for(says(topics.line_status("L1"), instance="a"))
        a.kill()
        await b.become_leader()
        async with asyncio.timeout(10):
            await b.wait_connected()
        await seen.wait_for(says(topics.line_status("L1"), instance="b"))
        await seen.wait_for(lambda ms: any(m.topic == topics.status and body(m)["status"] == "offline"
                                           for m in ms), timeout=10)  # a's Will, whenever it fires
        await seen.wait_for(says(topics.status, status="online", leader="b"))
        await seen.wait_for(says(topics.presence("a"), role="offline"), timeout=10)
        statuses = [body(m) for m in seen.messages if m.topic == topics.status]
        will = next(i for i, s in enumerate(statuses) if s["status"] == "offline")
        assert statuses[will]["leader"] == "a"
        if speak_protocol == "5":  # the Will came after b was online: b answered it
            assert any(s["status"] == "online" and s["leader"] == "b" for s in statuses[:will])
        # A display subscribing now reads the newest state: b online, b's republished topic.
        display = await collect_retained(mosquitto.url, f"{topic_prefix}/v1/#", protocol=speak_protocol)
        assert orjson.loads(display[topics.status])["status"] == "online"
        assert orjson.loads(display[topics.status])["leader"] == "b"
        assert orjson.loads(display[topics.line_status("L1")])["instance"] == "b"
        assert orjson.loads(display[topics.presence("b")])["role"] == "leader"
        assert orjson.loads(display[topics.presence("a")])["role"] == "offline"


@both_protocols
async def test_a_leader_that_steps_down_leaves_no_will_and_publishes_nothing_more(
    mosquitto: MosquittoBroker, topic_prefix: str, speak_protocol: str,
) -> None:
    """A fenced leader steps down, then dies unannounced: only its presence's Will fires; the main status keeps
    what the leader said (the next leader's online replaces it), never an offline over a new leader's online."""
    config = mqtt_config(mosquitto.url, topic_prefix, speak_protocol)  # Will Delay 0: a Will would fire at once
    topics = Topics(topic_prefix)
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/v1/#") as seen, LinkProcess(config, "a") as a:
        await a.send("lead")
        await a.expect("session 1")
        await seen.wait_for(says(topics.status, status="online", leader="a"))
        await a.send("step_down")
        await a.expect("stepped_down")
        await seen.wait_for(says(topics.presence("a"), role="standby"))
        await a.send("notice after stepping down")
        assert (await a.expect("refused")).startswith("refused")
        a.kill()
        await seen.wait_for(says(topics.presence("a"), role="offline"), timeout=10)
        messages = await seen.settle(quiet=1.0)
    assert [body(m)["status"] for m in messages if m.topic == topics.status] == ["online"]
    assert not [m for m in messages if m.topic == topics.notices]
    retained = await collect_retained(mosquitto.url, f"{topic_prefix}/v1/#", protocol=speak_protocol)
    assert orjson.loads(retained[topics.status])["status"] == "online"


@both_protocols
async def test_with_several_brokers_each_instance_fails_over_and_the_leader_republishes_there(
    mosquitto_factory: MosquittoFactory, topic_prefix: str, speak_protocol: str,
) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    config = mqtt_config([first.url, second.url], topic_prefix, speak_protocol)
    topics = Topics(topic_prefix)
    a = MqttLink(config, instance=INSTALLATION, ha_instance="a")
    b = MqttLink(config, instance=INSTALLATION, ha_instance="b")
    republishing(a)
    async with running(a), running(b):
        await a.become_leader()
        async with asyncio.timeout(10):
            await a.wait_connected()
        assert a.broker == first.url
        first.kill()
        async with asyncio.timeout(15):
            await a.wait_for_session(2)
        assert a.broker == second.url
        async with MessageRecorder(second.url, f"{topic_prefix}/v1/#") as on_second:
            for topic, fields in ((topics.status, {"status": "online", "leader": "a"}),
                                  (topics.line_status("L1"), {"instance": "a", "session": 2}),
                                  (topics.presence("a"), {"role": "leader"}),
                                  (topics.presence("b"), {"role": "standby"})):
                await on_second.wait_for(says(topic, **fields), timeout=15)
        assert b.sessions == 0  # the standby's presence moved; it opened no main session


async def test_another_instance_of_the_same_installation_is_expected_another_installation_is_refused(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    config = mqtt_config(mosquitto.url, topic_prefix, "5")
    leader = MqttLink(config, instance=INSTALLATION, ha_instance="a")
    async with running(leader):
        await leader.become_leader()
        async with asyncio.timeout(10):
            await leader.wait_connected()
        # Another instance of the same database: the leader's online names our installation.
        await MqttLink(config, instance=INSTALLATION, ha_instance="b").check_identity()
        # Another installation with our client id: refused, naming the one online.
        other = MqttLink(config, instance="inst-other", ha_instance="c")
        with pytest.raises(IdentityConflict) as refused:
            await other.check_identity()
        assert refused.value.instance == INSTALLATION
        assert leader.sessions == 1  # never taken over
        assert leader.connected.is_set()


async def test_another_installation_running_an_instance_of_the_same_id_is_refused_by_its_presence(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    """No leader online (the main status says nothing): a standby's presence alone tells its installation."""
    config = mqtt_config(mosquitto.url, topic_prefix, "5")
    async with running(MqttLink(config, instance=INSTALLATION, ha_instance="b")) as standby:
        with pytest.raises(IdentityConflict) as refused:
            await MqttLink(config, instance="inst-other", ha_instance="b").check_identity()
        assert refused.value.instance == INSTALLATION
        await MqttLink(config, instance=INSTALLATION, ha_instance="b").check_identity()  # our own restart
        assert standby.presence is not None
        assert standby.presence.sessions == 1


async def test_without_an_ha_identity_nothing_changes(mosquitto: MosquittoBroker, topic_prefix: str) -> None:
    """The single instance: client id, status payload and topics as before high availability."""
    config = mqtt_config(mosquitto.url, topic_prefix, "5")
    link = MqttLink(config, instance=INSTALLATION)
    assert link.presence is None
    assert link.client_id == config.client_id
    stop = asyncio.Event()
    async with MessageRecorder(mosquitto.url, f"{topic_prefix}/v1/#") as seen:
        task = asyncio.create_task(link.run(stop))
        async with asyncio.timeout(10):
            await link.wait_connected()
        await link.become_leader()  # nothing to do
        await link.step_down()  # nothing to do: the only instance always leads
        assert link.connected.is_set()
        stop.set()
        async with asyncio.timeout(10):
            await task
        messages = await seen.settle(quiet=0.3)
    messages = [m for m in messages if "/probe/" not in m.topic]
    assert {m.topic for m in messages} == {Topics(topic_prefix).status}
    assert [set(body(m)) for m in messages] == [{"schema", "status", "client_id", "since", "version", "instance",
                                                 "mode"}] * 2


class LeaseOnTheClock:
    """A role source whose lease the test lets run out: the link must stop publishing the moment `may_act` is
    false, before anyone tells it to step down (self-fencing)."""

    def __init__(self, instance: str) -> None:
        self._instance = instance
        self.valid = True
        self._lost = asyncio.Event()

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def role(self) -> Role:
        return Role.LEADER

    def fence(self) -> Fence | None:
        return Fence(self._instance, 1) if self.valid else None

    def may_act(self) -> bool:
        return self.valid

    async def wait_until_leading(self) -> None:
        return None

    @property
    def lost(self) -> asyncio.Event:
        return self._lost


async def test_a_leader_whose_lease_ran_out_publishes_nothing_even_before_it_steps_down(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    config = mqtt_config(mosquitto.url, topic_prefix, "5")
    topics = Topics(topic_prefix)
    lease = LeaseOnTheClock("a")
    link = MqttLink(config, instance=INSTALLATION, ha_instance="a", leadership=lease)
    assert link.role is Role.LEADER  # the role source said so from the start: no become_leader needed
    async with MessageRecorder(mosquitto.url, f"{topics.base}/notices") as notices, running(link):
        async with asyncio.timeout(10):
            await link.wait_connected()
        await link.publish(Publication(topics.notices, b"1", retain=False))
        lease.valid = False
        with pytest.raises(TransientDeliveryError):
            await link.publish(Publication(topics.notices, b"2", retain=False))
        await link.step_down()
        assert not link.connected.is_set()
        assert [m.payload for m in await notices.settle(quiet=0.3)] == [b"1"]


async def test_a_leader_stopped_after_its_lease_ran_out_says_nothing_on_the_main_status(
    mosquitto: MosquittoBroker, topic_prefix: str,
) -> None:
    """SIGTERM's grace, then the lease runs out before the link stops (the runner does not step down on that
    path): the clean stop's `offline` is a publish like any other and must not go out over the new leader's
    `online`. The session still ends with a clean DISCONNECT, so no Will speaks either."""
    config = mqtt_config(mosquitto.url, topic_prefix, "5")
    topics = Topics(topic_prefix)
    lease = LeaseOnTheClock("a")
    link = MqttLink(config, instance=INSTALLATION, ha_instance="a", leadership=lease)
    async with MessageRecorder(mosquitto.url, topics.status) as status:
        async with running(link):
            async with asyncio.timeout(10):
                await link.wait_connected()
            await status.wait_for(says(topics.status, status="online"), timeout=10)
            lease.valid = False
        assert [body(m)["status"] for m in await status.settle(quiet=config.will_delay_seconds + 0.5)] == ["online"]


@given(instances=st.lists(INSTANCE_ID, min_size=1, max_size=3, unique=True))
@example(instances=["-", ".", ".."])
@example(instances=["A" * 64, "9" * 64, "_.-" * 21 + "z"])
@settings(max_examples=8, deadline=None)
def test_instance_ids_anywhere_in_the_allowed_pattern_name_one_topic_level_on_a_real_broker(
    instances: list[str], mosquitto: MosquittoBroker,
) -> None:
    prefix = f"test/ha-ids-{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    for instance in instances:
        # The pattern needs no escaping: the id is the topic level, as written, with no wildcard in it.
        assert topics.presence(instance) == f"{prefix}/v1/broadcaster/status/instances/{instance}"
        now = datetime.now(UTC)
        BroadcasterInstancePayload.model_validate(presence_body(instance, "standby", now, client_id="c-" + instance,
                                                                installation="x"))
        BroadcasterStatusPayload.model_validate(status_body("online", "c", now, "x", leader=instance))

    async def scenario() -> None:
        config = mqtt_config(mosquitto.url, prefix, "5")
        links = [MqttLink(config, instance=INSTALLATION, ha_instance=i) for i in instances]
        async with MessageRecorder(mosquitto.url, f"{prefix}/v1/broadcaster/status/instances/+") as seen, \
                contextlib.AsyncExitStack() as stack:
            for link in links:
                await stack.enter_async_context(running(link))
            got = await seen.wait_for(lambda ms: len({m.topic for m in ms}) == len(instances))
        assert {m.topic: body(m)["instance"] for m in got} == {topics.presence(i): i for i in instances}

    asyncio.run(scenario())
