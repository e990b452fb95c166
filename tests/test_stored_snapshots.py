"""A feed's parsed snapshot is stored at most every few minutes, and the stored feed record always carries the
validators of the body whose snapshot is stored (broadcaster/store/stored_snapshots.py).

So a new process, sending those validators, is answered 304 only while the server still holds that body, and
otherwise gets the newest body to parse: a snapshot written late costs a parse, never an older state. Real
SQLite, a real Mosquitto, the loopback feed server answering conditional requests; the clock is stepped.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import Rig, SteppedClock, now_s, running
from support.gtfs_rt_builders import alert_entity, feed_bytes, selector

from broadcaster.config import Config
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.model import FeedSnapshot
from broadcaster.poller import body_digest, parse_keys
from broadcaster.service import Broadcaster
from broadcaster.store import FeedRecord, save_snapshot
from broadcaster.store.stored_snapshots import SNAPSHOT_EVERY, StoredSnapshots


def _body(text: str, timestamp: int | None = None) -> bytes:
    return feed_bytes(alert_entity("A-1", header={"en": text}, informed=[selector(route_id="1")]),
                      timestamp=timestamp or now_s())


def _serve(rig: Rig, body: bytes, etag: str) -> None:
    rig.server.set_route("/rt.pb", body, etag=etag)


def _stored(rig: Rig) -> tuple[str | None, bytes | None]:
    """The validator in the stored record of feed `ops`, and the digest of its stored snapshot."""
    db = sqlite3.connect(rig.tmp_path / "state" / "broadcaster.db")
    try:
        etag = db.execute("SELECT etag FROM feeds WHERE name = 'ops'").fetchone()
        digest = db.execute("SELECT digest FROM feed_snapshots WHERE name = 'ops'").fetchone()
    finally:
        db.close()
    return (etag[0] if etag else None), (bytes(digest[0]) if digest else None)


def _config(rig: Rig) -> Config:
    config = rig.config()
    feeds = tuple(f.model_copy(update={"max_age_seconds": 3600}) for f in config.feeds[:1])
    return config.model_copy(update={"feeds": feeds})


def _last_validator(rig: Rig) -> str | None:
    return rig.server.requests_for("/rt.pb")[-1].header("if-none-match")


async def _poll_one_then_two(rig: Rig, b: Broadcaster, one: bytes, two: bytes) -> None:
    """`b` polls body one (ETag v1), then body two (v2): one's snapshot is stored, two's not yet due."""
    _serve(rig, one, '"v1"')
    assert (await b.poll(b.config.feeds[0])).ok
    _serve(rig, two, '"v2"')
    assert (await b.poll(b.config.feeds[0])).ok


async def test_a_changed_snapshot_is_stored_at_most_every_few_minutes_with_its_own_validators(rig: Rig) -> None:
    one, two, three = _body("one"), _body("two"), _body("three")
    clock = SteppedClock()
    _serve(rig, one, '"v1"')
    async with running(_config(rig), clock=clock) as b:
        feed = b.config.feeds[0]
        assert (await b.poll(feed)).ok
        assert _stored(rig) == ('"v1"', body_digest(one))  # a process's first snapshot is written at once
        _serve(rig, two, '"v2"')
        assert (await b.poll(feed)).ok
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"
        assert _stored(rig) == ('"v1"', body_digest(one))  # not yet: one's snapshot, with one's validator
        assert (await b.poll(feed)).ok
        assert _last_validator(rig) == '"v2"'  # the process itself fetches with the newest
        assert _stored(rig) == ('"v1"', body_digest(one))
        clock.offset = SNAPSHOT_EVERY + timedelta(seconds=1)
        assert (await b.poll(feed)).ok  # a 304: the pending snapshot is written now
        assert _stored(rig) == ('"v2"', body_digest(two))
        _serve(rig, three, '"v3"')
        assert (await b.poll(feed)).ok
        assert _stored(rig) == ('"v2"', body_digest(two))


async def test_a_new_process_sends_the_stored_validators_and_gets_the_newest_body(rig: Rig) -> None:
    one, two = _body("one"), _body("two")
    async with running(_config(rig)) as b:
        await _poll_one_then_two(rig, b, one, two)
        assert b.pending() == 1  # the alert's new text
    assert _stored(rig) == ('"v1"', body_digest(one))
    async with running(_config(rig)) as b:
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"  # the committed state
        assert (await b.poll(b.config.feeds[0])).ok
        assert _last_validator(rig) == '"v1"'  # answered with the body: not a 304 that would bring back "one"
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"
        assert _stored(rig) == ('"v2"', body_digest(two))  # this process's first snapshot
        assert (await b.poll(b.config.feeds[0])).ok
        assert _last_validator(rig) == '"v2"'
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"


async def test_a_failed_poll_is_recorded_with_the_stored_validators(rig: Rig) -> None:
    one, two = _body("one"), _body("two")
    async with running(_config(rig)) as b:
        await _poll_one_then_two(rig, b, one, two)
        rig.server.push_response("/rt.pb", b"busy", status=503)
        assert not (await b.poll(b.config.feeds[0])).ok
        assert _stored(rig) == ('"v1"', body_digest(one))
    async with running(_config(rig)) as b:
        assert (await b.poll(b.config.feeds[0])).ok
        assert _last_validator(rig) == '"v1"'
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"


async def test_a_new_process_never_steps_back_to_an_older_stored_snapshot(rig: Rig) -> None:
    """The stored snapshot may be older than the committed state. A stale server node (a cache, a second server
    behind a load balancer) still holding that older body answers the new process's validators with a 304: the
    snapshot is refused as going backwards, as a 200 of that body is (found by review: it was applied)."""
    one, two = _body("one", now_s() - 60), _body("two", now_s())
    async with running(_config(rig)) as b:
        await _poll_one_then_two(rig, b, one, two)
        rig.server.push_response("/rt.pb", one, headers={"etag": '"v1"'})  # the stale node, to this process
        outcome = await b.poll(b.config.feeds[0])
        assert not outcome.ok
        assert "older than the previous one" in (outcome.error or "")
    _serve(rig, one, '"v1"')  # the stale node answers the next process
    async with running(_config(rig)) as b:
        outcome = await b.poll(b.config.feeds[0])
        assert _last_validator(rig) == '"v1"'  # answered 304
        assert not outcome.ok
        assert "older than the previous one" in (outcome.error or "")
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"
        _serve(rig, two, '"v2"')  # a current node
        assert (await b.poll(b.config.feeds[0])).ok
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"
        assert b.pending() == 0  # nothing announced again


async def test_a_new_process_refuses_the_stored_older_bodys_same_bytes(rig: Rig) -> None:
    """The same stale node, ignoring If-None-Match: it sends the stored (older) body's very bytes with a 200. The
    same-bytes path applies the stored snapshot without parsing, and refuses it as the 304 path does (a review's
    mutant that checked only on a 304 passed every other test)."""
    one, two = _body("one", now_s() - 60), _body("two", now_s())
    async with running(_config(rig)) as b:
        await _poll_one_then_two(rig, b, one, two)
    rig.server.push_response("/rt.pb", one, headers={"etag": '"v1"'})
    async with running(_config(rig)) as b:
        outcome = await b.poll(b.config.feeds[0])
        assert not outcome.ok
        assert "older than the previous one" in (outcome.error or "")
        assert b.state.alerts["A-1"].alert.header.get("en") == "two"


async def test_a_standby_taking_over_takes_up_the_stored_snapshot_as_the_database_holds_it(rig: Rig) -> None:
    """`FeedPoller.load` (broadcaster/ha): another instance stored a newer snapshot meanwhile. The next poll sends
    that snapshot's validator, and what it stores pairs a snapshot with its own body's validator."""
    one, two, three = _body("one"), _body("two"), _body("three")
    _serve(rig, one, '"v1"')
    async with running(_config(rig)) as b:
        assert (await b.poll(b.config.feeds[0])).ok
        # What another instance, leader meanwhile, would have left: body two's snapshot, with its validator.
        with b.db.transaction() as conn:
            save_snapshot(conn, body_digest(two), parse_keys(b.config, b.network)["ops"],
                          parse_gtfs_rt("ops", two, b.network, carries=frozenset(), default_language="zh"))
            conn.execute("UPDATE feeds SET etag = ? WHERE name = 'ops'", ('"v2"',))
        b.poller.load()
        _serve(rig, three, '"v3"')
        assert (await b.poll(b.config.feeds[0])).ok
        assert _last_validator(rig) == '"v2"'
        # When that snapshot was written is not known here: this one is written at once, with its validator
        # (forgetting the database's would record v1, this instance's own earlier validator, beside two's snapshot).
        assert _stored(rig) == ('"v3"', body_digest(three))


# -- the rule, over any sequence of polls, failures and restarts ---------------------------------------------------

T0 = datetime(2026, 12, 4, 8, tzinfo=UTC)

#: One step: ("body", version, with validators) the server changes to that body; ("poll",) a good poll; ("fail",)
#: a failed poll; ("later", seconds) time passes; ("restart",) a new process on the same database.
steps = st.lists(st.one_of(
    st.tuples(st.just("body"), st.integers(0, 4), st.booleans()), st.tuples(st.just("poll")),
    st.tuples(st.just("fail")), st.tuples(st.just("later"), st.integers(0, 900)), st.tuples(st.just("restart")),
), max_size=40)


def _snapshot(version: int) -> FeedSnapshot:
    return FeedSnapshot(feed="ops", timestamp=T0 + timedelta(seconds=version))


def _version(snapshot: FeedSnapshot) -> int:
    return snapshot.timestamp.second


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_a_304_to_any_process_always_means_the_snapshot_it_applies(steps: list[tuple[object, ...]]) -> None:
    """A model of the server, of the poller and of the database around the real StoredSnapshots: whatever
    happens, a poll answered 304 (the server still holds the body of the validator sent) applies the snapshot of
    that very body, in the process that fetched it and in any new one; and the stored validator is always that
    of the stored snapshot's body."""
    def etag(version: int) -> str:
        return f'"v{version}"'

    disk_record = FeedRecord("ops")
    disk_snapshot: tuple[bytes, FeedSnapshot] | None = None
    memory = FeedRecord("ops")
    current: tuple[bytes, FeedSnapshot] | None = None  # what the process applies on a 304
    keeper = StoredSnapshots()
    now = T0
    server, with_validators = 0, True

    def commit(record: FeedRecord, digest: bytes, snapshot: FeedSnapshot) -> None:
        nonlocal disk_record, disk_snapshot
        write = keeper.plan(record, digest, snapshot, now)
        disk_record = write.record
        if write.snapshot is not None and write.digest is not None:
            disk_snapshot = (write.digest, write.snapshot)
        keeper.committed(write)

    for step in steps:
        if step[0] == "body":
            server, with_validators = int(str(step[1])), bool(step[2])
        elif step[0] == "poll":
            tag = etag(server) if with_validators else None
            if current is not None and memory.etag is not None and memory.etag == tag:
                assert _version(current[1]) == server  # the 304 is answered for the body `current` is of
            else:
                current = (body_digest(b"body %d" % server), _snapshot(server))
            memory = FeedRecord("ops", etag=tag)
            commit(memory, *current)
        elif step[0] == "fail":
            disk_record = keeper.as_stored(memory)
        elif step[0] == "later":
            now += timedelta(seconds=int(str(step[1])))
        else:  # a new process: what the database holds, and no snapshot in memory
            memory, current = disk_record, disk_snapshot
            keeper = StoredSnapshots()
            keeper.load({"ops": disk_snapshot[0]} if disk_snapshot else {}, {"ops": disk_record})
        if disk_record.etag is not None:
            assert disk_snapshot is not None
            assert disk_record.etag == etag(_version(disk_snapshot[1]))


@pytest.mark.parametrize("gap", [timedelta(0), SNAPSHOT_EVERY - timedelta(microseconds=1), -timedelta(seconds=1)])
def test_within_the_interval_a_changed_snapshot_waits_and_past_it_or_backwards_it_is_written(gap: timedelta) -> None:
    keeper = StoredSnapshots()
    first = keeper.plan(FeedRecord("ops", etag='"v1"'), b"1", _snapshot(1), T0)
    keeper.committed(first)
    assert first.snapshot is not None
    later = keeper.plan(FeedRecord("ops", etag='"v2"'), b"2", _snapshot(2), T0 + gap)
    if gap >= timedelta(0):
        assert later.snapshot is None
        assert later.record.etag == '"v1"'
    else:  # the clock went back: write rather than wait an unknown time
        assert later.snapshot is not None
        assert later.record.etag == '"v2"'
    due = keeper.plan(FeedRecord("ops", etag='"v2"'), b"2", _snapshot(2), T0 + SNAPSHOT_EVERY)
    assert due.snapshot is not None
    assert due.record.etag == '"v2"'
