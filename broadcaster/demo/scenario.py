"""The scenario engine: what the demo city looks like at a simulated time of day, worked out from the script.

Pure: the same network, script and time always give the same world, so tests can ask for 07:45 and get the
signal fault without waiting for it. Small variations (a few percent of load, a few seconds of delay) come from
a hash of the station or trip and the five-minute slot, not from a random generator.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import time
from itertools import pairwise

from broadcaster.demo.clock import seconds_of
from broadcaster.demo.script import DelayEpisode, Milestone, Script, ScriptedAlert, Text
from broadcaster.model import Network

#: Upper bounds of load (percent of design capacity) for each level, in crowding order.
LEVEL_BOUNDS: tuple[tuple[int, str], ...] = (
    (10, "EMPTY"),
    (30, "MANY_SEATS_AVAILABLE"),
    (55, "FEW_SEATS_AVAILABLE"),
    (80, "STANDING_ROOM_ONLY"),
    (100, "CRUSHED_STANDING_ROOM_ONLY"),
)
FULL = "FULL"
ENTRY_RESTRICTED = "NOT_ACCEPTING_PASSENGERS"


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    alert_id: str
    cause: str
    effect: str
    severity: str
    header: Text
    description: Text
    lines: tuple[str, ...]
    stations: tuple[str, ...]
    version: int  # 0 for the first version, 1 after the first update, ...


@dataclass(frozen=True, slots=True)
class StationLoad:
    station_id: str
    level: str  # GTFS-Realtime OccupancyStatus name
    percentage: int


@dataclass(frozen=True, slots=True)
class TripState:
    trip_id: str
    line_id: str
    direction_id: int
    delay_s: int
    occupancy: str  # GTFS-Realtime OccupancyStatus name


@dataclass(frozen=True, slots=True)
class World:
    """The city at one simulated time of day."""

    at: time
    alerts: tuple[ActiveAlert, ...]
    stations: tuple[StationLoad, ...]
    trips: tuple[TripState, ...]

    def station(self, station_id: str) -> StationLoad:
        return next(s for s in self.stations if s.station_id == station_id)

    def alert(self, alert_id: str) -> ActiveAlert | None:
        return next((a for a in self.alerts if a.alert_id == alert_id), None)


def level_for(percentage: int) -> str:
    for bound, level in LEVEL_BOUNDS:
        if percentage < bound:
            return level
    return FULL


def _jitter(key: str, slot: int, spread: int) -> int:
    """A stable pseudo-random integer in [-spread, spread] for `key` in five-minute slot `slot`."""
    return zlib.crc32(f"{key}/{slot}".encode()) % (2 * spread + 1) - spread


def _within(t: int, start: time, end: time) -> bool:
    return seconds_of(start) <= t < seconds_of(end)


def _ramp(t: int, points: tuple[tuple[time, int], ...]) -> float:
    """Linear interpolation between (time, value) points; 0 outside them."""
    for (t0, v0), (t1, v1) in pairwise(points):
        a, b = seconds_of(t0), seconds_of(t1)
        if a <= t < b:
            return v0 + (v1 - v0) * (t - a) / (b - a)
    return 0.0


class Scenario:
    """Plays `script` over `network`."""

    def __init__(self, network: Network, script: Script) -> None:
        self.network = network
        self.script = script
        unknown = {s.station_id for s in script.surges} - set(network.stations)
        unknown |= {e.line_id for e in script.delays} - set(network.lines)
        for alert in script.alerts:
            for version in alert.versions:
                unknown |= set(version.lines) - set(network.lines)
                unknown |= set(version.stations) - set(network.stations)
        if unknown:
            raise ValueError(f"the script names ids the network does not have: {sorted(unknown)}")

    def at(self, t: time) -> World:
        s = seconds_of(t)
        stations = tuple(self._load(station_id, s) for station_id in self.network.stations)
        return World(t, self._alerts(s), stations, self._trips(s, {x.station_id: x for x in stations}))

    # -- pieces ----------------------------------------------------------------------------------------------

    def _alerts(self, s: int) -> tuple[ActiveAlert, ...]:
        return tuple(a for a in (self._alert(alert, s) for alert in self.script.alerts) if a is not None)

    @staticmethod
    def _alert(alert: ScriptedAlert, s: int) -> ActiveAlert | None:
        if not _within(s, alert.starts_at, alert.clears_at):
            return None
        index = max(i for i, v in enumerate(alert.versions) if seconds_of(v.at) <= s)
        v = alert.versions[index]
        return ActiveAlert(alert.alert_id, alert.cause, v.effect, v.severity, v.header, v.description, v.lines,
                           v.stations, index)

    def _rush_percent(self, station_id: str) -> int:
        script = self.script
        if station_id in script.rush_percent_at:
            return script.rush_percent_at[station_id]
        if len(self.network.lines_at(station_id)) > 1:
            return script.interchange_rush_percent
        return script.rush_percent

    def _load(self, station_id: str, s: int) -> StationLoad:
        script = self.script
        z = (s - seconds_of(script.rush_peak)) / (script.rush_width_minutes * 60)
        load = script.base_percent + self._rush_percent(station_id) * math.exp(-0.5 * z * z)
        restricted = False
        for surge in script.surges:
            if surge.station_id != station_id:
                continue
            load += _ramp(s, ((surge.start, 0), (surge.peak, surge.extra_percent), (surge.end, 0)))
            if surge.restricted is not None and _within(s, *surge.restricted):
                restricted = True
        percentage = max(0, min(200, round(load) + _jitter(station_id, s // 300, 3)))
        level = ENTRY_RESTRICTED if restricted else level_for(percentage)
        return StationLoad(station_id, level, percentage)

    def _line_delay(self, line_id: str, s: int) -> float:
        episodes: list[DelayEpisode] = [e for e in self.script.delays if e.line_id == line_id]
        return max((_ramp(s, e.points) for e in episodes), default=0.0)

    def _trips(self, s: int, loads: dict[str, StationLoad]) -> tuple[TripState, ...]:
        trips: list[TripState] = []
        for trip_id, line_id in sorted(self.network.trip_to_line.items()):
            direction = self.network.trip_direction.get(trip_id, 0)
            stations = self.network.stations_of(line_id)
            average = sum(loads[x].percentage for x in stations) / max(1, len(stations))
            # Trains towards the city centre in the morning (direction 0 here) carry more than the way back.
            occupancy = level_for(round(average + (8 if direction == 0 else -8)))
            delay = round(self._line_delay(line_id, s)) + abs(_jitter(trip_id, s // 300, 40))
            trips.append(TripState(trip_id, line_id, direction, delay, occupancy))
        return tuple(trips)

    # -- the story, for people -------------------------------------------------------------------------------

    def milestones_around(self, t: time) -> tuple[Milestone | None, Milestone | None]:
        """The milestone the story is at, and the next one (None past the last)."""
        s = seconds_of(t)
        past = [m for m in self.script.milestones if seconds_of(m.at) <= s]
        future = [m for m in self.script.milestones if seconds_of(m.at) > s]
        return (past[-1] if past else None), (future[0] if future else None)
