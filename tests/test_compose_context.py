"""The template variables every notice shares: the clock words (`as_of`, `date`) in the operator's timezone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from broadcaster.compose.context import language_contexts
from broadcaster.compose.notice import ComposePolicy


def words(zone: str, now: datetime) -> tuple[object, object]:
    contexts = language_contexts(ComposePolicy(ZoneInfo(zone)), now, lambda lang: {"name": lang})
    assert [dict(c) for c in contexts.values()] == [
        {"lang": lang, "as_of": contexts[lang]["as_of"], "date": contexts[lang]["date"], "name": lang}
        for lang in ("zh", "en")
    ]
    return contexts["zh"]["as_of"], contexts["en"]["date"]


def test_the_clock_words_are_the_operators_local_time_for_each_zone_and_instant() -> None:
    """They are worked out once per instant and zone (every notice of a tick shares them): another zone, or
    another instant, must never get the words of the one before."""
    now = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    assert words("Asia/Shanghai", now) == ("07:30", "2026-12-05")
    assert words("Europe/London", now) == ("23:30", "2026-12-04")
    assert words("Asia/Shanghai", now + timedelta(minutes=1)) == ("07:31", "2026-12-05")
    # The same instant written in another offset is the same local time.
    same = now.astimezone(timezone(timedelta(hours=-5)))
    assert words("Asia/Shanghai", same) == ("07:30", "2026-12-05")
