"""The leader cut off from the database: its route to PostgreSQL black-holed (packets dropped, connections held,
as a dead route or a firewall does), while its routes to the broker and the platforms stay up.

It cannot renew its lease, so it must stop sending on its own clock before the lease it holds can pass to the
standby (self-fencing, docs/ha.md); the standby takes over only once the lease has expired in the database, and
between them every notice reaches every platform exactly once. The leader's routes to the broker and the
platforms run through fault proxies too, never cut, only to log when it last sent anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from pathlib import Path

import psycopg
import pytest
from crash_harness import channel_tables, environment
from ha_soak import (
    ARTIFACTS,
    POLL_SECONDS,
    AlertFeed,
    SoakReport,
    audit,
    presence_topic,
)
from rig import Rig
from support import LoopbackHttpServer, MessageRecorder, MosquittoBroker
from support.fault_proxy import FaultProxy
from support.ha_cluster import EXIT_LOST_LEASE, HaCluster, LeaseSettings, SharedDatabase, monotonic_of
from support.microblog_server import PLATFORMS, MicroblogServer
from support.postgres import PASSWORD, PostgresServer

from broadcaster.ha.lease import LeaseLeadership, LeaseTimes
from broadcaster.ha.role import Fence
from broadcaster.store.postgres import PostgresDatabase, conninfo_for

#: Long enough that the leader is surely mid-drain when it is cut off, short enough for a quick test. A store call
#: may hold the event loop for up to statement_timeout, and whatever was queued before leaves after it, so that
#: stays below the margin (docs/ha.md, "Takeover time against false takeovers").
LEASE = LeaseSettings(lease_seconds=3.0, renew_seconds=0.5, margin_seconds=1.0, statement_timeout_seconds=0.5)


@pytest.mark.timeout(120)
async def test_a_leader_cut_off_from_the_database_stops_sending_before_its_lease_passes_to_the_standby(
    tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, microblog: MicroblogServer,
    postgres: PostgresServer, postgres_database: str,
) -> None:
    prefix = f"ha-partition/{postgres_database}"
    async with (
        FaultProxy(postgres.host, postgres.port, mqtt=False) as database_route,
        FaultProxy(mosquitto.host, mosquitto.port) as broker_route,
        FaultProxy("127.0.0.1", microblog.port, mqtt=False) as platform_route,
    ):
        platforms_via_proxy = f"http://127.0.0.1:{platform_route.port}"

        def write_config(name: str, directory: Path) -> Path:
            leader = name == "a"  # the one started first, and cut off
            rig = Rig(directory, http_server, broker_route.url if leader else mosquitto.url, prefix)
            channels = [{**c, "url": str(c["url"]).replace(microblog.url, platforms_via_proxy)} if leader else c
                        for c in channel_tables(microblog)]
            return rig.write_config(channels=channels, feeds={"poll_seconds": POLL_SECONDS})

        url = postgres.url(postgres_database)
        cluster = HaCluster(
            tmp_path, write_config, database_url=url, password=PASSWORD, lease=LEASE, env=environment(microblog),
            database_urls={"a": url.replace(f":{postgres.port}/", f":{database_route.port}/")})
        feed = AlertFeed(Rig(tmp_path, http_server, mosquitto.url, prefix), random.Random(14))
        feed.rig.serve_flow({"S04": "FEW_SEATS_AVAILABLE"})
        feed.step()
        for platform in PLATFORMS:  # slow platforms: the leader is mid-drain when it is cut off
            microblog.set_rate_limit(platform, None)
            microblog.hang(platform, 0.3, count=100_000, commit=platform in ("mastodon", "bluesky"))
        async with cluster, SharedDatabase(postgres.conninfo(postgres_database)) as db, \
                MessageRecorder(mosquitto.url, f"{prefix}/#", retain_as_published=True, timeout=10) as recorder:
            await cluster.start("a")
            await cluster.wait_for_role("a", "leader", timeout=60)
            await cluster.start("b")
            await cluster.wait_for_role("b", "standby", timeout=60)
            total = await db.wait_for_commit(cluster, 0, timeout=30)
            feed.step()
            await db.wait_for_commit(cluster, total, timeout=30)

            database_route.blackhole()
            cut_at = time.monotonic()
            pending = (await db.outbox_counts())[1]
            holder, epoch, expires_at = await db.lease()
            lease_end = monotonic_of(expires_at)  # no renew gets through from here on
            assert (holder, pending > 0) == ("a", True)

            try:
                taken = await cluster.wait_for_role("b", "leader", timeout=LEASE.lease_seconds + 30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nsessions: {await db.sessions()}") from None
            try:
                status: int | None = await cluster.wait_exit("a", timeout=30)
            except TimeoutError:
                status = None
            exited_at = cluster["a"].runs[-1].ended_at or float("nan")
            # The new leader delivers what the old one left.
            await db.wait_until_drained(timeout=60)
            messages = await recorder.settle(quiet=1.0, timeout=30)
            report = SoakReport(kills=0)
            await audit(report, db, microblog, messages, prefix)
            new_holder, new_epoch, _ = await db.lease()

    last_post = max((f.at for f in platform_route.forwarded), default=float("-inf"))
    late_requests = [(round(f.at - cut_at, 3), f.data[:60]) for f in platform_route.forwarded if f.at >= lease_end]
    # Its own presence topic is its own to update to the end; every other topic is the leader's.
    publishes = [(f.at, topic) for f in broker_route.forwarded
                 if (topic := f.publish_topic or "").startswith(f"{prefix}/v1/")
                 and topic != presence_topic(prefix, "a")]
    last_publish = max((at for at, _ in publishes), default=float("-inf"))
    late = [(round(at - cut_at, 3), topic) for at, topic in publishes if at >= lease_end]
    times = {
        "lease_seconds": LEASE.lease_seconds, "renew_seconds": LEASE.renew_seconds,
        "margin_seconds": LEASE.margin_seconds, "pending_posts_at_cut": pending,
        # seconds from the cut
        "lease_end": lease_end - cut_at, "last_request_to_a_platform": last_post - cut_at,
        "last_mqtt_publish": last_publish - cut_at, "old_leader_exit": exited_at - cut_at,
        "new_leader_answers": taken.at - cut_at,
        "duplicates": report.duplicates, "losses": report.losses, "notices": report.notices,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ha-partition.json").write_text(json.dumps(times, indent=2) + "\n", encoding="utf-8")
    print("partition:", json.dumps(times))
    assert status == EXIT_LOST_LEASE, cluster["a"].log_tail()
    # The old leader's last request to a platform and its last publish left before its lease could pass...
    assert last_post < lease_end, (times, late_requests)
    assert last_publish < lease_end, (times, late)
    # ...and the standby led only once the lease had passed in the database, with the next epoch.
    assert taken.at >= lease_end - 0.05, times
    assert (new_holder, new_epoch) == ("b", epoch + 1)
    # Nothing posted twice, nothing lost, nothing published that was not committed.
    assert report.duplicates == 0, report.posts
    assert report.losses == 0, (report.posts, report.mqtt_missing, report.channels_disagree)
    assert report.mqtt_phantoms == []
    assert report.mqtt_conflicting == []
    assert report.notices >= 6
    assert cluster.unexpected_exits() == {"a": [EXIT_LOST_LEASE]}



async def test_a_transaction_a_vanished_leader_left_between_protocol_messages_does_not_hold_the_takeover(
    postgres: PostgresServer, postgres_database: str,
) -> None:
    """Found by the test above, about once in ten runs: the standby's acquire was cancelled by its statement
    timeout for 33 s, until the test gave up, blocked by the cut-off leader's session ('idle in transaction',
    ClientRead, 33 s) holding the fence's FOR SHARE on the lease row. The route died between the messages of an
    extended-protocol exchange (a tick's executemany): the server then waits for the next message with neither
    the statement nor the idle-in-transaction timeout running, until TCP keepalive gives up on the peer (two hours
    by default). A standby whose acquire is blocked now ends such sessions once the lease has expired."""
    url = postgres.url(postgres_database)
    PostgresDatabase(url, password=PASSWORD).close()  # migrated: the lease table
    conninfo = conninfo_for(url, PASSWORD, 1.0)  # the store's and the lease's limits, statement timeout 0.8 s
    with psycopg.connect(postgres.conninfo(postgres_database), autocommit=True) as admin:
        admin.execute("UPDATE leader_lease SET holder = 'a', epoch = 1, expires_at = now() + interval '1 second'")
    vanished = psycopg.connect(conninfo, autocommit=True)
    lease = LeaseLeadership("b", lambda: psycopg.connect(conninfo, autocommit=True),
                            LeaseTimes(lease=1.0, renew=0.2, margin=0.3, call_timeout=3.0))
    try:
        vanished.execute("BEGIN")
        vanished.execute("SELECT holder FROM leader_lease WHERE name = 'leader' FOR SHARE")  # as the fence does
        parse = b"\x00SELECT 1\x00\x00\x00"  # a whole Parse message, and the route dies before its Sync
        with socket.socket(fileno=os.dup(vanished.pgconn.socket)) as sock:
            sock.sendall(b"P" + (4 + len(parse)).to_bytes(4, "big") + parse)
        async with asyncio.timeout(20):
            while True:
                if await lease.try_acquire():
                    break
                await asyncio.sleep(0.2)  # the standby's next attempt, as its renew period would
    finally:
        await lease.close()
        vanished.close()
    assert lease.fence() == Fence("b", 2)
