"""A synthetic metro city at scale factor k: static GTFS, GTFS-Realtime and passenger-flow feeds, as files.

k = 1 is about Shanghai: 20 lines, 500 stations (30 % of them interchanges), 5,000 trip updates, 3,000 vehicle
positions with occupancy and 50 active alerts, with Chinese and English names. Everything is deterministic for
a given (k, seed). GTFS-Realtime comes as three feeds (alerts, trip updates, vehicle positions), as agencies
usually publish it; crowding as one passenger-flow document with a reading per station, line and direction.

The feeds of every step a scenario needs are written in advance (`write_city`), so that a scenario process
only swaps files and its own memory and time are the broadcaster's.
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
from google.transit import gtfs_realtime_pb2 as pb

# Syllables for station names: (hanzi, pinyin). Names are first + second (+ a district for big cities).
_FIRST = [
    ("人民", "Renmin"), ("中山", "Zhongshan"), ("南京", "Nanjing"), ("淮海", "Huaihai"), ("徐家", "Xujia"),
    ("陆家", "Lujia"), ("龙华", "Longhua"), ("虹桥", "Hongqiao"), ("静安", "Jing'an"), ("江湾", "Jiangwan"),
    ("五角", "Wujiao"), ("世纪", "Shiji"), ("张江", "Zhangjiang"), ("金桥", "Jinqiao"), ("曹杨", "Caoyang"),
    ("长寿", "Changshou"), ("宜山", "Yishan"), ("漕宝", "Caobao"), ("莘庄", "Xinzhuang"), ("松江", "Songjiang"),
    ("嘉定", "Jiading"), ("宝山", "Baoshan"), ("浦江", "Pujiang"), ("滨江", "Binjiang"), ("东方", "Dongfang"),
    ("西郊", "Xijiao"), ("北新", "Beixin"), ("南翔", "Nanxiang"), ("金沙", "Jinsha"), ("高桥", "Gaoqiao"),
    ("杨高", "Yanggao"), ("锦绣", "Jinxiu"), ("丰庄", "Fengzhuang"), ("航头", "Hangtou"), ("惠南", "Huinan"),
    ("临港", "Lingang"), ("顾村", "Gucun"), ("大场", "Dachang"), ("彭浦", "Pengpu"), ("芷江", "Zhijiang"),
]
_SECOND = [
    ("路", "Road"), ("广场", "Square"), ("公园", "Park"), ("站", "Station"), ("大道", "Avenue"),
    ("新村", "New Village"), ("桥", "Bridge"), ("东", "East"), ("西", "West"), ("南", "South"), ("北", "North"),
    ("中心", "Centre"), ("镇", "Town"), ("港", "Port"), ("湖", "Lake"), ("门", "Gate"), ("体育场", "Stadium"),
    ("医院", "Hospital"), ("大学", "University"), ("科技园", "Science Park"), ("商城", "Mall"), ("码头", "Pier"),
    ("老街", "Old Street"), ("花园", "Garden"), ("机场", "Airport"),
]
_DISTRICTS = [
    ("", ""), ("浦东", "Pudong "), ("闵行", "Minhang "), ("青浦", "Qingpu "), ("奉贤", "Fengxian "),
    ("金山", "Jinshan "), ("崇明", "Chongming "), ("杨浦", "Yangpu "), ("普陀", "Putuo "), ("长宁", "Changning "),
]
_COLOURS = ["E4002B", "97D700", "FFD100", "5F259F", "AC4FC6", "D71671", "FF6900", "009EDB", "71C5E8", "C1A7E2"]
_OCCUPANCY_WEIGHTS = [(1, 30), (2, 35), (3, 25), (4, 7), (5, 3)]  # OccupancyStatus rank -> weight
_VEHICLE_LEVELS = [
    pb.VehiclePosition.MANY_SEATS_AVAILABLE, pb.VehiclePosition.FEW_SEATS_AVAILABLE,
    pb.VehiclePosition.STANDING_ROOM_ONLY, pb.VehiclePosition.CRUSHED_STANDING_ROOM_ONLY, pb.VehiclePosition.FULL,
]
_STOP_TIME_UPDATES = 6
_LEVEL_NAMES = {v.number: v.name for v in pb.VehiclePosition.OccupancyStatus.DESCRIPTOR.values}


@dataclass(frozen=True, slots=True)
class Shape:
    """How big a city is."""

    k: float
    lines: int
    stations: int
    trips: int
    vehicles: int
    alerts: int

    @classmethod
    def at(cls, k: float) -> Shape:
        return cls(
            k=k,
            lines=max(2, round(20 * k)),
            stations=max(10, round(500 * k)),
            trips=max(20, round(5000 * k)),
            vehicles=max(10, round(3000 * k)),
            alerts=max(2, round(50 * k)),
        )


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """One alert as the city's operator would state it."""

    id: str
    effect: str
    cause: str
    severity: str
    line: str | None
    stations: tuple[str, ...]
    header: tuple[str, str]  # zh, en
    description: tuple[str, str]
    revision: int = 0


