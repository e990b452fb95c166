"""Static GTFS loader: the operator's GTFS folder or zip in, the `Network` out."""

from __future__ import annotations

import csv
import io
import logging
import string
import sys
import zipfile
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO, TYPE_CHECKING

from broadcaster.errors import NetworkDataError
from broadcaster.model import Line, LocalizedText, Network, Station, normalise_language
from broadcaster.text import clean_name

if TYPE_CHECKING:
    from collections.abc import Iterator
    from collections.abc import Set as AbstractSet

logger = logging.getLogger(__name__)

#: Translatable fields the network uses, as (table_name, field_name) in translations.txt.
_TRANSLATED_FIELDS = frozenset(
    {("routes", "route_long_name"), ("routes", "route_short_name"), ("stops", "stop_name")}
)


def load_network(source: Path, default_language: str = "zh") -> Network:
    """Read the operator's static GTFS into a `Network`.

    routes.txt and stops.txt are required; translations.txt (current or older Google format), trips.txt and
    stop_times.txt are optional. stop_times.txt is streamed: memory grows with the number of trips and
    distinct stop patterns, not with its rows, as long as the file keeps each trip's rows together (as
    agencies' exports do; scattered trips still load, at the cost of holding their stops).

    Args:
        source: A GTFS folder, or a `.zip` holding the files at its root or in one subfolder.
        default_language: The language of the names in routes.txt and stops.txt.

    Returns:
        The network. `line_stations` has an entry for every line: per direction, the stations of the most
        frequent stop pattern (ties go to the longest); empty when trips or stop times are missing.

    Raises:
        NetworkDataError: The source does not exist or cannot be read, a required file or column is
            missing, or a row is malformed; `.file` and `.line` say where.
    """
    source = Path(source)
    with ExitStack() as stack:
        gtfs = _Gtfs(source, stack)
        routes = _read_routes(gtfs)
        stops = _read_stops(gtfs)
        translations = _read_translations(gtfs, default_language)
        trip_to_line, trip_direction = _read_trips(gtfs, routes)
        patterns = _read_patterns(gtfs, trip_to_line, stops.stop_to_station)

    lines = {
        route.id: Line(
            id=route.id,
            short_name=clean_name(route.short_name),
            names=translations.names("routes", route.name_field, route.id, route.name, default_language),
            color=route.color,
        )
        for route in routes.values()
    }
    stations = {
        station.id: Station(
            id=station.id,
            names=translations.names("stops", "stop_name", station.id, station.name, default_language),
            lat=station.lat,
            lon=station.lon,
        )
        for station in stops.stations.values()
    }
    best = _most_frequent(patterns, trip_to_line, trip_direction)
    line_stations = {
        line_id: MappingProxyType(dict(sorted(best.get(line_id, {}).items()))) for line_id in lines
    }
    logger.debug(
        "loaded %s: %d lines, %d stations, %d stops, %d trips",
        source,
        len(lines),
        len(stations),
        len(stops.stop_to_station),
        len(trip_to_line),
    )
    return Network(
        lines=MappingProxyType(lines),
        stations=MappingProxyType(stations),
        line_stations=MappingProxyType(line_stations),
        stop_to_station=MappingProxyType(stops.stop_to_station),
        trip_to_line=MappingProxyType(trip_to_line),
        trip_direction=MappingProxyType(trip_direction),
    )


# ------------------------------------------------------------------------------------------------------------
# Reading files


class _Gtfs:
    """The files of one feed, in a folder or a zip, each opened for streaming when asked for."""

    def __init__(self, source: Path, stack: ExitStack) -> None:
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._members: frozenset[str] = frozenset()
        self._prefix = ""
        if source.is_dir():
            return
        if not source.is_file():
            raise NetworkDataError(source, "no such GTFS folder or zip file")
        try:
            self._zip = stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, OSError) as exc:
            raise NetworkDataError(source, f"not a readable zip file: {exc}") from exc
        self._members = frozenset(self._zip.namelist())
        self._prefix = _feed_folder(self._members)

    @contextmanager
    def table(self, name: str) -> Iterator[_Table]:
        """A required file; NetworkDataError if the feed lacks it."""
        with self.optional_table(name) as table:
            if table is None:
                raise NetworkDataError(self.source, "required file is missing", file=name)
            yield table

    @contextmanager
    def optional_table(self, name: str) -> Iterator[_Table | None]:
        text = self._open(name)
        if text is None:
            yield None
            return
        with text:
            yield _Table(self, name, text)

    def _open(self, name: str) -> IO[str] | None:
        try:
            if self._zip is None:
                path = self.source / name
                if not path.is_file():
                    return None
                return open(path, encoding="utf-8-sig", newline="")  # closed by the caller's `with`
            member = self._prefix + name
            if member not in self._members:
                return None
            return io.TextIOWrapper(self._zip.open(member), encoding="utf-8-sig", newline="")
        # NotImplementedError: a compression method zipfile lacks (Deflate64 from some Windows tools).
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            raise NetworkDataError(self.source, f"cannot open: {exc}", file=name) from exc


