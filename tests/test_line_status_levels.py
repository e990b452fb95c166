"""A line's status reflects every active alert on it: service changes (a detour, a moved stop, a broken lift)
show as level `changes`, disruptions as `disrupted`, and `alert_ids` lists them all (MQTT contract v1.2).

`status` keeps the v1.0 vocabulary (old consumers validate it against a closed list); the new `level` field says
what `status` cannot.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rig import Rig
from support import LoopbackHttpServer, MosquittoBroker, collect_retained
from support.gtfs_rt_builders import alert_entity, selector, trip_update_entity
from support.tiny_network import tiny_network

from broadcaster.contract import LineStatusPayload, StationDisplayPayload, Topics, json_schemas
from broadcaster.model import Alert, FeedSnapshot, InformedEntity, LineDelay, LocalizedText, Severity
from broadcaster.payloads import PayloadBuilder, published_status, service_level
from broadcaster.retained import serialise, with_envelope
from broadcaster.state import NetworkState, StatePolicy, apply_snapshot

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
NETWORK = tiny_network()
POLICY = StatePolicy()


def alert(alert_id: str, effect: str, *informed: InformedEntity, severity: Severity = Severity.WARNING,
          header: str = "Detour") -> Alert:
    return Alert(alert_id, "CONSTRUCTION", effect, severity, LocalizedText.of(zh=header, en=header),
                 LocalizedText(), LocalizedText(), informed or (InformedEntity(line_id="L1"),), ())


def state_with(*alerts: Alert, delays: tuple[LineDelay, ...] | None = None) -> NetworkState:
    snapshot = FeedSnapshot("ops", T0, alerts=alerts, delays=delays)
    return apply_snapshot(NetworkState(), snapshot, network=NETWORK, now=T0, policy=POLICY).state


def line_payload(state: NetworkState, line_id: str = "L1") -> dict[str, Any]:
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), POLICY)
    body = builder.line_status(state, NETWORK.lines[line_id], None)
    payload: dict[str, Any] = orjson.loads(with_envelope(serialise(body), 1, T0, T0 + timedelta(minutes=30)))
    LineStatusPayload.model_validate(payload)
    return payload


def display_payload(state: NetworkState, station_id: str) -> dict[str, Any]:
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), POLICY)
    items = {i.topic: i.body for i in builder.retained(state, T0)}
    payload: dict[str, Any] = orjson.loads(with_envelope(
        serialise(items[f"metro/v1/stations/{station_id}/display"]), 1, T0, None))
    StationDisplayPayload.model_validate(payload)
    return payload


@pytest.mark.parametrize(("effect", "informed", "severity"), [
    ("DETOUR", InformedEntity(line_id="L1"), Severity.WARNING),
    ("MODIFIED_SERVICE", InformedEntity(line_id="L1"), Severity.INFO),
    ("STOP_MOVED", InformedEntity(line_id="L1", station_id="S02"), Severity.INFO),
    ("ACCESSIBILITY_ISSUE", InformedEntity(station_id="S01"), Severity.INFO),
    ("OTHER_EFFECT", InformedEntity(line_id="L1"), Severity.WARNING),
    ("UNKNOWN_EFFECT", InformedEntity(line_id="L1"), Severity.SEVERE),
])
def test_an_effect_riders_feel_makes_the_line_read_service_changes(
    effect: str, informed: InformedEntity, severity: Severity
) -> None:
    payload = line_payload(state_with(alert("X-1", effect, informed, severity=severity)))
    assert payload["status"] == "normal"  # the v1.0 vocabulary, for consumers that only know it
    assert payload["level"] == "changes"
    assert payload["alert_ids"] == ["X-1"]
    assert payload["status_text"] == {"zh": "运营调整", "en": "Service changes"}
    assert payload["reason"] == {"zh": "Detour", "en": "Detour"}


@pytest.mark.parametrize(("effect", "severity"), [
    ("NO_EFFECT", Severity.WARNING), ("ADDITIONAL_SERVICE", Severity.INFO), ("OTHER_EFFECT", Severity.INFO),
])
def test_an_informational_alert_is_listed_but_the_service_stays_good(effect: str, severity: Severity) -> None:
    payload = line_payload(state_with(alert("I-1", effect, severity=severity)))
    assert payload["status"] == "normal"
    assert payload["level"] == "good"
    assert payload["alert_ids"] == ["I-1"]
    assert payload["status_text"]["en"] == "Good service"
    assert payload["reason"] == {}


def test_every_alert_on_the_line_is_listed_worst_first_and_the_worst_sets_the_level() -> None:
    state = state_with(
        alert("A-detour", "DETOUR"),
        alert("B-delay", "SIGNIFICANT_DELAYS", header="Signal fault"),
        alert("C-info", "NO_EFFECT", severity=Severity.INFO),
    )
    payload = line_payload(state)
    assert payload["status"] == "delayed"
    assert payload["level"] == "disrupted"
    assert payload["alert_ids"] == ["B-delay", "A-detour", "C-info"]
    assert payload["reason"]["en"] == "Signal fault"


@pytest.mark.parametrize(("median_s", "level"), [(400, "changes"), (900, "disrupted")])
def test_measured_delays_over_a_detour_take_the_status_and_say_the_delay(median_s: int, level: str) -> None:
    state = state_with(alert("A-detour", "DETOUR"), delays=(LineDelay("L1", 0, 3, median_s, 1000),))
    payload = line_payload(state)
    assert (payload["status"], payload["level"]) == ("delayed", level)
    assert payload["alert_ids"] == ["A-detour"]
    assert payload["reason"]["en"] == "Delays of up to 17 min"


SEVERITIES = StatePolicy(delay_threshold_s=300, severe_delay_threshold_s=900)


@given(st.integers(min_value=0, max_value=3600), st.integers(min_value=0, max_value=3600))
def test_measured_median_delay_sets_the_level_at_the_two_thresholds(median_s: int, other_median_s: int) -> None:
    """Under `delay_threshold_seconds`: good; from it: status delayed at level changes (trains run late); from
    `severe_delay_threshold_seconds`: disrupted. The worse direction decides."""
    delays = (LineDelay("L1", 0, 3, median_s, median_s + 60), LineDelay("L1", 1, 3, other_median_s, 60))
    state = apply_snapshot(NetworkState(), FeedSnapshot("ops", T0, alerts=(), delays=delays), network=NETWORK,
                           now=T0, policy=SEVERITIES).state
    status = state.line_status("L1")
    worst = max(median_s, other_median_s)
    expected = "good" if worst < 300 else "changes" if worst < 900 else "disrupted"
    assert (published_status(status.kind), service_level(status)) == (
        "normal" if worst < 300 else "delayed", expected)


def test_an_alert_that_declares_delays_is_disrupted_whatever_the_measured_delay() -> None:
    declared = apply_snapshot(NetworkState(), FeedSnapshot(
        "ops", T0, alerts=(alert("A-slow", "SIGNIFICANT_DELAYS"),), delays=(LineDelay("L1", 0, 3, 400, 500),)),
        network=NETWORK, now=T0, policy=SEVERITIES).state
    assert service_level(declared.line_status("L1")) == "disrupted"


def test_crossing_the_severe_threshold_is_a_change_and_survives_a_restart(tmp_path: Path) -> None:
    from broadcaster.state import LineStatusChange
    from broadcaster.store import Database, StateStore

    moderate = apply_snapshot(NetworkState(), FeedSnapshot("ops", T0, delays=(LineDelay("L1", 0, 3, 400, 500),)),
                              network=NETWORK, now=T0, policy=SEVERITIES)
    severe = apply_snapshot(moderate.state, FeedSnapshot("ops", T0, delays=(LineDelay("L1", 0, 3, 950, 500),)),
                            network=NETWORK, now=T0, policy=SEVERITIES)
    [change] = [c for c in severe.changes if isinstance(c, LineStatusChange)]
    assert (service_level(change.before), service_level(change.after)) == ("changes", "disrupted")
    db = Database(tmp_path / "state.db")
    with db.transaction() as conn:
        StateStore(db).save(conn, moderate.state)
    assert service_level(StateStore(db).load().line_status("L1")) == "changes"
    db.close()


def test_the_station_display_shows_service_changes_under_the_detour() -> None:
    display = display_payload(state_with(alert("A-detour", "DETOUR", header="Line 1 detour via S04")), "S02")
    line_1 = next(entry for entry in display["lines"] if entry["line"]["id"] == "L1")
    assert (line_1["status"], line_1["level"]) == ("normal", "changes")
    assert "Line 1: Service changes" in display["text"]["en"]
    assert "Line 1: Good service" not in display["text"]["en"]
    assert "1号线：运营调整" in display["text"]["zh"]


def test_the_status_vocabulary_is_unchanged_so_old_consumers_still_validate() -> None:
    """Adding a value to the closed `status` list would break a consumer validating with the v1.0 schema."""
    schema: dict[str, Any] = json_schemas()["line-status"]
    assert schema["properties"]["status"]["enum"] == ["normal", "delayed", "partly_suspended", "suspended"]
    assert "level" not in schema["required"]  # payloads of older publishers lack it
    display: dict[str, Any] = json_schemas()["station-display"]
    assert display["$defs"]["DisplayLine"]["properties"]["status"]["enum"] == schema["properties"]["status"]["enum"]


# -- end to end: a real `broadcaster once` against real Mosquitto ----------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, http_server: LoopbackHttpServer, mosquitto: MosquittoBroker, topic_prefix: str) -> Rig:
    return Rig(tmp_path, http_server, mosquitto.url, topic_prefix)


async def test_a_detour_reaches_the_line_status_topic_as_service_changes(rig: Rig) -> None:
    rig.serve_rt(alert_entity("A-17-detour", header={"zh": "1号线绕行", "en": "Line 1 detour"},
                              informed=[selector(route_id="1")], effect="DETOUR", severity="WARNING"))
    rig.serve_flow({"S04": "MANY_SEATS_AVAILABLE"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "once", "-c", str(rig.write_config()),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    retained = await collect_retained(rig.mqtt_url, rig.topic("lines/1/status"))
    status = orjson.loads(retained[rig.topic("lines/1/status")])
    assert (status["status"], status["level"]) == ("normal", "changes")
    assert status["alert_ids"] == ["A-17-detour"]
    assert status["status_text"]["en"] == "Service changes"


async def test_a_severe_measured_delay_reaches_the_broker_as_disrupted_and_a_moderate_one_as_changes(
    rig: Rig,
) -> None:
    trips = [trip_update_entity(f"T1-{i}", trip_id=f"x1-{i}", route_id="1", direction_id=0, delay=700)
             for i in range(3)]
    trips += [trip_update_entity(f"T2-{i}", trip_id=f"x2-{i}", route_id="2", direction_id=0, delay=300)
              for i in range(3)]
    rig.serve_rt(*trips)
    rig.serve_flow({"S04": "MANY_SEATS_AVAILABLE"})
    config = rig.write_config(state={"delay_threshold_seconds": 120, "severe_delay_threshold_seconds": 600})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster", "once", "-c", str(config),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    retained = await collect_retained(rig.mqtt_url, rig.topic("lines/+/status"))
    line_1, line_2 = (orjson.loads(retained[rig.topic(f"lines/{n}/status")]) for n in (1, 2))
    assert (line_1["status"], line_1["level"], line_1["max_delay_s"]) == ("delayed", "disrupted", 700)
    assert (line_2["status"], line_2["level"], line_2["max_delay_s"]) == ("delayed", "changes", 300)
    assert line_2["status_text"]["en"] == "Delays"


def test_measured_delays_on_a_line_with_a_detour_are_still_announced_and_their_end_too() -> None:
    from zoneinfo import ZoneInfo

    from broadcaster.compose import ComposePolicy, NoticeKind, compose
    from broadcaster.state import LineStatusChange

    policy = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
    detour = alert("A-detour", "DETOUR")
    delayed = apply_snapshot(NetworkState(), FeedSnapshot("ops", T0, alerts=(detour,),
                             delays=(LineDelay("L1", 0, 3, 400, 720),)), network=NETWORK, now=T0, policy=POLICY)
    cleared = apply_snapshot(delayed.state, FeedSnapshot("ops", T0, delays=()), network=NETWORK, now=T0,
                             policy=POLICY)
    for transition, code in ((delayed, "delayed"), (cleared, "changes")):
        changes = [c for c in transition.changes if isinstance(c, LineStatusChange) and c.line_id == "L1"]
        notices = [n for n in compose(changes, network=NETWORK, now=T0, policy=policy)
                   if n.kind is NoticeKind.LINE_STATUS]
        assert [n.contexts["en"]["status_code"] for n in notices] == [code]


def test_a_delay_that_drifts_is_announced_once_not_at_every_poll() -> None:
    # Measured delays move a little at every poll; a post for each would flood every channel while a line runs
    # late. Announced: entering the delay, crossing the severe threshold (the level changes), and its end.
    from zoneinfo import ZoneInfo

    from broadcaster.compose import ComposePolicy, NoticeKind, compose

    policy = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
    state = NetworkState()
    announced: list[tuple[str, str]] = []
    for minute, median_s in enumerate((0, 400, 430, 470, 455, 1000, 1040, 0)):
        now = T0 + timedelta(minutes=minute)
        delays = (LineDelay("L1", 0, 3, median_s, median_s + 60),) if median_s else ()
        transition = apply_snapshot(state, FeedSnapshot("ops", now, delays=delays), network=NETWORK, now=now,
                                    policy=POLICY)
        state = transition.state
        notices = compose(transition.changes, network=NETWORK, now=now, policy=policy)
        announced += [(str(n.contexts["en"]["status_code"]), str(n.contexts["en"]["delay_minutes"]))
                      for n in notices if n.kind is NoticeKind.LINE_STATUS]
    assert [code for code, _ in announced] == ["delayed", "delayed", "normal"]
    assert announced[1][1] == "18"  # the severe crossing says the delay it crossed at (1,060 s)
