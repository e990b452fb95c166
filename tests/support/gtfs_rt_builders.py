"""Builders for GTFS-Realtime fixtures: small protobuf messages made in code, serialised on demand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from google.transit import gtfs_realtime_pb2 as pb

#: 2026-11-25T08:00:00Z, the default header timestamp.
T0 = 1_795_593_600


def feed_message(
    *entities: pb.FeedEntity,
    timestamp: int | None = T0,
    version: str | None = "2.0",
    differential: bool = False,
) -> pb.FeedMessage:
    """A FeedMessage with a header (fields set to None are left out) and the given entities, in order."""
    message = pb.FeedMessage()
    header = message.header
    header.SetInParent()
    if version is not None:
        header.gtfs_realtime_version = version
    if timestamp is not None:
        header.timestamp = timestamp
    if differential:
        header.incrementality = pb.FeedHeader.DIFFERENTIAL
    message.entity.extend(entities)
    return message


def feed_bytes(
    *entities: pb.FeedEntity,
    timestamp: int | None = T0,
    version: str | None = "2.0",
    differential: bool = False,
) -> bytes:
    """`feed_message(...)` serialised, skipping the required-field check so broken headers can be built."""
    message = feed_message(*entities, timestamp=timestamp, version=version, differential=differential)
    return message.SerializePartialToString()


def translated(texts: Mapping[str, str] | Sequence[tuple[str, str]]) -> pb.TranslatedString:
    """A TranslatedString from {language: text} or [(language, text)]; "" is a translation without a tag."""
    pairs = texts.items() if isinstance(texts, Mapping) else texts
    result = pb.TranslatedString()
    for language, text in pairs:
        translation = result.translation.add(text=text)
        if language:
            translation.language = language
    return result


def selector(
    *,
    route_id: str | None = None,
    stop_id: str | None = None,
    direction_id: int | None = None,
    trip_id: str | None = None,
    trip_route_id: str | None = None,
    agency_id: str | None = None,
) -> pb.EntitySelector:
    """An EntitySelector with only the given fields set."""
    result = pb.EntitySelector()
    if route_id is not None:
        result.route_id = route_id
    if stop_id is not None:
        result.stop_id = stop_id
    if direction_id is not None:
        result.direction_id = direction_id
    if agency_id is not None:
        result.agency_id = agency_id
    if trip_id is not None:
        result.trip.trip_id = trip_id
    if trip_route_id is not None:
        result.trip.route_id = trip_route_id
    return result


def alert_entity(
    entity_id: str,
    *,
    header: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    description: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    url: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    informed: Iterable[pb.EntitySelector] | None = None,
    periods: Iterable[tuple[int | None, int | None]] = (),
    cause: str | None = None,
    effect: str | None = None,
    severity: str | None = None,
    deleted: bool = False,
) -> pb.FeedEntity:
    """An alert entity; by default an English header on line L1, so it is valid against the tiny network."""
    entity = pb.FeedEntity(id=entity_id)
    if deleted:
        entity.is_deleted = True
    alert = entity.alert
    # Enum names go through the constructor, which takes them as strings (None leaves the field unset).
    alert.CopyFrom(pb.Alert(cause=cause, effect=effect, severity_level=severity))
    alert.header_text.CopyFrom(translated({"en": "Signal failure"} if header is None else header))
    if description is not None:
        alert.description_text.CopyFrom(translated(description))
    if url is not None:
        alert.url.CopyFrom(translated(url))
    alert.informed_entity.extend([selector(route_id="L1")] if informed is None else informed)
    for start, end in periods:
        period = alert.active_period.add()
        if start is not None:
            period.start = start
        if end is not None:
            period.end = end
    return entity


def _trip(trip_id: str | None, route_id: str | None, direction_id: int | None, canceled: bool) -> pb.TripDescriptor:
    trip = pb.TripDescriptor()
    if trip_id is not None:
        trip.trip_id = trip_id
    if route_id is not None:
        trip.route_id = route_id
    if direction_id is not None:
        trip.direction_id = direction_id
    if canceled:
        trip.schedule_relationship = pb.TripDescriptor.CANCELED
    return trip


def trip_update_entity(
    entity_id: str,
    *,
    trip_id: str | None = None,
    route_id: str | None = None,
    direction_id: int | None = None,
    delay: int | None = None,
    arrival_delays: Sequence[int | None] = (),
    departure_delays: Sequence[int | None] = (),
    canceled: bool = False,
) -> pb.FeedEntity:
    """A trip update. `arrival_delays`/`departure_delays` give one stop time update per item (None: unset)."""
    entity = pb.FeedEntity(id=entity_id)
    update = entity.trip_update
    update.trip.CopyFrom(_trip(trip_id, route_id, direction_id, canceled))
    if delay is not None:
        update.delay = delay
    count = max(len(arrival_delays), len(departure_delays))
    for index in range(count):
        stop_time = update.stop_time_update.add(stop_sequence=index + 1)
        arrival = arrival_delays[index] if index < len(arrival_delays) else None
        departure = departure_delays[index] if index < len(departure_delays) else None
        if arrival is not None:
            stop_time.arrival.delay = arrival
        else:
            stop_time.arrival.time = T0 + 60 * index
        if departure is not None:
            stop_time.departure.delay = departure
    return entity


def vehicle_entity(
    entity_id: str,
    *,
    occupancy: str | None,
    trip_id: str | None = None,
    route_id: str | None = None,
    direction_id: int | None = None,
) -> pb.FeedEntity:
    """A vehicle position with an OccupancyStatus name (None: unset)."""
    entity = pb.FeedEntity(id=entity_id)
    vehicle = entity.vehicle
    vehicle.CopyFrom(pb.VehiclePosition(occupancy_status=occupancy))
    vehicle.trip.CopyFrom(_trip(trip_id, route_id, direction_id, canceled=False))
    vehicle.vehicle.id = f"car-{entity_id}"
    return entity
