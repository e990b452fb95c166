"""A hand-made two-line network for tests that need a `Network` without reading static GTFS.

    L1  S01 ─ S02 ─ S03        direction 0 left to right, 1 back
    L2        S02 ─ S04

Every station has platform stops "<station>-P1" (direction 0) and "<station>-P2" (direction 1).
Trips: "L1-T0a", "L1-T0b", "L1-T0c" run L1 direction 0, "L1-T1a" L1 direction 1, "L2-T0a" L2 direction 0,
"L2-T1a" L2 direction 1.
"""

from __future__ import annotations

from types import MappingProxyType

from broadcaster.model import Line, LocalizedText, Network, Station

STATION_NAMES = {
    "S01": ("人民广场", "People's Square"),
    "S02": ("南京西路", "West Nanjing Road"),
    "S03": ("静安寺", "Jing'an Temple"),
    "S04": ("汉中路", "Hanzhong Road"),
}

TRIPS = {
    "L1-T0a": ("L1", 0),
    "L1-T0b": ("L1", 0),
    "L1-T0c": ("L1", 0),
    "L1-T1a": ("L1", 1),
    "L2-T0a": ("L2", 0),
    "L2-T1a": ("L2", 1),
}


def tiny_network() -> Network:
    """The network drawn in this module's docstring."""
    lines = {
        "L1": Line("L1", "1", LocalizedText.of(zh="1号线", en="Line 1"), "E4002B"),
        "L2": Line("L2", "2", LocalizedText.of(zh="2号线", en="Line 2"), "97D700"),
    }
    stations = {sid: Station(sid, LocalizedText.of(zh=zh, en=en)) for sid, (zh, en) in STATION_NAMES.items()}
    stop_to_station = {sid: sid for sid in stations}
    for sid in stations:
        stop_to_station[f"{sid}-P1"] = sid
        stop_to_station[f"{sid}-P2"] = sid
    line_stations = {
        "L1": MappingProxyType({0: ("S01", "S02", "S03"), 1: ("S03", "S02", "S01")}),
        "L2": MappingProxyType({0: ("S02", "S04"), 1: ("S04", "S02")}),
    }
    return Network(
        lines=MappingProxyType(lines),
        stations=MappingProxyType(stations),
        line_stations=MappingProxyType(line_stations),
        stop_to_station=MappingProxyType(stop_to_station),
        trip_to_line=MappingProxyType({trip: line for trip, (line, _) in TRIPS.items()}),
        trip_direction=MappingProxyType({trip: direction for trip, (_, direction) in TRIPS.items()}),
    )
