"""Decide what is said: turn state changes into notices, each with a template context per language.

Pure: no I/O, no clock (`now` is passed in). Not every change is worth a notice: retained MQTT state carries
every change anyway, while notices (micro-blog posts, the MQTT notice stream) are for what a commuter should
hear about: alerts appearing, changing and clearing; delays that no alert explains; a station crossing into
or out of heavy crowding.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from broadcaster.model import Alert, Network, Occupancy, Severity
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
)
from broadcaster.vocabulary import word


class NoticeKind(enum.StrEnum):
    """What a notice is about; also the base name of its templates (``alert_new.zh.j2``)."""

    ALERT_NEW = "alert_new"
    ALERT_UPDATED = "alert_updated"
    ALERT_RESOLVED = "alert_resolved"
    LINE_STATUS = "line_status"
    CROWDING = "crowding"
    DIGEST = "digest"
    CORRECTION = "correction"


class Priority(enum.IntEnum):
    """Outbox order: lower drains first."""

    EMERGENCY = 0
    NORMAL = 1
    ROUTINE = 2


TemplateContext = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell commuters, before rendering.

    `id` names the subject (an alert, a line, a station); `version` names this particular statement about it,
    so (id, version) is unique per real event and stable once committed.
    """

    id: str
    version: str
    kind: NoticeKind
    priority: Priority
    issued_at: datetime
    line_ids: tuple[str, ...]
    station_ids: tuple[str, ...]
    severity: Severity
    contexts: Mapping[str, TemplateContext]  # language -> template variables
    alert_id: str | None = None
    #: The template base name ({template}.{language}.j2) when not the kind's own: a digest's config may name one.
    template: str | None = None
    #: The channels it goes to (None: every channel); a digest slot goes only where it is due.
    audience: frozenset[str] | None = None

    @property
    def template_base(self) -> str:
        """The base name of the templates this notice is rendered with."""
        return self.template or self.kind.value


@dataclass(frozen=True, slots=True)
class EmergencyRule:
    """What counts as an emergency (the config's `[emergency]`): it jumps the queue on every channel, skips
    quiet windows and posting budgets, and shows prominently (content warning, a display's top line)."""

    min_severity: Severity = Severity.SEVERE
    effects: frozenset[str] = frozenset({"NO_SERVICE"})


DEFAULT_EMERGENCY = EmergencyRule()


@dataclass(frozen=True, slots=True)
class ComposePolicy:
    timezone: ZoneInfo
    languages: tuple[str, ...] = ("zh", "en")
    #: A station crossing this crowding level (either way) is announced; below it only MQTT state changes.
    crowding_notice_level: Occupancy = Occupancy.CRUSHED_STANDING_ROOM_ONLY
    emergency: EmergencyRule = DEFAULT_EMERGENCY


def is_emergency(record: AlertRecord, rule: EmergencyRule = DEFAULT_EMERGENCY) -> bool:
    return record.alert.severity >= rule.min_severity or record.alert.effect in rule.effects


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone)


def _contexts(
    policy: ComposePolicy, now: datetime, variables: Callable[[str], dict[str, object]]
) -> Mapping[str, TemplateContext]:
    """Each language's template variables: the common ones (`lang`, `as_of`, `date`) plus `variables(lang)`."""
    out: dict[str, TemplateContext] = {}
    for lang in policy.languages:
        local = _local(now, policy.timezone)
        ctx: dict[str, object] = {"lang": lang, "as_of": local.strftime("%H:%M"), "date": local.strftime("%Y-%m-%d")}
        ctx.update(variables(lang))
        out[lang] = MappingProxyType(ctx)
    return MappingProxyType(out)


def _line_names(network: Network, line_ids: Sequence[str], lang: str) -> list[str]:
    out = []
    for line_id in line_ids:
        line = network.lines.get(line_id)
        out.append(line.names.get(lang, "en") or line.short_name if line else line_id)
    return out


