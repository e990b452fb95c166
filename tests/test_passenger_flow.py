"""The passenger-flow JSON format: good documents, skipped records, rejected envelopes, the committed schema."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support.tiny_network import tiny_network

from broadcaster.errors import FeedFormatError
from broadcaster.feeds.passenger_flow import (
    PassengerFlowDocument,
    StationReading,
    _plain_reading,
    parse_passenger_flow,
    passenger_flow_json_schema,
)
from broadcaster.model import CrowdingReading, FeedSnapshot, Occupancy

ROOT = Path(__file__).resolve().parent.parent
NETWORK = tiny_network()
SCHEMA = "broadcaster.passenger-flow/1"
#: 2026-11-25T08:00:00+08:00
AT = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
GOOD = {"station_id": "S01", "level": "EMPTY"}


def parse(document: object) -> FeedSnapshot:
    return parse_passenger_flow("flow", orjson.dumps(document), NETWORK)


def document(*stations: object, **envelope: object) -> dict[str, object]:
    return {"schema": SCHEMA, "timestamp": "2026-11-25T08:00:00+08:00", "stations": list(stations), **envelope}


def test_a_good_document() -> None:
    snapshot = parse(
        document(
            {"station_id": "S01", "level": "STANDING_ROOM_ONLY", "percentage": 85},
            {
                "station_id": "S02-P1",
                "level": "CRUSHED_STANDING_ROOM_ONLY",
                "percentage": 132,
                "line_id": "L1",
                "direction_id": 0,
                "observed_at": "2026-11-25T07:59:30+08:00",
            },
            {"station_id": "S03", "level": "NO_DATA_AVAILABLE", "observed_at": 1795564740, "percentage": None},
        )
    )
    assert snapshot.feed == "flow"
    assert snapshot.timestamp == AT
    assert snapshot.crowding == (
        CrowdingReading("S01", Occupancy.STANDING_ROOM_ONLY, AT, percentage=85),
        CrowdingReading(
            "S02",
            Occupancy.CRUSHED_STANDING_ROOM_ONLY,
            AT - timedelta(seconds=30),
            percentage=132,
            line_id="L1",
            direction_id=0,
        ),
        CrowdingReading("S03", Occupancy.NO_DATA_AVAILABLE, AT - timedelta(minutes=1)),
    )
    assert snapshot.problems == ()
    assert (snapshot.alerts, snapshot.delays, snapshot.occupancy) == (None, None, None)


def test_times_are_aware_utc_in_every_accepted_form() -> None:
    forms = [1795564800, "2026-11-25T00:00:00Z", "2026-11-25t00:00:00z", "2026-11-25 08:00:00.000+08:00"]
    for form in forms:
        snapshot = parse(document(GOOD, timestamp=form))
        assert snapshot.timestamp == AT
        assert snapshot.timestamp.tzinfo is UTC
        assert snapshot.crowding is not None
        assert snapshot.crowding[0].observed_at.tzinfo is UTC


def test_platform_ids_map_to_their_station() -> None:
    snapshot = parse(document({"station_id": "S04-P2", "level": "FULL"}, {"station_id": "S04", "level": "FULL"}))
    assert snapshot.crowding is not None
    assert [reading.station_id for reading in snapshot.crowding] == ["S04", "S04"]


def test_minor_versions_and_unknown_keys_are_accepted() -> None:
    snapshot = parse(
        document(
            {**GOOD, "queue_length_m": 12, "sensor": {"kind": "camera"}},
            schema="broadcaster.passenger-flow/1.3",
            producer="afc-gateway 4.2",
        )
    )
    assert snapshot.crowding == (CrowdingReading("S01", Occupancy.EMPTY, AT),)
    assert snapshot.problems == ()


def test_an_empty_station_list_is_a_valid_picture() -> None:
    snapshot = parse(document())
    assert snapshot.crowding == ()
    assert snapshot.problems == ()


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"station_id": "S01", "level": "BUSY"}, "stations[1].level: 'BUSY' is not an OccupancyStatus name"),
        ({"station_id": "S01", "level": 3}, "stations[1].level: expected an OccupancyStatus name, got 3"),
        ({"station_id": "S01", "level": "full"}, "stations[1].level: 'full' is not an OccupancyStatus name"),
        ({"station_id": "S01"}, "stations[1].level: is required"),
        ({"level": "FULL"}, "stations[1].station_id: is required"),
        ({"station_id": 17, "level": "FULL"}, "stations[1].station_id: expected a string, got 17"),
        ({"station_id": "", "level": "FULL"}, "stations[1].station_id: must not be empty"),
        (
            {"station_id": "S99", "level": "FULL"},
            "stations[1].station_id: 'S99' is not a station or stop of the network",
        ),
        ({**GOOD, "percentage": 85.5}, "stations[1].percentage: expected an integer, got 85.5"),
        ({**GOOD, "percentage": "85"}, "stations[1].percentage: expected an integer, got '85'"),
        ({**GOOD, "percentage": True}, "stations[1].percentage: expected an integer, got true"),
        ({**GOOD, "percentage": 201}, "stations[1].percentage: 201 is above 200"),
        ({**GOOD, "percentage": -1}, "stations[1].percentage: -1 is below 0"),
        ({**GOOD, "line_id": "L9"}, "stations[1].line_id: 'L9' is not a line of the network"),
        ({**GOOD, "line_id": "L1", "direction_id": 2}, "stations[1].direction_id: 2 is above 1"),
        ({**GOOD, "direction_id": 1}, "stations[1]: direction_id is given without line_id"),
        (
            {**GOOD, "observed_at": "2026-11-25T08:00:00"},
            "stations[1].observed_at: '2026-11-25T08:00:00' is not an RFC 3339 timestamp with a UTC offset",
        ),
        (
            {**GOOD, "observed_at": "2026-02-30T08:00:00Z"},
            "stations[1].observed_at: '2026-02-30T08:00:00Z' is not a valid date and time",
        ),
        (
            {**GOOD, "observed_at": 1795593600000},
            "stations[1].observed_at: 1795593600000 looks like milliseconds; use epoch seconds",
        ),
        (
            {**GOOD, "observed_at": 1795593600.5},
            "stations[1].observed_at: expected an RFC 3339 string or integer epoch seconds, got 1795593600.5",
        ),
        ("S01", "stations[1]: expected an object, got 'S01'"),
        (None, "stations[1]: expected an object, got null"),
    ],
)
def test_bad_records_are_skipped_with_a_precise_problem(record: object, problem: str) -> None:
    snapshot = parse(document(GOOD, record, {"station_id": "S02", "level": "FULL"}))
    assert snapshot.crowding is not None
    assert [reading.station_id for reading in snapshot.crowding] == ["S01", "S02"]
    # A record whose station id is readable is named by it too, so the operator need not count records.
    named = record.get("station_id") if isinstance(record, dict) else None
    if isinstance(named, str) and named and not problem.startswith("stations[1].station_id"):
        problem += f" (station {named!r})"
    assert snapshot.problems == (problem,)


def test_a_record_with_several_errors_makes_one_problem_line() -> None:
    snapshot = parse(document({"station_id": "S01", "level": "BUSY", "percentage": 300}))
    assert snapshot.crowding == ()
    assert snapshot.problems == (
        "stations[0].level: 'BUSY' is not an OccupancyStatus name; stations[0].percentage: 300 is above 200"
        " (station 'S01')",
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"<html><body>504 Gateway Timeout</body></html>", "not JSON (starts with '<html')"),
        (b"[]", "the document must be a JSON object, got []"),
        (
            orjson.dumps(document(schema="transit.crowding/1")),
            "schema: expected 'broadcaster.passenger-flow/1', got 'transit.crowding/1'",
        ),
        (
            orjson.dumps(document(schema="broadcaster.passenger-flow/2")),
            "schema: major version 2 is not supported; this broadcaster reads 'broadcaster.passenger-flow/1'",
        ),
        (orjson.dumps(document(schema=1)), "schema: expected a string, got 1"),
        (orjson.dumps({"timestamp": 1795593600, "stations": []}), "schema: is required"),
        (orjson.dumps({"schema": SCHEMA, "stations": []}), "timestamp: is required"),
        (
            orjson.dumps(document(timestamp=1795593600000)),
            "timestamp: 1795593600000 looks like milliseconds; use epoch seconds",
        ),
        (
            orjson.dumps(document(timestamp="2026-11-25 08:00")),
            "timestamp: '2026-11-25 08:00' is not an RFC 3339 timestamp with a UTC offset",
        ),
        (orjson.dumps(document(timestamp=-5)), "timestamp: -5 is before 1970"),
        (
            orjson.dumps(document(timestamp=None)),
            "timestamp: expected an RFC 3339 string or integer epoch seconds, got null",
        ),
        (orjson.dumps(document(stations={"S01": "FULL"})), 'stations: expected a list, got {"S01":"FULL"}'),
        (orjson.dumps({"schema": SCHEMA, "timestamp": 1795593600}), "stations: is required"),
        (
            orjson.dumps({"schema": "x", "stations": 5}),
            "schema: expected 'broadcaster.passenger-flow/1', got 'x'; timestamp: is required; "
            "stations: expected a list, got 5",
        ),
    ],
)
def test_a_bad_envelope_rejects_the_document(body: bytes, reason: str) -> None:
    with pytest.raises(FeedFormatError) as caught:
        parse_passenger_flow("flow", body, NETWORK)
    assert caught.value.feed == "flow"
    assert caught.value.reason == reason


def test_broken_json_is_rejected_with_the_decoder_message() -> None:
    with pytest.raises(FeedFormatError) as caught:
        parse_passenger_flow("flow", b'{"schema": ', NETWORK)
    assert caught.value.reason.startswith("not JSON: ")
    assert "line 1 column 12" in caught.value.reason


def test_committed_json_schema_matches_the_models() -> None:
    committed = json.loads((ROOT / "docs" / "schemas" / "passenger-flow-v1.json").read_text(encoding="utf-8"))
    assert committed == passenger_flow_json_schema(), (
        "docs/schemas/passenger-flow-v1.json is out of date; regenerate it with\n"
        "python -c 'import json; from broadcaster.feeds.passenger_flow import passenger_flow_json_schema as s; "
        "print(json.dumps(s(), indent=2, ensure_ascii=False))' > docs/schemas/passenger-flow-v1.json"
    )


def test_the_examples_in_the_operator_docs_are_valid() -> None:
    text = (ROOT / "docs" / "feeds.md").read_text(encoding="utf-8")
    examples = [block for block in re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL) if SCHEMA in block]
    assert examples
    for example in examples:
        PassengerFlowDocument.model_validate_json(example)
        snapshot = parse_passenger_flow("docs", example.encode(), NETWORK)
        assert snapshot.problems == ()


# -- property: structurally mutated documents --------------------------------------------------------------------

RICH_DOCUMENT = document(
    {"station_id": "S01", "level": "EMPTY", "percentage": 12, "observed_at": "2026-11-25T07:59:00+08:00"},
    {"station_id": "S02-P1", "level": "FULL", "line_id": "L1", "direction_id": 0},
    {"station_id": "S02", "level": "STANDING_ROOM_ONLY", "percentage": 95},
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place in a JSON value: dictionary keys and list indexes, outermost first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_mutated_documents_parse_or_raise_feed_errors(data: st.DataObject) -> None:
    """Any value replaced, any key dropped: a snapshot (maybe with problems) or a FeedFormatError, nothing else."""
    doc = json.loads(json.dumps(RICH_DOCUMENT))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = data.draw(_json_values)
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json_values)
        if not isinstance(doc, dict | list):
            break
    try:
        # The standard library writes what orjson cannot (integers past 64 bits, Infinity): feeds may too.
        snapshot = parse_passenger_flow("flow", json.dumps(doc).encode(), NETWORK)
    except FeedFormatError:
        return
    assert snapshot.crowding is not None
    assert all(reading.station_id in NETWORK.stations for reading in snapshot.crowding)
    assert snapshot.timestamp.tzinfo is not None


_FIELD_VALUES: dict[str, st.SearchStrategy[object]] = {
    "station_id": st.sampled_from(["S01", "P01a", "", " ", "nowhere", 1, None, ["S01"]]),
    "level": st.sampled_from(["EMPTY", "FULL", "NO_DATA_AVAILABLE", "full", "BUSY", "", 3, None, True]),
    "percentage": st.sampled_from([0, 28, 200, 201, -1, True, False, 28.0, "28", None]),
    "observed_at": st.sampled_from([0, 1796314346, 10**11, 10**11 + 1, -5, True, 1.5, None, "",
                                    "2026-11-25T08:00:00+08:00", "2026-11-25t00:00:00z", "2026-11-25 08:00:00Z",
                                    "2026-11-25T08:00:00", "2026-13-45T08:00:00Z", "yesterday", ["x"]]),
    "line_id": st.sampled_from(["L1", "L9", "", 1, None, {"id": "L1"}]),
    "direction_id": st.sampled_from([0, 1, 2, -1, True, False, 0.0, "0", None]),
}


@st.composite
def _records(draw: st.DrawFn) -> object:
    """A station record, valid or not in every way a field can be (or not a record at all)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, "S01", 1, ["S01"]]))
    fields = draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), unique=True))
    record = {name: draw(_FIELD_VALUES[name]) for name in fields}
    if draw(st.booleans()):
        record["extra"] = draw(st.sampled_from([1, "x", None]))
    return record


