"""The server-given wait (`Retry-After`, `X-RateLimit-Reset`, `ratelimit-reset`) read strictly and clamped.

Whatever a platform puts in these headers, the parser returns None (no usable wait: our own backoff applies) or a
number of seconds within [0, MAX_SERVER_WAIT_S], and never raises: one header once stopped the whole service.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.channels.http import retry_after_seconds
from broadcaster.outbox import EMERGENCY_MAX_WAIT_S, MAX_SERVER_WAIT_S, Backoff

NOW = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
HEADERS = ("retry-after", "x-ratelimit-reset", "ratelimit-reset")

#: Values at the edges of what the grammars allow, and just past them.
EXTREMES = [
    "99999999999999", "9" * 5000, "0", "00000", "1", "-1", "+5", " 5 ", "5.5", "1e9", "inf", "-inf", "nan", "Infinity",
    "²", "٣", "５", "", " ", "\t", "1_000", "0x10",
    "2026-12-03T10:00:30", "2026-12-03T10:00:30Z", "2026-12-03T10:00:30.123456+08:00", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+00:00", "2026-02-30T00:00:00Z", "2026-12-03T10:00:30.1234567890Z",
    "Thu, 03 Dec 2026 10:00:30 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
    "Thu, 32 Dec 2026 10:00:30 GMT", "Thursday, 03-Dec-26 10:00:30 GMT", "Thu Dec  3 10:00:30 2026",
    "Thu, 03 Dec 2026 10:00:30 +0000", "1796293200", "17962932000000000000", "1796293200.5",
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2026-12-03T10:00:30+99:00",
    "Mon, 00 Jan 0000 00:00:00 GMT", "0000000000000000005",
]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(HEADERS),
                       st.one_of(st.sampled_from(EXTREMES), st.text(max_size=40),
                                 st.integers(min_value=-10**30, max_value=10**30).map(str),
                                 st.floats(allow_nan=True, allow_infinity=True).map(repr),
                                 st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat)),
                       min_size=1))
def test_any_rate_limit_header_gives_none_or_a_wait_within_the_ceiling(headers: dict[str, str]) -> None:
    wait = retry_after_seconds(headers, NOW)
    assert wait is None or (math.isfinite(wait) and 0.0 <= wait <= MAX_SERVER_WAIT_S)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "99999999999999"}, MAX_SERVER_WAIT_S),  # the answer that stopped the service
    ({"retry-after": "9" * 5000}, MAX_SERVER_WAIT_S),  # past Python's int() digit limit
    ({"retry-after": "120"}, 120.0),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after": "0000000000000000005"}, 5.0),  # leading zeros are still five seconds
    ({"retry-after": "²"}, None),  # a superscript two: str.isdigit() says yes, int() says no
    ({"retry-after": "٣"}, None),  # an Arabic-Indic three: not the ASCII digits RFC 9110 allows
    ({"retry-after": "inf"}, None),
    ({"retry-after": "1.5"}, None),  # delta-seconds is a whole number
    ({"retry-after": "-5"}, None),
    ({"retry-after": "Thu, 03 Dec 2026 10:00:30 GMT"}, 30.0),  # IMF-fixdate
    ({"retry-after": "Thu, 03 Dec 2026 09:00:30 GMT"}, 0.0),  # already past
    ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_SERVER_WAIT_S),
    ({"retry-after": "Thu, 32 Dec 2026 10:00:30 GMT"}, None),
    ({"x-ratelimit-reset": "2026-12-03T10:00:30.000000Z"}, 30.0),  # Mastodon
    ({"x-ratelimit-reset": "2026-12-03T18:00:30+08:00"}, 30.0),
    ({"x-ratelimit-reset": "2026-12-03T10:00:30"}, None),  # no zone: not an instant (it raised TypeError)
    ({"x-ratelimit-reset": "1796291000"}, 0.0),  # epoch seconds, in the past
    ({"x-ratelimit-reset": str(int(NOW.timestamp()) + 45)}, 45.0),
    ({"ratelimit-reset": str(int(NOW.timestamp()) + 45)}, 45.0),  # Bluesky
    ({"ratelimit-reset": "17962932000000000000"}, MAX_SERVER_WAIT_S),
    ({"ratelimit-reset": "nan"}, None),
    ({"retry-after": "²", "ratelimit-reset": str(int(NOW.timestamp()) + 7)}, 7.0),  # the next header is read
])
def test_each_header_form_is_read_strictly(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == expected


def test_an_http_date_from_format_datetime_round_trips() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after_seconds({"retry-after": header}, NOW) == 90.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200),
       st.none() | st.floats(allow_nan=True, allow_infinity=True),
       st.booleans())
def test_the_backoff_never_exceeds_its_ceilings(attempts: int, retry_after: float | None, emergency: bool) -> None:
    import random

    backoff = Backoff()
    delay = backoff.delay(attempts, retry_after, random.Random(attempts), emergency=emergency)
    assert 0.0 <= delay <= max(backoff.cap_s, EMERGENCY_MAX_WAIT_S if emergency else MAX_SERVER_WAIT_S)
    assert datetime.now(UTC) + timedelta(seconds=delay) > datetime.now(UTC) - timedelta(seconds=1)  # no overflow
