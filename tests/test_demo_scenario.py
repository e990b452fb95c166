"""The demo's scripted morning and its clock: the story happens when the script says, and the feeds it serves
are ones the broadcaster's own parsers accept without a single problem."""

from __future__ import annotations

import time as _time
from datetime import time

import pytest

from broadcaster.demo import feeds
from broadcaster.demo.clock import ScenarioClock
from broadcaster.demo.scenario import ENTRY_RESTRICTED, Scenario, level_for
from broadcaster.demo.script import MORNING, PEOPLES_SQUARE_CROWDING, SIGNAL_FAULT, DelayEpisode, Script
from broadcaster.demo.settings import NETWORK_DIR
from broadcaster.feeds.gtfs_rt import parse_gtfs_rt
from broadcaster.feeds.network import load_network
from broadcaster.feeds.passenger_flow import parse_passenger_flow
from broadcaster.model import Network, Occupancy


@pytest.fixture(scope="module")
def network() -> Network:
    return load_network(NETWORK_DIR, "zh")


@pytest.fixture(scope="module")
def scenario(network: Network) -> Scenario:
    return Scenario(network, MORNING)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_city_is_a_small_metro_with_interchanges(network: Network) -> None:
    assert len(network.lines) == 5
    assert 25 <= len(network.stations) <= 40
    interchanges = [s for s in network.stations if len(network.lines_at(s)) > 1]
    assert len(interchanges) >= 6
    assert network.lines_at("peoples-square") == ("1", "2")
    for station in network.stations.values():
        assert station.names.get("zh"), station.id
        assert station.names.get("en"), station.id
        assert network.lines_at(station.id), f"{station.id} is served by no line"


def test_the_signal_fault_is_new_then_updated_then_gone(scenario: Scenario) -> None:
    assert scenario.at(time(7, 39)).alert(SIGNAL_FAULT) is None
    new = scenario.at(time(7, 40)).alert(SIGNAL_FAULT)
    assert new is not None
    assert (new.version, new.effect, new.lines) == (0, "SIGNIFICANT_DELAYS", ("2",))
    updated = scenario.at(time(8, 0)).alert(SIGNAL_FAULT)
    assert updated is not None
    assert updated.version == 1
    assert updated.header != new.header
    assert updated.stations == ("city-hall", "peoples-square", "old-town")
    assert scenario.at(time(8, 25)).alert(SIGNAL_FAULT) is None


def test_line_2_runs_late_during_the_fault_and_recovers(scenario: Scenario) -> None:
    def line_2_delays(at: time) -> list[int]:
        return sorted(t.delay_s for t in scenario.at(at).trips if t.line_id == "2")

    assert max(line_2_delays(time(7, 35))) < 60
    assert min(line_2_delays(time(8, 5))) >= 900
    assert max(line_2_delays(time(8, 45))) < 60
    line_4 = [t.delay_s for t in scenario.at(time(9, 10)).trips if t.line_id == "4"]
    assert min(line_4) >= 420  # late with no alert to explain it


def test_the_rush_builds_at_interchanges_and_peoples_square_restricts_entry(
    scenario: Scenario, network: Network
) -> None:
    quiet, rush = scenario.at(time(6, 40)), scenario.at(time(8, 10))
    interchanges = [s for s in network.stations if len(network.lines_at(s)) > 1]
    for station_id in interchanges:
        assert rush.station(station_id).percentage > quiet.station(station_id).percentage + 30, station_id
    assert rush.station("peoples-square").percentage > rush.station("xishan-park").percentage
    assert scenario.at(time(8, 20)).station("peoples-square").level == ENTRY_RESTRICTED
    assert scenario.at(time(8, 20)).alert(PEOPLES_SQUARE_CROWDING) is not None
    after = scenario.at(time(8, 40)).station("peoples-square")
    assert after.level != ENTRY_RESTRICTED
    assert scenario.at(time(9, 55)).station("peoples-square").level in ("MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE")


def test_the_world_is_a_pure_function_of_the_time(scenario: Scenario) -> None:
    assert scenario.at(time(8, 3, 20)) == scenario.at(time(8, 3, 20))


def test_levels_follow_the_load() -> None:
    assert [level_for(p) for p in (0, 20, 40, 70, 90, 120)] == [
        "EMPTY", "MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE", "STANDING_ROOM_ONLY", "CRUSHED_STANDING_ROOM_ONLY",
        "FULL",
    ]


def test_a_script_naming_unknown_ids_is_refused(network: Network) -> None:
    bad = Script(loop=MORNING.loop, start=MORNING.start, rush_peak=MORNING.rush_peak, rush_width_minutes=30,
                 base_percent=10, rush_percent=10, interchange_rush_percent=10,
                 delays=(DelayEpisode("99", ((time(7, 0), 0), (time(8, 0), 60))),))
    with pytest.raises(ValueError, match="99"):
        Scenario(network, bad)


def test_the_feeds_parse_cleanly_with_the_broadcasters_own_parsers(scenario: Scenario, network: Network) -> None:
    world = scenario.at(time(8, 16))
    stamp = int(_time.time())
    snapshot = parse_gtfs_rt("operations", feeds.gtfs_realtime(world, stamp), network,
                             carries=frozenset({"alerts", "trip-updates", "vehicle-positions"}),
                             default_language="zh")
    assert snapshot.problems == ()
    assert snapshot.alerts is not None
    alerts = {a.id: a for a in snapshot.alerts}
    assert set(alerts) == {a.alert_id for a in world.alerts}
    fault = alerts[SIGNAL_FAULT]
    assert fault.header.get("zh") == "信号故障抢修中，晚点约15分钟"
    assert fault.header.get("en") == "Signal fault: repairs under way, 15 min delays"
    # Line 2 at its stations, never the stations alone (which would touch every line there).
    assert {(e.line_id, e.station_id) for e in fault.informed} == {
        ("2", None), ("2", "city-hall"), ("2", "peoples-square"), ("2", "old-town")}
    assert snapshot.delays is not None
    line_2 = [d for d in snapshot.delays if d.line_id == "2"]
    assert line_2
    assert all(d.median_delay_s >= 900 for d in line_2)
    assert snapshot.occupancy

    flow = parse_passenger_flow("passenger-flow", feeds.passenger_flow(world, stamp), network)
    assert flow.problems == ()
    assert flow.crowding is not None
    readings = {r.station_id: r for r in flow.crowding}
    assert set(readings) == set(network.stations)
    assert readings["peoples-square"].level is Occupancy.NOT_ACCEPTING_PASSENGERS


def test_the_clock_runs_faster_pauses_jumps_and_loops() -> None:
    mono = FakeMonotonic()
    clock = ScenarioClock(time(7, 30), speed=30, loop=(time(6, 30), time(10, 0)), monotonic=mono)
    assert clock.now() == time(7, 30)
    mono.now += 20  # 20 real seconds are ten simulated minutes
    assert clock.now() == time(7, 40)
    clock.pause()
    mono.now += 600
    assert clock.now() == time(7, 40)
    clock.set(time(8, 25))
    assert clock.now() == time(8, 25)
    clock.resume()
    clock.set_speed(60)
    mono.now += 10
    assert clock.now() == time(8, 35)
    clock.set(time(9, 59))
    mono.now += 4  # four simulated minutes: past 10:00 the morning starts again
    assert clock.now() == time(6, 33)
    with pytest.raises(ValueError, match="speed"):
        clock.set_speed(0)
