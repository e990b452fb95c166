"""Sample notices made by the real compose step from synthetic changes on the operator's own network, so a
template that passes the check sees exactly the variables it will see in service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType

from broadcaster.compose import ComposePolicy, Notice, NoticeKind, compose, compose_correction, compose_digest
from broadcaster.config import Config
from broadcaster.model import ActivePeriod, Alert, InformedEntity, LocalizedText, Network, Occupancy, Severity
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


def sample_notices(
    config: Config, network: Network, now: datetime, digest_templates: Sequence[str] | None = None
) -> list[Notice]:
    """A notice of every kind from `sample_changes`, a digest per template in `digest_templates` (by default each
    template the config's digests name, or the built-in "digest" when it names none) and a correction."""
    if digest_templates is None:
        digest_templates = named_digest_templates(config)
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
    notices += [compose_digest(state, name=template, network=network, slot=now, policy=policy, template=template)
                for template in digest_templates]
    notices.append(compose_correction(
        "alert-sample-1",
        {"zh": "此前通告有误：1号线运营正常。", "en": "The earlier notice was wrong: Line 1 runs normally."},
        line_ids=tuple(network.lines)[:1], network=network, now=now, policy=policy,
    ))
    return sorted(notices, key=lambda n: n.kind.value)  # compose orders by priority; a report reads better by kind


def named_digest_templates(config: Config) -> list[str]:
    """The template base names the config's digests use, each once, in config order."""
    named = [digest.template for digest in config.digests] or [NoticeKind.DIGEST.value]
    return list(dict.fromkeys(named))

