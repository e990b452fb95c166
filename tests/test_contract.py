"""The MQTT contract: topic names, payloads matching their models, and committed JSON Schemas in sync."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

import orjson
import pytest
from pydantic import BaseModel

from broadcaster.checking import sample_changes
from broadcaster.compose import ComposePolicy, compose, compose_correction, compose_digest
from broadcaster.contract import (
    AlertPayload,
    BroadcasterStatusPayload,
    LineStatusPayload,
    NoticePayload,
    StationCrowdingPayload,
    StationDisplayPayload,
    Topics,
    json_schemas,
    topic_segment,
)
from broadcaster.feeds.network import load_network
from broadcaster.model import ActivePeriod, CrowdingReading, FeedSnapshot, LineDelay, LineOccupancy, Occupancy
from broadcaster.payloads import PayloadBuilder, RetainedItem, status_body
from broadcaster.resources import data_dir
from broadcaster.retained import serialise, with_envelope
from broadcaster.state import AlertChange, LineStatus, LineStatusKind, NetworkState, StatePolicy, apply_snapshot

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 25, 0, 15, tzinfo=UTC)
NETWORK = load_network(data_dir("config") / "network")
MODELS: dict[str, type[BaseModel]] = {
    "broadcaster.mqtt.line-status/1": LineStatusPayload,
    "broadcaster.mqtt.alert/1": AlertPayload,
    "broadcaster.mqtt.station-crowding/1": StationCrowdingPayload,
    "broadcaster.mqtt.station-display/1": StationDisplayPayload,
    "broadcaster.mqtt.notice/1": NoticePayload,
}


def test_committed_json_schemas_match_the_models() -> None:
    folder = ROOT / "docs" / "schemas" / "mqtt"
    generated = json_schemas()
    committed = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
    assert committed == generated, "run: broadcaster schemas docs/schemas/mqtt"


def test_topics_follow_the_v1_layout() -> None:
    t = Topics("metro")
    assert t.line_status("2") == "metro/v1/lines/2/status"
    assert t.line_alert("2", "A-9") == "metro/v1/lines/2/alerts/A-9"
    assert t.station_crowding("S04") == "metro/v1/stations/S04/crowding"
    assert t.station_display("S04") == "metro/v1/stations/S04/display"
    assert t.notices == "metro/v1/notices"
    assert t.status == "metro/v1/broadcaster/status"


@pytest.mark.parametrize(("raw", "segment"), [("a/b", "a%2Fb"), ("x+y", "x%2By"), ("#1", "%231"),
                                               ("人民广场", "%E4%BA%BA%E6%B0%91%E5%B9%BF%E5%9C%BA"),
                                               ("S 1", "S%201"), ("50%", "50%25")])
def test_ids_that_would_break_topics_are_escaped(raw: str, segment: str) -> None:
    assert topic_segment(raw) == segment


def busy_state() -> NetworkState:
    """A state with an alert, a delay, occupancy and crowding on the example network."""
    policy = StatePolicy()
    alert_change = next(c for c in sample_changes(NETWORK, T0) if isinstance(c, AlertChange))
    alert = alert_change.record.alert
    alert = type(alert)(**{**{f: getattr(alert, f) for f in alert.__dataclass_fields__},
                           "active_periods": (ActivePeriod(T0 - timedelta(minutes=5), None),)})
    snap = FeedSnapshot(
        "ops", T0, alerts=(alert,), delays=(LineDelay("2", 0, 3, 400, 700),),
        occupancy=(LineOccupancy("1", 0, Occupancy.STANDING_ROOM_ONLY, 4),),
    )
    state = apply_snapshot(NetworkState(), snap, network=NETWORK, now=T0, policy=policy).state
    readings = (CrowdingReading("S04", Occupancy.FULL, T0, 101, "1", 0), CrowdingReading("S06", Occupancy.EMPTY, T0))
    return apply_snapshot(state, FeedSnapshot("flow", T0, crowding=readings), network=NETWORK, now=T0,
                          policy=policy).state


def test_every_retained_payload_matches_its_model() -> None:
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), StatePolicy())
    seen: set[str] = set()
    for item in builder.retained(busy_state(), T0):
        payload = orjson.loads(with_envelope(serialise(item.body), 42, T0, T0 + timedelta(minutes=30)))
        MODELS[payload["schema"]].model_validate(payload)
        assert payload["seq"] == 42
        assert payload["valid_until"] == "2026-11-25T00:45:00+00:00"
        seen.add(payload["schema"])
    assert seen == set(MODELS) - {"broadcaster.mqtt.notice/1"}


def test_display_puts_alerts_first_and_lists_every_line_of_an_interchange() -> None:
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), StatePolicy())
    items = {i.topic: i.body for i in builder.retained(busy_state(), T0)}
    s04 = items["metro/v1/stations/S04/display"]
    assert [line["line"]["id"] for line in s04["lines"]] == ["1", "2"]
    assert s04["crowding"]["level"] == "FULL"
    assert s04["text"]["en"][0] == "Signal fault, trains running slowly"
    assert "Line 2: Delays" in s04["text"]["en"]
    assert "2号线：列车延误" in s04["text"]["zh"]


def test_notice_and_status_payloads_match_their_models() -> None:
    policy = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
    for notice in compose(sample_changes(NETWORK, T0), network=NETWORK, now=T0, policy=policy):
        body = PayloadBuilder.notice(notice, {"zh": "文本", "en": "text"})
        payload = orjson.loads(with_envelope(serialise(body), 1, T0, None))
        NoticePayload.model_validate(payload)
    BroadcasterStatusPayload.model_validate(status_body("offline", "b1", T0))


def test_digest_and_correction_notices_match_the_published_schema() -> None:
    # Both go out on the notice stream (docs/mqtt.md lists them): a consumer validating against the schema must
    # not reject them.
    policy = ComposePolicy(timezone=ZoneInfo("Asia/Shanghai"))
    digest = compose_digest(NetworkState(), name="rush", network=NETWORK, slot=T0, policy=policy)
    correction = compose_correction("alert-A1", {"zh": "更正", "en": "Correction"}, line_ids=["1"], network=NETWORK,
                                    now=T0, policy=policy)
    schema = NoticePayload.model_json_schema(by_alias=True)
    for notice in (digest, correction):
        payload = orjson.loads(with_envelope(serialise(PayloadBuilder.notice(notice, {"zh": "文", "en": "t"})), 1, T0,
                                             None))
        NoticePayload.model_validate(payload)
        assert payload["kind"] in schema["properties"]["kind"]["enum"]


def test_envelope_splices_onto_an_empty_body() -> None:
    assert orjson.loads(with_envelope(b"{}", 7, T0, None)) == {
        "seq": 7, "issued_at": "2026-11-25T00:15:00+00:00", "valid_until": None,
    }


def test_a_crowding_trend_runs_out_on_its_topic_and_display_while_the_record_stays() -> None:
    """A station's record does not change while nothing is read, but its trend is a matter of time: `rising` within
    the trend window of its change, `steady` after, on the crowding topic and the display alike. An unchanged
    record's item is the very same object round after round (nothing rebuilt), until its trend runs out."""
    policy = StatePolicy(crowding_min_dwell=timedelta(0))

    def flow(level: Occupancy, at: datetime) -> FeedSnapshot:
        return FeedSnapshot("flow", at, crowding=(CrowdingReading("S04", level, at, 50),))

    state = apply_snapshot(NetworkState(), flow(Occupancy.EMPTY, T0), network=NETWORK, now=T0, policy=policy).state
    rose = T0 + timedelta(minutes=1)
    state = apply_snapshot(state, flow(Occupancy.FULL, rose), network=NETWORK, now=rose, policy=policy).state
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), policy)

    def items(now: datetime) -> dict[str, RetainedItem]:
        return {item.topic: item for item in builder.retained(state, now)}

    def trends(found: dict[str, RetainedItem]) -> tuple[object, object]:
        display = found["metro/v1/stations/S04/display"].body["crowding"]
        assert isinstance(display, dict)
        return found["metro/v1/stations/S04/crowding"].body["trend"], display["trend"]

    within = items(rose + policy.crowding_trend_window)
    assert trends(within) == ("rising", "rising")
    again = items(rose + policy.crowding_trend_window)
    assert again["metro/v1/stations/S04/crowding"] is within["metro/v1/stations/S04/crowding"]
    after = items(rose + policy.crowding_trend_window + timedelta(microseconds=1))
    assert trends(after) == ("steady", "steady")


