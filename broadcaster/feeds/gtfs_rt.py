"""GTFS-Realtime protobuf to domain objects: service alerts, line delays and line occupancy.

This is the only module that imports `gtfs_realtime_pb2`. Fields are read straight from the messages
(`HasField`, local names): `MessageToDict` costs a hundred times more (docs/design.md, "Measured facts").
Alert texts are neutralised here, at the boundary, by `broadcaster.text` (controls, bidi overrides, HTML,
mentions, size).
"""

from __future__ import annotations

import re
import statistics
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import DecodeError
from google.transit import gtfs_realtime_pb2 as pb

from broadcaster.errors import FeedFormatError
from broadcaster.model import (
    ActivePeriod,
    Alert,
    FeedSnapshot,
    InformedEntity,
    LineDelay,
    LineOccupancy,
    LocalizedText,
    Network,
    Occupancy,
    Severity,
    normalise_language,
)
from broadcaster.text import clean_text, clean_url

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

#: The entity kinds a GTFS-RT feed can be configured to carry.
KINDS: frozenset[str] = frozenset({"alerts", "trip-updates", "vehicle-positions"})

#: POSIX seconds beyond this (the year 5138) are milliseconds sent by mistake.
MAX_EPOCH_SECONDS = 10**11

_CAUSE_NAMES: Mapping[int, str] = {v.number: v.name for v in pb.Alert.Cause.DESCRIPTOR.values}
_EFFECT_NAMES: Mapping[int, str] = {v.number: v.name for v in pb.Alert.Effect.DESCRIPTOR.values}
# By name: the model's Severity numbers (0-3) are not the protobuf's (1-4).
_SEVERITIES: Mapping[int, Severity] = {v.number: Severity[v.name] for v in pb.Alert.SeverityLevel.DESCRIPTOR.values}
_DIFFERENTIAL = pb.FeedHeader.DIFFERENTIAL
_CANCELED = pb.TripDescriptor.CANCELED
_DELETED = pb.TripDescriptor.DELETED
#: Ranks by OccupancyStatus number; statuses that say nothing about crowding are absent.
_OCCUPANCY_RANKS: Mapping[int, int] = {
    v.number: Occupancy[v.name].rank
    for v in pb.VehiclePosition.OccupancyStatus.DESCRIPTOR.values
    if Occupancy[v.name].rank >= 0
}
_EMPTY_TEXT = LocalizedText()
_FIRST_WORD = re.compile(rb"[^\s>]{1,20}")
#: How many example ids a summary problem line quotes.
_EXAMPLES = 3
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\r\n")
_V = TypeVar("_V")


def parse_gtfs_rt(
    feed: str,
    body: bytes,
    network: Network,
    *,
    carries: frozenset[str],
    default_language: str,
) -> FeedSnapshot:
    """Turn one GTFS-Realtime FeedMessage into a snapshot of what it says about the network.

    Args:
        feed: the feed's name in the config, carried into errors and the snapshot.
        body: the protobuf bytes as fetched.
        network: the operator's network; ids the feed names are mapped onto its lines and stations.
        carries: which of "alerts", "trip-updates" and "vehicle-positions" this feed is configured to carry.
            Those kinds come back as tuples (possibly empty, meaning "nothing now"); the others as None.
        default_language: the language of translations that carry no language tag.

    Returns:
        The snapshot. Invalid alert entities are left out, listed in `skipped_alert_ids` and described in
        `problems`, as are trips and vehicles that name no known line (one summary line each).

    Raises:
        FeedFormatError: the body is not a usable GTFS-Realtime feed (not protobuf, HTML, no header,
            DIFFERENTIAL, no or millisecond header timestamp).
    """
    unknown_kinds = carries - KINDS
    if unknown_kinds:
        raise ValueError(f"unknown GTFS-RT entity kinds {sorted(unknown_kinds)}; expected some of {sorted(KINDS)}")
    message = _decode(feed, body)
    timestamp = _header_timestamp(feed, message.header)

    want_alerts = "alerts" in carries
    want_trips = "trip-updates" in carries
    want_vehicles = "vehicle-positions" in carries
    alert_entities: list[pb.FeedEntity] = []
    trip_updates: list[pb.TripUpdate] = []
    vehicles: list[pb.VehiclePosition] = []
    for entity in message.entity:
        if entity.is_deleted:
            continue
        has_field = entity.HasField
        if want_alerts and has_field("alert"):
            alert_entities.append(entity)
        if want_trips and has_field("trip_update"):
            trip_updates.append(entity.trip_update)
        if want_vehicles and has_field("vehicle"):
            vehicles.append(entity.vehicle)

    problems: list[str] = []
    alerts: tuple[Alert, ...] | None = None
    skipped: frozenset[str] = frozenset()
    if want_alerts:
        languages = _Languages(default_language)
        alerts, skipped = _convert_alerts(alert_entities, network, languages, problems)
    delays = _aggregate_delays(trip_updates, network, problems) if want_trips else None
    occupancy = _aggregate_occupancy(vehicles, network, problems) if want_vehicles else None
    return FeedSnapshot(
        feed=feed,
        timestamp=timestamp,
        alerts=alerts,
        delays=delays,
        occupancy=occupancy,
        skipped_alert_ids=skipped,
        problems=tuple(problems),
    )


