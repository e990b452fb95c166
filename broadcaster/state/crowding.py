"""Crowding: a station's published level changes only after the new level has been read continuously for a
minimum dwell, and a change back in the opposite direction also needs the percentage to have moved by the
hysteresis band from where the last change happened, so a station hovering at a boundary does not flap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from broadcaster.model import CrowdingReading, FeedSnapshot
from broadcaster.state.model import CrowdingChange, CrowdingRecord, StatePolicy


def _station_key(r: CrowdingReading) -> tuple[int, int, datetime]:
    return (r.level.rank, r.percentage or 0, r.observed_at)


def _station_reading(readings: list[CrowdingReading]) -> CrowdingReading:
    """A station's own reading if the feed gives one, else its most crowded platform's."""
    whole = [r for r in readings if r.line_id is None and r.direction_id is None]
    pool = whole or readings
    return max(pool, key=_station_key)


def _next_crowding(
    old: CrowdingRecord | None, reading: CrowdingReading, platforms: tuple[CrowdingReading, ...], feed: str,
    now: datetime, policy: StatePolicy,
) -> tuple[CrowdingRecord, bool]:
    """The station's next record and whether its published level changed."""
    if old is None:
        rec = CrowdingRecord(
            reading.station_id, reading.level, reading.percentage, reading.observed_at, changed_at=now,
            change_percentage=reading.percentage, platforms=platforms, feed=feed,
        )
        return rec, True
    if reading.observed_at < old.observed_at:
        return old, False  # out of order: an older reading never overrides a newer one
    if (reading.observed_at == old.observed_at and reading.level == old.level and old.candidate is None
            and reading.percentage == old.percentage and platforms == old.platforms):
        return old, False  # the same reading again: keep the very same record (the store skips re-encoding it)
    base = replace(old, percentage=reading.percentage, observed_at=reading.observed_at, platforms=platforms, feed=feed)
    if reading.level == old.level:
        return replace(base, candidate=None, candidate_since=None), False
    step = 1 if reading.level.rank > old.level.rank else -1
    if (
        old.trend == -step
        and reading.percentage is not None
        and old.change_percentage is not None
        and abs(reading.percentage - old.change_percentage) < policy.crowding_hysteresis_percent
    ):
        # Turning back within the hysteresis band of the last change: hold the published level.
        return replace(base, candidate=None, candidate_since=None), False
    since = old.candidate_since if old.candidate == reading.level and old.candidate_since else reading.observed_at
    if reading.observed_at - since < policy.crowding_min_dwell:
        return replace(base, candidate=reading.level, candidate_since=since), False
    rec = replace(
        base, level=reading.level, changed_at=now, trend=step, change_percentage=reading.percentage,
        candidate=None, candidate_since=None,
    )
    return rec, True


def _made_from(old: CrowdingRecord, readings: list[CrowdingReading], feed: str) -> bool:
    """Whether `_next_crowding` would give `old` back as it is, "the same reading again", for `readings` from
    `feed`: the readings are `old`'s platforms, and the station's own reading they make is the one `old` holds.

    A passenger-flow feed's `ReadingCache` hands back the same reading object for a record repeated from the last
    document, so most stations of a tick are settled here by identity instead of a sort and a comparison of every
    field (bench/: 500 stations per tick at k = 1, a twentieth of them changing). Anything else (a candidate
    level, a whole-station reading now or before, a station reading chosen among ties in another order) takes
    `_next_crowding` as before.
    """
    platforms = old.platforms
    if old.candidate is not None or len(readings) != len(platforms) or old.feed != feed:
        return False
    # In the platforms' order (the document's, as a producer usually writes it): the sort leaves them as they are.
    # Equal readings that are not the same objects compare field by field, and are as good.
    if tuple(readings) != platforms:
        # In another order, only the very same objects, counted with repeats, and no two under one line and
        # direction (those are sorted by their order in the document, which changed).
        if sorted(map(id, readings)) != sorted(map(id, platforms)):
            return False
        previous: tuple[str, int] | None = None
        for r in platforms:
            key = (r.line_id or "", r.direction_id if r.direction_id is not None else -1)
            if key == previous:
                return False
            previous = key
    # All platform readings (as `old.platforms` are): the station's own is the most crowded of them, as in
    # `_station_reading`. `old` may have been made from a whole-station reading the document no longer has.
    own = max(readings, key=_station_key)
    return own.observed_at == old.observed_at and own.level == old.level and own.percentage == old.percentage


def apply_crowding(
    records: Mapping[str, CrowdingRecord], snapshot: FeedSnapshot, readings: tuple[CrowdingReading, ...],
    now: datetime, policy: StatePolicy,
) -> tuple[dict[str, CrowdingRecord], list[CrowdingChange]]:
    by_station: dict[str, list[CrowdingReading]] = {}
    for r in readings:
        by_station.setdefault(r.station_id, []).append(r)
    out = dict(records)
    changes: list[CrowdingChange] = []
    for station_id, station_readings in by_station.items():
        old = records.get(station_id)
        if old is not None and _made_from(old, station_readings, snapshot.feed):
            continue  # `_next_crowding` would give `old` back, unchanged (and `out` holds it already)
        platforms = tuple(
            sorted(
                (r for r in station_readings if r.line_id is not None or r.direction_id is not None),
                key=lambda r: (r.line_id or "", r.direction_id if r.direction_id is not None else -1),
            )
        )
        rec, changed = _next_crowding(
            old, _station_reading(station_readings), platforms, snapshot.feed, now, policy
        )
        out[station_id] = rec
        if changed:
            changes.append(CrowdingChange(station_id, old.level if old else None, rec))
    return out, changes


def crowding_trend(record: CrowdingRecord, now: datetime, policy: StatePolicy) -> str:
    """'rising' / 'falling' for a change within the trend window, else 'steady'."""
    if record.trend == 0 or now - record.changed_at > policy.crowding_trend_window:
        return "steady"
    return "rising" if record.trend > 0 else "falling"

