"""The demo city's real-time feeds: a world (scenario.py) as GTFS-Realtime protobuf and as passenger-flow v1 JSON.

Feed timestamps are real time (POSIX seconds), not the story's time of day: the broadcaster checks them for
freshness against its own clock exactly as it would a real operator's feed.
"""

from __future__ import annotations

import orjson
from google.transit import gtfs_realtime_pb2 as rt

from broadcaster.demo.scenario import World
from broadcaster.demo.script import Text

PASSENGER_FLOW_SCHEMA = "broadcaster.passenger-flow/1"


def _translate(target: rt.TranslatedString, text: Text) -> None:
    for language, value in (("zh-CN", text.zh), ("en", text.en)):
        translation = target.translation.add()
        translation.language = language
        translation.text = value


def gtfs_realtime(world: World, timestamp: int) -> bytes:
    """One FULL_DATASET FeedMessage with the world's alerts, a trip update and a vehicle for every trip."""
    message = rt.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.incrementality = rt.FeedHeader.FULL_DATASET
    message.header.timestamp = timestamp
    for alert in world.alerts:
        entity = message.entity.add()
        entity.id = alert.alert_id
        a = entity.alert
        # The constructor takes enum names as strings (and checks them).
        a.MergeFrom(rt.Alert(cause=alert.cause, effect=alert.effect, severity_level=alert.severity))
        for line_id in alert.lines:
            a.informed_entity.add().route_id = line_id
        for station_id in alert.stations:
            if not alert.lines:
                a.informed_entity.add().stop_id = station_id
            # "Line 2 at City Hall", not "City Hall": a station selector alone would touch every line there.
            for line_id in alert.lines:
                selector = a.informed_entity.add()
                selector.stop_id = station_id
                selector.route_id = line_id
        _translate(a.header_text, alert.header)
        _translate(a.description_text, alert.description)
    for trip in world.trips:
        entity = message.entity.add()
        entity.id = f"TU-{trip.trip_id}"
        update = entity.trip_update
        update.trip.trip_id = trip.trip_id
        update.trip.route_id = trip.line_id
        update.trip.direction_id = trip.direction_id
        update.delay = trip.delay_s
        update.timestamp = timestamp
        entity = message.entity.add()
        entity.id = f"V-{trip.trip_id}"
        vehicle = entity.vehicle
        vehicle.trip.trip_id = trip.trip_id
        vehicle.trip.route_id = trip.line_id
        vehicle.trip.direction_id = trip.direction_id
        vehicle.MergeFrom(rt.VehiclePosition(occupancy_status=trip.occupancy))
        vehicle.timestamp = timestamp
    return message.SerializeToString()


def passenger_flow(world: World, timestamp: int) -> bytes:
    """The passenger-flow v1 document (docs/feeds.md) with every station's reading."""
    return orjson.dumps({
        "schema": PASSENGER_FLOW_SCHEMA,
        "timestamp": timestamp,
        "stations": [
            {"station_id": s.station_id, "level": s.level, "percentage": s.percentage} for s in world.stations
        ],
    })
