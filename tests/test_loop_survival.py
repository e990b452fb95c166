"""A long-running loop that fails is logged, counted and retried: here a drain loop meeting a database another
writer holds (a backup, a stuck tool) for longer than SQLite's busy timeout, mid-retry; and an outbox row nobody can
read is parked rather than stopping its channel."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable

from rig import Rig, poll_all, running, shorten_busy_wait
from support import MosquittoBroker
from support.microblog_server import MicroblogServer
from test_channels import SIGNAL, alert, channels

from broadcaster.channels.mqtt import MqttLink
from broadcaster.config import MqttConfig
from broadcaster.outbox import Outbox, OutgoingMessage
from broadcaster.service import Broadcaster


def loop_errors(b: Broadcaster, loop: str) -> float:
    """broadcaster_loop_errors_total{loop=`loop`} as scraped."""
    scrape = b.metrics.render().decode()
    match = re.search(rf'^broadcaster_loop_errors_total{{loop="{re.escape(loop)}"}} (\S+)$', scrape, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Look (bounded) until `condition` holds: a metric and a server's log have no event to wait on."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (nothing to wait on; the drain loop's own timers decide)
            await asyncio.sleep(0.05)


async def test_a_drain_loop_that_fails_is_counted_and_retried_and_then_delivers(
    rig: Rig, server: MicroblogServer
) -> None:
    mastodon = [table for table in channels(server) if table["name"] == "mastodon"]
    config = rig.config(channels=mastodon)
    server.set_down("mastodon")  # the first attempt fails, so the next one comes from the drain loop's timer
    rig.serve_rt(alert(SIGNAL))
    async with running(config) as b:
        await poll_all(b)
        await asyncio.to_thread(server.wait_for, lambda log: any(r.status == 503 for r in log), 10)
        shorten_busy_wait(b)  # the loop's failure after the busy wait is the point, not the wait's length
        blocker = sqlite3.connect(config.database_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        server.set_down("mastodon", down=False)
        try:
            # The retry cannot record its attempt: the loop fails (after SQLite's busy wait), counts it, goes on.
            await eventually(lambda: loop_errors(b, "drain:mastodon") >= 1)
            assert server.mastodon_statuses() == []  # nothing was sent without its durable attempt record
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await eventually(lambda: len(server.mastodon_statuses()) == 1)
        assert loop_errors(b, "drain:mqtt") == 0
    assert len(server.mastodon_statuses()) == 1


async def test_an_unreadable_outbox_entry_is_parked_and_the_channel_goes_on(rig: Rig, server: MicroblogServer) -> None:
    mastodon = [table for table in channels(server) if table["name"] == "mastodon"]
    config = rig.config(channels=mastodon)
    async with running(config) as b:
        # A row no code can read (hand-edited, or left by a broken build), first in the queue: it used to end the
        # drain loop with a JSONDecodeError, and every later post of the channel with it.
        broken = OutgoingMessage("alert-broken", "v1", "mastodon", b"\x00 not a post", priority=0)
        with b.db.transaction() as conn:
            Outbox.enqueue(conn, [broken], b.clock.now())
        rig.serve_rt(alert(SIGNAL))
        await poll_all(b)
        await eventually(lambda: len(server.mastodon_statuses()) == 1)
        assert b.history.status_of("alert-broken", "v1", "mastodon", 0) == ("parked", None)
        assert loop_errors(b, "drain:mastodon") == 0


async def test_the_broker_links_loop_survives_a_failing_session_and_reconnects(
    mosquitto: MosquittoBroker, topic_prefix: str
) -> None:
    """The session's work (`on_connected`: the service republishes its retained state) failing with something
    that is no broker error used to end `MqttLink.run`, and with it the service's task group."""
    calls: list[int] = []
    failures: list[int] = []

    async def on_connected() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the session's work")

    config = MqttConfig(url=mosquitto.url, topic_prefix=topic_prefix, client_id=f"loop-{topic_prefix[-8:]}",
                        reconnect_max_seconds=1, will_delay_seconds=0)
    link = MqttLink(config, on_connected=on_connected)
    link.on_loop_error = lambda: failures.append(1)
    stop = asyncio.Event()
    run = asyncio.create_task(link.run(stop))
    try:
        async with asyncio.timeout(10):
            await link.wait_for_session(2)  # it reconnected after the failure
            await link.connected.wait()
        assert not run.done()
        assert (len(calls), len(failures)) == (2, 1)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await run
