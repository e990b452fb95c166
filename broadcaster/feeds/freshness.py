"""Is a feed's own timestamp usable: not too old, not in the future, not going backwards."""

from __future__ import annotations

from datetime import UTC, datetime

from broadcaster.errors import StaleFeedError


def check_freshness(
    feed: str,
    timestamp: datetime,
    *,
    now: datetime,
    max_age_s: float,
    previous: datetime | None,
    future_tolerance_s: float = 300,
) -> None:
    """Reject a feed whose header timestamp cannot be trusted; the caller then keeps the last good state.

    Args:
        feed: the feed's name in the config, carried into the error.
        timestamp: the timestamp the feed states for itself (GTFS-RT header, passenger-flow `timestamp`).
        now: the current time from the injected clock.
        max_age_s: the oldest acceptable age in seconds (the feed's `max_age_seconds`).
        previous: the timestamp of the last accepted fetch of this feed, if any. The same timestamp again is
            fine (the feed has not changed); an older one means a stale cache or a second server behind a
            load balancer, and is rejected so state never steps back in time.
        future_tolerance_s: how far ahead of `now` a timestamp may be, for clock skew between the servers.

    Raises:
        StaleFeedError: the timestamp is in the future beyond the tolerance, older than `max_age_s`, or
            older than `previous`.
        ValueError: a datetime is naive (a programming error: everything inside is aware UTC).
    """
    for name, value in (("timestamp", timestamp), ("now", now), ("previous", previous)):
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"check_freshness: {name} must be timezone-aware, got {value!r}")
    age = (now - timestamp).total_seconds()
    if -age > future_tolerance_s:
        raise StaleFeedError(
            feed,
            f"feed timestamp {_show(timestamp)} is {_seconds(-age)} s in the future "
            f"(tolerance {_seconds(future_tolerance_s)} s); is a clock wrong?",
        )
    if age > max_age_s:
        raise StaleFeedError(
            feed, f"feed timestamp {_show(timestamp)} is {_seconds(age)} s old (max {_seconds(max_age_s)} s)"
        )
    if previous is not None and timestamp < previous:
        raise StaleFeedError(
            feed,
            f"feed timestamp {_show(timestamp)} is older than the previous one, {_show(previous)} "
            f"(going backwards by {_seconds((previous - timestamp).total_seconds())} s)",
        )


def _show(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return utc.strftime(pattern)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 1 or value == 0 else f"{value:.3f}"