@settings(max_examples=1000, deadline=None, database=None)
@given(_records())
def test_the_fast_path_reads_exactly_what_the_model_accepts(record: object) -> None:
    """Plainly valid records skip pydantic: the fast path must accept exactly what `StationReading` accepts, with the
    same values, and leave everything else to it (which words the problem)."""
    fast = _plain_reading(record, {})
    try:
        model = StationReading.model_validate(record)
    except ValidationError:
        assert fast is None
        return
    expected = (model.station_id, model.level, model.percentage, model.observed_at, model.line_id, model.direction_id)
    assert fast is None or fast == expected
    # The fast path gives up only on what a JSON document can hold but it does not expect.
    if isinstance(record, dict) and all(type(record.get(k)) in (str, int, type(None)) for k in _FIELD_VALUES):
        assert fast == expected


def test_a_document_full_of_plain_records_reads_as_the_model_reads_it() -> None:
    """Through the whole parse: readings sharing an observed_at (memoised within the document) keep their own
    values, and a bad record among them is still worded by the model."""
    records = [
        {"station_id": "S01", "level": "FULL", "percentage": 99, "observed_at": 1796314346},
        {"station_id": "S02", "level": "EMPTY", "observed_at": 1796314346, "line_id": "L1", "direction_id": 1},
        {"station_id": "S01", "level": "BUSY", "observed_at": 1796314346},
        {"station_id": "S02", "level": "FEW_SEATS_AVAILABLE", "observed_at": "2026-11-25T08:00:00+08:00"},
    ]
    snapshot = parse(document(*records))
    assert snapshot.crowding == (
        CrowdingReading("S01", Occupancy.FULL, datetime.fromtimestamp(1796314346, UTC), 99),
        CrowdingReading("S02", Occupancy.EMPTY, datetime.fromtimestamp(1796314346, UTC), None, "L1", 1),
        CrowdingReading("S02", Occupancy.FEW_SEATS_AVAILABLE, AT),
    )
    assert snapshot.problems == ("stations[2].level: 'BUSY' is not an OccupancyStatus name (station 'S01')",)
