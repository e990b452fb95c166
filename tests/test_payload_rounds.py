"""The payload builder's rounds: a builder that has seen earlier states (and keeps last round's displays, alert
items and bodies where their inputs did not move) gives every topic the same content, in the same order, as a
builder that sees the state for the first time."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.contract import Topics
from broadcaster.feeds.network import load_network
from broadcaster.model import (
    Alert,
    CrowdingReading,
    FeedSnapshot,
    InformedEntity,
    LineDelay,
    LocalizedText,
    Occupancy,
    Severity,
)
from broadcaster.payloads import PayloadBuilder
from broadcaster.resources import data_dir
from broadcaster.state import AlertRecord, CrowdingRecord, NetworkState, StatePolicy, apply_snapshot

NETWORK = load_network(data_dir("config") / "network")
LINES = sorted(NETWORK.lines)
STATIONS = sorted(NETWORK.stations)
T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
# No dwell, so a level change shows at once; a short trend window, so steps of a few minutes run trends out.
POLICY = StatePolicy(crowding_min_dwell=timedelta(0), crowding_trend_window=timedelta(minutes=3))


def builder() -> PayloadBuilder:
    return PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), POLICY)


@st.composite
def alerts(draw: st.DrawFn) -> tuple[Alert, ...]:
    """A few alerts from a small pool of ids, each naming whole lines, stations, stations of a line (an entity
    with both), or a mix of these, in some wording."""
    entities = st.one_of(
        st.builds(InformedEntity, line_id=st.sampled_from(LINES)),
        st.builds(InformedEntity, station_id=st.sampled_from(STATIONS)),
        st.builds(InformedEntity, line_id=st.sampled_from(LINES), station_id=st.sampled_from(STATIONS)),
    )
    out = []
    for alert_id in draw(st.sets(st.sampled_from(["a1", "a2", "a3", "a4"]), max_size=3)):
        informed = tuple(draw(st.lists(entities, min_size=1, max_size=3)))
        wording = draw(st.integers(0, 2))
        out.append(Alert(
            alert_id, "TECHNICAL_PROBLEM", draw(st.sampled_from(["SIGNIFICANT_DELAYS", "NO_SERVICE"])),
            draw(st.sampled_from(list(Severity))), LocalizedText.of(zh=f"故障{wording}", en=f"Fault {wording}"),
            LocalizedText.of(en=f"details {draw(st.integers(0, 2))}"), LocalizedText(), informed, (),
        ))
    return tuple(sorted(out, key=lambda a: a.id))


@st.composite
def snapshots(draw: st.DrawFn, at: datetime) -> FeedSnapshot:
    """One feed's news: the alerts and delays of the operations feed, or the passenger-flow feed's readings."""
    if draw(st.booleans()):
        # Medians on both sides of the delay thresholds (300 s delayed, 900 s severe): kind and level both move.
        delays = tuple(LineDelay(line_id, 0, 5, median, median)
                       for line_id in draw(st.sets(st.sampled_from(LINES)))
                       for median in (draw(st.sampled_from([0, 200, 400, 600, 1000, 1500])),))
        return FeedSnapshot("ops", at, alerts=draw(alerts()), delays=delays)
    readings = tuple(
        CrowdingReading(station_id, draw(st.sampled_from(list(Occupancy))), at, draw(st.integers(0, 120)))
        for station_id in draw(st.sets(st.sampled_from(STATIONS), max_size=8))
    )
    return FeedSnapshot("flow", at, crowding=readings)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_round_gives_what_a_fresh_builder_gives(data: st.DataObject) -> None:
    """Rounds of random feed news, minutes apart (trends run out between some), some with stations' crowding
    records gone, some with an emergency's partial round in between, some left unfinished: each finished round's
    items equal a fresh builder's, topic by topic and in order."""
    seasoned = builder()
    state = NetworkState()
    now = T0
    for _ in range(data.draw(st.integers(2, 8), label="rounds")):
        now += timedelta(minutes=data.draw(st.integers(0, 4), label="minutes"))
        state = apply_snapshot(state, data.draw(snapshots(now), label="snapshot"), network=NETWORK, now=now,
                               policy=POLICY).state
        if data.draw(st.integers(0, 3), label="drop crowding") == 0:
            # A station's record gone (the state is the builder's input, whatever made it).
            dropped = data.draw(st.sets(st.sampled_from(STATIONS)), label="dropped")
            state = dataclasses.replace(state, crowding=MappingProxyType(
                {k: v for k, v in state.crowding.items() if k not in dropped}))
        if data.draw(st.booleans(), label="emergency first"):
            list(seasoned.retained_around(state, now, data.draw(st.lists(st.sampled_from(LINES), max_size=2)),
                                          data.draw(st.lists(st.sampled_from(STATIONS), max_size=2))))
        want = [(i.topic, i.source, i.body) for i in builder().retained(state, now)]
        stop_after = data.draw(st.none() | st.integers(0, len(want)), label="caller stops after")
        if stop_after is not None:  # a caller that stops reading (or fails) partway through a round
            rounds = seasoned.retained(state, now)
            for _ in zip(range(stop_after), rounds, strict=False):
                pass
            rounds.close()
            continue
        got = [(i.topic, i.source, i.body) for i in seasoned.retained(state, now)]
        assert got == want


