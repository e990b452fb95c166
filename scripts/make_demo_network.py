"""Write the demo city's static GTFS (config/demo/network/): Linjiang Metro, five lines, thirty stations.

Run from the repository root: `python scripts/make_demo_network.py`. The files are committed, so the demo runs
without this script; rerun it after changing the city below. Every station is a `location_type` 1 stop with one
platform per line (`{station}-L{line}`), and each line runs a few trips in each direction, so a station display
knows which lines call at it and in which order.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "config" / "demo" / "network"

AGENCY = ("LJM", "临江地铁", "Linjiang Metro", "https://metro.linjiang.example/")

# id: (Chinese name, English name, latitude, longitude)
STATIONS: dict[str, tuple[str, str, float, float]] = {
    "xishan-park": ("西山公园", "Xishan Park", 31.2300, 121.3400),
    "university-town": ("大学城", "University Town", 31.2310, 121.3620),
    "science-park": ("科技园", "Science Park", 31.2320, 121.3850),
    "cultural-palace": ("文化宫", "Cultural Palace", 31.2330, 121.4080),
    "peoples-square": ("人民广场", "People's Square", 31.2340, 121.4300),
    "zhongshan-road": ("中山路", "Zhongshan Road", 31.2350, 121.4520),
    "railway-station": ("火车站", "Railway Station", 31.2360, 121.4750),
    "east-lake": ("东湖", "East Lake", 31.2370, 121.4980),
    "harbour-new-town": ("港城新区", "Harbour New Town", 31.2380, 121.5200),
    "free-trade-zone": ("自贸区", "Free Trade Zone", 31.2390, 121.5430),
    "beijiao": ("北郊", "Beijiao", 31.3100, 121.4300),
    "sports-centre": ("体育中心", "Sports Centre", 31.2850, 121.4300),
    "city-hall": ("市政府", "City Hall", 31.2600, 121.4300),
    "old-town": ("老城厢", "Old Town", 31.2100, 121.4300),
    "riverside-park": ("滨江公园", "Riverside Park", 31.1850, 121.4300),
    "south-station": ("南站", "South Railway Station", 31.1600, 121.4300),
    "expo-centre": ("会展中心", "Expo Centre", 31.1350, 121.4300),
    "zoo": ("动物园", "Zoo", 31.2900, 121.3900),
    "botanical-garden": ("植物园", "Botanical Garden", 31.2800, 121.4000),
    "qingnian-road": ("青年路", "Qingnian Road", 31.2700, 121.4150),
    "silk-market": ("丝绸市场", "Silk Market", 31.2100, 121.4450),
    "beach": ("海滨浴场", "Seaside Beach", 31.1700, 121.4600),
    "steelworks": ("钢铁厂", "Steelworks", 31.3000, 121.4750),
    "workers-village": ("工人新村", "Workers' Village", 31.2700, 121.4750),
    "east-gate": ("东门", "East Gate", 31.2100, 121.4700),
    "financial-street": ("金融街", "Financial Street", 31.1850, 121.4600),
    "software-park": ("软件园", "Software Park", 31.1400, 121.4200),
    "airport-economic-zone": ("临空经济区", "Airport Economic Zone", 31.1300, 121.4800),
    "airport-t1": ("机场1号航站楼", "Airport Terminal 1", 31.1200, 121.5100),
    "airport-t2": ("机场2号航站楼", "Airport Terminal 2", 31.1150, 121.5250),
}

# id: (short name, Chinese long name, English long name, colour, stations in direction 0)
LINES: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "1": ("1", "1号线", "Line 1", "E4002B", (
        "xishan-park", "university-town", "science-park", "cultural-palace", "peoples-square", "zhongshan-road",
        "railway-station", "east-lake", "harbour-new-town", "free-trade-zone")),
    "2": ("2", "2号线", "Line 2", "00A651", (
        "beijiao", "sports-centre", "city-hall", "peoples-square", "old-town", "riverside-park", "south-station",
        "expo-centre")),
    "3": ("3", "3号线", "Line 3", "F7A800", (
        "zoo", "botanical-garden", "qingnian-road", "city-hall", "zhongshan-road", "silk-market", "riverside-park",
        "beach")),
    "4": ("4", "4号线", "Line 4", "8E44AD", (
        "steelworks", "workers-village", "railway-station", "east-gate", "financial-street", "south-station",
        "software-park")),
    "5": ("5", "5号线（机场线）", "Line 5 (Airport)", "0072CE", (
        "cultural-palace", "old-town", "financial-street", "expo-centre", "airport-economic-zone", "airport-t1",
        "airport-t2")),
}

TRIPS_PER_DIRECTION = 4
FIRST_DEPARTURE_MIN = 6 * 60  # 06:00
HEADWAY_MIN = 6
RUN_SECONDS = 150  # between stations
DWELL_SECONDS = 30


def platform_id(station: str, line: str) -> str:
    return f"{station}-L{line}"


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def tables() -> dict[str, str]:
    agency_id, name_zh, name_en, url = AGENCY
    out: dict[str, str] = {}
    out["agency.txt"] = _csv(["agency_id", "agency_name", "agency_url", "agency_timezone", "agency_lang"],
                             [[agency_id, name_zh, url, "Asia/Shanghai", "zh"]])
    out["feed_info.txt"] = _csv(
        ["feed_publisher_name", "feed_publisher_url", "feed_lang", "default_lang", "feed_start_date",
         "feed_end_date", "feed_version"],
        [[name_zh, url, "zh", "zh", "20250101", "20301231", "demo.1"]])
    out["calendar.txt"] = _csv(
        ["service_id", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "start_date",
         "end_date"],
        [["DAILY", "1", "1", "1", "1", "1", "1", "1", "20250101", "20301231"]])
    out["routes.txt"] = _csv(
        ["route_id", "agency_id", "route_short_name", "route_long_name", "route_type", "route_color",
         "route_text_color"],
        [[lid, agency_id, short, zh, "1", color, "FFFFFF"] for lid, (short, zh, _en, color, _s) in LINES.items()])

    stops: list[list[str]] = []
    for sid, (zh, _en, lat, lon) in STATIONS.items():
        stops.append([sid, zh, f"{lat:.6f}", f"{lon:.6f}", "1", "", ""])
    for lid, (*_, stations) in LINES.items():
        for sid in stations:
            zh, _en, lat, lon = STATIONS[sid]
            stops.append([platform_id(sid, lid), zh, f"{lat:.6f}", f"{lon:.6f}", "0", sid, lid])
    out["stops.txt"] = _csv(
        ["stop_id", "stop_name", "stop_lat", "stop_lon", "location_type", "parent_station", "platform_code"], stops)

    trips: list[list[str]] = []
    stop_times: list[list[str]] = []
    for lid, (*_, stations) in LINES.items():
        for direction in (0, 1):
            order = stations if direction == 0 else tuple(reversed(stations))
            headsign = STATIONS[order[-1]][0]
            for n in range(TRIPS_PER_DIRECTION):
                trip_id = f"L{lid}-{direction}-{n + 1:02d}"
                trips.append([lid, "DAILY", trip_id, headsign, str(direction)])
                t = (FIRST_DEPARTURE_MIN + n * HEADWAY_MIN) * 60
                for seq, sid in enumerate(order, start=1):
                    stop_times.append([trip_id, _hms(t), _hms(t + DWELL_SECONDS), platform_id(sid, lid), str(seq)])
                    t += DWELL_SECONDS + RUN_SECONDS
    out["trips.txt"] = _csv(["route_id", "service_id", "trip_id", "trip_headsign", "direction_id"], trips)
    out["stop_times.txt"] = _csv(["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"],
                                 stop_times)

    translations = [["agency", "agency_name", "en", name_en, agency_id, "", ""],
                    ["feed_info", "feed_publisher_name", "en", name_en, "", "", ""]]
    translations += [["routes", "route_long_name", "en", en, lid, "", ""]
                     for lid, (_short, _zh, en, _c, _s) in LINES.items()]
    translations += [["stops", "stop_name", "en", en, "", "", zh] for zh, en, _lat, _lon in STATIONS.values()]
    translations += [["trips", "trip_headsign", "en", STATIONS[sid][1], "", "", STATIONS[sid][0]]
                     for sid in sorted({s for *_, stations in LINES.values() for s in (stations[0], stations[-1])})]
    out["translations.txt"] = _csv(
        ["table_name", "field_name", "language", "translation", "record_id", "record_sub_id", "field_value"],
        translations)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in tables().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(OUT / name)


if __name__ == "__main__":
    main()
