"""Static GTFS loader: the operator's GTFS folder or zip in, the `Network` out.

The files are read by `broadcaster.feeds.static_gtfs`; this module assembles what they say into the `Network`.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from types import MappingProxyType

from broadcaster.feeds.static_gtfs.files import GtfsFiles
from broadcaster.feeds.static_gtfs.names import read_routes, read_stops, read_translations
from broadcaster.feeds.static_gtfs.patterns import most_frequent, read_patterns, read_trips
from broadcaster.model import Line, Network, Station
from broadcaster.text import clean_name

logger = logging.getLogger(__name__)


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
        gtfs = GtfsFiles(source, stack)
        routes = read_routes(gtfs)
        stops = read_stops(gtfs)
        translations = read_translations(gtfs, default_language)
        trip_to_line, trip_direction = read_trips(gtfs, routes)
        patterns = read_patterns(gtfs, trip_to_line, stops.stop_to_station)

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
    best = most_frequent(patterns, trip_to_line, trip_direction)
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
