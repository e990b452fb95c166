"""The template variables every notice shares, and names of lines and stations in a language."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo

from broadcaster.compose.notice import ComposePolicy, TemplateContext
from broadcaster.model import Network


def epoch(at: datetime) -> int:
    return int(at.timestamp())


def local_time(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone)


def language_contexts(
    policy: ComposePolicy, now: datetime, variables: Callable[[str], dict[str, object]]
) -> Mapping[str, TemplateContext]:
    """Each language's template variables: the common ones (`lang`, `as_of`, `date`) plus `variables(lang)`."""
    as_of, date = _clock_words(now, policy.timezone)
    out: dict[str, TemplateContext] = {}
    for lang in policy.languages:
        ctx: dict[str, object] = {"lang": lang, "as_of": as_of, "date": date}
        ctx.update(variables(lang))
        out[lang] = MappingProxyType(ctx)
    return MappingProxyType(out)


@lru_cache(maxsize=8)
def _clock_words(now: datetime, zone: ZoneInfo) -> tuple[str, str]:
    """`as_of` and `date` at `now` in `zone`: the same for every notice of a tick (~5 us a strftime, two per
    language per notice, ~20 notices a tick)."""
    local = local_time(now, zone)
    return local.strftime("%H:%M"), local.strftime("%Y-%m-%d")


def line_names(network: Network, line_ids: Sequence[str], lang: str) -> list[str]:
    out = []
    for line_id in line_ids:
        line = network.lines.get(line_id)
        out.append(line.names.get(lang, "en") or line.short_name if line else line_id)
    return out


def station_names(network: Network, station_ids: Sequence[str], lang: str) -> list[str]:
    out = []
    for station_id in station_ids:
        station = network.stations.get(station_id)
        out.append(station.names.get(lang, "en") if station else station_id)
    return out

