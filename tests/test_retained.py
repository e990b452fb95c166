"""Retained-state planning: publish what changed, refresh only what is fresh, clear what is gone."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from broadcaster.payloads import RetainedItem
from broadcaster.retained import Publication, RetainedPlanner, SequenceClock
from broadcaster.store import Database, Store

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
TTL = timedelta(minutes=30)


@pytest.fixture
def db(store: Store) -> Store:
    """Each engine in turn (conftest `store`)."""
    return store


def items(alert: bool = True, level: str = "FULL") -> list[RetainedItem]:
    out = [
        RetainedItem("m/v1/lines/1/status", {"status": "normal"}, "gtfs-rt"),
        RetainedItem("m/v1/stations/S1/crowding", {"level": level}, "passenger-flow"),
        RetainedItem("m/v1/stations/S1/display", {"lines": []}, "any"),
    ]
    if alert:
        out.append(RetainedItem("m/v1/lines/1/alerts/A", {"alert_id": "A"}, "gtfs-rt"))
    return out


def publish(planner: RetainedPlanner, db: Store, its: list[RetainedItem], now: datetime, *,
            fresh: set[str] | None = None, full: bool = False) -> list[Publication]:
    pubs = planner.plan(its, now, fresh_sources={"gtfs-rt", "passenger-flow"} if fresh is None else fresh,
                        full=full)
    with db.transaction() as conn:
        planner.confirm(pubs, now, conn)
    return pubs


def topics(pubs: list[Publication]) -> set[str]:
    return {p.topic for p in pubs}


def test_first_round_publishes_everything_then_nothing_until_a_change(db: Store) -> None:
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    assert len(publish(planner, db, items(), T0)) == 4
    assert publish(planner, db, items(), T0 + timedelta(seconds=30)) == []
    changed = publish(planner, db, items(level="EMPTY"), T0 + timedelta(seconds=60))
    assert topics(changed) == {"m/v1/stations/S1/crowding"}
    body = orjson.loads(changed[0].payload)
    assert body["level"] == "EMPTY"
    assert body["valid_until"] == (T0 + timedelta(seconds=60) + TTL).isoformat()
    assert changed[0].expiry_s == 1800


def test_resolved_alert_gets_an_empty_retained_payload_once(db: Store) -> None:
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(), T0)
    clears = publish(planner, db, items(alert=False), T0 + timedelta(seconds=1))
    assert [(p.topic, p.payload, p.retain) for p in clears] == [("m/v1/lines/1/alerts/A", b"", True)]
    assert publish(planner, db, items(alert=False), T0 + timedelta(seconds=2)) == []


def test_refresh_at_half_ttl_only_for_fresh_sources(db: Store) -> None:
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(), T0)
    later = T0 + TTL / 2
    refreshed = publish(planner, db, items(), later, fresh={"gtfs-rt"})
    # The crowding feed is stale: its topic is left to expire; line, alert and display are refreshed.
    assert topics(refreshed) == {"m/v1/lines/1/status", "m/v1/lines/1/alerts/A", "m/v1/stations/S1/display"}


def test_a_topic_known_only_from_disk_is_refreshed_at_the_next_round_if_its_source_is_fresh(db: Store) -> None:
    """A new process knows what the broker holds (the digests on disk) but not when each message was issued, so
    it cannot tell how close to its expiry the broker's copy is: the first round refreshes every unchanged topic
    of a fresh source, and lets a stale source's expire."""
    publish(RetainedPlanner(TTL, 10_000, SequenceClock()), db, items(), T0)
    restarted = RetainedPlanner(TTL, 10_000, SequenceClock())
    restarted.load(db)
    refreshed = publish(restarted, db, items(), T0 + timedelta(seconds=5), fresh={"gtfs-rt"})
    assert topics(refreshed) == {"m/v1/lines/1/status", "m/v1/lines/1/alerts/A", "m/v1/stations/S1/display"}
    assert publish(restarted, db, items(), T0 + timedelta(seconds=10), fresh={"gtfs-rt"}) == []


def test_full_republish_after_reconnect_never_extends_stale_entries(db: Store) -> None:
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(), T0)
    reconnect = T0 + timedelta(minutes=20)
    pubs = {p.topic: p for p in publish(planner, db, items(), reconnect, fresh={"gtfs-rt"}, full=True)}
    assert set(pubs) == {t.topic for t in items()}
    stale = pubs["m/v1/stations/S1/crowding"]
    assert stale.expiry_s == 600  # what was left of its 30 minutes
    assert orjson.loads(stale.payload)["valid_until"] == (T0 + TTL).isoformat()
    assert pubs["m/v1/lines/1/status"].expiry_s == 1800
    # Past its expiry, a stale entry is not re-sent at all.
    pubs = {p.topic: p for p in publish(planner, db, items(), T0 + timedelta(minutes=31), fresh={"gtfs-rt"},
                                       full=True)}
    assert "m/v1/stations/S1/crowding" not in pubs


def test_oversize_payload_is_not_published(db: Store, caplog: pytest.LogCaptureFixture) -> None:
    planner = RetainedPlanner(TTL, 200, SequenceClock())
    big = [RetainedItem("m/v1/stations/S1/display", {"text": "x" * 500}, "any")]
    assert publish(planner, db, big, T0) == []
    assert "exceeds max_payload_bytes 200" in caplog.text


