"""GTFS-Realtime entity shapes at the feed boundary, with hypothesis (issue 11, "property tests at every boundary").

FeedMessages are built from arbitrary entity shapes: alerts with and without informed entities, odd and empty
translations, active periods at the extremes, trip updates and vehicle positions (occupancy included) on known and
unknown lines, missing and duplicate ids, deleted entities, and header timestamps from 0 to 2^64-1. Through
`parse_gtfs_rt`: nothing but a FeedError is ever raised, every alert entity left out is reported and its id kept as
present, and what comes out is well formed (and survives the snapshot store's round trip, which a 304 re-applies).
Through a poll of the real pipeline (file feed, SQLite, the whole tick): the poll never raises, a feed that fails
keeps the last good state, and a skipped entity never resolves the alert it names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from google.transit import gtfs_realtime_pb2 as pb
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rig import Rig
from support.gtfs_rt_builders import alert_entity, feed_message, selector
from support.tiny_network import tiny_network

from broadcaster.config import load_config
from broadcaster.errors import FeedError
from broadcaster.feeds.gtfs_rt import MAX_EPOCH_SECONDS, parse_gtfs_rt
from broadcaster.model import FeedSnapshot, Network
from broadcaster.runner import open_broadcaster
from broadcaster.store import decode_snapshot, encode_snapshot

ALL = frozenset({"alerts", "trip-updates", "vehicle-positions"})
UINT64_MAX = 2**64 - 1

def _members(enum: Any) -> list[Any]:
    """Every value of a protobuf enum (typed Any: the generated stubs type them as their own classes)."""
    return [enum.Value(v.name) for v in enum.DESCRIPTOR.values]


# Ids from a small pool, so that duplicates, known and unknown ids all come up often. Both networks' ids are in
# each pool: the tiny network's (L1, S01, L1-T0a) for the parser, the example's (1, S01-1A, 1-0-01) for the poll.
_ENTITY_IDS = st.sampled_from(["", "A1", "A2", "A3", "KEEP", "x y", "长"])
_ROUTES = st.sampled_from(["L1", "L2", "1", "2", "3", "X9", ""])
_STOPS = st.sampled_from(["S01", "S02", "S01-1A", "S99", ""])
_TRIPS = st.sampled_from(["L1-T0a", "L2-T1a", "1-0-01", "1-1-01", "ghost", ""])
_LANGUAGES = st.sampled_from(["", "en", "zh", "zh-Hant", "EN-gb", "x-klingon", "!!", "en\x00"])
_TEXTS = st.one_of(st.sampled_from(["", " ", "Signal failure", "\u202eevil", "@all", "<b>x</b>", "\x0b"]),
                   st.text(max_size=30))
_TIMES = st.one_of(
    st.sampled_from([0, 1, 1_795_593_600, MAX_EPOCH_SECONDS, MAX_EPOCH_SECONDS + 1, 2**63, UINT64_MAX]),
    st.integers(0, UINT64_MAX),
)
_DIRECTIONS = st.one_of(st.none(), st.sampled_from([0, 1, 2, 255]))
_OCCUPANCY = st.one_of(st.none(), st.sampled_from(_members(pb.VehiclePosition.OccupancyStatus)))
_RELATIONSHIPS = st.sampled_from(_members(pb.TripDescriptor.ScheduleRelationship))
_DELAYS = st.one_of(st.none(), st.sampled_from([-(2**31), -1, 0, 1, 2**31 - 1]), st.integers(-(2**31), 2**31 - 1))


@st.composite
def _translated(draw: st.DrawFn, target: pb.TranslatedString) -> None:
    for _ in range(draw(st.integers(0, 3))):
        translation = target.translation.add(text=draw(_TEXTS))
        language = draw(_LANGUAGES)
        if language:
            translation.language = language


@st.composite
def _selector(draw: st.DrawFn) -> pb.EntitySelector:
    chosen = pb.EntitySelector()
    if draw(st.booleans()):
        chosen.route_id = draw(_ROUTES)
    if draw(st.booleans()):
        chosen.stop_id = draw(_STOPS)
    if draw(st.booleans()):
        chosen.trip.trip_id = draw(_TRIPS)
        if draw(st.booleans()):
            chosen.trip.route_id = draw(_ROUTES)
    direction = draw(_DIRECTIONS)
    if direction is not None:
        chosen.direction_id = direction
    if draw(st.booleans()):
        chosen.agency_id = "metro"
    return chosen


@st.composite
def _trip(draw: st.DrawFn, target: pb.TripDescriptor) -> None:
    trip_id = draw(_TRIPS)
    if trip_id:
        target.trip_id = trip_id
    route_id = draw(_ROUTES)
    if route_id:
        target.route_id = route_id
    direction = draw(_DIRECTIONS)
    if direction is not None:
        target.direction_id = direction
    target.schedule_relationship = draw(_RELATIONSHIPS)


@st.composite
def _entity(draw: st.DrawFn) -> pb.FeedEntity:
    entity = pb.FeedEntity(id=draw(_ENTITY_IDS))
    if draw(st.integers(0, 9)) == 0:
        entity.is_deleted = True
    kinds = draw(st.sets(st.sampled_from(["alert", "trip_update", "vehicle"]), max_size=2))
    if "alert" in kinds:
        alert = entity.alert
        alert.SetInParent()
        # Half of them start from a usable core (a header, a line of either network), so that kept, updated and
        # partly bad alerts come up as often as hopeless ones.
        usable = draw(st.booleans())
        if usable:
            alert.header_text.translation.add(text="Signal failure", language="en")
            alert.informed_entity.extend([selector(route_id="L1"), selector(route_id="1")])
        draw(_translated(alert.header_text))
        if draw(st.booleans()):
            draw(_translated(alert.description_text))
        if draw(st.booleans()):
            draw(_translated(alert.url))
        alert.informed_entity.extend(draw(st.lists(_selector(), max_size=3)))
        for _ in range(draw(st.integers(0, 1 if usable else 2))):
            period = alert.active_period.add()
            start, end = draw(_TIMES), draw(_TIMES)
            if start:
                period.start = start
            if end:
                period.end = end
        alert.cause = draw(st.sampled_from(_members(pb.Alert.Cause)))
        alert.effect = draw(st.sampled_from(_members(pb.Alert.Effect)))
        alert.severity_level = draw(st.sampled_from(_members(pb.Alert.SeverityLevel)))
    if "trip_update" in kinds:
        update = entity.trip_update
        draw(_trip(update.trip))
        delay = draw(_DELAYS)
        if delay is not None:
            update.delay = delay
        for sequence in range(draw(st.integers(0, 3))):
            stop_time = update.stop_time_update.add(stop_sequence=sequence)
            arrival, departure = draw(_DELAYS), draw(_DELAYS)
            if arrival is not None:
                stop_time.arrival.delay = arrival
            if departure is not None:
                stop_time.departure.delay = departure
            if draw(st.booleans()):
                stop_time.arrival.time = draw(st.integers(0, 2**63 - 1))
    if "vehicle" in kinds:
        vehicle = entity.vehicle
        vehicle.SetInParent()
        draw(_trip(vehicle.trip))
        occupancy = draw(_OCCUPANCY)
        if occupancy is not None:
            vehicle.occupancy_status = occupancy
        if draw(st.booleans()):
            vehicle.timestamp = draw(_TIMES)
    return entity


def _body(entities: Sequence[pb.FeedEntity], timestamp: int) -> bytes:
    message = feed_message(*entities, timestamp=timestamp or None)
    return message.SerializePartialToString()


def _alert_entities(entities: Sequence[pb.FeedEntity]) -> list[pb.FeedEntity]:
    return [e for e in entities if not e.is_deleted and e.HasField("alert")]


def _skipped_lines(snapshot: FeedSnapshot) -> list[str]:
    return [p for p in snapshot.problems if p.startswith("alert ") and " skipped: " in p]


def _check_snapshot(snapshot: FeedSnapshot, entities: Sequence[pb.FeedEntity], network: Network) -> None:
    """What every successful parse must satisfy, whatever the entities."""
    assert snapshot.timestamp.tzinfo is UTC
    assert snapshot.alerts is not None
    assert snapshot.delays is not None
    assert snapshot.occupancy is not None
    carried = _alert_entities(entities)
    # Every alert entity is either an alert or one "skipped" problem line: none disappears unreported.
    assert len(snapshot.alerts) + len(_skipped_lines(snapshot)) == len(carried), snapshot.problems
    ids = [a.id for a in snapshot.alerts]
    assert len(ids) == len(set(ids))
    named_ids = {e.id for e in carried if e.id}
    assert set(ids) | snapshot.skipped_alert_ids <= named_ids
    # An id carried by an entity that was left out counts as present (kept, never resolved).
    assert named_ids - set(ids) <= snapshot.skipped_alert_ids
    for alert in snapshot.alerts:
        assert alert.header
        assert alert.informed
        for informed in alert.informed:
            assert informed.line_id is None or informed.line_id in network.lines
            assert informed.station_id is None or informed.station_id in network.stations
            assert informed.direction_id in (0, 1, None)
        for period in alert.active_periods:
            for moment in (period.start, period.end):
                assert moment is None or moment.tzinfo is UTC
    for delay in snapshot.delays:
        assert delay.line_id in network.lines
        assert delay.direction_id in (0, 1, None)
        assert delay.max_delay_s >= delay.median_delay_s or delay.trips == 0
    for occupancy in snapshot.occupancy:
        assert occupancy.line_id in network.lines
        assert occupancy.vehicles >= 1
    # The store keeps this snapshot for a 304 to re-apply: it must come back the same.
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


TINY = tiny_network()


@settings(max_examples=300, deadline=None)
@given(st.lists(_entity(), max_size=8), _TIMES)
def test_any_entity_shapes_parse_or_raise_feed_errors(entities: list[pb.FeedEntity], timestamp: int) -> None:
    body = _body(entities, timestamp)
    if timestamp == 0 or timestamp > MAX_EPOCH_SECONDS:  # only the header can sink the whole feed
        with pytest.raises(FeedError) as caught:
            parse_gtfs_rt("rt", body, TINY, carries=ALL, default_language="zh")
        assert caught.value.feed == "rt"
        return
    event(f"{len(_alert_entities(entities))} alert entities")
    snapshot = parse_gtfs_rt("rt", body, TINY, carries=ALL, default_language="zh")  # raises nothing else
    event(f"{len(snapshot.alerts or ())} alerts kept, {len(_skipped_lines(snapshot))} skipped")
    _check_snapshot(snapshot, entities, TINY)


# ------------------------------------------------------------------------------------------------------------
# Through a poll of the real pipeline


def _keep_alert(now: int) -> bytes:
    """The last good state: alert KEEP on line 1."""
    return _body([alert_entity("KEEP", header={"en": "Lift out of order"}, informed=[selector(route_id="1")])], now)


def test_any_entity_shapes_through_a_poll_keep_the_last_good_state(rig: Rig, tmp_path: Path) -> None:
    feed_file = tmp_path / "rt.pb"
    path = rig.write_config(state={"resolve_after_missing": 3})
    text = path.read_text(encoding="utf-8").replace(rig.server.url("/rt.pb"), feed_file.as_uri())
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    feed = config.feeds[0]
    assert feed.url.startswith("file:")

    with asyncio.Runner() as runner:
        context = open_broadcaster(config)  # the broker link is never started: publishing is skipped
        b = runner.run(context.__aenter__())
        try:

            @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(st.lists(_entity(), max_size=6), st.sampled_from(["now", "zero", "millis", "max", "stale"]))
            def poll_once(entities: list[pb.FeedEntity], when: str) -> None:
                now = int(time.time())
                feed_file.write_bytes(_keep_alert(now))
                assert runner.run(b.poll(feed)).ok
                assert b.state.alerts["KEEP"].missing == 0
                before_alerts, before_record = b.state.alerts, b.feeds[feed.name]
                timestamp = {"now": now, "zero": 0, "millis": now * 1000, "max": UINT64_MAX,
                             "stale": now - 86_400}[when]
                body = _body(entities, timestamp)
                feed_file.write_bytes(body)
                outcome = runner.run(b.poll(feed))  # any exception here fails the test
                event(f"poll ok: {outcome.ok}")
                record = b.feeds[feed.name]
                if not outcome.ok:
                    assert when != "now"
                    assert b.state.alerts == before_alerts  # the last good state stays
                    assert record.problems == before_record.problems
                    assert record.last_error
                    return
                assert when == "now"
                snapshot = parse_gtfs_rt(feed.name, body, b.network, carries=frozenset(feed.contains),
                                         default_language=config.network.default_language)
                _check_snapshot(snapshot, entities, b.network)
                assert record.problems == snapshot.problems  # reported, every one of them
                if "KEEP" in snapshot.skipped_alert_ids:
                    assert "KEEP" in b.state.alerts  # a malformed entity is no all-clear
                if not any(a.id == "KEEP" for a in snapshot.alerts or ()):
                    # Missing from one good fetch: counted, not resolved (three are needed).
                    assert "KEEP" in b.state.alerts

            poll_once()
        finally:
            runner.run(context.__aexit__(None, None, None))