def _station_names(network: Network, station_ids: Sequence[str], lang: str) -> list[str]:
    out = []
    for station_id in station_ids:
        station = network.stations.get(station_id)
        out.append(station.names.get(lang, "en") if station else station_id)
    return out


def _starts_with_name(text: str, name: str) -> bool:
    """`text` begins with the word `name` (case aside): "Line 19: ..." with "Line 19", not "Line 190"."""
    if not name or not text.casefold().startswith(name.casefold()):
        return False
    following = text[len(name) : len(name) + 1]
    return not (following.isascii() and following.isalnum())


def title_lines(header: str, lines: list[str]) -> list[str]:
    """The line names to put before an alert's header: none when the header already starts with one of them
    (feeds often write "19号线因故障..."; prefixing it again gave "19号线：19号线因故障")."""
    stripped = header.lstrip()
    return [] if any(_starts_with_name(stripped, name) for name in lines) else lines


def alert_lines(alert: Alert, network: Network) -> tuple[str, ...]:
    """Lines an alert touches: the ones it names, else those serving the stations it names."""
    if alert.line_ids:
        return alert.line_ids
    found: dict[str, None] = {}
    for station_id in alert.station_ids:
        for line_id in network.lines_at(station_id):
            found.setdefault(line_id, None)
    return tuple(found)


def _until(record: AlertRecord, now: datetime, zone: ZoneInfo) -> str:
    ends = [p.end for p in record.alert.active_periods if p.end is not None and p.end > now]
    if not ends or len(ends) != len(record.alert.active_periods):
        return ""
    end = _local(min(ends), zone)
    return end.strftime("%H:%M") if end.date() == _local(now, zone).date() else end.strftime("%m-%d %H:%M")


def _alert_notice(
    change: AlertChange, network: Network, now: datetime, policy: ComposePolicy, corrected: bool = False
) -> Notice:
    record = change.record
    alert = record.alert
    kind = {
        AlertChangeKind.NEW: NoticeKind.ALERT_NEW,
        AlertChangeKind.UPDATED: NoticeKind.CORRECTION if corrected else NoticeKind.ALERT_UPDATED,
        AlertChangeKind.RESOLVED: NoticeKind.ALERT_RESOLVED,
    }[change.kind]
    emergency = is_emergency(record, policy.emergency)
    line_ids = alert_lines(alert, network)
    contexts = _contexts(policy, now, lambda lang: {
        "alert_id": alert.id,
        "header": alert.header.get(lang, "en"),
        "description": alert.description.get(lang, "en"),
        "url": alert.url.get(lang, "en"),
        "cause": word(alert.cause, lang),
        "effect": word(alert.effect, lang),
        "severity": word(alert.severity.name, lang),
        "emergency": emergency,
        "lines": _line_names(network, line_ids, lang),
        # The names to put before the header: `lines`, unless the header already names one of them first.
        "title_lines": title_lines(alert.header.get(lang, "en"), _line_names(network, line_ids, lang)),
        "stations": _station_names(network, alert.station_ids, lang),
        "until": _until(record, now, policy.timezone),
        "text": alert.header.get(lang, "en"),  # what a correction says
    })
    # The version names this statement: content hash for new/updated, plus when the alert's episode began, so
    # an identical alert that returns after being resolved is a new statement, not a duplicate key.
    version = f"{change.kind.value}-{record.version}-{_epoch(record.first_seen)}"
    if change.kind is AlertChangeKind.RESOLVED:
        version = f"resolved-{record.version}-{_epoch(record.first_seen)}"
    if kind is NoticeKind.CORRECTION:
        version = f"correction-{record.version}-{_epoch(now)}"
    return Notice(
        id=f"alert-{alert.id}",
        version=version,
        kind=kind,
        # Corrections go first too: a wrong notice left standing feeds the rumours this service exists to quell.
        priority=(Priority.EMERGENCY if (emergency and kind != NoticeKind.ALERT_RESOLVED)
                  or kind is NoticeKind.CORRECTION else Priority.NORMAL),
        issued_at=now,
        line_ids=line_ids,
        station_ids=alert.station_ids,
        severity=alert.severity,
        contexts=contexts,
        alert_id=alert.id,
    )


