"""An instance under a lease (decisions 6 and 7 of the HA plan), at the one seam the PostgreSQL lease is replaced:
a Leadership the test switches (standby, leader, lost), with SQLite, a real Mosquitto and the loopback micro-blog
server. A standby posts and publishes nothing and queues admin requests; once it leads it carries them out; once it
has lost the lease it sends nothing more and `broadcaster run` exits 75."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from rig import Rig
from support import MessageRecorder
from support.microblog_server import MicroblogServer
from support.ports import free_port
from support.postgres import PostgresServer
from test_admin import NOTICE, admin_config, bearer
from test_channels import channels
from test_ha_lease import LEASE_DDL

from broadcaster import desk
from broadcaster.channels.factory import build_channel
from broadcaster.channels.http import HttpChannelClient
from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import Config
from broadcaster.errors import LeaseLost
from broadcaster.feeds.fetch import FeedFetcher
from broadcaster.ha.lease import LeaseLeadership, LeaseTimes, lease_holder
from broadcaster.ha.role import Fence, Role
from broadcaster.operator import ManualNotice, notice_request
from broadcaster.render import Renderer
from broadcaster.runner import EXIT_LEASE_LOST, open_broadcaster, run_forever, serve
from broadcaster.service import Broadcaster
from broadcaster.status import status_report
from broadcaster.store import Database, KeyValueStore

pytestmark = pytest.mark.usefixtures("admin_tokens")


class SwitchedLeadership:
    """`Leadership` as the test says: a standby until `lead()`, a leader until `lose()`."""

    def __init__(self, instance: str = "east-1") -> None:
        self._instance = instance
        self._fence: Fence | None = None
        self._leading = asyncio.Event()
        self._lost = asyncio.Event()
        self.may_act_calls = 0

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def role(self) -> Role:
        return Role.LEADER if self._fence is not None else Role.STANDBY

    def fence(self) -> Fence | None:
        return self._fence

    def may_act(self) -> bool:
        self.may_act_calls += 1
        return self._fence is not None

    async def wait_until_leading(self) -> None:
        await self._leading.wait()

    @property
    def lost(self) -> asyncio.Event:
        return self._lost

    def lead(self) -> None:
        self._fence = Fence(self._instance, 1)
        self._leading.set()

    def lose(self) -> None:
        self._fence = None
        self._lost.set()


def _config(rig: Rig, server: MicroblogServer, port: int) -> Config:
    return admin_config(rig, channels=[c for c in channels(server) if c["name"] == "mastodon"],
                        listen=f"127.0.0.1:{port}")


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)  # another thread (the platform server) or the database answers; bounded


@contextlib.asynccontextmanager
async def _admin(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60) as http:
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(httpx.ConnectError):
                    await http.get("/v1/health")
                    break
                await asyncio.sleep(0.05)
        yield http


def _queued(config: Config) -> int:
    db = Database(config.database_path)
    try:
        return len(desk.pending(db))
    finally:
        db.close()


async def test_a_standby_sends_nothing_queues_admin_requests_and_carries_them_out_once_it_leads(
    rig: Rig, server: MicroblogServer
) -> None:
    port = free_port()
    config = _config(rig, server, port)
    leadership = SwitchedLeadership()
    stop = asyncio.Event()
    async with (
        MessageRecorder(rig.mqtt_url, f"{rig.prefix}/#") as everything,
        open_broadcaster(config, leadership=leadership) as b,
    ):
        running = asyncio.create_task(serve(b, stop, grace=2))
        async with _admin(port) as http:
            health = (await http.get("/v1/health")).json()
            assert (health["role"], health["instance"]) == ("standby", "east-1")
            # The request is checked here and queued for the leader; the caller waits for its answer.
            answer = asyncio.create_task(http.post("/v1/notices", json=NOTICE,
                                                   headers={**bearer(), "Idempotency-Key": "standby-1"}))
            await _until(lambda: _queued(config) == 1)
            retry = asyncio.create_task(http.post("/v1/notices", json=NOTICE,
                                                  headers={**bearer(), "Idempotency-Key": "standby-1"}))
            invalid = await http.post("/v1/notices", json={**NOTICE, "line_ids": ["99"]}, headers=bearer())
            assert invalid.status_code == 422  # refused here, as the leader would, and never queued
            await asyncio.sleep(1.5)  # a leader would have polled, published and taken the request by now
            assert not answer.done()
            assert server.mastodon_statuses() == []
            assert await everything.settle(quiet=0.3) == []  # not even the status topic
            assert rig.server.requests_for("/rt.pb") == []  # no feed polled
            assert _queued(config) == 1

            leadership.lead()
            first = await asyncio.wait_for(answer, 30)
            again = await asyncio.wait_for(retry, 30)
            assert first.status_code == 201, first.text
            assert (again.status_code, again.json()) == (201, first.json())
            assert again.headers.get("idempotent-replayed") == "true"
            notice_id = first.json()["notice_id"]
            await _until(lambda: len(server.mastodon_statuses()) == 1)
            await _until(lambda: any(m.topic == rig.topic("notices") for m in everything.messages))
            status = (await http.get("/v1/status", headers=bearer())).json()
            assert (status["role"], status["instance"]) == ("leader", "east-1")
        stop.set()
        async with asyncio.timeout(15):
            await running
    notices = [m for m in everything.messages if m.topic == rig.topic("notices")]
    assert [notice_id.encode() in m.payload for m in notices] == [True]
    assert len(server.mastodon_statuses()) == 1
    assert rig.server.requests_for("/rt.pb") != []  # the leader polls


async def test_a_leader_that_loses_its_lease_sends_nothing_more_and_stops(
    rig: Rig, server: MicroblogServer
) -> None:
    port = free_port()
    config = _config(rig, server, port)
    leadership = SwitchedLeadership()
    leadership.lead()
    async with open_broadcaster(config, leadership=leadership) as b:
        running = asyncio.create_task(serve(b, asyncio.Event(), grace=2))
        first = await _announce(b, "Before the loss")
        await _until(lambda: len(server.mastodon_statuses()) == 1)
        leadership.lose()
        # Committed right after the loss (a commit the PostgreSQL fence would refuse; SQLite has none): the
        # dispatcher asks may_act() before the send and sends nothing.
        asked = leadership.may_act_calls
        second = await _announce(b, "After the loss")
        with pytest.raises(LeaseLost):
            async with asyncio.timeout(10):
                await running
        assert leadership.may_act_calls > asked
        texts = [s.text for s in server.mastodon_statuses()]
        assert len(texts) == 1
        assert "Before the loss" in texts[0]
        # What was not sent stays queued for the next leader.
        assert b.outbox.pending_count() >= 1
        assert b.history.issued("mastodon", second)
        assert first != second


async def test_after_the_loss_the_dispatcher_and_the_publisher_refuse_to_send(
    rig: Rig, server: MicroblogServer
) -> None:
    config = _config(rig, server, free_port())
    leadership = SwitchedLeadership()
    leadership.lead()
    async with open_broadcaster(config, leadership=leadership) as b, _linked(b):
        mastodon = next(c for c in b.channels if c.name == "mastodon")
        await _announce(b, "Before the loss")
        assert await b.drain_due(mastodon) == 1
        async with MessageRecorder(rig.mqtt_url, f"{rig.prefix}/#") as everything:
            retained = len(await everything.settle(quiet=0.3))  # what is retained arrives first
            leadership.lose()
            await _announce(b, "After the loss")
            assert [await b.drain_due(channel) for channel in b.channels] == [0, 0]
            assert await b.publisher.publish_retained(full=True) == 0
            assert len(server.mastodon_statuses()) == 1
            assert len(await everything.settle(quiet=0.5)) == retained  # nothing published since


@contextlib.asynccontextmanager
async def _linked(b: Broadcaster) -> AsyncIterator[None]:
    stop = asyncio.Event()
    link = asyncio.create_task(b.link.run(stop))
    try:
        async with asyncio.timeout(10):
            await b.link.connected.wait()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await link


async def test_run_exits_75_when_the_lease_is_lost(rig: Rig, server: MicroblogServer) -> None:
    config = _config(rig, server, free_port())
    leadership = SwitchedLeadership()
    leadership.lead()
    task = asyncio.create_task(run_forever(config, leadership=leadership, grace=2))
    await _until(lambda: rig.server.requests_for("/rt.pb") != [])  # leading: polling
    leadership.lose()
    async with asyncio.timeout(15):
        assert await task == EXIT_LEASE_LOST


async def _announce(b: Broadcaster, text: str) -> str:
    request = notice_request({**NOTICE, "texts": {"zh": text, "en": text}}, network=b.network,
                             languages=b.config.network.languages, now=b.clock.now())
    return await b.announce(ManualNotice.of(request, author="test"))


async def test_run_waits_as_a_standby_for_the_lease_leads_once_it_is_free_and_releases_it_on_sigterm(
    rig: Rig, server: MicroblogServer, postgres: PostgresServer, postgres_database: str
) -> None:
    conninfo = postgres.conninfo(postgres_database)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(LEASE_DDL)

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo, autocommit=True)

    times = LeaseTimes(lease=2.0, renew=0.3, margin=0.5)
    other = LeaseLeadership("west-1", connect, times)
    assert await other.try_acquire()
    lease = LeaseLeadership("east-1", connect, times)
    config = _config(rig, server, free_port())
    task = asyncio.create_task(run_forever(config, leadership=lease, grace=2))
    async with asyncio.timeout(10 * times.renew + 5):
        await lease.wait_for_answers(4)  # several attempts at the lease, answered, all refused
    assert lease.role is Role.STANDBY
    assert rig.server.requests_for("/rt.pb") == []
    await other.release()  # a clean handover: taken at the next attempt, not after the lease's 2 s
    async with asyncio.timeout(times.renew + 1):
        await lease.wait_until_leading()
    await _until(lambda: rig.server.requests_for("/rt.pb") != [])  # leading: polling
    os.kill(os.getpid(), signal.SIGTERM)  # run's handler: a clean stop
    async with asyncio.timeout(15):
        assert await task == 0
    assert lease_holder(connect) is None  # released: the next instance takes it at once
    assert await other.try_acquire()
    await other.close()


def test_status_names_the_one_instance_of_a_sqlite_deployment_as_the_leader(rig: Rig) -> None:
    report = status_report(rig.config())
    assert (report.instance, report.role, report.leader) == ("sole", "leader", "sole")
    assert "instance: sole, leader (leader: sole)" in report.as_text()
    assert report.as_dict()["role"] == "leader"


async def test_a_standby_taking_over_reads_what_the_former_leader_committed_since_it_started(
    rig: Rig, server: MicroblogServer
) -> None:
    port = free_port()
    config = _config(rig, server, port)
    leadership = SwitchedLeadership()
    stop = asyncio.Event()
    async with open_broadcaster(config, leadership=leadership) as b:
        running = asyncio.create_task(serve(b, stop, grace=2))
        # The leader of the time (another Broadcaster on its own connection to the same database) commits an
        # operator notice after this standby read the state.
        former_db = Database(config.database_path)
        try:
            async with FeedFetcher(user_agent="former-leader") as fetcher:
                former = Broadcaster(config, b.network, Renderer(config.templates.directory), former_db, fetcher,
                                     MqttLink(config.mqtt, instance="former"), posting=[c for c, _ in b.posting])
                notice_id = await _announce(former, "Committed by the former leader")
        finally:
            former_db.close()
        alert_id = notice_id.removeprefix("alert-")
        assert alert_id not in b.operator_alerts  # the standby's memory is as it started
        async with MessageRecorder(rig.mqtt_url, rig.topic(f"lines/1/alerts/{alert_id}")) as alert_topic:
            leadership.lead()
            await alert_topic.wait_for(lambda messages: any(m.payload for m in messages), timeout=10)
        assert alert_id in b.operator_alerts
        await _until(lambda: len(server.mastodon_statuses()) == 1)  # its post, queued by the former leader
        stop.set()
        async with asyncio.timeout(15):
            await running
    assert "Committed by the former leader" in server.mastodon_statuses()[0].text


async def test_a_standby_taking_over_posts_to_bluesky_with_the_session_the_former_leader_stored(
    rig: Rig, server: MicroblogServer
) -> None:
    """The Bluesky session (and its rotating refresh token) is the leader's to renew and store; a standby read it
    when it started, hours before it takes over. It must post with the one stored last, not log in again:
    createSession is limited per account, and every failover would spend one."""
    port = free_port()
    config = admin_config(rig, channels=[c for c in channels(server) if c["name"] == "bluesky"],
                          listen=f"127.0.0.1:{port}")
    leadership = SwitchedLeadership()
    stop = asyncio.Event()
    async with open_broadcaster(config, leadership=leadership) as b:
        running = asyncio.create_task(serve(b, stop, grace=2))
        former_db = Database(config.database_path)
        try:
            async with FeedFetcher(user_agent="former-leader") as fetcher, \
                    HttpChannelClient(b.clock.now) as http:
                bluesky = build_channel(config, 0, http, b.clock.now, KeyValueStore(former_db, "session"))
                await bluesky.start()
                former = Broadcaster(config, b.network, Renderer(config.templates.directory), former_db, fetcher,
                                     MqttLink(config.mqtt, instance="former"), posting=[bluesky])
                await _announce(former, "Posted by the former leader")
                assert await former.drain_due(bluesky) == 1  # logs in, stores the session
                await _announce(former, "Left for the next leader")
        finally:
            former_db.close()
        assert server.bluesky_login_count == 1
        leadership.lead()
        await _until(lambda: len(server.bluesky_posts()) == 2)
        stop.set()
        async with asyncio.timeout(15):
            await running
    assert server.bluesky_login_count == 1
