"""The names in a static GTFS feed: lines from routes.txt, stations from stops.txt (each stop mapped up to its
station), and their translations from translations.txt."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from broadcaster.model import LocalizedText, normalise_language
from broadcaster.text import clean_name

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from broadcaster.feeds.static_gtfs.files import GtfsFiles, Table

#: Translatable fields the network uses, as (table_name, field_name) in translations.txt.
_TRANSLATED_FIELDS = frozenset(
    {("routes", "route_long_name"), ("routes", "route_short_name"), ("stops", "stop_name")}
)


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    short_name: str
    name: str
    name_field: str  # the routes.txt field `name` came from, for translations
    color: str | None


def read_routes(gtfs: GtfsFiles) -> dict[str, Route]:
    routes: dict[str, Route] = {}
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
            routes[route_id] = Route(
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
class StationRow:
    id: str
    name: str
    lat: float | None
    lon: float | None


@dataclass(frozen=True, slots=True)
class Stops:
    stations: dict[str, StationRow]
    stop_to_station: dict[str, str]


def read_stops(gtfs: GtfsFiles) -> Stops:
    stations: dict[str, StationRow] = {}
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
                stations[stop_id] = StationRow(
                    id=stop_id,
                    name=table.cell(row, "stop_name"),
                    lat=_coordinate(table, "stop_lat", table.cell(row, "stop_lat")),
                    lon=_coordinate(table, "stop_lon", table.cell(row, "stop_lon")),
                )
    return Stops(stations, _map_to_stations(parents, stations.keys()))


def _location_type(table: Table, value: str) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        raise table.error(f"location_type {value!r} is not a whole number") from None


def _coordinate(table: Table, column: str, value: str) -> float | None:
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
class Translations:
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


def read_translations(gtfs: GtfsFiles, default_language: str) -> Translations:
    translations = Translations()
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

