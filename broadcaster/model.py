"""Domain objects shared by every pipeline stage: the network, what the feeds say, and crowding levels.

Everything here is a frozen dataclass or an enum. Raw feed data (protobuf messages, JSON) is converted into
these types at the feed boundary and never crosses a stage boundary itself.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

#: Languages the default templates and payloads carry. Operators may add more in the config.
DEFAULT_LANGUAGES: tuple[str, ...] = ("zh", "en")


def normalise_language(tag: str, default: str) -> str:
    """Map a BCP 47 tag from a feed to the primary subtag we key texts by ("zh-Hans-CN" -> "zh").

    An empty tag means the feed's default language, which the operator names in the config.
    """
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary or default


@dataclass(frozen=True, slots=True)
class LocalizedText:
    """A text in several languages, keyed by primary language subtag ("zh", "en")."""

    texts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, **texts: str) -> LocalizedText:
        return cls(MappingProxyType({k: v for k, v in texts.items() if v}))

    def get(self, language: str, fallback: str | None = None) -> str:
        """The text in `language`, else in `fallback`, else any text we have, else ""."""
        if language in self.texts:
            return self.texts[language]
        if fallback is not None and fallback in self.texts:
            return self.texts[fallback]
        return next(iter(self.texts.values()), "")

    def as_dict(self) -> dict[str, str]:
        return dict(self.texts)

    def __bool__(self) -> bool:
        return bool(self.texts)


# ------------------------------------------------------------------------------------------------------------
# The network (static GTFS)


@dataclass(frozen=True, slots=True)
class Line:
    """A metro line: a GTFS route."""

    id: str
    short_name: str
    names: LocalizedText
    color: str | None = None  # "RRGGBB" as in routes.txt, without '#'


@dataclass(frozen=True, slots=True)
class Station:
    """A station: a GTFS stop with location_type 1, or a stop without a parent station."""

    id: str
    names: LocalizedText
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class Network:
    """The operator's network as read from static GTFS.

    `line_stations[line_id][direction_id]` lists the stations a line serves, in order, in that direction.
    `stop_to_station` maps every platform or boarding-area stop id to its station id (a station maps to
    itself), so feed entities that name platforms land on stations. `trip_to_line` lets trip updates that
    carry only a trip id find their line.
    """

    lines: Mapping[str, Line]
    stations: Mapping[str, Station]
    line_stations: Mapping[str, Mapping[int, tuple[str, ...]]]
    stop_to_station: Mapping[str, str]
    trip_to_line: Mapping[str, str]
    trip_direction: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: station id -> `lines_at`, built on first use: asked for every alert and crowding change on every tick, and
    #: a scan of every line's stations costs ~50 us at k = 1 (the network never changes once loaded).
    _lines_by_station: dict[str, tuple[str, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def station_of(self, stop_id: str) -> str | None:
        return self.stop_to_station.get(stop_id)

    def lines_at(self, station_id: str) -> tuple[str, ...]:
        """Ids of the lines serving a station, in the order of `lines`."""
        index = self._lines_by_station
        if not index:
            serving: dict[str, list[str]] = {}
            for line_id, by_direction in self.line_stations.items():
                for station in dict.fromkeys(s for stations in by_direction.values() for s in stations):
                    serving.setdefault(station, []).append(line_id)
            index.update((station, tuple(line_ids)) for station, line_ids in serving.items())
        return index.get(station_id, ())

    def stations_of(self, line_id: str) -> tuple[str, ...]:
        """Stations of a line in the order of its first direction, without repeats."""
        seen: dict[str, None] = {}
        for direction in sorted(self.line_stations.get(line_id, {})):
            for station_id in self.line_stations[line_id][direction]:
                seen.setdefault(station_id, None)
        return tuple(seen)


# ------------------------------------------------------------------------------------------------------------
# GTFS-Realtime service alerts


class Severity(enum.IntEnum):
    """GTFS-RT Alert.SeverityLevel, ordered so that comparisons mean 'at least as severe'."""

    UNKNOWN_SEVERITY = 0
    INFO = 1
    WARNING = 2
    SEVERE = 3


@dataclass(frozen=True, slots=True)
class InformedEntity:
    """One GTFS-RT EntitySelector, with stop ids already mapped to station ids."""

    line_id: str | None = None
    station_id: str | None = None
    direction_id: int | None = None
    trip_id: str | None = None


@dataclass(frozen=True, slots=True)
class ActivePeriod:
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """A service alert as the feed states it now.

    `cause` and `effect` are GTFS-RT enum names ("TECHNICAL_PROBLEM", "NO_SERVICE", ...).
    """

    id: str
    cause: str
    effect: str
    severity: Severity
    header: LocalizedText
    description: LocalizedText
    url: LocalizedText
    informed: tuple[InformedEntity, ...]
    active_periods: tuple[ActivePeriod, ...]

    @property
    def line_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.line_id for e in self.informed if e.line_id))

    @property
    def station_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.station_id for e in self.informed if e.station_id))

    def is_active(self, at: datetime) -> bool:
        """GTFS-RT: no active period means always active; otherwise `at` falls in one of them."""
        if not self.active_periods:
            return True
        return any(
            (p.start is None or p.start <= at) and (p.end is None or at < p.end) for p in self.active_periods
        )


# ------------------------------------------------------------------------------------------------------------
# Crowding (GTFS-RT OccupancyStatus vocabulary)


class Occupancy(enum.IntEnum):
    """GTFS-RT VehiclePosition.OccupancyStatus; the values are the protobuf numbers.

    Only the first seven are ordered by crowding; use `rank` to compare levels.
    """

    EMPTY = 0
    MANY_SEATS_AVAILABLE = 1
    FEW_SEATS_AVAILABLE = 2
    STANDING_ROOM_ONLY = 3
    CRUSHED_STANDING_ROOM_ONLY = 4
    FULL = 5
    NOT_ACCEPTING_PASSENGERS = 6
    NO_DATA_AVAILABLE = 7
    NOT_BOARDABLE = 8

    @property
    def rank(self) -> int:
        """Crowding rank: 0 (empty) .. 6 (not accepting passengers); -1 when the level says nothing."""
        return _OCCUPANCY_RANKS[self]  # a table: this is read for every reading of every station on every tick


_OCCUPANCY_RANKS = {level: int(level) if level <= Occupancy.NOT_ACCEPTING_PASSENGERS else -1 for level in Occupancy}


@dataclass(frozen=True, slots=True)
class CrowdingReading:
    """One passenger-flow observation: a station, or one line and direction at a station."""

    station_id: str
    level: Occupancy
    observed_at: datetime
    percentage: int | None = None
    line_id: str | None = None
    direction_id: int | None = None


@dataclass(frozen=True, slots=True)
class LineDelay:
    """Delays on one line and direction, aggregated from GTFS-RT trip updates."""

    line_id: str
    direction_id: int | None
    trips: int
    median_delay_s: int
    max_delay_s: int
    cancelled_trips: int = 0


@dataclass(frozen=True, slots=True)
class LineOccupancy:
    """Typical vehicle occupancy on one line and direction, aggregated from GTFS-RT vehicle positions."""

    line_id: str
    direction_id: int | None
    level: Occupancy
    vehicles: int


@dataclass(frozen=True, slots=True)
class FeedSnapshot:
    """What one good fetch of one feed said.

    A GTFS-RT feed fills `alerts`, `delays` and `occupancy` (each None when the feed carries no entity of
    that kind, so a trip-updates-only feed does not resolve every alert); a passenger-flow feed fills
    `crowding`.
    """

    feed: str
    timestamp: datetime
    alerts: tuple[Alert, ...] | None = None
    delays: tuple[LineDelay, ...] | None = None
    occupancy: tuple[LineOccupancy, ...] | None = None
    crowding: tuple[CrowdingReading, ...] | None = None
    #: Ids of alert entities present in the feed but skipped as invalid: state treats them as still present,
    #: so a malformed entity never turns into an "all clear". An alert both here and in `alerts` is carried
    #: without being fetched (a correction re-applies the feed as last seen): it is updated, and keeps its count
    #: towards the all-clear.
    skipped_alert_ids: frozenset[str] = frozenset()
    #: One short human-readable line per skipped entity or record, for the log and `check`.
    problems: tuple[str, ...] = ()
