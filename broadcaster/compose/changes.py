"""Which state changes become notices: alerts appearing, changing and clearing; delays no alert explains; a
station crossing into or out of heavy crowding; and the operator's corrections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from broadcaster.compose.context import epoch, language_contexts, line_names, local_time, station_names
from broadcaster.compose.notice import (
    CORRECTION_VERSION_PREFIX,
    ComposePolicy,
    Notice,
    NoticeKind,
    Priority,
    is_emergency,
)
from broadcaster.model import Alert, Network, Severity
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
)
from broadcaster.vocabulary import word


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
    end = local_time(min(ends), zone)
    return end.strftime("%H:%M") if end.date() == local_time(now, zone).date() else end.strftime("%m-%d %H:%M")


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
    contexts = language_contexts(policy, now, lambda lang: {
        "alert_id": alert.id,
        "header": alert.header.get(lang, "en"),
        "description": alert.description.get(lang, "en"),
        "url": alert.url.get(lang, "en"),
        "cause": word(alert.cause, lang),
        "effect": word(alert.effect, lang),
        "severity": word(alert.severity.name, lang),
        "emergency": emergency,
        "lines": line_names(network, line_ids, lang),
        # The names to put before the header: `lines`, unless the header already names one of them first.
        "title_lines": title_lines(alert.header.get(lang, "en"), line_names(network, line_ids, lang)),
        "stations": station_names(network, alert.station_ids, lang),
        "until": _until(record, now, policy.timezone),
        "text": alert.header.get(lang, "en"),  # what a correction says
    })
    # The version names this statement: content hash for new/updated, plus when the alert's episode began, so
    # an identical alert that returns after being resolved is a new statement, not a duplicate key.
    version = f"{change.kind.value}-{record.version}-{epoch(record.first_seen)}"
    if change.kind is AlertChangeKind.RESOLVED:
        version = f"resolved-{record.version}-{epoch(record.first_seen)}"
    if kind is NoticeKind.CORRECTION:
        version = f"{CORRECTION_VERSION_PREFIX}{record.version}-{epoch(now)}"
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
        emergency=emergency,
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
    contexts = language_contexts(policy, now, lambda lang: {
        "line": line_names(network, [change.line_id], lang)[0],
        "lines": line_names(network, [change.line_id], lang),
        "status": word(change.after.kind.value, lang),
        "status_code": change.after.kind.value,
        "delay_minutes": round(change.after.max_delay_s / 60),
    })
    return Notice(
        id=f"line-{change.line_id}",
        version=f"{change.after.kind.value}-{epoch(now)}",
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
    contexts = language_contexts(policy, now, lambda lang: {
        "station": station_names(network, [change.station_id], lang)[0],
        "lines": line_names(network, line_ids, lang),
        "level": word(record.level.name, lang),
        "level_code": record.level.name,
        "percentage": record.percentage,
        "crowded": record.level.rank >= threshold,
        "trend": word(trend, lang),
    })
    return Notice(
        id=f"crowding-{change.station_id}",
        version=f"{record.level.name}-{epoch(now)}",
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
    contexts = language_contexts(policy, now, lambda lang: {
        "text": texts.get(lang) or texts.get("en") or fallback,
        "lines": line_names(network, line_ids, lang),
        "corrects": notice_id,
    })
    return Notice(
        id=notice_id, version=f"{CORRECTION_VERSION_PREFIX}{epoch(now)}", kind=NoticeKind.CORRECTION,
        priority=Priority.EMERGENCY, issued_at=now, line_ids=tuple(line_ids), station_ids=(), severity=Severity.WARNING,
        contexts=contexts,
    )
