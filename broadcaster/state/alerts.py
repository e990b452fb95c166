"""The alert lifecycle: NEW -> UPDATED (content hash changed) -> RESOLVED (missing from N consecutive good fetches
of the feed that carried it, or every active period has ended). GTFS-RT has no modification timestamps, so the
version is a hash of the normalised fields."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from broadcaster.model import Alert, FeedSnapshot
from broadcaster.state.model import AlertChange, AlertChangeKind, AlertRecord, StatePolicy


def alert_version(alert: Alert) -> str:
    """A short content hash over the alert's normalised fields: equal content, equal version.

    Order of translations, informed entities and periods does not matter; surrounding white space does not.
    """
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            h.update(str(part).encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")

    put(alert.cause, alert.effect, int(alert.severity))
    for name, text in (("h", alert.header), ("d", alert.description), ("u", alert.url)):
        for lang, value in sorted(text.texts.items()):
            put(name, lang, " ".join(value.split()))
    for e in sorted(
        alert.informed, key=lambda e: (e.line_id or "", e.station_id or "", e.direction_id or -1, e.trip_id or "")
    ):
        put("e", e.line_id, e.station_id, e.direction_id, e.trip_id)
    for p in sorted(alert.active_periods, key=lambda p: (p.start.timestamp() if p.start else 0.0)):
        put("p", p.start.isoformat() if p.start else "", p.end.isoformat() if p.end else "")
    return h.hexdigest()[:16]


def _has_ended(alert: Alert, now: datetime) -> bool:
    """Every active period is over: the feed may still carry it, but it no longer applies."""
    return bool(alert.active_periods) and all(p.end is not None and p.end <= now for p in alert.active_periods)


def apply_alerts(
    records: Mapping[str, AlertRecord],
    snapshot: FeedSnapshot,
    alerts: tuple[Alert, ...],
    now: datetime,
    policy: StatePolicy,
) -> tuple[dict[str, AlertRecord], list[AlertChange]]:
    out = dict(records)
    changes: list[AlertChange] = []
    # Carried but not fetched: a skipped (malformed) entity, or an alert re-applied as last seen (a correction).
    # Neither is evidence the alert is still there, so neither resets its count towards the all-clear.
    not_fetched = snapshot.skipped_alert_ids
    present: set[str] = set()
    ended: set[str] = set()  # carried, but every active period is over
    for alert in alerts:
        if _has_ended(alert, now):
            ended.add(alert.id)
            continue
        present.add(alert.id)
        old = out.get(alert.id)
        # The same Alert object as the record's (the incremental parse hands back an unchanged entity's Alert
        # again) has the record's version: spare hashing every alert of the feed on every tick.
        version = old.version if old is not None and old.alert is alert else alert_version(alert)
        if old is None:
            rec = AlertRecord(alert, version, snapshot.feed, first_seen=now, updated_at=now)
            out[alert.id] = rec
            changes.append(AlertChange(AlertChangeKind.NEW, rec))
        elif old.version != version:
            missing = old.missing if alert.id in not_fetched else 0
            rec = replace(old, alert=alert, version=version, feed=snapshot.feed, updated_at=now, missing=missing)
            out[alert.id] = rec
            changes.append(AlertChange(AlertChangeKind.UPDATED, rec, previous=old))
        elif old.missing and alert.id not in not_fetched:
            out[alert.id] = replace(old, missing=0)
    for alert_id, old in records.items():
        # Only the feed that carried an alert can resolve it, and a skipped (malformed) entity still counts
        # as present: a damaged feed must never produce an "all clear".
        if old.feed != snapshot.feed or alert_id in present or alert_id in not_fetched:
            continue
        missing = old.missing + 1
        if alert_id in ended or missing >= policy.resolve_after_missing:
            del out[alert_id]
            changes.append(AlertChange(AlertChangeKind.RESOLVED, replace(old, updated_at=now), previous=old))
        else:
            out[alert_id] = replace(old, missing=missing)
    return out, changes