def test_a_round_that_changes_nothing_hands_back_the_very_same_bodies() -> None:
    """What lets the planner skip a topic without serialising it again: an unchanged input, the same body object."""
    b = builder()
    readings = (CrowdingReading("S04", Occupancy.FULL, T0, 100), CrowdingReading("S06", Occupancy.EMPTY, T0, 5))
    state = apply_snapshot(NetworkState(), FeedSnapshot("flow", T0, crowding=readings), network=NETWORK, now=T0,
                           policy=POLICY).state
    first = list(b.retained(state, T0))
    again = list(b.retained(state, T0))
    assert len(again) == len(first) > len(STATIONS)
    assert all(x.body is y.body for x, y in zip(first, again, strict=True))


def test_a_display_follows_its_lines_level_when_the_kind_stays() -> None:
    """A delay crossing the severe threshold keeps the line `delayed` and moves its level: every display on the
    line follows, round after round, as a fresh builder's does."""
    b = builder()
    state = NetworkState()
    now = T0
    for median in (400, 1000, 400):  # delayed and moderate, delayed and severe, moderate again
        now += timedelta(minutes=1)
        delays = (LineDelay(LINES[0], 0, 5, median, median),)
        state = apply_snapshot(state, FeedSnapshot("ops", now, alerts=(), delays=delays), network=NETWORK, now=now,
                               policy=POLICY).state
        assert [(i.topic, i.body) for i in b.retained(state, now)] == \
            [(i.topic, i.body) for i in builder().retained(state, now)]


def test_a_round_left_unfinished_does_not_hide_a_change_from_the_next() -> None:
    """A round stopped after its crowding items, before its displays: the next round still shows the station's
    new level on its display (found in review: the crowding items were this round's, the displays' record last
    round's)."""
    def flow(level: Occupancy, at: datetime) -> NetworkState:
        snapshot = FeedSnapshot("flow", at, crowding=(CrowdingReading("S04", level, at, 50),))
        return apply_snapshot(NetworkState(), snapshot, network=NETWORK, now=at, policy=POLICY).state

    b = builder()
    later = T0 + timedelta(minutes=1)
    calm, full = flow(Occupancy.EMPTY, T0), flow(Occupancy.FULL, later)
    list(b.retained(calm, T0))
    rounds = b.retained(full, later)
    for item in rounds:
        if item.topic.endswith("/crowding"):
            break
    rounds.close()
    shown = {i.topic: i.body for i in b.retained(full, later)}["metro/v1/stations/S04/display"]
    assert shown["crowding"]["level"] == "FULL"