def _feed_folder(members: frozenset[str]) -> str:
    """The zip folder holding the feed: the root, else the shallowest folder with routes.txt or stops.txt."""
    folders = {
        path.parent
        for path in map(PurePosixPath, members)
        if path.name in ("routes.txt", "stops.txt") and "__MACOSX" not in path.parts
    }
    if not folders:
        return ""
    best = min(folders, key=lambda folder: (len(folder.parts), str(folder)))
    return f"{best}/" if best.parts else ""


#: What reading a file can raise: bad CSV, bytes that are not UTF-8, I/O, a corrupt zip member.
_READ_ERRORS = (csv.Error, UnicodeDecodeError, OSError, zipfile.BadZipFile)


class _Table:
    """One GTFS file being read: where its columns are, and its rows."""

    def __init__(self, gtfs: _Gtfs, name: str, text: IO[str]) -> None:
        self.name = name
        self._source = gtfs.source
        self._reader = csv.reader(text)
        try:
            header = next(self._reader, [])
        except _READ_ERRORS as exc:
            raise self.error(f"unreadable: {exc}") from exc
        self.columns: dict[str, int] = {}
        for index, column in enumerate(header):
            self.columns.setdefault(column.strip(), index)
        self._width = len(header)

    @property
    def line(self) -> int:
        """The CSV line of the row just read (of its last line, for a quoted value spanning lines)."""
        return self._reader.line_num

    def require(self, *columns: str) -> tuple[int, ...]:
        """Positions of required columns; NetworkDataError naming line 1 if any is missing."""
        missing = [column for column in columns if column not in self.columns]
        if missing:
            raise self.error(f"missing required column(s): {', '.join(missing)}", line=1)
        return tuple(self.columns[column] for column in columns)

    def error(self, message: str, line: int | None = None) -> NetworkDataError:
        return NetworkDataError(
            self._source, message, file=self.name, line=self.line if line is None else line
        )

    def rows(self) -> Iterator[list[str]]:
        """Data rows, padded to the header's width so every column index is valid; blank lines skipped."""
        width = self._width
        try:
            for row in self._reader:
                if len(row) < width:
                    if not any(cell.strip() for cell in row):
                        continue
                    row.extend([""] * (width - len(row)))
                yield row
        except _READ_ERRORS as exc:
            raise self.error(f"unreadable: {exc}") from exc

    def cell(self, row: list[str], column: str) -> str:
        """The stripped value of an optional column, "" when the file lacks it."""
        index = self.columns.get(column)
        return "" if index is None else row[index].strip()


# ------------------------------------------------------------------------------------------------------------
# routes.txt, stops.txt, translations.txt


@dataclass(frozen=True, slots=True)
class _Route:
    id: str
    short_name: str
    name: str
    name_field: str  # the routes.txt field `name` came from, for translations
    color: str | None


def _read_routes(gtfs: _Gtfs) -> dict[str, _Route]:
    routes: dict[str, _Route] = {}
    with gtfs.table("routes.txt") as table:
        (id_col,) = table.require("route_id")
        for row in table.rows():
            route_id = row[id_col].strip()
            if not route_id:
                raise table.error("empty route_id")
            if route_id in routes:
                continue
            short_name = table.cell(row, "route_short_name")
            long_name = table.cell(row, "route_long_name")
            routes[route_id] = _Route(
                id=route_id,
                short_name=short_name,
                name=long_name or short_name,
                name_field="route_long_name" if long_name else "route_short_name",
                color=_color(table.cell(row, "route_color")),
            )
    return routes


def _color(value: str) -> str | None:
    """The colour as upper-case RRGGBB; None when empty or malformed, since it is only decoration."""
    value = value.removeprefix("#").upper()
    return value if len(value) == 6 and all(c in string.hexdigits for c in value) else None


@dataclass(frozen=True, slots=True)
class _StationRow:
    id: str
    name: str
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class _Stops:
    stations: dict[str, _StationRow]
    stop_to_station: dict[str, str]


