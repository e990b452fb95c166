"""Per-account posting budgets: the room left, and which queued posts may be merged when a backlog would overrun it.

Platforms limit how much an account may post (Mastodon: 300 statuses per 3 hours and 300 requests per
5 minutes; Bluesky: 5,000 points per hour and 35,000 per day, 3 points a post). When a busy hour queues more
posts than the budget has room for, broadcaster merges the queued routine and normal posts into as few posts
as the platform's length rule allows (`broadcaster.render.posts.merged_posts`, from the texts rendered at
commit), rather than post some hours late or lose any. Emergencies are never merged and never held back by the
budget: they go first, and if the platform refuses one, its own Retry-After is honoured.

Arithmetic only: the dispatcher reads the outbox, asks here, and writes the outcome back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broadcaster.config import BudgetLimit, ChannelConfig
from broadcaster.posts import MERGED_KIND, Post

#: Published limits, used when the channel's config sets no `budget`.
DEFAULT_BUDGETS: dict[str, tuple[BudgetLimit, ...]] = {
    "mastodon": (BudgetLimit(posts=300, seconds=3 * 3600), BudgetLimit(posts=300, seconds=300)),
    "bluesky": (BudgetLimit(posts=5000 // 3, seconds=3600), BudgetLimit(posts=35000 // 3, seconds=86400)),
}


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


def mergeable(post: Post, *, priority: int, tried: bool) -> bool:
    """Only standalone, untried, non-emergency single posts are merged: threads and replies keep their shape,
    and a post that may already be on the platform (`tried`) is never re-expressed as another post."""
    return priority != 0 and not tried and post.standalone and post.kind != MERGED_KIND


def should_merge(due: int, emergencies: int, candidates: int, room: Allowance) -> bool:
    """Whether the `due` posts (`emergencies` of them, which go anyway) overrun the room left, with at least
    two `candidates` to merge."""
    return due - emergencies > room.posts - emergencies and candidates >= 2


def merged_notice_id(keys: Sequence[str]) -> str:
    """The id of the post merged from the outbox entries with these keys: the same entries give the same id."""
    return "merged-" + hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