# ------------------------------------------------------------------------------------------------------------
# Envelope


def _decode(feed: str, body: bytes) -> pb.FeedMessage:
    if not body:
        raise FeedFormatError(feed, "empty body")
    message = pb.FeedMessage()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise FeedFormatError(feed, _not_protobuf(body)) from exc
    if not message.HasField("header"):
        # Some text happens to decode as unknown fields; say what it looks like rather than "no header".
        reason = _not_protobuf(body) if _text_start(body) else "not a GTFS-Realtime feed: the FeedMessage has no header"
        raise FeedFormatError(feed, reason)
    return message


def _text_start(body: bytes) -> bytes:
    """The first bytes of a body that looks like text (an HTML error page, JSON), else b"".

    Only used once decoding failed: a valid feed may well start with b"\n<" (a 60-byte header).
    """
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head if head and all(byte in _PRINTABLE for byte in head[:16]) else b""


def _not_protobuf(body: bytes) -> str:
    head = _text_start(body)
    if head:
        return f"not a GTFS-Realtime protobuf (starts with {_first_word(head)!r})"
    return "not a GTFS-Realtime protobuf (the decoder found corrupt wire format)"


def _first_word(head: bytes) -> str:
    match = _FIRST_WORD.match(head)
    return (match.group() if match else head[:20]).decode("ascii", errors="replace")


def _header_timestamp(feed: str, header: pb.FeedHeader) -> datetime:
    version = _text(header.gtfs_realtime_version)
    if not version:
        raise FeedFormatError(feed, "header.gtfs_realtime_version is missing")
    if header.incrementality == _DIFFERENTIAL:
        raise FeedFormatError(feed, "DIFFERENTIAL feeds are not supported: serve a FULL_DATASET feed")
    seconds = header.timestamp
    if not seconds:
        raise FeedFormatError(feed, "header.timestamp is missing or 0")
    if seconds > MAX_EPOCH_SECONDS:
        raise FeedFormatError(
            feed, f"header.timestamp {seconds} looks like milliseconds; GTFS-Realtime wants POSIX seconds"
        )
    return datetime.fromtimestamp(seconds, UTC)


def _text(value: str | bytes) -> str:
    # upb hands back bytes, not str, for a proto2 string field holding invalid UTF-8.
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def _direction(value: int) -> int | None:
    return value if value in (0, 1) else None


# ------------------------------------------------------------------------------------------------------------
# Alerts


def _convert_alerts(
    entities: list[pb.FeedEntity], network: Network, languages: _Languages, problems: list[str]
) -> tuple[tuple[Alert, ...], frozenset[str]]:
    alerts: dict[str, Alert] = {}
    skipped: set[str] = set()
    for position, entity in enumerate(entities):
        alert_id = _text(entity.id)
        if not alert_id:
            problems.append(f"alert entity #{position} skipped: it has no id")
            continue
        if alert_id in alerts or alert_id in skipped:
            problems.append(f"alert {alert_id!r} skipped: a second entity with the same id")
            skipped.add(alert_id)
            continue
        try:
            alerts[alert_id] = _convert_alert(alert_id, entity.alert, network, languages, problems)
        except _InvalidAlert as exc:
            problems.append(f"alert {alert_id!r} skipped: {exc}")
            skipped.add(alert_id)
    return tuple(alerts.values()), frozenset(skipped)


class _InvalidAlert(Exception):
    """An alert entity that cannot be used; the message says why."""