def _read_stops(gtfs: _Gtfs) -> _Stops:
    stations: dict[str, _StationRow] = {}
    parents: dict[str, str] = {}  # every stop id -> its parent_station ("" for none)
    with gtfs.table("stops.txt") as table:
        (id_col,) = table.require("stop_id")
        for row in table.rows():
            stop_id = row[id_col].strip()
            if not stop_id:
                raise table.error("empty stop_id")
            if stop_id in parents:
                continue
            parent = table.cell(row, "parent_station")
            location_type = _location_type(table, table.cell(row, "location_type"))
            parents[stop_id] = parent
            if location_type == 1 or (location_type == 0 and not parent):
                stations[stop_id] = _StationRow(
                    id=stop_id,
                    name=table.cell(row, "stop_name"),
                    lat=_coordinate(table, "stop_lat", table.cell(row, "stop_lat")),
                    lon=_coordinate(table, "stop_lon", table.cell(row, "stop_lon")),
                )
    return _Stops(stations, _map_to_stations(parents, stations.keys()))


def _location_type(table: _Table, value: str) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        raise table.error(f"location_type {value!r} is not a whole number") from None


def _coordinate(table: _Table, column: str, value: str) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        raise table.error(f"{column} {value!r} is not a number") from None


def _map_to_stations(parents: dict[str, str], stations: AbstractSet[str]) -> dict[str, str]:
    """Follow parent_station chains (boarding area -> platform -> station) up to a station.

    Stops whose chain ends elsewhere (a missing parent, an entrance without a station, a cycle) stay unmapped,
    so stop times naming them are skipped.
    """
    stop_to_station = {station_id: station_id for station_id in parents if station_id in stations}
    for stop_id in parents:
        chain: list[str] = []
        current = stop_id
        while current not in stop_to_station:
            parent = parents.get(current, "")
            if not parent or current in chain:
                break
            chain.append(current)
            current = parent
        else:
            for stop in chain:
                stop_to_station[stop] = stop_to_station[current]
    return stop_to_station


@dataclass(slots=True)
class _Translations:
    """translations.txt, kept only for the fields the network uses."""

    by_record: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    by_value: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    by_text: dict[str, dict[str, str]] = field(default_factory=dict)  # older format: original text -> texts

    def names(self, table: str, column: str, record_id: str, original: str, language: str) -> LocalizedText:
        """The original in the feed's language, overlaid with translations, the most specific last; each name
        neutralised like any feed text (broadcaster/text.py)."""
        texts = {language: original} if original else {}
        if original:
            texts.update(self.by_text.get(original, {}))
            texts.update(self.by_value.get((table, column, original), {}))
        texts.update(self.by_record.get((table, column, record_id), {}))
        cleaned = {lang: clean_name(text) for lang, text in texts.items()}
        return LocalizedText(MappingProxyType({lang: text for lang, text in cleaned.items() if text}))


def _read_translations(gtfs: _Gtfs, default_language: str) -> _Translations:
    translations = _Translations()
    with gtfs.optional_table("translations.txt") as table:
        if table is None:
            return translations
        if "trans_id" in table.columns and "table_name" not in table.columns:
            # The older Google transit format: the original text stands for every field holding it.
            trans_id, lang, text = table.require("trans_id", "lang", "translation")
            for row in table.rows():
                language = normalise_language(row[lang], default_language)
                translations.by_text.setdefault(row[trans_id].strip(), {})[language] = row[text].strip()
            return translations
        table_col, field_col, lang, text = table.require(
            "table_name", "field_name", "language", "translation"
        )
        for row in table.rows():
            key = (row[table_col].strip(), row[field_col].strip())
            if key not in _TRANSLATED_FIELDS:
                continue
            language = normalise_language(row[lang], default_language)
            record_id = table.cell(row, "record_id")
            value = table.cell(row, "field_value")
            if record_id:
                translations.by_record.setdefault((*key, record_id), {})[language] = row[text].strip()
            elif value:
                translations.by_value.setdefault((*key, value), {})[language] = row[text].strip()
    return translations


# ------------------------------------------------------------------------------------------------------------
# trips.txt and stop_times.txt


def _read_trips(gtfs: _Gtfs, routes: dict[str, _Route]) -> tuple[dict[str, str], dict[str, int]]:
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
class _Patterns:
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


def _read_patterns(gtfs: _Gtfs, trip_to_line: dict[str, str], stop_to_station: dict[str, str]) -> _Patterns:
    patterns = _Patterns()
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


def _most_frequent(
    patterns: _Patterns, trip_to_line: dict[str, str], trip_direction: dict[str, int]
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
