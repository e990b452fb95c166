"""The demo's scripted morning in Linjiang: what happens when, as data.

The rush builds from 07:00 and peaks at 08:15, heaviest at the interchanges; a signal fault on Line 2 is
announced at 07:40, updated at 07:55 and cleared at 08:25; People's Square fills up and restricts entry from
08:15; Line 4 runs late from 09:00 with no alert to explain it. The day loops from 06:30 to 10:00.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Text:
    zh: str
    en: str

    def as_dict(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}


@dataclass(frozen=True, slots=True)
class AlertVersion:
    """What an alert says from `at` on (until the next version or until it clears)."""

    at: time
    severity: str  # GTFS-Realtime SeverityLevel name
    effect: str  # GTFS-Realtime Effect name
    header: Text
    description: Text
    lines: tuple[str, ...] = ()
    stations: tuple[str, ...] = ()  # with `lines`: those lines at these stations


@dataclass(frozen=True, slots=True)
class ScriptedAlert:
    alert_id: str
    cause: str  # GTFS-Realtime Cause name
    versions: tuple[AlertVersion, ...]
    clears_at: time

    @property
    def starts_at(self) -> time:
        return self.versions[0].at


@dataclass(frozen=True, slots=True)
class DelayEpisode:
    """A line's trip delay over time: linear between the (time, seconds) points, zero outside them."""

    line_id: str
    points: tuple[tuple[time, int], ...]


@dataclass(frozen=True, slots=True)
class CrowdSurge:
    """Extra load at one station, rising to `extra_percent` at `peak`; entry restricted inside `restricted`."""

    station_id: str
    start: time
    peak: time
    end: time
    extra_percent: int
    restricted: tuple[time, time] | None = None


@dataclass(frozen=True, slots=True)
class Milestone:
    at: time
    text: Text


@dataclass(frozen=True, slots=True)
class Script:
    loop: tuple[time, time]
    start: time
    rush_peak: time
    rush_width_minutes: float
    base_percent: int
    rush_percent: int  # extra load at the rush peak at an ordinary station
    interchange_rush_percent: int  # ... at an interchange
    rush_percent_at: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    alerts: tuple[ScriptedAlert, ...] = ()
    delays: tuple[DelayEpisode, ...] = ()
    surges: tuple[CrowdSurge, ...] = ()
    milestones: tuple[Milestone, ...] = ()


SIGNAL_FAULT = "A-L2-signal-fault"
PEOPLES_SQUARE_CROWDING = "A-peoples-square-entry"
RAILWAY_STATION_LIFT = "A-railway-station-lift"

MORNING = Script(
    loop=(time(6, 30), time(10, 0)),
    start=time(7, 30),
    rush_peak=time(8, 15),
    rush_width_minutes=35,
    base_percent=18,
    rush_percent=40,
    interchange_rush_percent=62,
    rush_percent_at=MappingProxyType({
        "peoples-square": 72, "financial-street": 70, "railway-station": 66, "city-hall": 60,
        "zhongshan-road": 60, "software-park": 55, "science-park": 52,
        "xishan-park": 20, "free-trade-zone": 25, "beijiao": 30, "zoo": 12, "beach": 8, "steelworks": 28,
        "airport-economic-zone": 20, "airport-t1": 22, "airport-t2": 18,
    }),
    alerts=(
        ScriptedAlert(
            RAILWAY_STATION_LIFT, "MAINTENANCE",
            (AlertVersion(
                time(6, 30), "INFO", "ACCESSIBILITY_ISSUE",
                Text("火车站3号口电梯暂停使用", "Railway Station: lift at exit 3 out of service"),
                Text("火车站3号口电梯维修中，需要无障碍服务的乘客请从1号口进出站。",
                     "The lift at exit 3 is under repair; step-free access is via exit 1."),
                stations=("railway-station",)),),
            clears_at=time(9, 50)),
        ScriptedAlert(
            SIGNAL_FAULT, "TECHNICAL_PROBLEM",
            (AlertVersion(
                time(7, 40), "WARNING", "SIGNIFICANT_DELAYS",
                Text("信号设备故障，列车晚点", "Signal fault: trains delayed"),
                Text("2号线市政府至老城厢区间信号设备故障，列车限速运行，预计晚点约10分钟。",
                     "A signal fault between City Hall and Old Town slows Line 2 trains; expect 10 min delays."),
                lines=("2",)),
             AlertVersion(
                time(7, 55), "WARNING", "SIGNIFICANT_DELAYS",
                Text("信号故障抢修中，晚点约15分钟", "Signal fault: repairs under way, 15 min delays"),
                Text("信号设备抢修中，2号线市政府至老城厢区间列车限速运行，预计晚点约15分钟。可换乘3号线绕行。",
                     "Repairs between City Hall and Old Town are under way; expect 15 min delays on Line 2. "
                     "Line 3 is an alternative."),
                lines=("2",), stations=("city-hall", "peoples-square", "old-town"))),
            clears_at=time(8, 25)),
        ScriptedAlert(
            PEOPLES_SQUARE_CROWDING, "OTHER_CAUSE",
            (AlertVersion(
                time(8, 15), "INFO", "OTHER_EFFECT",
                Text("人民广场站客流较大，采取限流措施", "People's Square: entry restricted, very crowded"),
                Text("人民广场站客流较大，部分出入口限流，请听从工作人员指引，或选择相邻车站乘车。",
                     "Some entrances are restricted; follow staff directions or use a neighbouring station."),
                stations=("peoples-square",)),),
            clears_at=time(8, 35)),
    ),
    delays=(
        DelayEpisode("2", ((time(7, 40), 0), (time(7, 48), 540), (time(7, 55), 900), (time(8, 20), 900),
                           (time(8, 30), 120), (time(8, 36), 0))),
        DelayEpisode("4", ((time(9, 0), 0), (time(9, 4), 420), (time(9, 20), 420), (time(9, 27), 0))),
    ),
    surges=(
        CrowdSurge("peoples-square", time(7, 50), time(8, 20), time(8, 45), extra_percent=45,
                   restricted=(time(8, 15), time(8, 35))),
        CrowdSurge("city-hall", time(7, 45), time(8, 10), time(8, 40), extra_percent=25),
    ),
    milestones=(
        Milestone(time(6, 30), Text("运营平稳", "Quiet start of service")),
        Milestone(time(7, 0), Text("早高峰开始，换乘站客流上升", "Morning rush builds at the interchanges")),
        Milestone(time(7, 40), Text("2号线信号故障（新警报）", "Line 2 signal fault (new alert)")),
        Milestone(time(7, 55), Text("信号故障更新：晚点约15分钟", "Signal fault updated: 15 min delays")),
        Milestone(time(8, 15), Text("人民广场站限流", "People's Square restricts entry")),
        Milestone(time(8, 25), Text("信号故障修复（警报解除）", "Signal fault cleared (alert resolved)")),
        Milestone(time(8, 35), Text("人民广场站解除限流", "People's Square entry restriction lifted")),
        Milestone(time(9, 0), Text("4号线列车晚点", "Line 4 trains running late")),
        Milestone(time(9, 27), Text("4号线恢复正常", "Line 4 back to good service")),
        Milestone(time(9, 50), Text("早高峰结束", "Morning rush over")),
    ),
)
