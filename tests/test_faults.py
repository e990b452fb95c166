"""Faults of the machine itself: a locked database. Nothing is half-written, the operator hears of it, and the
next tick does the work."""

from __future__ import annotations

import sqlite3

import pytest
from rig import Rig, payloads, poll_all, running, shorten_busy_wait
from support import MessageRecorder
from support.gtfs_rt_builders import alert_entity, selector

from broadcaster.errors import StoreError
from broadcaster.operator import ManualNotice


async def test_a_locked_database_loses_nothing_and_the_next_tick_retries(rig: Rig) -> None:
    config = rig.config()
    async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await poll_all(b)
        rig.serve_rt(alert_entity("A-1", header={"en": "Line 1 running slowly"}, informed=[selector(route_id="1")]))
        shorten_busy_wait(b)  # the refusal after the busy wait is the point, not the wait's length
        blocker = sqlite3.connect(config.database_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database (a backup, a stuck tool)
        try:
            outcome = await b.poll(b.config.feeds[0])
            assert not outcome.ok
            assert "locked" in (outcome.error or "")
            assert "A-1" not in b.state.alerts  # the state did not move without its notices
            with pytest.raises(StoreError):
                await b.announce(ManualNotice({"en": "Exit B closed"}, station_ids=("S04",)))
            assert await notices.settle(quiet=0.3) == []
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await b.poll(b.config.feeds[0])).ok
        got = payloads(await notices.wait_for_count(1))
        refused = b.db.conn.execute("SELECT COUNT(*) FROM outbox WHERE notice_id LIKE 'alert-manual-%'").fetchone()
        assert refused[0] == 0  # the refused announcement left nothing behind
        assert b.operator_alerts == {}
    assert [n["notice_id"] for n in got] == ["alert-A-1"]


async def test_a_full_disk_loses_nothing_and_the_next_tick_retries(rig: Rig) -> None:
    config = rig.config()
    async with running(config) as b, MessageRecorder(rig.mqtt_url, rig.topic("notices")) as notices:
        await poll_all(b)
        # SQLite's own size cap makes every insert fail as on a full disk ("database or disk is full").
        pages = b.db.conn.execute("PRAGMA page_count").fetchone()[0]
        b.db.conn.execute(f"PRAGMA max_page_count = {pages}")
        rig.serve_rt(alert_entity("A-2", header={"en": "Line 2 running slowly"}, informed=[selector(route_id="2")],
                                  description={"en": "x" * 20_000}))
        outcome = await b.poll(b.config.feeds[0])
        assert not outcome.ok
        assert "full" in (outcome.error or "")
        assert "A-2" not in b.state.alerts
        assert await notices.settle(quiet=0.3) == []
        b.db.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert (await b.poll(b.config.feeds[0])).ok
        got = payloads(await notices.wait_for_count(1))
    assert [n["notice_id"] for n in got] == ["alert-A-2"]