def test_what_is_on_the_broker_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = Database(path)
    publish(RetainedPlanner(TTL, 10_000, SequenceClock()), db, items(), T0)
    db.close()
    db = Database(path)
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    planner.load(db)
    # After a restart, an alert resolved while we were down is still cleared.
    pubs = publish(planner, db, items(alert=False), T0 + timedelta(minutes=1), full=True)
    assert ("m/v1/lines/1/alerts/A", b"") in {(p.topic, p.payload) for p in pubs}


def test_sequence_numbers_strictly_increase() -> None:
    clock = SequenceClock()
    numbers = [clock.next() for _ in range(10_000)]
    assert all(b > a for a, b in itertools.pairwise(numbers))
    assert SequenceClock().next() >= numbers[0]


ALERT = "m/v1/lines/1/alerts/A"


def clears(pubs: list[Publication]) -> set[str]:
    return {p.topic for p in pubs if not p.payload}


def test_a_cleared_topic_is_cleared_again_on_every_full_publish_for_one_ttl(tmp_path: Path) -> None:
    """A broker killed after acknowledging a clear comes back with its last save, which may hold the alert."""
    path = tmp_path / "b.db"
    db = Database(path)
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(), T0)
    assert clears(publish(planner, db, items(alert=False), T0 + timedelta(minutes=1))) == {ALERT}
    assert clears(publish(planner, db, items(alert=False), T0 + timedelta(minutes=2))) == set()  # not a change
    assert clears(publish(planner, db, items(alert=False), T0 + timedelta(minutes=3), full=True)) == {ALERT}
    db.close()
    db = Database(path)  # and after a restart of broadcaster too
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    planner.load(db)
    # Re-sending the clear does not extend the memory: one TTL from the first clear (minute 1), then forgotten.
    assert clears(publish(planner, db, items(alert=False), T0 + timedelta(minutes=30), full=True)) == {ALERT}
    assert clears(publish(planner, db, items(alert=False), T0 + timedelta(minutes=31), full=True)) == set()
    assert db.conn.execute("SELECT count(*) FROM retained_cleared").fetchone() == (0,)


def test_a_topic_published_again_is_no_longer_cleared_on_reconnect(db: Store) -> None:
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(), T0)
    publish(planner, db, items(alert=False), T0 + timedelta(minutes=1))
    publish(planner, db, items(), T0 + timedelta(minutes=2))  # the alert is back
    full = publish(planner, db, items(), T0 + timedelta(minutes=3), full=True)
    assert clears(full) == set()
    assert ALERT in topics(full)
    assert db.conn.execute("SELECT count(*) FROM retained_cleared").fetchone() == (0,)


def test_a_topic_recorded_before_its_publish_is_published_again_or_cleared_by_the_next_instance(db: Store) -> None:
    """A first publication's topic is recorded before it leaves; its acknowledgement never recorded (the
    instance killed in between), the next instance takes the placeholder as "maybe on the broker, content
    unknown": a full publish sends its current payload, or clears it once its entry is gone, and so does an
    ordinary round; a steady round records nothing more."""
    first = RetainedPlanner(TTL, 10_000, SequenceClock())
    planned = first.plan(items(), T0, fresh_sources={"gtfs-rt", "passenger-flow"}, full=False)
    assert first.reserve(planned, db) == planned  # then killed: never confirmed

    def next_instance() -> RetainedPlanner:
        planner = RetainedPlanner(TTL, 10_000, SequenceClock())
        planner.load(db)
        return planner

    later = T0 + timedelta(seconds=5)
    assert topics(next_instance().plan(items(), later, fresh_sources=set(), full=True)) == topics(planned)
    assert topics(next_instance().plan(items(), later, fresh_sources=set(), full=False)) == topics(planned)
    clears = next_instance().plan(items(alert=False), later, fresh_sources=set(), full=True)
    assert ("m/v1/lines/1/alerts/A", b"") in {(p.topic, p.payload) for p in clears}
    # Recorded once acknowledged, the topics are not reserved again: nothing to write on a steady round.
    second = next_instance()
    publish(second, db, items(), later)
    steady = second.plan(items(level="EMPTY"), later, fresh_sources={"passenger-flow"}, full=False)
    assert second.reserve(steady, db) == steady
    with db.transaction() as conn:
        conn.execute("DELETE FROM retained")
    assert second.reserve(steady, db) == steady
    assert next_instance().published == {}


def test_a_refused_topic_goes_out_again_even_when_its_content_returns_to_what_the_broker_holds(db: Store) -> None:
    """The broker refused a change (an MQTT 5 reason code: a quota, an ACL); then the content went back to what
    the broker acknowledged before. Only an acknowledgement clears a refusal, so the topic must be published again
    (else health would stay unhealthy until the next refresh while nothing is wrong)."""
    planner = RetainedPlanner(TTL, 10_000, SequenceClock())
    publish(planner, db, items(level="FEW"), T0)
    refused = planner.plan(items(level="FULL"), T0 + timedelta(seconds=30), fresh_sources={"passenger-flow"},
                           full=False)
    assert topics(refused) == {"m/v1/stations/S1/crowding"}
    planner.unsettle(refused)  # not confirmed: refused
    again = publish(planner, db, items(level="FEW"), T0 + timedelta(seconds=60))
    assert topics(again) == {"m/v1/stations/S1/crowding"}
    assert orjson.loads(again[0].payload)["level"] == "FEW"
    assert publish(planner, db, items(level="FEW"), T0 + timedelta(seconds=90)) == []
