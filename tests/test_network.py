"""Tests for the static GTFS loader and the example network shipped in config/network."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.errors import NetworkDataError
from broadcaster.feeds.network import load_network
from broadcaster.model import Network

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "network"

ROUTES = "route_id,route_short_name,route_long_name,route_type,route_color\nA,A,Alpha Line,1,#ff0000\n"
STOPS = (
    "stop_id,stop_name,stop_lat,stop_lon,location_type,parent_station\n"
    "P1,Park,1.0,1.0,1,\n"
    "P1-a,Park,1.0,1.0,0,P1\n"
    "P1-a-front,Park,1.0,1.0,4,P1-a\n"
    "P1-exit,Park,1.0,1.0,2,P1\n"
    "M2,Market,1.0,1.1,,\n"
    "H3,Harbour,1.0,1.2,0,\n"
    "Q4,Quay,1.0,1.3,0,\n"
)


def write_feed(folder: Path, **files: str) -> Path:
    """Write GTFS files given as `routes="..."` (the .txt is added) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def trips_and_times(*trips: tuple[str, int, str]) -> dict[str, str]:
    """trips.txt and stop_times.txt for route A: (trip_id, direction_id, "stop stop ...") per trip."""
    trip_rows = "".join(f"A,WK,{trip_id},{direction}\n" for trip_id, direction, _ in trips)
    time_rows = "".join(
        f"{trip_id},{sequence},{stop}\n"
        for trip_id, _, stops in trips
        for sequence, stop in enumerate(stops.split(), start=1)
    )
    return {
        "trips": "route_id,service_id,trip_id,direction_id\n" + trip_rows,
        "stop_times": "trip_id,stop_sequence,stop_id\n" + time_rows,
    }


@pytest.fixture(scope="module")
def example() -> Network:
    return load_network(EXAMPLE)


def test_example_lines(example: Network) -> None:
    assert list(example.lines) == ["1", "2", "3"]
    line = example.lines["1"]
    assert line.names.get("zh") == "1号线"
    assert line.names.get("en") == "Line 1"
    assert line.short_name == "1"
    assert line.color == "E4002B"


def test_example_stations(example: Network) -> None:
    assert len(example.stations) == 18
    square = example.stations["S04"]
    assert square.names.get("zh") == "人民广场"
    assert square.names.get("en") == "People's Square"
    assert square.lat is not None
    assert square.lon is not None
    assert example.stations["S06"].names.as_dict() == {"zh": "火车站", "en": "Railway Station"}


def test_example_line_stations_in_order(example: Network) -> None:
    east = ("S01", "S02", "S03", "S04", "S05", "S06", "S07", "S08")
    assert example.line_stations["1"][0] == east
    assert example.line_stations["1"][1] == east[::-1]
    assert example.line_stations["2"][0] == ("S09", "S10", "S11", "S04", "S12", "S13", "S14")
    assert example.line_stations["3"][1] == ("S18", "S06", "S17", "S13", "S16", "S15")
    assert example.stations_of("1") == east


def test_example_interchanges(example: Network) -> None:
    assert example.lines_at("S04") == ("1", "2")
    assert example.lines_at("S06") == ("1", "3")
    assert example.lines_at("S13") == ("2", "3")
    assert example.lines_at("S01") == ("1",)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["1", "2", "3", "10"]),
                       st.dictionaries(st.sampled_from([0, 1]), st.lists(st.sampled_from(["S1", "S2", "S3", "S4"])))))
def test_lines_at_lists_every_line_serving_a_station_in_line_order(
    line_stations: dict[str, dict[int, list[str]]],
) -> None:
    """`lines_at` answers from an index built on first use: the same answers as scanning every line, for any
    station, twice (the second time from the index), including stations no line serves."""
    network = Network(lines={}, stations={}, line_stations={line: {d: tuple(s) for d, s in by.items()}
                                                             for line, by in line_stations.items()},
                      stop_to_station={}, trip_to_line={})
    for _ in range(2):
        for station in ("S1", "S2", "S3", "S4", "S9"):
            expected = tuple(line for line, by in line_stations.items() if any(station in s for s in by.values()))
            assert network.lines_at(station) == expected


def test_example_platforms_and_trips(example: Network) -> None:
    assert example.station_of("S04-2A") == "S04"
    assert example.station_of("S04") == "S04"
    assert example.station_of("nowhere") is None
    assert example.trip_to_line["2-1-01"] == "2"
    assert example.trip_direction["2-1-01"] == 1
    assert example.trip_direction["3-0-02"] == 0


@pytest.mark.parametrize("folder", ["", "gtfs/"], ids=["root", "subfolder"])
def test_zip_reads_like_the_folder(tmp_path: Path, example: Network, folder: str) -> None:
    archive = tmp_path / "network.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if folder:
            zf.writestr(f"__MACOSX/{folder}._routes.txt", b"\x00\x05\x16\x07")
        for path in sorted(EXAMPLE.glob("*.txt")):
            zf.write(path, folder + path.name)
    assert load_network(archive) == example


def test_old_style_translations_and_bom(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        translations=(
            "trans_id,lang,translation\nAlpha Line,zh-Hans,阿尔法线\nPark,ZH_cn,公园\nPark,fr,Parc\n"
        ),
    )
    (feed / "routes.txt").write_text(ROUTES, encoding="utf-8-sig")
    network = load_network(feed, default_language="en")
    assert network.lines["A"].names.as_dict() == {"en": "Alpha Line", "zh": "阿尔法线"}
    assert network.lines["A"].color == "FF0000"
    assert network.stations["P1"].names.as_dict() == {"en": "Park", "zh": "公园", "fr": "Parc"}
    assert network.stations["M2"].names.as_dict() == {"en": "Market"}


