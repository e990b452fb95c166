"""A feed's notice is committed without waiting for the disk (broadcaster/store/wal_sync.py), and no channel sends
it before the worker thread's sync of the WAL returned: not a drain woken by the commit, not a drain already in the
middle of a send. When that sync fails, nothing committed since the last good one is ever sent. Through the real
parts (a running broadcaster, Mosquitto, a Mastodon server on loopback); the sync itself is the one seam."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from rig import Rig, poll_all, running
from support import MessageRecorder
from support.fault_proxy import FaultProxy
from support.microblog_server import LoggedRequest, MicroblogServer
from support.wal_gate import WalGate
from test_admin import admin_config, api, bearer, parse_metrics
from test_channels import SIGNAL, alert, channels
from test_loop_survival import eventually, loop_errors
from test_public_feeds import Site, entries, line2_alert, running_site, terms

from broadcaster.operator import ManualNotice
from broadcaster.service import Broadcaster
from broadcaster.store import Database

UPDATE = {"zh": "信号故障，预计晚点15分钟", "en": "Signal fault, 15 min delays"}
CLOSED = {"zh": "B口关闭", "en": "Exit B closed"}


def posts(server: MicroblogServer) -> list[LoggedRequest]:
    return [r for r in server.requests("mastodon") if r.method == "POST" and r.path == "/api/v1/statuses"]


@contextmanager
def gated(b: Broadcaster, gate: WalGate) -> Iterator[WalGate]:
    """`gate` as the broadcaster's WAL sync. Left shut by a failing test, it would hold the sync that closing the
    database waits for: it is opened on the way out."""
    assert isinstance(b.db, Database)  # the SQLite engine: PostgreSQL's commits are durable when they return
    b.db.wal.sync_file = gate
    try:
        yield gate
    finally:
        gate.open_up()


async def test_no_channel_sends_a_notice_before_its_commit_is_on_the_disk(rig: Rig, server: MicroblogServer) -> None:
    rig.serve_rt(alert(SIGNAL))
    config = rig.config(channels=[c for c in channels(server) if c["name"] == "mastodon"])
    async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as stream:
        with gated(b, WalGate(shut=True)) as gate:
            await poll_all(b)
            # Committed (the round returned), not yet on the disk: the drains the commit woke wait for the sync.
            assert b.outbox.pending_count("mastodon") == 1
            assert b.outbox.pending_count("mqtt") >= 1
            await gate.entered()
            assert stream.messages == []
            released_at = time.monotonic()
            gate.open_up()
            await eventually(lambda: b.pending() == 0)
            await stream.wait_for_count(1)
    [post] = posts(server)
    assert post.monotonic > released_at
    assert {path for path, _ in gate.calls} == {config.database_path.with_name(config.database_path.name + "-wal")}


async def test_a_drain_in_the_middle_of_a_send_never_sends_what_was_committed_meanwhile_if_its_sync_fails(
    rig: Rig, server: MicroblogServer
) -> None:
    rig.serve_rt(alert(SIGNAL))
    async with running(rig.config(channels=[c for c in channels(server) if c["name"] == "mastodon"])) as b:
        with gated(b, WalGate()) as gate:
            # The first post's answer is held (within the channel's 2 s timeout): its drain is mid-send meanwhile.
            server.hang("mastodon", 1.5, commit=True)
            await poll_all(b)
            await eventually(lambda: len(posts(server)) == 1)
            gate.shut = True
            rig.serve_rt(alert(UPDATE))
            await poll_all(b)  # the update's notice commits while the first post is in flight
            assert posts(server)[0].status is None, "the first post was answered before the update committed"
            await gate.entered()  # the MQTT drain's sync of the update's commit, held
            # The first post is answered and marked sent (a durable commit of its own, taken before the failure);
            # its drain goes back for what is due and meets the held sync: that sync fails, as a dying disk's would.
            await eventually(lambda: ("mastodon", "sent") in b.history.depth())
            gate.fail()
            await eventually(lambda: loop_errors(b, "drain:mastodon") >= 1 and loop_errors(b, "drain:mqtt") >= 1)
            assert len(posts(server)) == 1  # the update never left
            assert b.outbox.pending_count("mastodon") == 1
            assert b.outbox.pending_count("mqtt") >= 1
    assert len(server.mastodon_statuses()) == 1


async def test_a_notice_batch_s_next_read_waits_for_the_disk_for_what_was_committed_while_it_was_in_flight(
    rig: Rig,
) -> None:
    """The MQTT notice stream sends its queue in batches (`Dispatcher._drain_batches`): after one batch is
    acknowledged it reads again, and that read, too, comes after the sync of every commit made meanwhile. The
    broker's acknowledgement of the first notice is held (a proxy), so the second commits while it is in flight."""
    notices = rig.topic("notices")
    async with (FaultProxy("127.0.0.1", int(rig.mqtt_url.rsplit(":", 1)[1])) as proxy,
                running(rig.config(mqtt={"url": proxy.url})) as b):
        with gated(b, WalGate()) as gate:
            proxy.hold_ack_of(notices)
            first = asyncio.create_task(b.announce(ManualNotice(CLOSED, station_ids=("S04",))))
            async with asyncio.timeout(10):
                await proxy.wait_published_on(notices, 1)  # in flight: its PUBACK held
            queued = b.outbox.pending_count("mqtt")
            gate.shut = True
            syncs = len(gate.started)
            second = asyncio.create_task(b.announce(ManualNotice(UPDATE, station_ids=("S05",))))
            # Committed (a durable commit owes a sync of the WAL all the same), its sync not yet attempted.
            await eventually(lambda: b.outbox.pending_count("mqtt") > queued)
            # Nothing else waits for the disk in this set-up (no other channel, no public feeds): the sync the gate
            # meets next can only be the batch loop's.
            assert len(gate.started) == syncs
            proxy.release_acks()
            await gate.entered()  # the batch was acknowledged, and its next read waits for the second's sync
            assert len(proxy.published_on(notices)) == 1
            released_at = time.monotonic()
            gate.open_up()
            async with asyncio.timeout(10):
                sent = await proxy.wait_published_on(notices, 2)
                await asyncio.gather(first, second)
            assert sent.at > released_at
            assert UPDATE["en"].encode() in sent.data  # the second notice, not the first sent again
            await eventually(lambda: b.pending() == 0)


