"""Per-account posting budgets, and merging a backlog that would overrun one.

Platforms limit how much an account may post (Mastodon: 300 statuses per 3 hours and 300 requests per
5 minutes; Bluesky: 5,000 points per hour and 35,000 per day, 3 points a post). When a busy hour queues more
posts than the budget has room for, broadcaster merges the queued routine and normal posts into as few posts
as the platform's length rule allows, rather than post some hours late or lose any. Emergencies are never
merged and never held back by the budget: they go first, and if the platform refuses one, its own
Retry-After is honoured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broadcaster.channels.base import Post
from broadcaster.config import BudgetLimit, ChannelConfig
from broadcaster.outbox import OutboxEntry
from broadcaster.render.fit import fit
from broadcaster.render.length import PlatformProfile

#: Published limits, used when the channel's config sets no `budget`.
DEFAULT_BUDGETS: dict[str, tuple[BudgetLimit, ...]] = {
    "mastodon": (BudgetLimit(posts=300, seconds=3 * 3600), BudgetLimit(posts=300, seconds=300)),
    "bluesky": (BudgetLimit(posts=5000 // 3, seconds=3600), BudgetLimit(posts=35000 // 3, seconds=86400)),
}

MERGED_KIND = "merged"


def budget_for(config: ChannelConfig) -> tuple[BudgetLimit, ...]:
    return config.budget if config.budget is not None else DEFAULT_BUDGETS.get(config.kind, ())


@dataclass(frozen=True, slots=True)
class Allowance:
    """How many posts the budget allows now, and when the next slot frees if it allows none."""

    posts: int
    next_slot_at: datetime | None


def allowance(limits: Sequence[BudgetLimit], sent_times: Sequence[datetime], now: datetime) -> Allowance:
    """The room left in every window, given the times of the posts already made (any order)."""
    posts = 1 << 30
    next_slot: datetime | None = None
    for limit in limits:
        window = timedelta(seconds=limit.seconds)
        inside = sorted(t for t in sent_times if t > now - window)
        left = limit.posts - len(inside)
        posts = min(posts, left)
        if left <= 0:
            # The slot frees when the oldest post still counted leaves the window.
            frees = inside[-left] + window
            next_slot = frees if next_slot is None else max(next_slot, frees)
    return Allowance(max(0, posts), next_slot)


def mergeable(entry: OutboxEntry) -> bool:
    """Only standalone, untried, non-emergency single posts are merged: threads and replies keep their shape,
    and an entry that may already be on the platform is never re-expressed as another post."""
    if entry.priority == 0 or entry.attempts or entry.uncertain:
        return False
    post = Post.from_payload(entry.payload)
    return post.parts == 1 and post.reply_to_notice is None and post.kind != MERGED_KIND


def _headline(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def merge(entries: Sequence[OutboxEntry], profile: PlatformProfile | None) -> list[Post]:
    """One post (or as few as the length rule allows) saying what `entries` said.

    The full texts are tried first, one paragraph each; then each post's first line.
    """
    posts = [Post.from_payload(e.payload) for e in entries]

    def render(detail: int) -> str:
        if detail >= 1:
            return "\n\n".join(p.text.strip() for p in posts)
        return "\n".join(_headline(p.text) for p in posts)

    texts = [render(1)] if profile is None else fit(render, profile, detail_levels=(1, 0))
    notice_id = "merged-" + hashlib.sha256("".join(e.key for e in entries).encode()).hexdigest()[:16]
    return [
        Post(notice_id, MERGED_KIND, text, posts[0].language, part=i, parts=len(texts),
             visibility=posts[0].visibility)
        for i, text in enumerate(texts)
    ]
