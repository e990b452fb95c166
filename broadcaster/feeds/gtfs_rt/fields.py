"""Reading GTFS-Realtime field values the same way in every part of the parser, and quoting them in problems."""

from __future__ import annotations

#: POSIX seconds beyond this (the year 5138) are milliseconds sent by mistake.
MAX_EPOCH_SECONDS = 10**11

#: How many example ids a summary problem line quotes.
_EXAMPLES = 3


def as_text(value: str | bytes) -> str:
    # upb hands back bytes, not str, for a proto2 string field holding invalid UTF-8.
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def as_direction(value: int) -> int | None:
    """A direction_id: 0 or 1, else None."""
    return value if value in (0, 1) else None


def examples(items: list[str]) -> str:
    """The first few distinct items, and how many more, for one summary problem line."""
    unique = list(dict.fromkeys(items))
    shown = ", ".join(unique[:_EXAMPLES])
    return shown if len(unique) <= _EXAMPLES else f"{shown} and {len(unique) - _EXAMPLES} more"