@pytest.mark.usefixtures("admin_tokens")
async def test_a_failed_sync_makes_the_broadcaster_unhealthy_says_why_and_keeps_the_state_it_had(rig: Rig) -> None:
    """A supervisor restarting on `/v1/health` brings the database back (a restart reads what the disk holds);
    the operator reads why in `/v1/status` and the metric; the state stays where its last commit left it."""
    rig.serve_rt()
    async with api(admin_config(rig)) as (b, http):
        await poll_all(b)
        assert (await http.get("/v1/health")).status_code == 200
        with gated(b, WalGate(shut=True)) as gate:
            rig.serve_rt(alert(SIGNAL))
            await poll_all(b)  # committed, its sync held
            await gate.entered()
            # A sync that the disk holds is shown (every channel waits for it), and is not unhealthy: a restart
            # would not make the disk any faster.
            status = (await http.get("/v1/status", headers=bearer())).json()
            assert status["healthy"] is True
            assert status["database"]["sync_running_seconds"] > 0
            assert parse_metrics((await http.get("/metrics")).text)["broadcaster_database_sync_running_seconds"] > 0
            gate.fail()
            await eventually(lambda: b.db.doubt() is not None)
            health = await http.get("/v1/health")
            assert health.status_code == 503
            # The reason names a path: only for the authenticated.
            assert health.json()["database"] == {"ok": False, "sync_running_seconds": 0}
            status = (await http.get("/v1/status", headers=bearer())).json()
            assert status["database"]["ok"] is False
            assert "Input/output error" in status["database"]["error"]
            assert parse_metrics((await http.get("/metrics")).text)["broadcaster_database_ok"] == 0
            alerts_before = dict(b.state.alerts)
            rig.serve_rt()  # the alert ends: the broadcaster cannot commit it, so it does not take it on either
            outcomes = await poll_all(b)
            assert not outcomes[0]
            assert b.state.alerts == alerts_before


async def test_the_public_feeds_list_no_notice_whose_sync_failed_and_answer_503_while_in_doubt(rig: Rig) -> None:
    """The Atom feeds list the notice stream's outbox rows: they are read after the same sync as a channel's."""
    async with running_site(rig) as site:
        with gated(site.b, WalGate(shut=True)) as gate:
            rig.serve_rt(line2_alert())
            await site.b.poll_round()  # the alert's notices committed, their sync held
            answer = await line_2_feed_once(site, gate, gate.open_up)
            assert answer.status_code == 200
            assert any("alert_new" in terms(e) for e in entries(answer.content))  # the notice, once synced
            gate.shut = True
            rig.serve_rt(line2_alert({"zh": "2号线恢复运营", "en": "Line 2 service resumed"}))
            await site.b.poll_round()  # the update's notice committed, its sync held
            answer = await line_2_feed_once(site, gate, gate.fail)
            assert answer.status_code == 503
            assert "resumed" not in answer.text
            assert (await site.http.get("/feeds/")).status_code == 200  # the index lists feeds, not notices


async def line_2_feed_once(site: Site, gate: WalGate, then: Callable[[], None]) -> httpx.Response:
    """Line 2's Atom feed, asked for while a sync is held, answered once the held sync is let through or failed
    (`then`)."""
    reading = asyncio.create_task(site.feed("/feeds/lines/2.atom"))
    await gate.entered()
    then()
    async with asyncio.timeout(10):
        return await reading
