"""The incremental GTFS-RT parse (issue 16, "parse only the trip updates whose bytes changed"): a feed's
`EntityCache` reuses what the previous good body's entities were parsed into, and the result is always the one a
fresh parse gives, snapshot and problems alike, and a body the full parse refuses is refused with the same reason.

Sequences of bodies are built record by record (the header's record, one record per entity) so that the property
test can add, remove, change, reorder and duplicate entities, and also break bodies at the byte level: truncated,
a byte flipped, garbage appended, unknown fields at the top level and inside entities, a second header record.
"""

from __future__ import annotations

import random

import pytest
from google.transit import gtfs_realtime_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rig import Rig, now_s, running
from support.gtfs_rt_builders import T0, alert_entity, feed_bytes, selector, trip_update_entity, vehicle_entity
from support.tiny_network import tiny_network

from broadcaster.errors import FeedError
from broadcaster.feeds.gtfs_rt import EntityCache, parse_gtfs_rt
from broadcaster.feeds.gtfs_rt.incremental import Wants, entity_facts
from broadcaster.model import FeedSnapshot

NETWORK = tiny_network()
ALL = frozenset({"alerts", "trip-updates", "vehicle-positions"})

_IDS = st.sampled_from(["", "A1", "A2", "A3", "T1", "V1", "长"])
_ROUTES = st.sampled_from(["L1", "L2", "X9", ""])
_TRIPS = st.sampled_from(["L1-T0a", "L2-T1a", "ghost", ""])
_DELAYS = st.one_of(st.none(), st.integers(-600, 3600))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _record(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _header(timestamp: int | None = T0, *, differential: bool = False, version: str | None = "2.0") -> bytes:
    header = pb.FeedHeader()
    if version is not None:
        header.gtfs_realtime_version = version
    if timestamp is not None:
        header.timestamp = timestamp
    if differential:
        header.incrementality = pb.FeedHeader.DIFFERENTIAL
    return _record(1, header.SerializePartialToString())


@st.composite
def _entity(draw: st.DrawFn) -> bytes:
    """One entity's record: an alert, a trip update or a vehicle, sometimes deleted or with an unknown field."""
    entity_id = draw(_IDS)
    kind = draw(st.sampled_from(["alert", "trip", "vehicle", "bad alert"]))
    if kind == "alert":
        entity = alert_entity(entity_id, informed=[selector(route_id=draw(_ROUTES)), selector(stop_id="S99")],
                              periods=draw(st.sampled_from([(), [(T0, None)], [(10**12, None)]])))
    elif kind == "bad alert":
        entity = alert_entity(entity_id, header={"en": ""})
    elif kind == "trip":
        entity = trip_update_entity(entity_id, trip_id=draw(_TRIPS), route_id=draw(_ROUTES),
                                    direction_id=draw(st.sampled_from([None, 0, 1, 7])), delay=draw(_DELAYS),
                                    arrival_delays=draw(st.lists(_DELAYS, max_size=2)),
                                    canceled=draw(st.booleans()))
    else:
        entity = vehicle_entity(entity_id, occupancy=draw(st.sampled_from([None, "FULL", "EMPTY", "NO_DATA_AVAILABLE",
                                                                          "STANDING_ROOM_ONLY"])),
                                trip_id=draw(_TRIPS), route_id=draw(_ROUTES))
    if draw(st.integers(0, 9)) == 0:
        entity.is_deleted = True
    payload = entity.SerializePartialToString()
    if draw(st.integers(0, 9)) == 0:
        payload += _record(99, b"unknown inside the entity")
    return _record(2, payload)


# What one step does to the previous body's entity records (the header is drawn anew every time).
_EDITS = st.sampled_from(["add", "remove", "change", "reorder", "duplicate bytes", "duplicate id", "keep"])
# What one step does to the body's bytes after that; most bodies stay well formed.
_BREAKS = st.sampled_from(["none"] * 6 + ["truncate", "flip", "garbage", "unknown top-level", "second header",
                                          "no header", "group", "empty", "html", "bad header"])


def _edit(draw: st.DrawFn, entities: list[bytes], edit: str) -> list[bytes]:
    entities = list(entities)
    index = draw(st.integers(0, max(len(entities) - 1, 0)))
    if edit == "add" or not entities:
        entities.insert(index, draw(_entity()))
    elif edit == "remove":
        del entities[index]
    elif edit == "change":
        entities[index] = draw(_entity())
    elif edit == "reorder":
        random.Random(draw(st.integers(0, 2**16))).shuffle(entities)
    elif edit == "duplicate bytes":
        entities.insert(draw(st.integers(0, len(entities))), entities[index])
    elif edit == "duplicate id":
        entities.append(draw(_entity()))
    return entities


def _break(draw: st.DrawFn, body: bytes, how: str) -> bytes:
    position = draw(st.integers(0, max(len(body) - 1, 0)))
    if how == "truncate":
        return body[:position]
    if how == "flip":
        return body[:position] + bytes([body[position] ^ draw(st.integers(1, 255))]) + body[position + 1:]
    if how == "garbage":
        return body + draw(st.binary(min_size=1, max_size=4))
    if how == "unknown top-level":
        return body + draw(st.sampled_from([b"\x78\x05", _record(15, b"x"), b"\x10\x01"]))
    if how == "second header":
        return body + _header(draw(st.sampled_from([T0 + 5, 0, 10**12])))
    if how == "group":
        return body + b"\x1b\x1c"  # field 3, start group / end group
    if how == "empty":
        return b""
    if how == "html":
        return b"<html><body>502 Bad Gateway</body></html>"
    return body


@st.composite
def _bodies(draw: st.DrawFn) -> list[bytes]:
    """A sequence of feed bodies, each derived from the last well-formed one's entities."""
    entities = draw(st.lists(_entity(), max_size=6))
    bodies: list[bytes] = []
    for step in range(draw(st.integers(1, 6))):
        entities = _edit(draw, entities, draw(_EDITS))
        how = draw(_BREAKS)
        if how == "no header":
            header = b""
        elif how == "bad header":
            header = draw(st.sampled_from([_header(None), _header(differential=True), _header(version=None),
                                           _header(10**12)]))
        else:
            header = _header(T0 + step)
        bodies.append(_break(draw, header + b"".join(entities), how))
    return bodies


def _outcome(body: bytes, kinds: frozenset[str], cache: EntityCache | None) -> FeedSnapshot | tuple[type, str]:
    """The snapshot, or the refusal's class and message."""
    try:
        return parse_gtfs_rt("f", body, NETWORK, carries=kinds, default_language="zh", cache=cache)
    except FeedError as exc:
        return type(exc), str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=_bodies(), carries=st.sets(st.sampled_from(sorted(ALL)), min_size=1))