def _convert_alert(
    alert_id: str, alert: pb.Alert, network: Network, languages: _Languages, problems: list[str]
) -> Alert:
    header = _localized(alert.header_text, languages, clean_text)
    if not header:
        raise _InvalidAlert("no header text")
    selectors = alert.informed_entity
    if not selectors:
        raise _InvalidAlert("no informed entity")
    informed, unknown = _informed_entities(selectors, network)
    if not informed:
        detail = f" ({_examples(unknown)})" if unknown else " (only agency or route type selectors)"
        raise _InvalidAlert(f"no informed entity names a known line or station{detail}")
    if unknown:
        problems.append(f"alert {alert_id!r}: dropped informed entities naming unknown ids ({_examples(unknown)})")
    return Alert(
        id=alert_id,
        cause=_CAUSE_NAMES.get(alert.cause, "UNKNOWN_CAUSE"),
        effect=_EFFECT_NAMES.get(alert.effect, "UNKNOWN_EFFECT"),
        severity=_SEVERITIES.get(alert.severity_level, Severity.UNKNOWN_SEVERITY),
        header=header,
        description=_localized(alert.description_text, languages, clean_text),
        url=_localized(alert.url, languages, clean_url),
        informed=informed,
        active_periods=_active_periods(alert.active_period),
    )


class _Languages(dict[str, str]):
    """Feed language tag -> primary subtag, computed once per tag and feed."""

    def __init__(self, default_language: str) -> None:
        super().__init__()
        self.default_language = default_language

    def __missing__(self, tag: str) -> str:
        language = self[tag] = normalise_language(_text(tag), self.default_language)
        return language


def _localized(
    translated: pb.TranslatedString, languages: _Languages, clean: Callable[[str], str]
) -> LocalizedText:
    """The translations, each neutralised by `clean` (broadcaster/text.py: controls, bidi, HTML, mentions, size);
    a translation left empty counts as absent."""
    texts: dict[str, str] = {}
    for translation in translated.translation:
        text = clean(_text(translation.text))
        if text:
            language = languages[translation.language]
            # Several tags can share a primary subtag (zh-Hans, zh-Hant): the first one listed wins.
            if language not in texts:
                texts[language] = text
    return LocalizedText(MappingProxyType(texts)) if texts else _EMPTY_TEXT


def _informed_entities(
    selectors: Iterable[pb.EntitySelector], network: Network
) -> tuple[tuple[InformedEntity, ...], list[str]]:
    """Map selectors onto the network. A selector is an AND of its fields, so one unknown id drops it."""
    lines = network.lines
    station_of = network.station_of
    trip_to_line = network.trip_to_line
    informed: dict[InformedEntity, None] = {}
    unknown: list[str] = []
    for selector in selectors:
        line_id: str | None = None
        station_id: str | None = None
        trip_id: str | None = None
        direction_id: int | None = None
        bad = False
        route_id = _text(selector.route_id)
        if route_id:
            if route_id in lines:
                line_id = route_id
            else:
                unknown.append(f"route_id {route_id!r}")
                bad = True
        if selector.HasField("trip"):
            trip = selector.trip
            trip_id = _text(trip.trip_id) or None
            trip_route = _text(trip.route_id)
            if trip_route:
                if trip_route in lines:
                    line_id = line_id or trip_route
                else:
                    unknown.append(f"trip.route_id {trip_route!r}")
                    bad = True
            elif trip_id:
                trip_line = trip_to_line.get(trip_id)
                if trip_line is not None:
                    line_id = line_id or trip_line
                elif line_id is None:
                    unknown.append(f"trip_id {trip_id!r}")
                    bad = True
            if trip.HasField("direction_id"):
                direction_id = _direction(trip.direction_id)
        stop_id = _text(selector.stop_id)
        if stop_id:
            station_id = station_of(stop_id)
            if station_id is None:
                unknown.append(f"stop_id {stop_id!r}")
                bad = True
        if selector.HasField("direction_id"):
            direction_id = _direction(selector.direction_id)
        if bad or (line_id is None and station_id is None):
            continue
        informed[InformedEntity(line_id, station_id, direction_id, trip_id)] = None
    return tuple(informed), unknown


def _active_periods(ranges: Iterable[pb.TimeRange]) -> tuple[ActivePeriod, ...]:
    periods: list[ActivePeriod] = []
    for index, time_range in enumerate(ranges):
        start = time_range.start
        end = time_range.end
        for name, value in (("start", start), ("end", end)):
            if value > MAX_EPOCH_SECONDS:
                raise _InvalidAlert(f"active_period[{index}].{name} {value} looks like milliseconds")
        periods.append(
            ActivePeriod(
                start=datetime.fromtimestamp(start, UTC) if start else None,
                end=datetime.fromtimestamp(end, UTC) if end else None,
            )
        )
    return tuple(periods)


def _examples(items: list[str]) -> str:
    unique = list(dict.fromkeys(items))
    shown = ", ".join(unique[:_EXAMPLES])
    return shown if len(unique) <= _EXAMPLES else f"{shown} and {len(unique) - _EXAMPLES} more"


# ------------------------------------------------------------------------------------------------------------
# Trip updates and vehicle positions


