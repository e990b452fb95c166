"""`broadcaster check`: validate a config, its network and every template against sample notices.

Sample notices are made by the real compose step from synthetic changes on the operator's own network, so a
template that passes here sees exactly the variables it will see in service.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit
from urllib.request import url2pathname

from broadcaster.compose import ComposePolicy, Notice, compose, compose_correction, compose_digest
from broadcaster.config import Config, load_config
from broadcaster.errors import TemplateProblem
from broadcaster.feeds.network import load_network
from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Occupancy, Severity
from broadcaster.render import Renderer
from broadcaster.render.posts import DETAIL_LEVELS, FULL
from broadcaster.state import (
    AlertChange,
    AlertChangeKind,
    AlertRecord,
    Change,
    CrowdingChange,
    CrowdingRecord,
    LineStatus,
    LineStatusChange,
    LineStatusKind,
    NetworkState,
    alert_version,
)


@dataclass
class CheckReport:
    config: Path
    lines: int = 0
    stations: int = 0
    feeds: int = 0
    rendered: list[tuple[str, str, str]] = field(default_factory=list)  # kind, language, text
    problems: list[str] = field(default_factory=list)

    def as_text(self) -> str:
        out = [f"{self.config}: {self.lines} lines, {self.stations} stations, {self.feeds} feeds"]
        for kind, lang, text in self.rendered:
            out.append(f"--- {kind} [{lang}]")
            out.append(text)
        verdict = "OK" if not self.problems else f"{len(self.problems)} problem(s)"
        out.append(f"--- {len(self.rendered)} sample posts rendered: {verdict}")
        return "\n".join(out)

    def as_dict(self) -> dict[str, object]:
        return {
            "config": str(self.config), "lines": self.lines, "stations": self.stations, "feeds": self.feeds,
            "rendered": [{"kind": k, "language": lang, "text": t} for k, lang, t in self.rendered],
            "problems": self.problems, "ok": not self.problems,
        }


def sample_changes(network: Network, now: datetime) -> list[Change]:
    """One change of every kind that produces a notice, on the network's first line and station."""
    line_id = next(iter(network.lines))
    stations = network.stations_of(line_id) or tuple(network.stations)
    station_id = stations[0]
    header = LocalizedText.of(zh="信号故障，列车限速运行", en="Signal fault, trains running slowly")
    description = LocalizedText(MappingProxyType({
        "zh": "受信号设备故障影响，列车运行间隔延长，请乘客合理安排出行。",
        "en": "A signal fault is lengthening intervals between trains. Please allow extra time.",
    }))
    alert = Alert(
        id="sample-1", cause="TECHNICAL_PROBLEM", effect="SIGNIFICANT_DELAYS", severity=Severity.SEVERE,
        header=header, description=description, url=LocalizedText(),
        informed=(InformedEntity(line_id=line_id), InformedEntity(station_id=station_id)),
        active_periods=(ActivePeriod(now - timedelta(minutes=5), now + timedelta(hours=1)),),
    )
    record = AlertRecord(alert, alert_version(alert), "sample", now, now)
    delayed = LineStatus(LineStatusKind.DELAYED, max_delay_s=480)
    normal = LineStatus(LineStatusKind.NORMAL)
    crowded = CrowdingRecord(station_id, Occupancy.CRUSHED_STANDING_ROOM_ONLY, 92, now, now, trend=1)
    eased = CrowdingRecord(station_id, Occupancy.FEW_SEATS_AVAILABLE, 55, now, now, trend=-1)
    return [
        AlertChange(AlertChangeKind.NEW, record),
        AlertChange(AlertChangeKind.UPDATED, record, previous=record),
        AlertChange(AlertChangeKind.RESOLVED, record, previous=record),
        LineStatusChange(line_id, normal, delayed),
        LineStatusChange(line_id, delayed, normal),
        CrowdingChange(station_id, Occupancy.STANDING_ROOM_ONLY, crowded),
        CrowdingChange(station_id, Occupancy.CRUSHED_STANDING_ROOM_ONLY, eased),
    ]


def sample_notices(config: Config, network: Network, now: datetime) -> list[Notice]:
    policy = ComposePolicy(config.zone, config.network.languages)
    changes = sample_changes(network, now)
    notices = compose(changes, network=network, now=now, policy=policy)
    state = NetworkState()
    for change in changes:  # a state with a disruption and a crowded station, for the digest
        if isinstance(change, AlertChange) and change.kind is AlertChangeKind.NEW:
            state = replace(state, alerts={change.record.alert.id: change.record})
        elif isinstance(change, LineStatusChange) and change.after.kind is LineStatusKind.DELAYED:
            state = replace(state, lines={**state.lines, change.line_id: change.after})
        elif isinstance(change, CrowdingChange) and change.record.level.rank >= Occupancy.STANDING_ROOM_ONLY.rank:
            state = replace(state, crowding={change.station_id: change.record})
    notices.append(compose_digest(state, name="digest", network=network, slot=now, policy=policy))
    notices.append(compose_correction(
        "alert-sample-1",
        {"zh": "此前通告有误：1号线运营正常。", "en": "The earlier notice was wrong: Line 1 runs normally."},
        line_ids=tuple(network.lines)[:1], network=network, now=now, policy=policy,
    ))
    return sorted(notices, key=lambda n: n.kind.value)  # compose orders by priority; a report reads better by kind


def _feed_problems(config: Config) -> list[str]:
    problems = []
    for i, feed in enumerate(config.feeds):
        parts = urlsplit(feed.url)
        if parts.scheme == "file" and not Path(url2pathname(parts.path)).is_file():
            problems.append(f"{config.source}: feeds[{i}].url: {feed.url!r}: no such file")
    return problems


def check_config(path: Path, now: datetime | None = None) -> CheckReport:
    """Validate everything `run` would use, without touching the network or the broker.

    Raises:
        ConfigError, NetworkDataError: the config or the static GTFS cannot be used at all.
    """
    config = load_config(path)
    network = load_network(config.network.gtfs, config.network.default_language)
    report = CheckReport(path, len(network.lines), len(network.stations), len(config.feeds))
    report.problems += _feed_problems(config)
    if config.templates.directory is not None and not config.templates.directory.is_dir():
        report.problems.append(f"{path}: templates.directory: {str(config.templates.directory)!r}: no such folder")
        return report
    renderer = Renderer(config.templates.directory)
    for notice in sample_notices(config, network, now or datetime.now(UTC)):
        for lang, context in notice.contexts.items():
            # Every detail level a channel's length rule may ask for must render; the report shows the full one.
            for detail in DETAIL_LEVELS:
                try:
                    text = renderer.check(notice.kind.value, lang, {**context, "detail": detail})
                except TemplateProblem as problem:
                    report.problems.append(f"{problem} (detail={detail})")
                    break
                if detail == FULL:
                    report.rendered.append((notice.kind.value, lang, text))
    return report