def test_a_display_shows_each_change_of_an_alerts_visible_parts_and_is_not_rebuilt_for_the_rest() -> None:
    """A display shows of each alert its id, severity, effect and header, and nothing else: a change of any of
    those reaches every display the alert touches, as a fresh builder's; a new description (a steady tick's
    usual change) leaves each display the very body it was."""
    b = builder()
    state = NetworkState()
    now = T0
    base = Alert("a1", "TECHNICAL_PROBLEM", "SIGNIFICANT_DELAYS", Severity.WARNING,
                 LocalizedText.of(zh="故障", en="Fault"), LocalizedText.of(en="details"), LocalizedText(),
                 (InformedEntity(line_id=LINES[0]),), ())
    displays: Mapping[str, object] = {}
    changes: list[dict[str, object]] = [
        {}, {"header": LocalizedText.of(zh="故障二", en="Fault two")}, {"effect": "REDUCED_SERVICE"},
        {"severity": Severity.SEVERE}, {"description": LocalizedText.of(en="more details")}]
    alert = base
    for change in changes:
        alert = dataclasses.replace(alert, **change)  # type: ignore[arg-type]
        now += timedelta(minutes=1)
        state = apply_snapshot(state, FeedSnapshot("ops", now, alerts=(alert,), delays=()), network=NETWORK, now=now,
                               policy=POLICY).state
        got = [(i.topic, i.body) for i in b.retained(state, now)]
        assert got == [(i.topic, i.body) for i in builder().retained(state, now)]
        shown = {topic: body for topic, body in got if topic.endswith("/display")}
        if "description" in change:
            assert all(shown[t] is displays[t] for t in shown)
        displays = shown


def test_a_trend_ending_exactly_at_one_round_runs_out_on_the_next() -> None:
    """The same crowding record, rising, seen exactly at the end of its trend window (still rising), then past it
    (steady): each round equals a fresh builder's. The builder keeps when a record's trend runs out; the random
    rounds above reach that exact instant only by chance (found in review: a `>=` for `>` there survived them)."""
    record = CrowdingRecord("S04", Occupancy.FULL, 90, T0, changed_at=T0, trend=1)
    state = NetworkState(crowding=MappingProxyType({"S04": record}))
    b = builder()
    trends = []
    for now in (T0 + POLICY.crowding_trend_window, T0 + POLICY.crowding_trend_window + timedelta(minutes=1)):
        got = [(i.topic, i.body) for i in b.retained(state, now)]
        assert got == [(i.topic, i.body) for i in builder().retained(state, now)]
        trends.append(dict(got)["metro/v1/stations/S04/crowding"]["trend"])
    assert trends == ["rising", "steady"]


def test_the_builder_forgets_the_alerts_gone_from_the_state() -> None:
    """A broadcaster runs for years and sees thousands of alerts come and go: what the builder keeps per alert
    (its body, its topics, the stations it touches) is dropped once the alert has left the state."""
    b = builder()
    for n in range(50):
        alert = Alert(f"inc-{n}", "TECHNICAL_PROBLEM", "NO_SERVICE", Severity.WARNING, LocalizedText.of(en="Fault"),
                      LocalizedText(), LocalizedText(), (InformedEntity(line_id=LINES[n % len(LINES)]),), ())
        state = NetworkState(alerts=MappingProxyType({alert.id: AlertRecord(alert, "v1", "ops", T0, T0)}))
        list(b.retained(state, T0))
    assert set(b._touched_of) == set(b._alert_items_of) == {"inc-49"}
    assert [slot for slot in b._memo if slot[0] == "alert"] == [("alert", "inc-49")]


def test_an_unchanged_alert_keeps_its_body_object_round_after_round() -> None:
    """The planner skips a topic whose body is the very object it serialised last round: an alert that did not
    change hands back the same bodies, its own and every display's."""
    alert = Alert("a1", "TECHNICAL_PROBLEM", "NO_SERVICE", Severity.WARNING, LocalizedText.of(en="Fault"),
                  LocalizedText(), LocalizedText(), (InformedEntity(line_id=LINES[0]),), ())
    state = NetworkState(alerts=MappingProxyType({"a1": AlertRecord(alert, "v1", "ops", T0, T0)}))
    b = builder()
    first, again = list(b.retained(state, T0)), list(b.retained(state, T0))
    assert any("/alerts/" in item.topic for item in first)
    assert all(x.body is y.body for x, y in zip(first, again, strict=True))