def _line_and_direction(trip: pb.TripDescriptor, network: Network) -> tuple[str | None, int | None, str, str]:
    """The trip's line (route_id if known, else the static trip's) and direction, and its raw ids."""
    route_id = trip.route_id
    trip_id = trip.trip_id
    line_id = route_id if route_id in network.lines else network.trip_to_line.get(trip_id)
    if trip.HasField("direction_id"):
        direction_id = _direction(trip.direction_id)
    else:
        direction_id = network.trip_direction.get(trip_id)
    return line_id, direction_id, route_id, trip_id


def _aggregate_delays(updates: list[pb.TripUpdate], network: Network, problems: list[str]) -> tuple[LineDelay, ...]:
    delays: dict[tuple[str, int | None], list[int]] = {}
    cancelled: dict[tuple[str, int | None], int] = {}
    unknown: list[str] = []
    no_delay = 0
    for update in updates:
        trip = update.trip
        line_id, direction_id, route_id, trip_id = _line_and_direction(trip, network)
        if line_id is None:
            unknown.append(_trip_label(trip_id, route_id))
            continue
        key = (line_id, direction_id)
        relationship = trip.schedule_relationship
        if relationship == _CANCELED:
            cancelled[key] = cancelled.get(key, 0) + 1
            delays.setdefault(key, [])
            continue
        if relationship == _DELETED:
            continue  # removed from the rider-facing schedule altogether: neither late nor announced
        delay = _trip_delay(update)
        if delay is None:
            no_delay += 1
            continue
        delays.setdefault(key, []).append(delay)
    if unknown:
        problems.append(
            f"trip updates: {len(unknown)} of {len(updates)} trips name no known line ({_examples(unknown)})"
        )
    if no_delay:
        problems.append(f"trip updates: {no_delay} of {len(updates)} trips carry no delay")
    return tuple(
        LineDelay(
            line_id=line_id,
            direction_id=direction_id,
            trips=len(values),
            median_delay_s=round(statistics.median(values)) if values else 0,
            max_delay_s=max(values) if values else 0,
            cancelled_trips=cancelled.get((line_id, direction_id), 0),
        )
        for (line_id, direction_id), values in _in_network_order(delays, network)
    )


def _trip_delay(update: pb.TripUpdate) -> int | None:
    """The trip's own delay, else that of the first stop time update that states one."""
    if update.HasField("delay"):
        return update.delay
    for stop_time in update.stop_time_update:
        if stop_time.HasField("arrival") and stop_time.arrival.HasField("delay"):
            return stop_time.arrival.delay
        if stop_time.HasField("departure") and stop_time.departure.HasField("delay"):
            return stop_time.departure.delay
    return None


def _aggregate_occupancy(
    vehicles: list[pb.VehiclePosition], network: Network, problems: list[str]
) -> tuple[LineOccupancy, ...]:
    ranks: dict[tuple[str, int | None], list[int]] = {}
    unknown: list[str] = []
    ranks_by_status = _OCCUPANCY_RANKS
    for vehicle in vehicles:
        if not vehicle.HasField("occupancy_status"):
            continue
        rank = ranks_by_status.get(vehicle.occupancy_status)
        if rank is None:
            continue  # NO_DATA_AVAILABLE, NOT_BOARDABLE: nothing about crowding
        line_id, direction_id, route_id, trip_id = _line_and_direction(vehicle.trip, network)
        if line_id is None:
            unknown.append(_trip_label(trip_id, route_id))
            continue
        ranks.setdefault((line_id, direction_id), []).append(rank)
    if unknown:
        problems.append(f"vehicle positions: {len(unknown)} vehicles name no known line ({_examples(unknown)})")
    return tuple(
        # The upper median: with an even count, tell riders the more crowded of the two middle levels.
        LineOccupancy(line_id, direction_id, Occupancy(statistics.median_high(values)), len(values))
        for (line_id, direction_id), values in _in_network_order(ranks, network)
    )


def _trip_label(trip_id: str, route_id: str) -> str:
    if trip_id and route_id:
        return f"trip {_text(trip_id)!r} route {_text(route_id)!r}"
    if trip_id or route_id:
        return f"trip {_text(trip_id)!r}" if trip_id else f"route {_text(route_id)!r}"
    return "no trip or route id"


def _in_network_order(
    groups: dict[tuple[str, int | None], _V], network: Network
) -> list[tuple[tuple[str, int | None], _V]]:
    order = {line_id: index for index, line_id in enumerate(network.lines)}
    return sorted(
        groups.items(),
        key=lambda item: (order.get(item[0][0], len(order)), item[0][0], _direction_order(item[0][1])),
    )


def _direction_order(direction_id: int | None) -> int:
    return 2 if direction_id is None else direction_id