def test_a_display_shows_its_lines_status_as_it_changes_and_as_a_fresh_builder_does() -> None:
    """A line's part of the displays is built once per status of the line: when the status changes, every display
    on the line shows the new one, as a builder that never saw the old one would."""
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), StatePolicy())
    before = {item.topic: item.body for item in builder.retained(NetworkState(), T0)}
    after = {item.topic: item.body for item in builder.retained(busy_state(), T0)}
    fresh = {item.topic: item.body for item in
             PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), StatePolicy()).retained(busy_state(), T0)}
    assert after == fresh
    changed = [topic for topic in after
               if topic.endswith("/display") and after[topic]["lines"] != before[topic]["lines"]]
    assert changed  # line 2's delay and the alert's line show on their stations' displays


def test_a_display_follows_a_delayed_lines_level_as_the_delay_turns_severe() -> None:
    """A delayed line's level moves from `changes` to `disrupted` when its delay crosses the severe threshold, its
    status kind staying `delays`: the displays on it follow, as the line's own topic does."""
    builder = PayloadBuilder(NETWORK, Topics("metro"), ("zh", "en"), StatePolicy())
    line_id = next(iter(NETWORK.lines))
    station_topic = f"metro/v1/stations/{NETWORK.stations_of(line_id)[0]}/display"
    levels = []
    for moderate in (True, False):
        status = LineStatus(LineStatusKind.DELAYED, max_delay_s=600, moderate=moderate)
        state = dataclasses.replace(NetworkState(), lines=MappingProxyType({line_id: status}))
        found = {item.topic: item.body for item in builder.retained(state, T0)}
        line_level = found[f"metro/v1/lines/{line_id}/status"]["level"]
        shown = next(entry["level"] for entry in found[station_topic]["lines"]
                     if entry["line"]["id"] == line_id)
        levels.append((line_level, shown))
    assert levels == [("changes", "changes"), ("disrupted", "disrupted")]
