"""Which stations each line serves, in order and per direction: trips.txt and stop_times.txt (streamed) reduced to
distinct stop patterns, and per line and direction the pattern most trips follow."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broadcaster.feeds.static_gtfs.files import GtfsFiles
    from broadcaster.feeds.static_gtfs.names import Route

logger = logging.getLogger(__name__)


def read_trips(gtfs: GtfsFiles, routes: dict[str, Route]) -> tuple[dict[str, str], dict[str, int]]:
    trip_to_line: dict[str, str] = {}
    trip_direction: dict[str, int] = {}
    with gtfs.optional_table("trips.txt") as table:
        if table is None:
            return trip_to_line, trip_direction
        route_col, trip_col = table.require("route_id", "trip_id")
        for row in table.rows():
            trip_id = sys.intern(row[trip_col].strip())
            route = routes.get(row[route_col].strip())
            if not trip_id:
                raise table.error("empty trip_id")
            if route is None:
                raise table.error(f"trip {trip_id!r} names unknown route_id {row[route_col].strip()!r}")
            if trip_id in trip_to_line:
                continue
            trip_to_line[trip_id] = route.id
            direction = table.cell(row, "direction_id")
            if direction in ("0", "1"):
                trip_direction[trip_id] = int(direction)
            elif direction:
                raise table.error(f"direction_id {direction!r} is neither 0 nor 1")
    return trip_to_line, trip_direction


@dataclass(slots=True)
class Patterns:
    """Distinct stop patterns and which trip follows which.

    A pattern is kept as two interned tuples, stations and stop_sequence values, so that thousands of trips
    share one copy; the sequence values are kept only to merge a trip whose rows are scattered in the file.
    """

    ids: dict[tuple[tuple[str, ...], tuple[int, ...]], int] = field(default_factory=dict)
    patterns: list[tuple[tuple[str, ...], tuple[int, ...]]] = field(default_factory=list)
    trip_pattern: dict[str, int] = field(default_factory=dict)
    _station_tuples: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    _sequence_tuples: dict[tuple[int, ...], tuple[int, ...]] = field(default_factory=dict)
    _scattered: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def add(self, trip_id: str, stops: list[tuple[int, str]]) -> None:
        """Record the (stop_sequence, station) rows of one run of a trip's rows in the file."""
        if not stops:
            return
        trip_id = sys.intern(trip_id)
        if trip_id in self._scattered:
            self._scattered[trip_id].extend(stops)
        elif trip_id in self.trip_pattern:
            stations, sequences = self.patterns[self.trip_pattern.pop(trip_id)]
            self._scattered[trip_id] = [*zip(sequences, stations, strict=True), *stops]
        else:
            self.trip_pattern[trip_id] = self._intern(stops)

    def finish(self) -> None:
        for trip_id, stops in self._scattered.items():
            self.trip_pattern[trip_id] = self._intern(stops)
        self._scattered.clear()
        self._station_tuples.clear()
        self._sequence_tuples.clear()

    def _intern(self, stops: list[tuple[int, str]]) -> int:
        stops.sort()
        stations = tuple(station for _, station in stops)
        sequences = tuple(sequence for sequence, _ in stops)
        key = (
            self._station_tuples.setdefault(stations, stations),
            self._sequence_tuples.setdefault(sequences, sequences),
        )
        pattern_id = self.ids.setdefault(key, len(self.patterns))
        if pattern_id == len(self.patterns):
            self.patterns.append(key)
        return pattern_id


def read_patterns(gtfs: GtfsFiles, trip_to_line: dict[str, str], stop_to_station: dict[str, str]) -> Patterns:
    patterns = Patterns()
    skipped = 0
    with gtfs.optional_table("stop_times.txt") as table:
        if table is None or not trip_to_line:
            return patterns
        trip_col, sequence_col, stop_col = table.require("trip_id", "stop_sequence", "stop_id")
        trip_id: str | None = None
        known = False
        stops: list[tuple[int, str]] = []
        for row in table.rows():
            row_trip = row[trip_col].strip()
            if row_trip != trip_id:
                if known and trip_id is not None:
                    patterns.add(trip_id, stops)
                trip_id, known, stops = row_trip, row_trip in trip_to_line, []
            if not known:
                continue
            station = stop_to_station.get(row[stop_col].strip())
            if station is None:
                skipped += 1
                continue
            try:
                sequence = int(row[sequence_col])
            except ValueError:
                raise table.error(f"stop_sequence {row[sequence_col]!r} is not a whole number") from None
            stops.append((sequence, station))
        if known and trip_id is not None:
            patterns.add(trip_id, stops)
    patterns.finish()
    if skipped:
        logger.debug("%s: skipped %d stop times naming unknown stops", gtfs.source, skipped)
    return patterns


def most_frequent(
    patterns: Patterns, trip_to_line: dict[str, str], trip_direction: dict[str, int]
) -> dict[str, dict[int, tuple[str, ...]]]:
    """Per line and direction, the station sequence most trips follow; ties go to the longest.

    Trips without a direction_id count as direction 0.
    """
    trips_per_pattern = Counter(
        (trip_to_line[trip_id], trip_direction.get(trip_id, 0), pattern_id)
        for trip_id, pattern_id in patterns.trip_pattern.items()
    )
    tallies: dict[tuple[str, int], Counter[tuple[str, ...]]] = {}
    for (line_id, direction, pattern_id), trips in trips_per_pattern.items():
        stations = _without_repeats(patterns.patterns[pattern_id][0])
        tallies.setdefault((line_id, direction), Counter())[stations] += trips
    best: dict[str, dict[int, tuple[str, ...]]] = {}
    for (line_id, direction), tally in tallies.items():
        stations = max(tally, key=lambda sequence: (tally[sequence], len(sequence)))
        best.setdefault(line_id, {})[direction] = stations
    return best


def _without_repeats(stations: tuple[str, ...]) -> tuple[str, ...]:
    """Drop consecutive repeats: two platforms of one station in a row are one stop for passengers."""
    return tuple(station for i, station in enumerate(stations) if i == 0 or stations[i - 1] != station)
