"""Freshness of a feed's own timestamp: too old, in the future, going backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from broadcaster.errors import StaleFeedError
from broadcaster.feeds.freshness import check_freshness

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def stale(timestamp: datetime, *, previous: datetime | None = None, max_age_s: float = 300) -> str:
    with pytest.raises(StaleFeedError) as caught:
        check_freshness("metro-rt", timestamp, now=NOW, max_age_s=max_age_s, previous=previous)
    assert caught.value.feed == "metro-rt"
    return caught.value.reason


@pytest.mark.parametrize(
    "timestamp",
    [NOW, NOW - timedelta(seconds=300), NOW + timedelta(seconds=300), NOW - timedelta(seconds=1)],
)
def test_fresh_timestamps_pass(timestamp: datetime) -> None:
    check_freshness("metro-rt", timestamp, now=NOW, max_age_s=300, previous=None)


def test_too_old() -> None:
    reason = stale(datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
    assert reason == "feed timestamp 2026-11-25T08:00:00Z is 3600 s old (max 300 s)"


def test_too_old_is_reported_in_utc_whatever_the_zone() -> None:
    shanghai = timezone(timedelta(hours=8))
    reason = stale(datetime(2026, 11, 25, 16, 0, tzinfo=shanghai))
    assert reason == "feed timestamp 2026-11-25T08:00:00Z is 3600 s old (max 300 s)"


def test_in_the_future_beyond_the_tolerance() -> None:
    reason = stale(NOW + timedelta(minutes=30))
    assert reason == "feed timestamp 2026-11-25T09:30:00Z is 1800 s in the future (tolerance 300 s); is a clock wrong?"


def test_the_future_tolerance_is_configurable() -> None:
    check_freshness("f", NOW + timedelta(minutes=30), now=NOW, max_age_s=60, previous=None, future_tolerance_s=3600)
    with pytest.raises(StaleFeedError, match="in the future"):
        check_freshness("f", NOW + timedelta(seconds=11), now=NOW, max_age_s=60, previous=None, future_tolerance_s=10)


def test_going_backwards() -> None:
    previous = NOW - timedelta(seconds=60)
    reason = stale(NOW - timedelta(seconds=120), previous=previous)
    assert reason == (
        "feed timestamp 2026-11-25T08:58:00Z is older than the previous one, 2026-11-25T08:59:00Z "
        "(going backwards by 60 s)"
    )


def test_an_unchanged_feed_is_fine() -> None:
    previous = NOW - timedelta(seconds=60)
    check_freshness("metro-rt", previous, now=NOW, max_age_s=300, previous=previous)
    check_freshness("metro-rt", NOW, now=NOW, max_age_s=300, previous=previous)


def test_sub_second_times_are_shown_with_their_fraction() -> None:
    previous = NOW - timedelta(seconds=10)
    reason = stale(previous - timedelta(milliseconds=250), previous=previous)
    assert reason == (
        "feed timestamp 2026-11-25T08:59:49.750000Z is older than the previous one, 2026-11-25T08:59:50Z "
        "(going backwards by 0.250 s)"
    )


def test_naive_datetimes_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timestamp must be timezone-aware"):
        check_freshness("f", datetime(2026, 11, 25, 9, 0), now=NOW, max_age_s=300, previous=None)
    with pytest.raises(ValueError, match="previous must be timezone-aware"):
        check_freshness("f", NOW, now=NOW, max_age_s=300, previous=datetime(2026, 11, 25, 9, 0))