def test_an_incremental_parse_equals_a_fresh_parse_of_every_body(bodies: list[bytes], carries: set[str]) -> None:
    cache = EntityCache()
    kinds = frozenset(carries)
    for body in bodies:
        fresh = _outcome(body, kinds, None)
        incremental = _outcome(body, kinds, cache)
        assert incremental == fresh
        if isinstance(fresh, FeedSnapshot):
            assert isinstance(incremental, FeedSnapshot)
            assert incremental.problems == fresh.problems  # in the same order, not only the same set


def _trips(count: int, changed: int | None = None) -> list[bytes]:
    return [
        _record(2, trip_update_entity(f"T{i}", trip_id="L1-T0a", delay=60 + (1 if i == changed else 0))
                .SerializeToString())
        for i in range(count)
    ]


def test_the_cache_decodes_only_the_entities_whose_bytes_changed() -> None:
    cache = EntityCache()

    def parse(body: bytes) -> FeedSnapshot:
        return parse_gtfs_rt("f", body, NETWORK, carries=ALL, default_language="zh", cache=cache)

    first = parse(_header(T0) + b"".join(_trips(20)))
    assert cache.decoded == 20
    # The next tick: one trip's delay changed, the header's timestamp moved.
    second = parse(_header(T0 + 30) + b"".join(_trips(20, changed=7)))
    assert cache.decoded == 21
    assert second.delays != first.delays
    # Only the header moved: nothing decoded, and the aggregate itself is the previous body's.
    third = parse(_header(T0 + 45) + b"".join(_trips(20, changed=7)))
    assert cache.decoded == 21
    assert third.delays is second.delays
    assert third.timestamp != second.timestamp
    # A refused body (truncated) leaves the last good body's entities in the cache.
    with pytest.raises(FeedError):
        parse((_header(T0 + 60) + b"".join(_trips(20)))[:-3])
    assert cache.decoded == 21
    parse(_header(T0 + 90) + b"".join(_trips(20, changed=7)))
    assert cache.decoded == 21
    # Only the previous body's entities are kept: the first body's changed trip is decoded again.
    parse(_header(T0 + 120) + b"".join(_trips(20)))
    assert cache.decoded == 22


