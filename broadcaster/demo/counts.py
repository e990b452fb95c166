"""How long a post is on each platform, counted as the platform counts (broadcaster/render/length.py)."""

from __future__ import annotations

from dataclasses import dataclass

from broadcaster.render.length import PlatformProfile, bluesky, mastodon, weibo, x_weighted

PROFILES: tuple[tuple[str, PlatformProfile], ...] = (
    ("Mastodon", mastodon()),
    ("Bluesky", bluesky()),
    ("X", x_weighted()),
    ("Weibo", weibo()),
)


@dataclass(frozen=True, slots=True)
class Count:
    platform: str
    count: int
    limit: int
    fits: bool


def counts(text: str) -> list[Count]:
    """`text` measured against every platform profile."""
    return [Count(name, profile.count(text), profile.limit, profile.fits(text)) for name, profile in PROFILES]