def _explained_by_an_alert(status: LineStatus) -> bool:
    """An alert decided this status and it is a disruption: that alert's own notice announces it."""
    return status.cause is not None and status.kind.rank >= LineStatusKind.DELAYED.rank


def _line_notice(change: LineStatusChange, network: Network, now: datetime, policy: ComposePolicy) -> Notice | None:
    # A status that an alert explains is announced by that alert's notice; here only measured delays speak
    # (a detour listed on the line does not explain delays measured on it).
    if _explained_by_an_alert(change.after) or _explained_by_an_alert(change.before):
        return None
    if LineStatusKind.DELAYED not in (change.after.kind, change.before.kind):
        return None
    if change.after.kind is change.before.kind and change.after.level is change.before.level:
        return None  # the measured delay drifts (it does at every poll): the retained status shows it, no post
    contexts = _contexts(policy, now, lambda lang: {
        "line": _line_names(network, [change.line_id], lang)[0],
        "lines": _line_names(network, [change.line_id], lang),
        "status": word(change.after.kind.value, lang),
        "status_code": change.after.kind.value,
        "delay_minutes": round(change.after.max_delay_s / 60),
    })
    return Notice(
        id=f"line-{change.line_id}",
        version=f"{change.after.kind.value}-{_epoch(now)}",
        kind=NoticeKind.LINE_STATUS,
        priority=Priority.NORMAL,
        issued_at=now,
        line_ids=(change.line_id,),
        station_ids=(),
        severity=Severity.WARNING if change.after.kind != LineStatusKind.NORMAL else Severity.INFO,
        contexts=contexts,
    )


def _crowding_notice(
    change: CrowdingChange, network: Network, now: datetime, policy: ComposePolicy, trend: str
) -> Notice | None:
    if change.before is None:
        return None  # first reading after start-up: state, not news
    threshold = policy.crowding_notice_level.rank
    if (change.before.rank >= threshold) == (change.record.level.rank >= threshold):
        return None
    record: CrowdingRecord = change.record
    line_ids = network.lines_at(change.station_id)
    contexts = _contexts(policy, now, lambda lang: {
        "station": _station_names(network, [change.station_id], lang)[0],
        "lines": _line_names(network, line_ids, lang),
        "level": word(record.level.name, lang),
        "level_code": record.level.name,
        "percentage": record.percentage,
        "crowded": record.level.rank >= threshold,
        "trend": word(trend, lang),
    })
    return Notice(
        id=f"crowding-{change.station_id}",
        version=f"{record.level.name}-{_epoch(now)}",
        kind=NoticeKind.CROWDING,
        priority=Priority.NORMAL,
        issued_at=now,
        line_ids=line_ids,
        station_ids=(change.station_id,),
        severity=Severity.INFO,
        contexts=contexts,
    )


def compose(
    changes: Sequence[Change], *, network: Network, now: datetime, policy: ComposePolicy,
    corrected: frozenset[str] = frozenset(),
) -> list[Notice]:
    """The notices these changes deserve, emergencies first, in a stable order.

    Args:
        changes: from `state.apply_snapshot`.
        network: names for lines and stations.
        now: the tick's time; becomes the notices' `issued_at` and "as of" stamp.
        policy: languages, timezone, what crowding is worth a notice, what is an emergency.
        corrected: ids of alerts an operator just corrected: their UPDATED change is a correction notice.
    """
    notices: list[Notice] = []
    for change in changes:
        notice: Notice | None
        if isinstance(change, AlertChange):
            notice = _alert_notice(change, network, now, policy, change.record.alert.id in corrected)
        elif isinstance(change, LineStatusChange):
            notice = _line_notice(change, network, now, policy)
        else:
            trend = "rising" if change.record.trend > 0 else "falling"
            notice = _crowding_notice(change, network, now, policy, trend)
        if notice is not None:
            notices.append(notice)
    return sorted(notices, key=lambda n: (n.priority, n.id))