def test_a_changed_entity_of_the_same_length_is_decoded_again() -> None:
    """The cache tells entities apart by their bytes, not their length or id: a delay moved by one second keeps the
    record's length (and the entity's id), and it is still decoded again and counted."""
    cache = EntityCache()

    def parse(body: bytes) -> FeedSnapshot:
        return parse_gtfs_rt("f", body, NETWORK, carries=ALL, default_language="zh", cache=cache)

    before, after = _trips(3), _trips(3, changed=1)
    assert [len(record) for record in before] == [len(record) for record in after]
    assert before[1] != after[1]
    first = parse(_header(T0) + b"".join(before))
    second = parse(_header(T0 + 30) + b"".join(after))
    assert cache.decoded == 4
    assert second == parse_gtfs_rt("f", _header(T0 + 30) + b"".join(after), NETWORK, carries=ALL,
                                   default_language="zh")
    assert second.delays is not None
    assert first.delays is not None
    assert [d.max_delay_s for d in second.delays] == [61]
    assert [d.max_delay_s for d in first.delays] == [60]


def test_entities_that_say_the_same_share_one_facts_tuple() -> None:
    """A cache keeps every entity's facts for a whole body: equal facts are one object (most vehicles of a line
    and direction say the same), different ones stay apart."""
    vehicles = [vehicle_entity(f"V{i}", occupancy="FULL", trip_id="L1-T0a", route_id="L1") for i in range(3)]
    vehicles.append(vehicle_entity("V9", occupancy="EMPTY", trip_id="L1-T0a", route_id="L1"))
    message = pb.FeedMessage()
    message.entity.extend(vehicles)
    facts = entity_facts(message.entity, NETWORK, Wants(alerts=False, trips=False, vehicles=True))
    assert facts[0] is facts[1] is facts[2]
    assert facts[3] != facts[0]


def test_a_body_that_takes_the_full_parse_leaves_nothing_to_reuse() -> None:
    cache = EntityCache()

    def parse(body: bytes) -> FeedSnapshot:
        return parse_gtfs_rt("f", body, NETWORK, carries=ALL, default_language="zh", cache=cache)

    parse(_header(T0) + b"".join(_trips(5)))
    assert cache.decoded == 5
    # An unknown top-level field: parsed in full (the walk does not split it), and the cache is emptied.
    parse(_header(T0 + 30) + b"".join(_trips(5)) + b"\x78\x05")
    assert cache.decoded == 5
    parse(_header(T0 + 60) + b"".join(_trips(5)))
    assert cache.decoded == 10


async def test_the_poller_decodes_only_what_changed_in_a_feed_between_polls(rig: Rig) -> None:
    """Through the real pipeline: the poller keeps the GTFS-RT feed's cache between polls, the snapshot it commits
    is a fresh parse's, and a body byte for byte the same is still not parsed at all."""
    trips = [trip_update_entity(f"T{i}", route_id="1", delay=60 * i) for i in range(10)]
    alert = alert_entity("A-L2", informed=[selector(route_id="2")])
    rig.serve_rt(alert, *trips, timestamp=now_s() - 5)
    async with running(rig.config()) as b:
        ops = next(feed for feed in b.config.feeds if feed.name == "ops")
        cache = b.poller._parse_caches["ops"]
        assert isinstance(cache, EntityCache)
        assert (await b.poll(ops)).ok
        assert cache.decoded == 11
        trips[3] = trip_update_entity("T3", route_id="1", delay=999)
        body = feed_bytes(alert, *trips, timestamp=now_s())
        rig.server.set_route("/rt.pb", body)
        assert (await b.poll(ops)).ok
        assert cache.decoded == 12
        fresh = parse_gtfs_rt("ops", body, b.poller.network, carries=frozenset(ops.contains),
                              default_language=b.config.network.default_language)
        assert b.poller._snapshots["ops"] == fresh
        assert (await b.poll(ops)).ok  # the same bytes: the poller does not parse them
        assert cache.decoded == 12