@dataclass(slots=True)
class Reading:
    level: int
    percentage: int
    observed_at: int


@dataclass(slots=True)
class City:
    """The city's static network and its live condition, which `step` moves on."""

    shape: Shape
    seed: int = 7
    line_ids: list[str] = field(default_factory=list)
    line_stations: dict[str, list[str]] = field(default_factory=dict)
    station_names: dict[str, tuple[str, str]] = field(default_factory=dict)
    station_pos: dict[str, tuple[float, float]] = field(default_factory=dict)
    trips: list[tuple[str, str, int]] = field(default_factory=list)  # trip_id, line, direction
    delayed_lines: frozenset[str] = frozenset()
    alerts: list[AlertSpec] = field(default_factory=list)
    readings: dict[tuple[str, str, int], Reading] = field(default_factory=dict)
    #: When the alerts' active periods began: fixed, or every fetch would be a new version of every alert.
    alerts_since: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        s = self.shape
        self.line_ids = [str(i + 1) for i in range(s.lines)]
        stations = [f"S{i + 1:05d}" for i in range(s.stations)]
        for i, station in enumerate(stations):
            zh1, en1 = _FIRST[i % len(_FIRST)]
            zh2, en2 = _SECOND[(i // len(_FIRST)) % len(_SECOND)]
            zh0, en0 = _DISTRICTS[(i // (len(_FIRST) * len(_SECOND))) % len(_DISTRICTS)]
            suffix = i // (len(_FIRST) * len(_SECOND) * len(_DISTRICTS))
            tail = f" {suffix + 1}" if suffix else ""
            self.station_names[station] = (f"{zh0}{zh1}{zh2}{tail}", f"{en0}{en1} {en2}{tail}")
            self.station_pos[station] = (31.0 + rng.random() * 0.5, 121.2 + rng.random() * 0.6)
        # Every station has a home line; 30 % are interchanges, also served by one or two other lines.
        members: dict[str, list[str]] = {line: [] for line in self.line_ids}
        for i, station in enumerate(stations):
            members[self.line_ids[i % s.lines]].append(station)
        for station in rng.sample(stations, round(0.3 * s.stations)):
            home = self.line_ids[stations.index(station) % s.lines]
            others = [line for line in self.line_ids if line != home]
            for line in rng.sample(others, min(len(others), 1 if rng.random() < 0.8 else 2)):
                members[line].insert(rng.randrange(len(members[line]) + 1), station)
        self.line_stations = members
        for j in range(s.trips):
            line = self.line_ids[j % s.lines]
            direction = (j // s.lines) % 2
            self.trips.append((f"{line}-{direction}-{j:06d}", line, direction))
        self.delayed_lines = frozenset(rng.sample(self.line_ids, max(1, s.lines // 10)))
        self.alerts = [self._base_alert(i, rng) for i in range(s.alerts)]
        for line, line_members in self.line_stations.items():
            for station in line_members:
                for direction in (0, 1):
                    level = rng.choices([lvl for lvl, _ in _OCCUPANCY_WEIGHTS], [w for _, w in _OCCUPANCY_WEIGHTS])[0]
                    self.readings[(station, line, direction)] = Reading(level, _percentage(level, rng), 0)

    # -- the network -------------------------------------------------------------------------------------------

    def stations_of(self, line: str) -> list[str]:
        return self.line_stations[line]

    def _base_alert(self, i: int, rng: random.Random) -> AlertSpec:
        line = self.line_ids[rng.randrange(len(self.line_ids))]
        line_members = self.line_stations[line]
        kind = i % 5
        if kind in (0, 1, 2):  # a lift or an exit at one station
            station = rng.choice(line_members)
            zh, en = self.station_names[station]
            return AlertSpec(
                f"A{i + 1:05d}", "ACCESSIBILITY_ISSUE", "MAINTENANCE", "INFO", None, (station,),
                (f"{zh}站{i % 8 + 1}号口电梯维修", f"{en}: lift at exit {i % 8 + 1} under repair"),
                (f"{zh}站{i % 8 + 1}号口电梯暂停使用，请使用其他出入口。",
                 f"The lift at exit {i % 8 + 1} of {en} is out of service; please use another exit."),
            )
        if kind == 3:  # delays on a stretch of a line
            start = rng.randrange(max(1, len(line_members) - 3))
            segment = tuple(line_members[start : start + 3])
            return AlertSpec(
                f"A{i + 1:05d}", "SIGNIFICANT_DELAYS", "TECHNICAL_PROBLEM", "WARNING", line, segment,
                (f"{line}号线信号故障，列车晚点", f"Line {line}: signal fault, trains delayed"),
                (f"{line}号线部分区段信号设备故障，列车限速运行，预计晚点10分钟。",
                 f"A signal fault slows Line {line} trains on part of the line; expect 10 min delays."),
            )
        return AlertSpec(  # a line-wide notice
            f"A{i + 1:05d}", "MODIFIED_SERVICE", "OTHER_CAUSE", "INFO", line, (),
            (f"{line}号线本周末调整运营时间", f"Line {line}: changed hours this weekend"),
            (f"本周末{line}号线末班车提前至22:30。", f"This weekend the last Line {line} train leaves at 22:30."),
        )

    def emergency_alert(self, round_no: int) -> AlertSpec:
        """A NO_SERVICE alert on a stretch of one line: the line becomes partly suspended."""
        line = self.line_ids[round_no % len(self.line_ids)]
        line_members = self.line_stations[line]
        segment = tuple(line_members[1:6])
        first, last = self.station_names[segment[0]], self.station_names[segment[-1]]
        return AlertSpec(
            f"E{round_no:04d}", "NO_SERVICE", "ACCIDENT", "SEVERE", line, segment,
            (f"{line}号线{first[0]}至{last[0]}区段暂停运营", f"Line {line}: no service {first[1]} - {last[1]}"),
            (f"因突发事件，{line}号线{first[0]}至{last[0]}区段暂停运营，请换乘其他线路。",
             f"Owing to an incident there is no Line {line} service between {first[1]} and {last[1]}."),
        )

    def affected_stations(self, alert: AlertSpec) -> tuple[str, ...]:
        """Stations whose display changes when `alert` appears: every station of its line (the line's status
        shows there) and every station it names."""
        out = dict.fromkeys(alert.stations)
        if alert.line is not None:
            out.update(dict.fromkeys(self.line_stations[alert.line]))
        return tuple(out)

    # -- moving on ---------------------------------------------------------------------------------------------

    def step(self, tick: int, timestamp: int) -> None:
        """A steady tick: 5 % of stations change crowding level, 2 alerts change their text."""
        rng = random.Random(self.seed * 1000 + tick)
        by_station: dict[str, list[tuple[str, str, int]]] = {}
        for key in self.readings:
            by_station.setdefault(key[0], []).append(key)
        changing = rng.sample(sorted(by_station), max(1, round(0.05 * self.shape.stations)))
        for station in changing:
            keys = by_station[station]
            top = max(self.readings[key].level for key in keys)
            delta = 1 if top < 4 else -1
            for key in keys:
                level = min(5, max(1, self.readings[key].level + delta))
                self.readings[key] = Reading(level, _percentage(level, rng), timestamp)
        for index in ((2 * tick) % len(self.alerts), (2 * tick + 1) % len(self.alerts)):
            spec = self.alerts[index]
            revision = spec.revision + 1
            zh, en = spec.description
            self.alerts[index] = replace(
                spec, description=(f"{zh}（第{revision}次更新）", f"{en} (update {revision})"), revision=revision
            )

    # -- feeds -------------------------------------------------------------------------------------------------

    def alerts_feed(self, timestamp: int, extra: AlertSpec | None = None) -> bytes:
        message = _message(timestamp)
        for spec in [*self.alerts, *([extra] if extra else [])]:
            entity = message.entity.add(id=spec.id)
            alert = entity.alert
            # The constructor takes enum names as strings (and checks them).
            alert.MergeFrom(pb.Alert(cause=spec.cause, effect=spec.effect, severity_level=spec.severity))
            for language, text in (("zh-CN", spec.header[0]), ("en", spec.header[1])):
                alert.header_text.translation.add(text=text, language=language)
            for language, text in (("zh-CN", spec.description[0]), ("en", spec.description[1])):
                alert.description_text.translation.add(text=text, language=language)
            if spec.line is not None and not spec.stations:
                alert.informed_entity.add(route_id=spec.line)
            for station in spec.stations:
                if spec.line is not None:
                    alert.informed_entity.add(route_id=spec.line, stop_id=station)
                else:
                    alert.informed_entity.add(stop_id=station)
            alert.active_period.add(start=self.alerts_since or timestamp - 3600)
        return message.SerializeToString()

    def trip_updates(self, timestamp: int) -> pb.FeedMessage:
        rng = random.Random(self.seed + 1)
        message = _message(timestamp)
        for trip_id, line, direction in self.trips:
            entity = message.entity.add(id=f"tu-{trip_id}")
            update = entity.trip_update
            update.trip.trip_id = trip_id
            update.trip.route_id = line
            update.trip.direction_id = direction
            update.timestamp = timestamp
            delay = rng.randrange(360, 900) if line in self.delayed_lines else rng.randrange(0, 150)
            line_members = self.line_stations[line] if direction == 0 else self.line_stations[line][::-1]
            start = rng.randrange(len(line_members))
            for offset, station in enumerate(line_members[start : start + _STOP_TIME_UPDATES]):
                stop_time = update.stop_time_update.add(
                    stop_sequence=start + offset + 1, stop_id=f"{station}-{line}-{direction}"
                )
                stop_time.arrival.delay = delay
                stop_time.arrival.time = timestamp + 120 * (offset + 1) + delay
                stop_time.departure.delay = delay
                stop_time.departure.time = timestamp + 120 * (offset + 1) + delay + 30
        return message

    def vehicle_positions(self, timestamp: int) -> pb.FeedMessage:
        rng = random.Random(self.seed + 2)
        message = _message(timestamp)
        weights = [w for _, w in _OCCUPANCY_WEIGHTS]
        for trip_id, line, direction in self.trips[: self.shape.vehicles]:
            entity = message.entity.add(id=f"vp-{trip_id}")
            vehicle = entity.vehicle
            vehicle.trip.trip_id = trip_id
            vehicle.trip.route_id = line
            vehicle.trip.direction_id = direction
            vehicle.vehicle.id = f"car-{trip_id}"
            station = rng.choice(self.line_stations[line])
            lat, lon = self.station_pos[station]
            vehicle.position.latitude = lat
            vehicle.position.longitude = lon
            vehicle.stop_id = f"{station}-{line}-{direction}"
            vehicle.current_status = pb.VehiclePosition.STOPPED_AT
            vehicle.timestamp = timestamp
            vehicle.occupancy_status = rng.choices(_VEHICLE_LEVELS, weights)[0]
        return message

    def flow_feed(self, timestamp: int) -> bytes:
        """The passenger-flow document: one reading per station, line and direction.

        A reading that did not change keeps the time it was observed, as an aggregator republishing its last
        measurement does; readings that changed carry the new time.
        """
        records = []
        for (station, line, direction), reading in self.readings.items():
            reading.observed_at = reading.observed_at or timestamp
            records.append({
                "station_id": station, "line_id": line, "direction_id": direction,
                "level": _LEVEL_NAMES[reading.level], "percentage": reading.percentage,
                "observed_at": reading.observed_at,
            })
        return orjson.dumps({"schema": "broadcaster.passenger-flow/1", "timestamp": timestamp, "stations": records})

    # -- static GTFS -------------------------------------------------------------------------------------------

    def write_gtfs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

        def table(name: str, header: list[str], rows: list[list[object]]) -> None:
            with (folder / name).open("w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)

        table("agency.txt", ["agency_id", "agency_name", "agency_url", "agency_timezone", "agency_lang"],
              [["BM", "基准地铁", "https://metro.example/", "Asia/Shanghai", "zh"]])
        table("calendar.txt", ["service_id", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                               "sunday", "start_date", "end_date"], [["D", 1, 1, 1, 1, 1, 1, 1, 20250101, 20301231]])
        table("routes.txt", ["route_id", "agency_id", "route_short_name", "route_long_name", "route_type",
                             "route_color"],
              [[line, "BM", line, f"{line}号线", 1, _COLOURS[i % len(_COLOURS)]]
               for i, line in enumerate(self.line_ids)])
        stops: list[list[object]] = []
        for station, (zh, _) in self.station_names.items():
            lat, lon = self.station_pos[station]
            stops.append([station, zh, f"{lat:.6f}", f"{lon:.6f}", 1, ""])
        for line, line_members in self.line_stations.items():
            for station in line_members:
                lat, lon = self.station_pos[station]
                for direction in (0, 1):
                    stops.append([f"{station}-{line}-{direction}", self.station_names[station][0],
                                  f"{lat:.6f}", f"{lon:.6f}", 0, station])
        table("stops.txt", ["stop_id", "stop_name", "stop_lat", "stop_lon", "location_type", "parent_station"],
              stops)
        translations: list[list[object]] = [
            ["routes", "route_long_name", "en", f"Line {line}", line] for line in self.line_ids
        ]
        translations += [["stops", "stop_name", "en", en, station] for station, (_, en) in self.station_names.items()]
        table("translations.txt", ["table_name", "field_name", "language", "translation", "record_id"], translations)
        table("trips.txt", ["route_id", "service_id", "trip_id", "direction_id"],
              [[line, "D", trip_id, direction] for trip_id, line, direction in self.trips])
        with (folder / "stop_times.txt").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"])
            for j, (trip_id, line, direction) in enumerate(self.trips):
                line_members = self.line_stations[line] if direction == 0 else self.line_stations[line][::-1]
                start = 5 * 3600 + (j // len(self.line_ids)) * 60
                for seq, station in enumerate(line_members):
                    at = start + 120 * seq
                    hhmmss = f"{at // 3600:02d}:{at // 60 % 60:02d}:{at % 60:02d}"
                    writer.writerow([trip_id, hhmmss, hhmmss, f"{station}-{line}-{direction}", seq + 1])


def _percentage(level: int, rng: random.Random) -> int:
    return min(200, 18 * level + rng.randrange(0, 15))


def _message(timestamp: int) -> pb.FeedMessage:
    message = pb.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.incrementality = pb.FeedHeader.FULL_DATASET
    message.header.timestamp = timestamp
    return message


# ------------------------------------------------------------------------------------------------------------
# Everything a run needs, on disk


FEEDS = ("alerts.pb", "trips.pb", "vehicles.pb", "flow.json")


@dataclass(frozen=True, slots=True)
class CityFiles:
    """Where one city's files are: `gtfs/`, the served folder `www/`, and a folder per feed variant."""

    root: Path
    shape: Shape

    @property
    def gtfs(self) -> Path:
        return self.root / "gtfs"

    @property
    def www(self) -> Path:
        return self.root / "www"

    def variant(self, name: str) -> Path:
        return self.root / "variants" / name


def write_city(root: Path, k: float, *, ticks: int, emergencies: int, seed: int = 7) -> CityFiles:
    """Generate the city at scale `k` under `root`: static GTFS, the base feeds, `ticks` steady ticks
    (`tick1`...) and `emergencies` rounds of a NO_SERVICE alert appearing (`emergency{i}-on`) and clearing
    (`emergency{i}-off`). Timestamps start half an hour ago (earlier for more than 40 ticks) and only ever
    increase."""
    city = City(Shape.at(k), seed)
    files = CityFiles(root, city.shape)
    city.write_gtfs(files.gtfs)
    files.www.mkdir(parents=True, exist_ok=True)
    # The last tick (30 s apart, from ten minutes after the base) must not be in the future: the broadcaster
    # refuses a feed more than five minutes ahead of its clock, and `--ticks 150` failed at the 51st.
    base = int(time.time()) - max(1800, 600 + 30 * ticks)
    city.alerts_since = base - 3600
    trips = city.trip_updates(base)
    vehicles = city.vehicle_positions(base)

    def write(name: str, ts: int, *, alerts: bytes | None = None, all_feeds: bool = True) -> None:
        folder = files.variant(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "alerts.pb").write_bytes(alerts if alerts is not None else city.alerts_feed(ts))
        if all_feeds:
            trips.header.timestamp = ts
            vehicles.header.timestamp = ts
            (folder / "trips.pb").write_bytes(trips.SerializeToString())
            (folder / "vehicles.pb").write_bytes(vehicles.SerializeToString())
            (folder / "flow.json").write_bytes(city.flow_feed(ts))

    write("base", base)
    for i in range(emergencies):
        ts = base + 10 + 2 * i
        emergency = city.emergency_alert(i)
        write(f"emergency{i}-on", ts, alerts=city.alerts_feed(ts, emergency), all_feeds=False)
        meta = {"alert_id": emergency.id, "line": emergency.line, "stations": city.affected_stations(emergency)}
        (files.variant(f"emergency{i}-on") / "meta.json").write_bytes(orjson.dumps(meta))
        write(f"emergency{i}-off", ts + 1, all_feeds=False)
    for tick in range(1, ticks + 1):
        ts = base + 600 + 30 * tick
        city.step(tick, ts)
        write(f"tick{tick}", ts)
    return files