def test_current_translations_by_record_beat_by_value(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        translations=(
            "table_name,field_name,language,translation,record_id,record_sub_id,field_value\n"
            "stops,stop_name,en,Park (any),,,公园\n"
            "stops,stop_name,zh-Hant,公園,P1,,\n"
            "stops,stop_name,zh-Hans,公园,,,Park\n"
            "routes,route_long_name,zh,阿尔法线,A,,\n"
            "trips,trip_headsign,zh,公园,,,Park\n"
        ),
    )
    network = load_network(feed, default_language="en")
    assert network.stations["P1"].names.as_dict() == {"en": "Park", "zh": "公園"}
    assert network.lines["A"].names.get("zh") == "阿尔法线"


def test_stations_and_stop_mapping(tmp_path: Path) -> None:
    network = load_network(write_feed(tmp_path, routes=ROUTES, stops=STOPS))
    assert list(network.stations) == ["P1", "M2", "H3", "Q4"]
    assert network.station_of("P1-a") == "P1"
    assert network.station_of("P1-a-front") == "P1"
    assert network.station_of("P1-exit") == "P1"
    assert network.station_of("M2") == "M2"
    # Without trips.txt and stop_times.txt every line is there, with no stations.
    assert dict(network.line_stations) == {"A": {}}
    assert dict(network.trip_to_line) == {}


def test_most_frequent_pattern_wins_over_short_turns(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        **trips_and_times(
            ("short-1", 0, "P1-a M2"),
            ("full-1", 0, "P1-a-front P1-a M2 H3 Q4"),
            ("full-2", 0, "P1 M2 H3 Q4"),
            ("short-2", 1, "H3 M2"),
            ("long", 1, "Q4 H3 M2 P1"),
            ("unknown-stop", 1, "Q4 H3 nowhere M2"),
        ),
    )
    network = load_network(feed)
    assert network.line_stations["A"][0] == ("P1", "M2", "H3", "Q4")
    # One trip each: the tie goes to the longest pattern.
    assert network.line_stations["A"][1] == ("Q4", "H3", "M2", "P1")
    assert network.trip_to_line["short-1"] == "A"
    assert network.trip_direction["long"] == 1


def test_stop_times_out_of_order(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        trips="route_id,service_id,trip_id,direction_id\nA,WK,t1,0\nA,WK,t2,0\nA,WK,t3,0\n",
        stop_times=(
            "trip_id,stop_sequence,stop_id\n"
            "t1,30,Q4\nt1,10,P1-a\n"
            "t2,1,P1-a\nt2,2,M2\n"
            "t1,20,H3\n"
            "t3,1,P1-a\nt3,2,M2\n"
            "not-a-trip,1,P1\n"
        ),
    )
    assert load_network(feed).line_stations["A"][0] == ("P1", "M2")
    feed.joinpath("trips.txt").write_text("route_id,trip_id,direction_id\nA,t1,0\nA,t2,0\n")
    assert load_network(feed).line_stations["A"][0] == ("P1", "H3", "Q4")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(NetworkDataError) as caught:
        load_network(tmp_path / "absent.zip")
    assert caught.value.source == str(tmp_path / "absent.zip")
    assert caught.value.file is None


def test_not_a_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "network.zip"
    bogus.write_text("routes")
    with pytest.raises(NetworkDataError, match="zip"):
        load_network(bogus)


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_missing_routes(tmp_path: Path, as_zip: bool) -> None:
    feed = write_feed(tmp_path / "feed", stops=STOPS)
    source = feed
    if as_zip:
        source = tmp_path / "feed.zip"
        with zipfile.ZipFile(source, "w") as zf:
            zf.write(feed / "stops.txt", "stops.txt")
    with pytest.raises(NetworkDataError) as caught:
        load_network(source)
    assert caught.value.file == "routes.txt"
    assert caught.value.line is None


def test_missing_required_column(tmp_path: Path) -> None:
    feed = write_feed(tmp_path, routes=ROUTES, stops="id,stop_name\nP1,Park\n")
    with pytest.raises(NetworkDataError, match="stop_id") as caught:
        load_network(feed)
    assert (caught.value.file, caught.value.line) == ("stops.txt", 1)
    assert "stops.txt:1" in str(caught.value)


def test_empty_required_file(tmp_path: Path) -> None:
    feed = write_feed(tmp_path, routes="", stops=STOPS)
    with pytest.raises(NetworkDataError, match="route_id") as caught:
        load_network(feed)
    assert (caught.value.file, caught.value.line) == ("routes.txt", 1)


def test_trip_with_unknown_route(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        trips="route_id,service_id,trip_id,direction_id\nA,WK,t1,0\n\nB,WK,t2,1\n",
    )
    with pytest.raises(NetworkDataError, match="'B'") as caught:
        load_network(feed)
    assert (caught.value.file, caught.value.line) == ("trips.txt", 4)


def test_bad_stop_sequence_names_the_line(tmp_path: Path) -> None:
    feed = write_feed(
        tmp_path,
        routes=ROUTES,
        stops=STOPS,
        trips="route_id,trip_id\nA,t1\n",
        stop_times="trip_id,stop_sequence,stop_id\nt1,1,P1\nt1,two,M2\n",
    )
    with pytest.raises(NetworkDataError, match="stop_sequence") as caught:
        load_network(feed)
    assert (caught.value.file, caught.value.line) == ("stop_times.txt", 3)


def test_text_that_is_not_utf8(tmp_path: Path) -> None:
    feed = write_feed(tmp_path, routes=ROUTES)
    (feed / "stops.txt").write_bytes("stop_id,stop_name\nP1,公园\n".encode("gb18030"))
    with pytest.raises(NetworkDataError, match="unreadable") as caught:
        load_network(feed)
    assert caught.value.file == "stops.txt"