def compose_correction(
    notice_id: str, texts: Mapping[str, str], *, line_ids: Sequence[str], network: Network, now: datetime,
    policy: ComposePolicy,
) -> Notice:
    """An operator's correction of any earlier notice: posted as a reply under it on every channel."""
    fallback = next(iter(texts.values()), "")
    contexts = _contexts(policy, now, lambda lang: {
        "text": texts.get(lang) or texts.get("en") or fallback,
        "lines": _line_names(network, line_ids, lang),
        "corrects": notice_id,
    })
    return Notice(
        id=notice_id, version=f"correction-{_epoch(now)}", kind=NoticeKind.CORRECTION, priority=Priority.EMERGENCY,
        issued_at=now, line_ids=tuple(line_ids), station_ids=(), severity=Severity.WARNING, contexts=contexts,
    )


def digest_fingerprint(state: NetworkState, top_crowded: int) -> str:
    """What a digest says, without its time: equal fingerprints mean an "on-change" channel skips the slot."""
    lines = sorted((line_id, s.kind.value) for line_id, s in state.lines.items())
    crowded = _most_crowded(state, top_crowded)
    return hashlib.sha256(repr((lines, [(r.station_id, r.level.name) for r in crowded])).encode()).hexdigest()[:16]


def _most_crowded(state: NetworkState, top: int) -> list[CrowdingRecord]:
    ranked = [r for r in state.crowding.values() if r.level.rank >= Occupancy.STANDING_ROOM_ONLY.rank]
    return sorted(ranked, key=lambda r: (-r.level.rank, -(r.percentage or 0), r.station_id))[:top]


def compose_digest(
    state: NetworkState, *, name: str, network: Network, slot: datetime, policy: ComposePolicy, top_crowded: int = 3,
    template: str = NoticeKind.DIGEST.value,
) -> Notice:
    """The network-wide summary for one digest slot: every line's status and the most crowded stations, to be
    rendered with the `template` base name (the digest config's `template`).

    Its version is the slot, so a slot posts once whatever happens, and its "as of HH:MM" differs from the
    previous slot's, so consecutive digests are never identical (platforms refuse repeats).
    """
    crowded = _most_crowded(state, top_crowded)
    disrupted = [line_id for line_id in network.lines if state.line_status(line_id).kind is not LineStatusKind.NORMAL]

    def variables(lang: str) -> dict[str, object]:
        return {
            "lines": [
                {"name": _line_names(network, [line_id], lang)[0], "status": word(state.line_status(line_id).kind.value,
                 lang), "status_code": state.line_status(line_id).kind.value}
                for line_id in network.lines
            ],
            "disrupted": [
                {"name": _line_names(network, [line_id], lang)[0],
                 "status": word(state.line_status(line_id).kind.value, lang),
                 "reason": _reason(state, line_id, lang)}
                for line_id in disrupted
            ],
            "all_normal": not disrupted,
            "crowded": [
                {"name": _station_names(network, [r.station_id], lang)[0], "level": word(r.level.name, lang),
                 "percentage": r.percentage}
                for r in crowded
            ],
        }

    return Notice(
        id=f"digest-{name}", version=slot.astimezone(policy.timezone).strftime("%Y-%m-%dT%H:%M"),
        kind=NoticeKind.DIGEST, priority=Priority.ROUTINE, issued_at=slot, line_ids=tuple(disrupted),
        station_ids=tuple(r.station_id for r in crowded), severity=Severity.INFO,
        contexts=_contexts(policy, slot, variables), template=template,
    )


def _reason(state: NetworkState, line_id: str, lang: str) -> str:
    status = state.line_status(line_id)
    if status.alert_ids and status.alert_ids[0] in state.alerts:
        return state.alerts[status.alert_ids[0]].alert.header.get(lang, "en")
    return ""
