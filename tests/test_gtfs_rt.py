"""GTFS-Realtime parsing: header checks, alerts, trip delays and vehicle occupancy against a tiny network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from google.transit import gtfs_realtime_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st
from support.gtfs_rt_builders import (
    T0,
    alert_entity,
    feed_bytes,
    feed_message,
    selector,
    trip_update_entity,
    vehicle_entity,
)
from support.tiny_network import tiny_network

from broadcaster.errors import FeedError, FeedFormatError
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.model import (
    ActivePeriod,
    FeedSnapshot,
    InformedEntity,
    LineDelay,
    LineOccupancy,
    LocalizedText,
    Occupancy,
    Severity,
)

ALL = frozenset({"alerts", "trip-updates", "vehicle-positions"})
NETWORK = tiny_network()
AT_T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def parse_body(body: bytes, carries: frozenset[str] = ALL, default_language: str = "zh") -> FeedSnapshot:
    return parse_gtfs_rt("metro-rt", body, NETWORK, carries=carries, default_language=default_language)


def parse(*entities: pb.FeedEntity, carries: frozenset[str] = ALL, default_language: str = "zh") -> FeedSnapshot:
    return parse_body(feed_bytes(*entities), carries, default_language)


def format_error(body: bytes) -> FeedFormatError:
    with pytest.raises(FeedFormatError) as caught:
        parse_body(body)
    assert caught.value.feed == "metro-rt"
    return caught.value


# ----------------------------------------------------------------------------------------------------------
# Header


def test_header_timestamp_becomes_aware_utc() -> None:
    snapshot = parse()
    assert snapshot.feed == "metro-rt"
    assert snapshot.timestamp == AT_T0
    assert snapshot.timestamp.tzinfo is UTC


def test_only_the_carried_kinds_are_filled() -> None:
    entities = (
        alert_entity("A1"),
        trip_update_entity("TU1", trip_id="L1-T0a", delay=60),
        vehicle_entity("V1", trip_id="L1-T0a", occupancy="FULL"),
    )
    alerts_only = parse(*entities, carries=frozenset({"alerts"}))
    assert alerts_only.alerts is not None
    assert len(alerts_only.alerts) == 1
    assert alerts_only.delays is None
    assert alerts_only.occupancy is None
    trips_only = parse(*entities, carries=frozenset({"trip-updates"}))
    assert trips_only.alerts is None
    assert trips_only.delays is not None
    assert len(trips_only.delays) == 1
    assert trips_only.occupancy is None


def test_a_carried_kind_with_no_entities_is_an_empty_tuple_not_none() -> None:
    snapshot = parse()
    assert snapshot.alerts == ()
    assert snapshot.delays == ()
    assert snapshot.occupancy == ()
    assert snapshot.crowding is None
    assert snapshot.problems == ()


def test_unknown_kind_in_carries_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown GTFS-RT entity kinds"):
        parse(carries=frozenset({"alerts", "stops"}))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "empty body", id="empty"),
        pytest.param(
            b"<html><body>502 Bad Gateway</body></html>",
            "not a GTFS-Realtime protobuf (starts with '<html')",
            id="html",
        ),
        pytest.param(
            b"\n<!DOCTYPE html>\n<html>",
            "not a GTFS-Realtime protobuf (starts with '<!DOCTYPE')",
            id="doctype",
        ),
        pytest.param(b'{"header": {}}', "not a GTFS-Realtime protobuf (starts with '{\"header\":')", id="json"),
        pytest.param(
            b"\xff\xfe\x00\x13\x37random",
            "not a GTFS-Realtime protobuf (the decoder found corrupt wire format)",
            id="random-bytes",
        ),
        pytest.param(
            feed_bytes(alert_entity("A1")) + b"\x12",  # an entity tag with no length after it
            "not a GTFS-Realtime protobuf (the decoder found corrupt wire format)",
            id="truncated-inside-entity",
        ),
        pytest.param(
            pb.FeedMessage(entity=[pb.FeedEntity(id="A1")]).SerializePartialToString(),
            "not a GTFS-Realtime feed: the FeedMessage has no header",
            id="no-header",
        ),
        pytest.param(feed_bytes(version=None), "header.gtfs_realtime_version is missing", id="no-version"),
        pytest.param(
            feed_bytes(differential=True),
            "DIFFERENTIAL feeds are not supported: serve a FULL_DATASET feed",
            id="differential",
        ),
        pytest.param(feed_bytes(timestamp=None), "header.timestamp is missing or 0", id="no-timestamp"),
        pytest.param(feed_bytes(timestamp=0), "header.timestamp is missing or 0", id="zero-timestamp"),
        pytest.param(
            feed_bytes(timestamp=T0 * 1000),
            "header.timestamp 1795593600000 looks like milliseconds; GTFS-Realtime wants POSIX seconds",
            id="milliseconds",
        ),
    ],
)
def test_unusable_bodies_raise_format_errors(body: bytes, reason: str) -> None:
    assert format_error(body).reason == reason


def test_a_valid_feed_may_start_like_text() -> None:
    # A 60-byte header serialises as b"\n<...": the body must not be mistaken for an HTML page.
    message = feed_message(alert_entity("A1"))
    message.header.feed_version = "v" * (60 - message.header.ByteSize() - 2)  # tag and length: 2 bytes
    assert message.header.ByteSize() == 60
    body = message.SerializeToString()
    assert body.startswith(b"\n<")
    snapshot = parse_body(body)
    assert snapshot.alerts is not None
    assert [alert.id for alert in snapshot.alerts] == ["A1"]


def test_truncation_at_an_entity_boundary_parses_with_fewer_alerts() -> None:
    entities = [alert_entity(f"A{n}") for n in range(3)]
    whole = feed_bytes(*entities)
    two = feed_bytes(*entities[:2])
    # Protobuf cannot tell a feed cut after a whole entity from a shorter feed: it parses, one alert short.
    assert whole.startswith(two)
    assert len(whole) > len(two)
    snapshot = parse_body(whole[: len(two)])
    assert snapshot.alerts is not None
    assert [alert.id for alert in snapshot.alerts] == ["A0", "A1"]
    with pytest.raises(FeedFormatError):
        parse_body(whole[: len(two) + 5])


# ----------------------------------------------------------------------------------------------------------
# Alerts


def test_alert_fields_are_converted() -> None:
    entity = alert_entity(
        "A1",
        header=[("zh-Hans-CN", "1号线信号故障"), ("en-GB", "Line 1: signal failure")],
        description=[("", "人民广场站信号故障，列车延误。"), ("EN", "Trains are delayed.")],
        url={"en": "https://example.org/a1"},
        cause="TECHNICAL_PROBLEM",
        effect="SIGNIFICANT_DELAYS",
        severity="SEVERE",
        periods=[(T0, T0 + 3600)],
    )
    snapshot = parse(entity, default_language="zh")
    assert snapshot.alerts is not None
    (alert,) = snapshot.alerts
    assert alert.id == "A1"
    assert alert.cause == "TECHNICAL_PROBLEM"
    assert alert.effect == "SIGNIFICANT_DELAYS"
    assert alert.severity is Severity.SEVERE
    assert alert.header.as_dict() == {"zh": "1号线信号故障", "en": "Line 1: signal failure"}
    assert alert.description.as_dict() == {
        "zh": "人民广场站信号故障，列车延误。",
        "en": "Trains are delayed.",
    }
    assert alert.url.as_dict() == {"en": "https://example.org/a1"}
    assert alert.informed == (InformedEntity(line_id="L1"),)
    assert alert.active_periods == (ActivePeriod(AT_T0, AT_T0 + timedelta(hours=1)),)
    assert snapshot.skipped_alert_ids == frozenset()
    assert snapshot.problems == ()


def test_untagged_translations_take_the_default_language() -> None:
    snapshot = parse(alert_entity("A1", header=[("", "Signal failure")]), default_language="en")
    assert snapshot.alerts is not None
    assert snapshot.alerts[0].header.as_dict() == {"en": "Signal failure"}


def test_first_translation_wins_among_tags_with_the_same_primary_language() -> None:
    entity = alert_entity("A1", header=[("zh-Hans", "信号故障"), ("zh-Hant", "信號故障"), ("zh_TW", "x")])
    snapshot = parse(entity)
    assert snapshot.alerts is not None
    assert snapshot.alerts[0].header == LocalizedText(MappingProxyType({"zh": "信号故障"}))


def test_blank_translations_are_dropped() -> None:
    entity = alert_entity("A1", header={"zh": "  ", "en": " Signal failure\n"}, description={"en": ""})
    snapshot = parse(entity)
    assert snapshot.alerts is not None
    assert snapshot.alerts[0].header.as_dict() == {"en": "Signal failure"}
    assert not snapshot.alerts[0].description


def test_enums_default_to_unknown() -> None:
    snapshot = parse(alert_entity("A1"))
    assert snapshot.alerts is not None
    alert = snapshot.alerts[0]
    assert (alert.cause, alert.effect, alert.severity) == (
        "UNKNOWN_CAUSE",
        "UNKNOWN_EFFECT",
        Severity.UNKNOWN_SEVERITY,
    )
    assert alert.active_periods == ()


@pytest.mark.parametrize(
    ("cause", "effect", "severity"),
    [
        ("STRIKE", "NO_SERVICE", Severity.WARNING),
        ("MEDICAL_EMERGENCY", "REDUCED_SERVICE", Severity.INFO),
        ("OTHER_CAUSE", "ACCESSIBILITY_ISSUE", Severity.UNKNOWN_SEVERITY),
    ],
)
def test_enum_names_are_kept(cause: str, effect: str, severity: Severity) -> None:
    snapshot = parse(alert_entity("A1", cause=cause, effect=effect, severity=severity.name))
    assert snapshot.alerts is not None
    alert = snapshot.alerts[0]
    assert (alert.cause, alert.effect, alert.severity) == (cause, effect, severity)


def test_informed_entities_are_mapped_onto_lines_and_stations() -> None:
    entity = alert_entity(
        "A1",
        informed=[
            selector(route_id="L1"),
            selector(stop_id="S02-P2"),  # a platform lands on its station
            selector(stop_id="S04"),  # a station maps to itself
            selector(route_id="L2", direction_id=1),
            selector(route_id="L1", stop_id="S03-P1"),
            selector(trip_id="L1-T0a"),  # a trip alone finds its line in the static GTFS
            selector(trip_id="added-trip", trip_route_id="L2"),
            selector(route_id="L1"),  # a repeat is kept once
        ],
    )
    snapshot = parse(entity)
    assert snapshot.alerts is not None
    alert = snapshot.alerts[0]
    assert alert.informed == (
        InformedEntity(line_id="L1"),
        InformedEntity(station_id="S02"),
        InformedEntity(station_id="S04"),
        InformedEntity(line_id="L2", direction_id=1),
        InformedEntity(line_id="L1", station_id="S03"),
        InformedEntity(line_id="L1", trip_id="L1-T0a"),
        InformedEntity(line_id="L2", trip_id="added-trip"),
    )
    assert alert.line_ids == ("L1", "L2")
    assert alert.station_ids == ("S02", "S04", "S03")
    assert snapshot.problems == ()


def test_selectors_naming_unknown_ids_are_dropped_and_reported() -> None:
    entity = alert_entity(
        "A1",
        informed=[
            selector(route_id="L1"),
            selector(route_id="L9"),
            selector(route_id="L1", stop_id="S99"),  # an AND: one unknown id drops the whole selector
        ],
    )
    snapshot = parse(entity)
    assert snapshot.alerts is not None
    assert snapshot.alerts[0].informed == (InformedEntity(line_id="L1"),)
    assert snapshot.skipped_alert_ids == frozenset()
    assert snapshot.problems == (
        "alert 'A1': dropped informed entities naming unknown ids (route_id 'L9', stop_id 'S99')",
    )


def test_active_periods_with_open_ends() -> None:
    entity = alert_entity("A1", periods=[(T0, T0 + 600), (None, T0 - 3600), (T0 + 7200, 0)])
    snapshot = parse(entity)
    assert snapshot.alerts is not None
    alert = snapshot.alerts[0]
    assert alert.active_periods == (
        ActivePeriod(AT_T0, AT_T0 + timedelta(minutes=10)),
        ActivePeriod(None, AT_T0 - timedelta(hours=1)),
        ActivePeriod(AT_T0 + timedelta(hours=2), None),
    )
    assert alert.is_active(AT_T0)
    assert not alert.is_active(AT_T0 + timedelta(hours=1))
    assert alert.is_active(AT_T0 + timedelta(days=30))


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        pytest.param(alert_entity("bad", informed=[]), "alert 'bad' skipped: no informed entity", id="no-selector"),
        pytest.param(
            alert_entity("bad", informed=[selector(route_id="L9"), selector(stop_id="X1")]),
            "alert 'bad' skipped: no informed entity names a known line or station (route_id 'L9', stop_id 'X1')",
            id="unknown-ids",
        ),
        pytest.param(
            alert_entity("bad", informed=[selector(trip_id="ghost")]),
            "alert 'bad' skipped: no informed entity names a known line or station (trip_id 'ghost')",
            id="unknown-trip",
        ),
        pytest.param(
            alert_entity("bad", informed=[selector(agency_id="metro")]),
            "alert 'bad' skipped: no informed entity names a known line or station "
            "(only agency or route type selectors)",
            id="agency-only",
        ),
        pytest.param(alert_entity("bad", header={}), "alert 'bad' skipped: no header text", id="no-header"),
        pytest.param(
            alert_entity("bad", header={"en": " "}, description={"en": "Details"}),
            "alert 'bad' skipped: no header text",
            id="blank-header",
        ),
        pytest.param(
            alert_entity("bad", periods=[(T0 * 1000, None)]),
            "alert 'bad' skipped: active_period[0].start 1795593600000 looks like milliseconds",
            id="ms-period",
        ),
    ],
)
def test_invalid_alerts_are_skipped_and_their_ids_kept(bad: pb.FeedEntity, problem: str) -> None:
    snapshot = parse(alert_entity("good-1"), bad, alert_entity("good-2"))
    assert snapshot.alerts is not None
    assert [alert.id for alert in snapshot.alerts] == ["good-1", "good-2"]
    assert snapshot.skipped_alert_ids == frozenset({"bad"})
    assert snapshot.problems == (problem,)


def test_alert_entities_without_an_id_or_with_a_repeated_id_are_skipped() -> None:
    snapshot = parse(alert_entity("A1"), alert_entity(""), alert_entity("A1", header={"en": "Other"}))
    assert snapshot.alerts is not None
    assert [alert.header.get("en") for alert in snapshot.alerts] == ["Signal failure"]
    assert snapshot.skipped_alert_ids == frozenset({"A1"})
    assert snapshot.problems == (
        "alert entity #1 skipped: it has no id",
        "alert 'A1' skipped: a second entity with the same id",
    )


def test_deleted_entities_are_simply_absent() -> None:
    snapshot = parse(
        alert_entity("A1"),
        alert_entity("A2", deleted=True),
        alert_entity("A3", informed=[], deleted=True),  # invalid, but deleted: not a problem
    )
    assert snapshot.alerts is not None
    assert [alert.id for alert in snapshot.alerts] == ["A1"]
    assert snapshot.skipped_alert_ids == frozenset()
    assert snapshot.problems == ()


def test_invalid_utf8_in_a_text_is_replaced_not_fatal() -> None:
    body = feed_bytes(alert_entity("A1", header={"en": "Signal XXfailure"}))
    broken = body.replace(b"XX", b"\xff\xfe")
    snapshot = parse_body(broken)
    assert snapshot.alerts is not None
    assert snapshot.alerts[0].header.get("en") == "Signal \ufffd\ufffdfailure"


# ----------------------------------------------------------------------------------------------------------
# Trip updates


def test_trip_delays_are_aggregated_per_line_and_direction() -> None:
    snapshot = parse(
        trip_update_entity("1", trip_id="L1-T0a", delay=60),
        trip_update_entity("2", trip_id="L1-T0b", arrival_delays=[None, 120, 300]),  # first stop without delay
        trip_update_entity("3", trip_id="L1-T0c", departure_delays=[600]),
        trip_update_entity("4", trip_id="L1-T1a", canceled=True),
        trip_update_entity("5", route_id="L1", direction_id=1, delay=-30),
        trip_update_entity("6", trip_id="L2-T0a", arrival_delays=[100]),
        trip_update_entity("7", trip_id="added-1", route_id="L2", direction_id=0, delay=200),
        trip_update_entity("8", trip_id="L2-T1a", canceled=True),
        trip_update_entity("9", route_id="L2", delay=45),  # no direction anywhere
    )
    assert snapshot.delays == (
        LineDelay("L1", 0, trips=3, median_delay_s=120, max_delay_s=600),
        LineDelay("L1", 1, trips=1, median_delay_s=-30, max_delay_s=-30, cancelled_trips=1),
        LineDelay("L2", 0, trips=2, median_delay_s=150, max_delay_s=200),
        LineDelay("L2", 1, trips=0, median_delay_s=0, max_delay_s=0, cancelled_trips=1),
        LineDelay("L2", None, trips=1, median_delay_s=45, max_delay_s=45),
    )
    assert snapshot.problems == ()


def test_direction_id_in_the_feed_beats_the_static_trip() -> None:
    snapshot = parse(trip_update_entity("1", trip_id="L1-T0a", direction_id=1, delay=90))
    assert snapshot.delays == (LineDelay("L1", 1, trips=1, median_delay_s=90, max_delay_s=90),)


def test_unknown_trips_make_one_summary_problem() -> None:
    snapshot = parse(
        trip_update_entity("1", trip_id="L1-T0a", delay=60),
        *(trip_update_entity(f"x{n}", trip_id=f"ghost-{n}", delay=60) for n in range(4)),
        trip_update_entity("r", trip_id="T-r", route_id="L9", delay=60),
        trip_update_entity("nodelay", trip_id="L1-T0b"),
    )
    assert snapshot.delays == (LineDelay("L1", 0, trips=1, median_delay_s=60, max_delay_s=60),)
    assert snapshot.problems == (
        "trip updates: 5 of 7 trips name no known line (trip 'ghost-0', trip 'ghost-1', trip 'ghost-2' and 2 more)",
        "trip updates: 1 of 7 trips carry no delay",
    )


# ----------------------------------------------------------------------------------------------------------
# Vehicle occupancy


def test_vehicle_occupancy_is_the_median_rank_per_line_and_direction() -> None:
    snapshot = parse(
        vehicle_entity("1", trip_id="L1-T0a", occupancy="EMPTY"),
        vehicle_entity("2", trip_id="L1-T0b", occupancy="STANDING_ROOM_ONLY"),
        vehicle_entity("3", trip_id="L1-T0c", occupancy="FULL"),
        vehicle_entity("4", trip_id="L1-T0a", occupancy="NO_DATA_AVAILABLE"),
        vehicle_entity("5", trip_id="L1-T0a", occupancy="NOT_BOARDABLE"),
        vehicle_entity("6", trip_id="L1-T0a", occupancy=None),
        vehicle_entity("7", route_id="L1", direction_id=1, occupancy="MANY_SEATS_AVAILABLE"),
        vehicle_entity("8", trip_id="L1-T1a", occupancy="CRUSHED_STANDING_ROOM_ONLY"),
        vehicle_entity("9", trip_id="L2-T0a", occupancy="NO_DATA_AVAILABLE"),
    )
    assert snapshot.occupancy == (
        LineOccupancy("L1", 0, Occupancy.STANDING_ROOM_ONLY, vehicles=3),
        # With an even count the more crowded middle level is told.
        LineOccupancy("L1", 1, Occupancy.CRUSHED_STANDING_ROOM_ONLY, vehicles=2),
    )
    assert snapshot.problems == ()


def test_vehicles_on_unknown_lines_make_one_summary_problem() -> None:
    snapshot = parse(
        vehicle_entity("1", trip_id="ghost", occupancy="FULL"),
        vehicle_entity("2", route_id="L9", occupancy="FULL"),
        vehicle_entity("3", occupancy="FULL"),
    )
    assert snapshot.occupancy == ()
    assert snapshot.problems == (
        "vehicle positions: 3 vehicles name no known line (trip 'ghost', route 'L9', no trip or route id)",
    )


# ----------------------------------------------------------------------------------------------------------
# Robustness and speed


def _rich_feed() -> bytes:
    return feed_bytes(
        alert_entity(
            "A1",
            header={"zh": "信号故障", "en": "Signal failure"},
            description={"en": "Trains are delayed."},
            informed=[selector(route_id="L1"), selector(stop_id="S02-P1"), selector(trip_id="L1-T0a")],
            periods=[(T0, T0 + 3600)],
            cause="TECHNICAL_PROBLEM",
            effect="SIGNIFICANT_DELAYS",
            severity="WARNING",
        ),
        alert_entity("A2", informed=[selector(route_id="L2", direction_id=0)]),
        trip_update_entity("T1", trip_id="L1-T0a", arrival_delays=[30, 60]),
        trip_update_entity("T2", trip_id="L2-T1a", canceled=True),
        vehicle_entity("V1", trip_id="L1-T0b", occupancy="FULL"),
    )


RICH_FEED = _rich_feed()
_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(RICH_FEED) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(RICH_FEED) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(RICH_FEED)), st.integers(0, 255)),
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_feeds_parse_or_raise_feed_errors(mutations: list[tuple[str, int, int]]) -> None:
    body = bytearray(RICH_FEED)
    for operation, index, value in mutations:
        index = min(index, len(body))
        if operation == "flip" and index < len(body):
            body[index] ^= value
        elif operation == "truncate":
            del body[index:]
        elif operation == "insert":
            body.insert(index, value)
    try:
        snapshot = parse_body(bytes(body))
    except FeedError:
        return
    assert isinstance(snapshot, FeedSnapshot)
    assert snapshot.timestamp.tzinfo is UTC


def test_a_big_feed_parses_whole() -> None:
    """About 3 MB and 8,000 entities, like a large city's combined feed (docs/design.md, "Measured facts")."""
    trips = ["L1-T0a", "L1-T0b", "L1-T1a", "L2-T0a", "L2-T1a"]
    entities = []
    for n in range(6_000):
        entity = trip_update_entity(
            f"tu{n}", trip_id=trips[n % 5], arrival_delays=[n % 600] * 12, departure_delays=[n % 300] * 12
        )
        for index, stop_time in enumerate(entity.trip_update.stop_time_update):
            stop_time.stop_id = f"S0{index % 4 + 1}-P1"
            stop_time.arrival.time = T0 + 90 * index
            stop_time.departure.time = T0 + 90 * index + 30
        entities.append(entity)
    for n in range(1_700):
        entity = vehicle_entity(f"v{n}", trip_id=trips[n % 5], occupancy=Occupancy(n % 8).name)
        entity.vehicle.position.latitude = 31.23
        entity.vehicle.position.longitude = 121.47
        entities.append(entity)
    for n in range(300):
        entities.append(
            alert_entity(
                f"a{n}",
                header={"zh": "信号故障" * 5, "en": "Signal failure at People's Square" * 2},
                description={"zh": "描述" * 50, "en": "details " * 40},
                informed=[selector(route_id="L1"), selector(stop_id="S01-P1")],
                periods=[(T0, T0 + 3600)],
            )
        )
    body = feed_bytes(*entities)
    assert 2_500_000 < len(body) < 3_500_000

    # How fast is the bench's business (`python -m bench`, its parse stage); here: all of it, whole.
    snapshot = parse_body(body)
    assert snapshot.alerts is not None
    assert len(snapshot.alerts) == 300
    assert snapshot.delays is not None
    assert sum(delay.trips for delay in snapshot.delays) == 6_000
    assert not snapshot.problems
