"""The pure state diff: alert lifecycle, crowding dwell and hysteresis, line status derivation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest

from broadcaster.model import (
    ActivePeriod,
    Alert,
    CrowdingReading,
    FeedSnapshot,
    InformedEntity,
    LineDelay,
    LocalizedText,
    Network,
    Occupancy,
    Severity,
    Station,
)
from broadcaster.model import Line as NetLine
from broadcaster.state import (
    AlertChange,
    AlertChangeKind,
    CrowdingChange,
    LineStatusChange,
    LineStatusKind,
    NetworkState,
    StatePolicy,
    Transition,
    alert_version,
    apply_snapshot,
)

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
POLICY = StatePolicy(
    resolve_after_missing=3,
    crowding_min_dwell=timedelta(seconds=120),
    crowding_hysteresis_percent=5,
    delay_threshold_s=300,
)


def network() -> Network:
    lines = {
        "1": NetLine("1", "1", LocalizedText.of(zh="1号线", en="Line 1")),
        "2": NetLine("2", "2", LocalizedText.of(zh="2号线", en="Line 2")),
    }
    stations = {s: Station(s, LocalizedText.of(zh=s, en=s)) for s in ("A", "B", "C", "D")}
    return Network(
        lines=MappingProxyType(lines),
        stations=MappingProxyType(stations),
        line_stations=MappingProxyType({"1": {0: ("A", "B", "C")}, "2": {0: ("B", "D")}}),
        stop_to_station=MappingProxyType({s: s for s in stations}),
        trip_to_line=MappingProxyType({}),
    )


NET = network()


def alert(alert_id: str = "a1", *, effect: str = "SIGNIFICANT_DELAYS", header: str = "Signal fault",
          line: str | None = "1", station: str | None = None, periods: tuple[ActivePeriod, ...] = ()) -> Alert:
    return Alert(
        id=alert_id, cause="TECHNICAL_PROBLEM", effect=effect, severity=Severity.WARNING,
        header=LocalizedText.of(en=header, zh="信号故障"), description=LocalizedText(), url=LocalizedText(),
        informed=(InformedEntity(line_id=line, station_id=station),), active_periods=periods,
    )


def alerts_snapshot(*alerts: Alert, at: datetime = T0, feed: str = "ops",
                    skipped: frozenset[str] = frozenset()) -> FeedSnapshot:
    return FeedSnapshot(feed, at, alerts=alerts, skipped_alert_ids=skipped)


def step(state: NetworkState, snapshot: FeedSnapshot, now: datetime = T0) -> Transition:
    return apply_snapshot(state, snapshot, network=NET, now=now, policy=POLICY)


def alert_changes(t: Transition) -> list[tuple[AlertChangeKind, str]]:
    return [(c.kind, c.record.alert.id) for c in t.changes if isinstance(c, AlertChange)]


# -- alerts ----------------------------------------------------------------------------------------------------


def test_new_then_unchanged_then_updated() -> None:
    t1 = step(NetworkState(), alerts_snapshot(alert()))
    assert alert_changes(t1) == [(AlertChangeKind.NEW, "a1")]
    t2 = step(t1.state, alerts_snapshot(alert()))
    assert alert_changes(t2) == []
    t3 = step(t2.state, alerts_snapshot(alert(header="Signal fault, 10 min delays")))
    assert alert_changes(t3) == [(AlertChangeKind.UPDATED, "a1")]
    assert t3.state.alerts["a1"].version != t1.state.alerts["a1"].version


def test_version_ignores_order_and_white_space() -> None:
    a = alert()
    b = Alert(
        id="a1", cause=a.cause, effect=a.effect, severity=a.severity,
        header=LocalizedText.of(zh="信号故障", en="  Signal   fault "), description=a.description, url=a.url,
        informed=a.informed, active_periods=a.active_periods,
    )
    assert alert_version(a) == alert_version(b)
    assert alert_version(a) != alert_version(alert(effect="NO_SERVICE"))


def test_resolved_only_after_n_consecutive_missing_fetches() -> None:
    state = step(NetworkState(), alerts_snapshot(alert())).state
    for i in range(POLICY.resolve_after_missing - 1):
        t = step(state, alerts_snapshot())
        assert alert_changes(t) == [], f"resolved too early, after {i + 1} missing fetch(es)"
        state = t.state
    t = step(state, alerts_snapshot())
    assert alert_changes(t) == [(AlertChangeKind.RESOLVED, "a1")]
    assert "a1" not in t.state.alerts


def test_reappearing_alert_resets_the_missing_count() -> None:
    state = step(NetworkState(), alerts_snapshot(alert())).state
    state = step(state, alerts_snapshot()).state
    state = step(state, alerts_snapshot()).state
    state = step(state, alerts_snapshot(alert())).state  # back: a truncated body had hidden it
    assert state.alerts["a1"].missing == 0
    t = step(state, alerts_snapshot())
    assert alert_changes(t) == []


def test_skipped_malformed_entity_never_resolves() -> None:
    state = step(NetworkState(), alerts_snapshot(alert())).state
    for _ in range(5):
        t = step(state, alerts_snapshot(skipped=frozenset({"a1"})))
        assert alert_changes(t) == []
        state = t.state
    assert "a1" in state.alerts


def test_only_the_carrying_feed_resolves_an_alert() -> None:
    state = step(NetworkState(), alerts_snapshot(alert(), feed="ops")).state
    for _ in range(5):
        state = step(state, alerts_snapshot(feed="other")).state
    assert "a1" in state.alerts


def test_snapshot_without_alerts_section_leaves_alerts_alone() -> None:
    state = step(NetworkState(), alerts_snapshot(alert())).state
    for _ in range(5):
        state = step(state, FeedSnapshot("ops", T0, delays=())).state
    assert "a1" in state.alerts


def test_alert_whose_periods_ended_is_resolved_at_once() -> None:
    period = ActivePeriod(T0 - timedelta(hours=1), T0 + timedelta(minutes=10))
    state = step(NetworkState(), alerts_snapshot(alert(periods=(period,)))).state
    later = T0 + timedelta(minutes=11)
    t = step(state, alerts_snapshot(alert(periods=(period,)), at=later), now=later)
    assert alert_changes(t) == [(AlertChangeKind.RESOLVED, "a1")]


def test_returning_alert_after_resolution_is_new_again() -> None:
    state = step(NetworkState(), alerts_snapshot(alert())).state
    for _ in range(3):
        state = step(state, alerts_snapshot()).state
    t = step(state, alerts_snapshot(alert()), now=T0 + timedelta(minutes=5))
    assert alert_changes(t) == [(AlertChangeKind.NEW, "a1")]


# -- line status -------------------------------------------------------------------------------------------------


def line_statuses(t: Transition) -> dict[str, LineStatusKind]:
    return {c.line_id: c.after.kind for c in t.changes if isinstance(c, LineStatusChange)}


def test_no_service_on_a_whole_line_suspends_it_and_resolution_restores() -> None:
    t = step(NetworkState(), alerts_snapshot(alert(effect="NO_SERVICE")))
    assert line_statuses(t) == {"1": LineStatusKind.SUSPENDED}
    assert t.state.line_status("1").alert_ids == ("a1",)
    state = t.state
    for _ in range(3):
        t = step(state, alerts_snapshot())
        state = t.state
    assert line_statuses(t) == {"1": LineStatusKind.NORMAL}


def test_no_service_at_a_station_partly_suspends_every_line_there() -> None:
    t = step(NetworkState(), alerts_snapshot(alert(effect="NO_SERVICE", line=None, station="B")))
    assert line_statuses(t) == {"1": LineStatusKind.PARTLY_SUSPENDED, "2": LineStatusKind.PARTLY_SUSPENDED}


def test_future_alert_does_not_change_status_yet() -> None:
    period = ActivePeriod(T0 + timedelta(hours=2), None)
    t = step(NetworkState(), alerts_snapshot(alert(effect="NO_SERVICE", periods=(period,))))
    assert alert_changes(t) == [(AlertChangeKind.NEW, "a1")]
    assert line_statuses(t) == {}


def test_measured_delays_over_threshold_mark_a_line_delayed() -> None:
    delays = (LineDelay("2", 0, trips=4, median_delay_s=420, max_delay_s=600),
              LineDelay("1", 0, trips=4, median_delay_s=60, max_delay_s=200))
    t = step(NetworkState(), FeedSnapshot("ops", T0, delays=delays))
    assert line_statuses(t) == {"2": LineStatusKind.DELAYED}
    assert t.state.line_status("2").max_delay_s == 600


# -- crowding --------------------------------------------------------------------------------------------------


def reading(level: Occupancy, at: datetime, pct: int | None = None, station: str = "A") -> CrowdingReading:
    return CrowdingReading(station, level, at, pct)


def crowd(state: NetworkState, level: Occupancy, at: datetime, pct: int | None = None) -> Transition:
    return step(state, FeedSnapshot("flow", at, crowding=(reading(level, at, pct),)), now=at)


def crowding_levels(t: Transition) -> list[Occupancy]:
    return [c.record.level for c in t.changes if isinstance(c, CrowdingChange)]


def test_first_reading_is_published_at_once() -> None:
    t = crowd(NetworkState(), Occupancy.FEW_SEATS_AVAILABLE, T0, 50)
    assert crowding_levels(t) == [Occupancy.FEW_SEATS_AVAILABLE]


def test_new_level_needs_the_minimum_dwell() -> None:
    state = crowd(NetworkState(), Occupancy.FEW_SEATS_AVAILABLE, T0, 50).state
    t = crowd(state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=60), 75)
    assert crowding_levels(t) == []
    t = crowd(t.state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=150), 76)
    assert crowding_levels(t) == []  # only 90 s since the candidate appeared
    t = crowd(t.state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=180), 77)
    assert crowding_levels(t) == [Occupancy.STANDING_ROOM_ONLY]


def test_a_blip_resets_the_dwell() -> None:
    state = crowd(NetworkState(), Occupancy.FEW_SEATS_AVAILABLE, T0, 50).state
    state = crowd(state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=60), 75).state
    state = crowd(state, Occupancy.FEW_SEATS_AVAILABLE, T0 + timedelta(seconds=120), 60).state
    t = crowd(state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=190), 75)
    assert crowding_levels(t) == []


def test_hovering_at_a_boundary_does_not_flap() -> None:
    """After a rise at 70 %, falling back needs the percentage below 65 %, however long it dwells."""
    state = crowd(NetworkState(), Occupancy.FEW_SEATS_AVAILABLE, T0, 60).state
    state = crowd(state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=10), 70).state
    t = crowd(state, Occupancy.STANDING_ROOM_ONLY, T0 + timedelta(seconds=200), 70)
    assert t.state.crowding["A"].level is Occupancy.STANDING_ROOM_ONLY
    changes = 0
    at = T0 + timedelta(seconds=200)
    state = t.state
    for i in range(20):
        at += timedelta(seconds=130)
        level = Occupancy.FEW_SEATS_AVAILABLE if i % 2 else Occupancy.STANDING_ROOM_ONLY
        t = crowd(state, level, at, 67 if i % 2 else 71)
        changes += len(crowding_levels(t))
        state = t.state
    assert changes == 0
    # A real fall (below the band) for longer than the dwell does go through.
    state = crowd(state, Occupancy.FEW_SEATS_AVAILABLE, at + timedelta(seconds=10), 55).state
    t = crowd(state, Occupancy.FEW_SEATS_AVAILABLE, at + timedelta(seconds=140), 54)
    assert crowding_levels(t) == [Occupancy.FEW_SEATS_AVAILABLE]


def test_out_of_order_reading_is_ignored() -> None:
    state = crowd(NetworkState(), Occupancy.FEW_SEATS_AVAILABLE, T0, 50).state
    t = step(state, FeedSnapshot("flow", T0, crowding=(reading(Occupancy.FULL, T0 - timedelta(minutes=5)),)))
    assert t.state.crowding["A"].level is Occupancy.FEW_SEATS_AVAILABLE
    assert crowding_levels(t) == []


@pytest.mark.parametrize("platform_first", [True, False])
def test_station_level_is_its_own_reading_else_the_worst_platform(platform_first: bool) -> None:
    platform = CrowdingReading("A", Occupancy.FULL, T0, 100, line_id="1", direction_id=0)
    other = CrowdingReading("A", Occupancy.FEW_SEATS_AVAILABLE, T0, 40, line_id="1", direction_id=1)
    readings = (platform, other) if platform_first else (other, platform)
    t = step(NetworkState(), FeedSnapshot("flow", T0, crowding=readings))
    assert t.state.crowding["A"].level is Occupancy.FULL
    assert len(t.state.crowding["A"].platforms) == 2
    whole = CrowdingReading("A", Occupancy.STANDING_ROOM_ONLY, T0, 80)
    t = step(NetworkState(), FeedSnapshot("flow", T0, crowding=(*readings, whole)))
    assert t.state.crowding["A"].level is Occupancy.STANDING_ROOM_ONLY
