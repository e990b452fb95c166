"""Trip updates and vehicle positions: trips' delays and vehicles' occupancy, aggregated per line and direction.

Each entity is first reduced to a fact (`trip_fact`, `vehicle_fact`: its line, direction, delay or rank), then the
facts are aggregated; an incremental parse (`incremental`) reuses the facts of entities whose bytes did not change."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, TypeVar

from google.transit import gtfs_realtime_pb2 as pb

from broadcaster.feeds.gtfs_rt.fields import as_direction, as_text, examples
from broadcaster.model import LineDelay, LineOccupancy, Network, Occupancy

if TYPE_CHECKING:
    from collections.abc import Mapping

_CANCELED = pb.TripDescriptor.CANCELED
_DELETED = pb.TripDescriptor.DELETED
#: Ranks by OccupancyStatus number; statuses that say nothing about crowding are absent.
_OCCUPANCY_RANKS: Mapping[int, int] = {
    v.number: Occupancy[v.name].rank
    for v in pb.VehiclePosition.OccupancyStatus.DESCRIPTOR.values
    if Occupancy[v.name].rank >= 0
}
_V = TypeVar("_V")


def _line_and_direction(trip: pb.TripDescriptor, network: Network) -> tuple[str | None, int | None, str, str]:
    """The trip's line (route_id if known, else the static trip's) and direction, and its raw ids."""
    route_id = trip.route_id
    trip_id = trip.trip_id
    line_id = route_id if route_id in network.lines else network.trip_to_line.get(trip_id)
    if trip.HasField("direction_id"):
        direction_id = as_direction(trip.direction_id)
    else:
        direction_id = network.trip_direction.get(trip_id)
    return line_id, direction_id, route_id, trip_id


#: What one trip update adds to the delays, worked out once per entity (an unchanged entity's is reused): its line
#: and direction (None: the trip names no known line), the trip quoted for the problem line when it names no known
#: line, its schedule relationship and its delay. A plain tuple: built for every entity, it must be cheap.
TripFact = tuple[tuple[str, int | None] | None, str, int, int | None]


def trip_fact(update: pb.TripUpdate, network: Network) -> TripFact:
    trip = update.trip
    line_id, direction_id, route_id, trip_id = _line_and_direction(trip, network)
    if line_id is None:
        return None, _trip_label(trip_id, route_id), trip.schedule_relationship, None
    return (line_id, direction_id), "", trip.schedule_relationship, _trip_delay(update)


def aggregate_delays(updates: list[pb.TripUpdate], network: Network, problems: list[str]) -> tuple[LineDelay, ...]:
    return delays_from_facts([trip_fact(update, network) for update in updates], network, problems)


def delays_from_facts(facts: list[TripFact], network: Network, problems: list[str]) -> tuple[LineDelay, ...]:
    delays: dict[tuple[str, int | None], list[int]] = {}
    cancelled: dict[tuple[str, int | None], int] = {}
    unknown: list[str] = []
    no_delay = 0
    for key, label, relationship, delay in facts:
        if key is None:
            unknown.append(label)
            continue
        if relationship == _CANCELED:
            cancelled[key] = cancelled.get(key, 0) + 1
            delays.setdefault(key, [])
            continue
        if relationship == _DELETED:
            continue  # removed from the rider-facing schedule altogether: neither late nor announced
        if delay is None:
            no_delay += 1
            continue
        delays.setdefault(key, []).append(delay)
    if unknown:
        problems.append(
            f"trip updates: {len(unknown)} of {len(facts)} trips name no known line ({examples(unknown)})"
        )
    if no_delay:
        problems.append(f"trip updates: {no_delay} of {len(facts)} trips carry no delay")
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


#: What one vehicle position adds to the occupancy, worked out once per entity: its rank (None: it says nothing
#: about crowding: no status, NO_DATA_AVAILABLE, NOT_BOARDABLE), its line and direction (None: it names no known
#: line) and the trip quoted for the problem line when it names no known line.
VehicleFact = tuple[int | None, tuple[str, int | None] | None, str]

_NO_CROWDING: VehicleFact = (None, None, "")


def vehicle_fact(vehicle: pb.VehiclePosition, network: Network) -> VehicleFact:
    if not vehicle.HasField("occupancy_status"):
        return _NO_CROWDING
    rank = _OCCUPANCY_RANKS.get(vehicle.occupancy_status)
    if rank is None:
        return _NO_CROWDING
    line_id, direction_id, route_id, trip_id = _line_and_direction(vehicle.trip, network)
    if line_id is None:
        return rank, None, _trip_label(trip_id, route_id)
    return rank, (line_id, direction_id), ""


def aggregate_occupancy(
    vehicles: list[pb.VehiclePosition], network: Network, problems: list[str]
) -> tuple[LineOccupancy, ...]:
    return occupancy_from_facts([vehicle_fact(vehicle, network) for vehicle in vehicles], network, problems)


def occupancy_from_facts(
    facts: list[VehicleFact], network: Network, problems: list[str]
) -> tuple[LineOccupancy, ...]:
    ranks: dict[tuple[str, int | None], list[int]] = {}
    unknown: list[str] = []
    for rank, key, label in facts:
        if rank is None:
            continue
        if key is None:
            unknown.append(label)
            continue
        ranks.setdefault(key, []).append(rank)
    if unknown:
        problems.append(f"vehicle positions: {len(unknown)} vehicles name no known line ({examples(unknown)})")
    return tuple(
        # The upper median: with an even count, tell riders the more crowded of the two middle levels.
        LineOccupancy(line_id, direction_id, Occupancy(statistics.median_high(values)), len(values))
        for (line_id, direction_id), values in _in_network_order(ranks, network)
    )


def _trip_label(trip_id: str, route_id: str) -> str:
    if trip_id and route_id:
        return f"trip {as_text(trip_id)!r} route {as_text(route_id)!r}"
    if trip_id or route_id:
        return f"trip {as_text(trip_id)!r}" if trip_id else f"route {as_text(route_id)!r}"
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
