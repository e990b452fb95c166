"""Write the sample feeds that config/example.toml reads (config/samples/), from the example network.

Run from the repository root: `python scripts/make_sample_feeds.py`. The files are committed so the example
runs offline; rerun this after changing the example network.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from google.transit import gtfs_realtime_pb2 as rt

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "config" / "samples"
STAMP = int(datetime(2026, 11, 25, 0, 15, tzinfo=UTC).timestamp())  # 08:15 in Shanghai


def _text(ts: rt.TranslatedString, zh: str, en: str) -> None:
    for lang, text in (("zh-CN", zh), ("en", en)):
        t = ts.translation.add()
        t.language = lang
        t.text = text


def gtfs_rt() -> bytes:
    msg = rt.FeedMessage()
    msg.header.gtfs_realtime_version = "2.0"
    msg.header.incrementality = rt.FeedHeader.FULL_DATASET
    msg.header.timestamp = STAMP

    e = msg.entity.add()
    e.id = "A-2-signal"
    a = e.alert
    a.cause = rt.Alert.TECHNICAL_PROBLEM
    a.effect = rt.Alert.SIGNIFICANT_DELAYS
    a.severity_level = rt.Alert.WARNING
    a.informed_entity.add().route_id = "2"
    _text(a.header_text, "信号设备故障，列车晚点", "Signal fault: trains delayed")
    _text(a.description_text, "2号线科技园至人民广场区段信号设备故障，列车限速运行，预计晚点10分钟。",
          "A signal fault between Science Park and People's Square slows Line 2 trains; expect 10 min delays.")

    e = msg.entity.add()
    e.id = "A-S06-lift"
    a = e.alert
    a.cause = rt.Alert.MAINTENANCE
    a.effect = rt.Alert.ACCESSIBILITY_ISSUE
    a.severity_level = rt.Alert.INFO
    a.informed_entity.add().stop_id = "S06"
    _text(a.header_text, "火车站站3号口电梯维修", "Railway Station: lift at exit 3 under repair")

    for trip_id, route, direction, delay in (("2-0-01", "2", 0, 540), ("2-1-01", "2", 1, 420),
                                              ("1-0-01", "1", 0, 30)):
        e = msg.entity.add()
        e.id = f"TU-{trip_id}"
        tu = e.trip_update
        tu.trip.trip_id = trip_id
        tu.trip.route_id = route
        tu.trip.direction_id = direction
        tu.delay = delay
        tu.timestamp = STAMP

    for vid, trip_id, route, direction, occ in (("V101", "1-0-01", "1", 0, rt.VehiclePosition.STANDING_ROOM_ONLY),
                                                ("V102", "1-1-01", "1", 1, rt.VehiclePosition.FEW_SEATS_AVAILABLE)):
        e = msg.entity.add()
        e.id = vid
        vp = e.vehicle
        vp.trip.trip_id = trip_id
        vp.trip.route_id = route
        vp.trip.direction_id = direction
        vp.occupancy_status = occ
        vp.timestamp = STAMP
    return msg.SerializeToString()


def passenger_flow() -> str:
    levels = {
        "S04": ("CRUSHED_STANDING_ROOM_ONLY", 93), "S06": ("STANDING_ROOM_ONLY", 78),
        "S13": ("FEW_SEATS_AVAILABLE", 45),
        "S01": ("MANY_SEATS_AVAILABLE", 20), "S09": ("FEW_SEATS_AVAILABLE", 40),
    }
    doc = {
        "schema": "broadcaster.passenger-flow/1",
        "timestamp": datetime.fromtimestamp(STAMP, UTC).isoformat().replace("+00:00", "Z"),
        "stations": [
            {"station_id": sid, "level": level, "percentage": pct} for sid, (level, pct) in levels.items()
        ] + [
            {"station_id": "S04-1A", "line_id": "1", "direction_id": 0, "level": "FULL", "percentage": 101},
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gtfs-rt.pb").write_bytes(gtfs_rt())
    (OUT / "passenger-flow.json").write_text(passenger_flow(), encoding="utf-8")
    print(f"wrote {OUT}/gtfs-rt.pb and passenger-flow.json")


if __name__ == "__main__":
    main()
